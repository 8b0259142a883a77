//! The gateway against clients that are slow, greedy or hostile, on 127.0.0.1: slowloris
//! headers and trickled bodies are cut off within their timeouts while normal requests go on;
//! connections over the cap are refused while the admin listener answers; a body declared too
//! large is refused before `100 Continue`; error messages repeat client input only so far; a
//! draining gateway says it is not ready.

use std::time::{Duration, Instant};

use infergate::app::App;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

async fn gateway(listeners: &str) -> (App, infergate::http_server::Server) {
    let mut opts = sim_options("llama-8b-h100");
    opts.speed = 100.0;
    let replica = start_sim(opts).await;
    let gw = GatewayConfig::static_replicas(&[replica.addr])
        .listener("drain_timeout: 2s")
        .listener(listeners)
        .start()
        .await;
    (gw, replica)
}

fn chat() -> serde_json::Value {
    json!({"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
}

/// Reads what the server sends until it closes the connection (or `limit` passes); returns the
/// bytes and when the connection closed.
async fn read_until_closed(conn: &mut TcpStream, limit: Duration) -> (String, Option<Instant>) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&seen).into(), Some(Instant::now()));
            }
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&seen).into(), None),
        }
    }
}

#[tokio::test]
async fn slow_headers_and_trickled_bodies_are_cut_off_while_others_are_served() {
    let (gw, _replica) =
        gateway("header_timeout: 1s, body_idle_timeout: 500ms, body_timeout: 2s").await;
    let url = format!("http://{}/v1/chat/completions", gw.gateway_addr);
    let started = Instant::now();

    // Slowloris: a request line and one header byte every 300 ms, never finished.
    let mut loris = TcpStream::connect(gw.gateway_addr).await.unwrap();
    loris
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n")
        .await
        .unwrap();
    let trickle_headers = async {
        for _ in 0..20 {
            if loris.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    // A body that pauses longer than body_idle_timeout.
    let mut pausing = TcpStream::connect(gw.gateway_addr).await.unwrap();
    pausing
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 1000000\r\n\r\n{\"model\":")
        .await
        .unwrap();
    // A body trickled fast enough for the idle timeout, too slowly for the total one.
    let mut trickled = TcpStream::connect(gw.gateway_addr).await.unwrap();
    trickled
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: 1000000\r\n\r\n",
        )
        .await
        .unwrap();
    let trickle_body = async {
        for _ in 0..30 {
            if trickled.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    // Meanwhile a normal client is served.
    let normal = async {
        let mut ok = 0;
        for _ in 0..5 {
            if post(&url, chat()).await.status == 200 {
                ok += 1;
            }
        }
        ok
    };
    let (_, _, served) = tokio::join!(trickle_headers, trickle_body, normal);
    assert_eq!(served, 5, "normal requests are served meanwhile");

    let (_, loris_closed) = read_until_closed(&mut loris, Duration::from_secs(3)).await;
    let loris_closed = loris_closed.expect("the slowloris connection is closed");
    assert!(
        loris_closed - started < Duration::from_secs(4),
        "header timeout 1 s"
    );

    let (answer, _) = read_until_closed(&mut pausing, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("the request body came too slowly"),
        "{answer}"
    );

    let (answer, closed) = read_until_closed(&mut trickled, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        closed.is_some(),
        "the trickled connection is closed after its 408"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_and_the_admin_listener_still_answers() {
    let (gw, _replica) = gateway("max_connections: 8, header_timeout: 30s").await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(gw.gateway_addr).await.unwrap());
    }
    // Let the gateway accept all eight.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = TcpStream::connect(gw.gateway_addr).await.unwrap();
    let (answer, closed) = read_until_closed(&mut over, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let error: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(error["error"]["code"], 503);
    assert!(closed.is_some(), "refused connections are closed");
    let health = get(&format!("http://{}/healthz", gw.admin_addr)).await;
    assert_eq!(
        health.status, 200,
        "the admin listener is not capped by the gateway's cap"
    );

    // Room again once idle clients go.
    idle.truncate(4);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let url = format!("http://{}/v1/chat/completions", gw.gateway_addr);
    assert_eq!(post(&url, chat()).await.status, 200);
    drop(idle);
    gw.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_100_continue_and_errors_echo_little() {
    let (gw, _replica) = gateway("max_body_size: 1KiB").await;
    let mut conn = TcpStream::connect(gw.gateway_addr).await.unwrap();
    conn.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: 5000000\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), conn.read(&mut buf))
        .await
        .expect("an answer without sending the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "no 100 Continue first: {answer}"
    );

    // A 100 kB model name is not sent back whole.
    let name = "x".repeat(100_000);
    let url = format!("http://{}/v1/chat/completions", gw.gateway_addr);
    let (gw_big, _r) = gateway("max_body_size: 1MiB").await;
    let big_url = format!("http://{}/v1/chat/completions", gw_big.gateway_addr);
    let reply = post(&big_url, json!({"model": name, "messages": []})).await;
    assert_eq!(reply.status, 404);
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.len() < 300, "{} bytes echoed", message.len());
    assert!(message.contains(&"x".repeat(128)) && message.contains('…'));
    // So is a long path.
    let long_path = format!("http://{}/{}", gw.gateway_addr, "p".repeat(5000));
    let reply = get(&long_path).await;
    assert_eq!(reply.status, 404);
    assert!(reply.text().len() < 400);
    // A wrong method is the client's error, not the upstream's.
    let reply = send(http::Method::GET, &url, "").await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    // Heads hyper cannot parse get its own 431 and 400, with JSON bodies like every error.
    for (head, status, kind) in [
        (
            format!(
                "GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
                "b".repeat(500_000)
            ),
            431,
            "request_too_large",
        ),
        (
            "GET /v1/models HTTP/1.1\r\nbad header\r\n\r\n".to_string(),
            400,
            "invalid_request_error",
        ),
    ] {
        let mut conn = TcpStream::connect(gw.gateway_addr).await.unwrap();
        let _ = conn.write_all(head.as_bytes()).await;
        let (answer, closed) = read_until_closed(&mut conn, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "closed after the error");
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{answer}"
        );
        let (top, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(top.contains("content-type: application/json"), "{top}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["type"], kind, "{body}");
        assert_eq!(json["error"]["code"], status);
    }
    gw.shutdown().await;
    gw_big.shutdown().await;
}

/// A draining gateway says so on `/readyz`; a stream still open at its drain timeout ends with
/// an SSE error event and a proper end of the body, not a broken connection.
#[tokio::test]
async fn a_draining_gateway_is_not_ready_and_ends_cut_streams_with_an_error_event() {
    let mut opts = sim_options("llama-8b-h100");
    opts.speed = 0.05; // a long answer keeps the drain going
    let replica = start_sim(opts).await;
    let gw = GatewayConfig::static_replicas(&[replica.addr])
        .listener("drain_timeout: 3s")
        .start()
        .await;
    let admin = gw.admin_addr;
    assert_eq!(get(&format!("http://{admin}/readyz")).await.status, 200);
    let mut stream = TcpStream::connect(gw.gateway_addr).await.unwrap();
    let body = r#"{"model":"m","stream":true,"max_tokens":500,"ignore_eos":true,"messages":[{"role":"user","content":"hi"}]}"#;
    stream
        .write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shutdown = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = get(&format!("http://{admin}/readyz")).await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(ready.json()["draining"], true);
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    shutdown.await.unwrap();
    let closed = closed.expect("the connection closes at the drain timeout");
    assert!(
        closed - started < Duration::from_secs(3),
        "within the 3 s drain timeout"
    );
    let tail = &answer[answer.len().saturating_sub(600)..];
    let error = tail
        .split("data: ")
        .last()
        .and_then(|e| e.split("\r\n").next())
        .unwrap();
    let error: serde_json::Value = serde_json::from_str(error).expect(tail);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("drain timeout"),
        "{error}"
    );
    assert!(tail.ends_with("\r\n0\r\n\r\n"), "the body ends: {tail:?}");
}

#[tokio::test]
async fn sighup_applies_a_changed_file_without_cutting_streams_and_keeps_serving_on_a_broken_one() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let mut opts = sim_options("llama-8b-h100");
    opts.speed = 0.2; // a 60-token answer takes a few seconds
    let replica = start_sim(opts).await;
    let dir = std::env::temp_dir().join(format!("infergate-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.yaml");
    let config = |aliases: &str| {
        format!(
            "listeners: {{gateway: 127.0.0.1:0, admin: 127.0.0.1:0, drain_timeout: 20s}}
pools:
  - name: p
    models: [m]
    aliases: {{{aliases}}}
    discovery: {{static: {{endpoints: [\"http://{}\"]}}}}
",
            replica.addr
        )
    };
    std::fs::write(&file, config("")).unwrap();
    let (child, gateway, admin) = spawn_serve(&file);
    let pid = Pid::from_raw(child.0.id() as i32);
    let models = || async move {
        get(&format!("http://{gateway}/v1/models")).await.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(models().await, ["m"]);

    // A stream runs across the reload.
    let mut conn = TcpStream::connect(gateway).await.unwrap();
    let body = r#"{"model":"m","stream":true,"max_tokens":60,"ignore_eos":true,"messages":[{"role":"user","content":"hi"}]}"#;
    conn.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let stream = tokio::spawn(async move {
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).to_string()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    std::fs::write(&file, config("m2: m")).unwrap();
    assert!(!stream.is_finished(), "the stream runs across the reload");
    kill(pid, Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !models().await.contains(&"m2".to_string()) {
        assert!(Instant::now() < deadline, "the new alias never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("http://{gateway}/v1/chat/completions");
    let mut request = chat();
    request["model"] = json!("m2");
    assert_eq!(
        post(&url, request).await.status,
        200,
        "the new config serves"
    );
    let answer = stream.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("data: [DONE]"),
        "the stream finished whole: {answer}"
    );
    let status = get(&format!("http://{admin}/admin/status")).await.json();
    assert_eq!(status["config_reload"]["applied"], true, "{status}");

    // A broken file: reported, and the previous config keeps serving.
    std::fs::write(&file, "pools: [ {name: p, models: [m]").unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = get(&format!("http://{admin}/admin/status")).await.json();
        if status["config_reload"]["applied"] == false {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the broken reload was not reported: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status["config_reload"]["error"]
            .as_str()
            .unwrap()
            .contains("line"),
        "{status}"
    );
    assert_eq!(models().await, ["m", "m2"]);
    let mut request = chat();
    request["model"] = json!("m2");
    assert_eq!(post(&url, request).await.status, 200);
    let page = get(&format!("http://{admin}/metrics")).await.text();
    assert_eq!(
        metric(
            &page,
            "infergate_config_reloads_total",
            &[("result", "applied")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &page,
            "infergate_config_reloads_total",
            &[("result", "rejected")]
        ),
        Some(1.0)
    );
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A replica that answers 500 at once would draw ever more traffic under least-in-flight (it is
/// always idle); outlier detection ejects it after consecutive 5xx, keeps it out longer each
/// time its probe fails, and lets it back once a probe answers well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_failing_fast_is_ejected_and_comes_back_through_a_probe() {
    let healthy = {
        let mut opts = sim_options("llama-8b-h100");
        opts.speed = 20.0;
        start_sim(opts).await
    };
    let failing_opts = |listen| {
        let mut opts = sim_options("llama-8b-h100");
        opts.speed = 20.0;
        opts.fail_rate = 1.0;
        opts.listen = listen;
        opts
    };
    let failing = start_sim(failing_opts("127.0.0.1:0".parse().unwrap())).await;
    let bad = failing.addr;
    let gw = GatewayConfig::static_replicas(&[healthy.addr, bad])
        .pool("routing: {policy: least-inflight}")
        .pool("retries: {max_attempts: 1, eject_after_failures: 2, ejection_time: 400ms}")
        .start()
        .await;
    let url = format!("http://{}/v1/chat/completions", gw.gateway_addr);
    let mut failed = 0;
    let started = Instant::now();
    for _ in 0..60 {
        if post(&url, chat()).await.status != 200 {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Two failures eject it; after each ejection one probe fails and the next ejection is
    // longer (400 ms, 800, 1200, ...): a handful of failures over the run, not half of 60.
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        (2..=8).contains(&failed),
        "{failed} of 60 requests failed in {elapsed:.1} s"
    );
    let page = get(&format!("http://{}/metrics", gw.admin_addr))
        .await
        .text();
    let ejections = metric(&page, "infergate_ejections_total", &[("pool", "p")]).unwrap();
    assert!(
        ejections >= 2.0,
        "ejected again after a failed probe: {ejections}"
    );

    // The replica is mended (the same address now answers well): a probe succeeds and it
    // takes traffic again.
    failing.shutdown(Duration::from_millis(100)).await;
    let mut mended = failing_opts(bad);
    mended.fail_rate = 0.0;
    let mended = start_sim(mended).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let served_by_bad = || async {
        let page = get(&format!("http://{bad}/metrics")).await.text();
        // Answers it finished, whatever their finish reason.
        page.lines()
            .filter(|l| l.starts_with("vllm:request_success_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    while served_by_bad().await < 3.0 {
        assert!(
            Instant::now() < deadline,
            "the mended replica never took traffic again"
        );
        assert_eq!(
            post(&url, chat()).await.status,
            200,
            "no failure once mended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = get(&format!("http://{}/admin/status", gw.admin_addr))
        .await
        .json();
    let replicas = s["pools"][0]["replicas"].as_array().unwrap();
    assert!(replicas.iter().all(|r| r["ejected"] == false), "{s}");
    gw.shutdown().await;
    mended.shutdown(Duration::from_millis(100)).await;
    healthy.shutdown(Duration::from_millis(100)).await;
}

/// A replica too slow for the pool's timeouts: a non-streamed answer without response headers
/// within `first_byte` gets 504 and counts as a failure (here enough to eject); a stream whose
/// next chunk does not come within `idle_stream` ends with an SSE error event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_and_idle_stream_timeouts_end_requests_and_count_as_failures() {
    let mut opts = sim_options("llama-8b-h100");
    opts.speed = 0.002; // an engine step of several seconds
    let slow = start_sim(opts).await;
    let gw = GatewayConfig::static_replicas(&[slow.addr])
        .pool("timeouts: {first_byte: 300ms, idle_stream: 300ms}")
        .pool("retries: {max_attempts: 1, eject_after_failures: 2, ejection_time: 60s}")
        .start()
        .await;
    let url = format!("http://{}/v1/chat/completions", gw.gateway_addr);

    // A stream: headers at once, then no token within 300 ms.
    let mut request = chat();
    request["stream"] = json!(true);
    let started = Instant::now();
    let (status, chunks) = post_stream(&url, request).await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut at the idle timeout"
    );
    let events = sse_events(&chunks);
    let last = events.last().expect("an error event");
    assert!(last.contains("\"error\""), "{events:?}");

    // Non-streamed: no response headers within 300 ms.
    let started = Instant::now();
    let reply = post(&url, chat()).await;
    assert_openai_error(&reply, 504, "in time");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The broken stream and the timeout: two failures in a row eject the replica.
    let s = get(&format!("http://{}/admin/status", gw.admin_addr))
        .await
        .json();
    assert_eq!(s["pools"][0]["replicas"][0]["ejected"], true, "{s}");
    gw.shutdown().await;
    slow.shutdown(Duration::from_millis(100)).await;
}

/// A key's tokens per minute are charged from each answer's `usage` (streamed with
/// `include_usage` or not): once over a minute's worth, 429 with a `Retry-After` that pays the
/// excess back at the key's rate; other keys go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_token_budget_waits_for_it_to_refill() {
    let hash = key_sha256;
    let mut opts = sim_options("llama-8b-h100");
    opts.instant = true;
    let replica = start_sim(opts).await;
    let auth = format!(
        "auth:
  keys:
    - {{name: budgeted, sha256: {}, tokens_per_minute: 600}}
    - {{name: free, sha256: {}}}",
        hash("sk-budget"),
        hash("sk-free"),
    );
    let gw = GatewayConfig::static_replicas(&[replica.addr])
        .top(&auth)
        .start()
        .await;
    let url = format!("http://{}/v1/chat/completions", gw.gateway_addr);
    let send = |key: &'static str, body: serde_json::Value| {
        let url = url.clone();
        async move {
            let bearer = format!("Bearer {key}");
            send_with(
                http::Method::POST,
                &url,
                &[("authorization", bearer.as_str())],
                serde_json::to_vec(&body).unwrap(),
            )
            .await
        }
    };
    let total = |usage: &serde_json::Value| {
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    };
    // Small: well within the budget.
    let small = send("sk-budget", chat()).await;
    assert_eq!(small.status, 200, "{}", small.text());
    let mut spent = total(&small.json()["usage"]);
    // A streamed answer of ~500 prompt and 300 completion tokens: let in (the key had spent
    // little), and it takes the key over its minute's worth.
    let long = json!({"model": "m", "max_tokens": 300, "ignore_eos": true, "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "lorem ipsum ".repeat(170)}]});
    let streamed = send("sk-budget", long.clone()).await;
    assert_eq!(streamed.status, 200);
    let text = streamed.text();
    let usage_event = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .find(|e| e["usage"].is_object())
        .expect("a usage event");
    spent += total(&usage_event["usage"]);
    assert!(spent > 700, "the test needs the key over 600: {spent}");
    let over = send("sk-budget", chat()).await;
    assert_openai_error(&over, 429, "over its tokens per minute");
    let retry: u64 = over.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // 600 a minute pays back 10 tokens a second.
    let expected = (spent - 600).div_ceil(10);
    assert!(
        retry.abs_diff(expected) <= 1,
        "Retry-After {retry} s, expected about {expected} s for {spent} tokens spent"
    );
    assert_eq!(send("sk-free", long).await.status, 200, "other keys go on");
}

/// API keys: none or a wrong one gets 401 before the body is read; a key limited to other
/// models gets 403; a priority header is honoured only for the classes the key may use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_required_and_limit_models_and_priorities() {
    let hash = key_sha256;
    let mut opts = sim_options("llama-8b-h100");
    opts.speed = 0.5;
    let replica = start_sim(opts).await;
    let auth = format!(
        "auth:
  keys:
    - {{name: batch-team, sha256: {}, priority_classes: [sheddable]}}
    - {{name: plain, sha256: {}}}
    - {{name: other-model, sha256: {}, models: [short]}}
    - {{name: metered, sha256: {}, requests_per_minute: 6}}",
        hash("sk-batch"),
        hash("sk-plain"),
        hash("sk-other"),
        hash("sk-metered")
    );
    let gw = GatewayConfig::static_replicas(&[replica.addr])
        .pool("aliases: {short: m}")
        .pool("admission: {max_inflight_per_replica: 1, max_queue_wait: 300ms}")
        .top(&auth)
        .start()
        .await;
    let url = format!("http://{}/v1/chat/completions", gw.gateway_addr);
    let with = |key: &str, priority: Option<&str>| {
        let mut headers = vec![("authorization".to_string(), format!("Bearer {key}"))];
        if let Some(p) = priority {
            headers.push(("x-priority".to_string(), p.to_string()));
        }
        headers
    };
    let send = |headers: Vec<(String, String)>, model: &str| {
        let url = url.clone();
        let mut body = chat();
        body["model"] = json!(model);
        async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            send_with(
                http::Method::POST,
                &url,
                &headers,
                serde_json::to_vec(&body).unwrap(),
            )
            .await
        }
    };
    let reply = post(&url, chat()).await;
    assert_openai_error(&reply, 401, "API key");
    assert_eq!(reply.json()["error"]["type"], "authentication_error");
    assert_openai_error(&send(with("sk-nope", None), "m").await, 401, "API key");
    assert_eq!(send(with("sk-plain", None), "m").await.status, 200);
    let reply = send(with("sk-other", None), "m").await;
    assert_openai_error(&reply, 403, "may not use the model `m`");
    assert_eq!(send(with("sk-other", None), "short").await.status, 200);
    // Six a minute, bursts of one: the second request at once is over the rate.
    assert_eq!(send(with("sk-metered", None), "m").await.status, 200);
    let over = send(with("sk-metered", None), "m").await;
    assert_openai_error(&over, 429, "over its request rate");
    let retry: u64 = over.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (9..=10).contains(&retry),
        "the next turn is 10 s after the first: {retry}"
    );
    assert_eq!(
        send(with("sk-plain", None), "m").await.status,
        200,
        "other keys go on"
    );

    // The pool saturated by one long stream: a sheddable request is refused at once, but only
    // for a key that may ask for that class; the plain key's header is ignored (it waits in
    // the queue as a standard request, and times out there).
    let mut long = chat();
    long["stream"] = json!(true);
    long["max_tokens"] = json!(400);
    long["ignore_eos"] = json!(true);
    let hog = {
        let url = url.clone();
        tokio::spawn(async move {
            send_with(
                http::Method::POST,
                &url,
                &[("authorization", "Bearer sk-plain")],
                serde_json::to_vec(&long).unwrap(),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shed = send(with("sk-batch", Some("sheddable")), "m").await;
    assert_openai_error(&shed, 429, "sheddable");
    let started = Instant::now();
    let queued = send(with("sk-plain", Some("sheddable")), "m").await;
    assert_openai_error(&queued, 429, "in time");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "it waited in the queue"
    );
    hog.abort();
    gw.shutdown().await;
}
