//! The gateway over real HTTP on 127.0.0.1:0, in front of real simulators (in-process, or child
//! processes started by the gateway's local discovery): proxying, streaming, aliases, large and
//! chunked bodies, errors, failures of replicas and clients, metrics.

use std::net::SocketAddr;
use std::time::Duration;

use infergate::app::{self, App};
use infergate::loadgen::LoadArgs;
use infergate::openai::fnv1a;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// The gateway these tests share: static replicas at `endpoints`, alias `short` for `m`, 16 MiB
/// bodies, three attempts and ejection after two failures in a row.
fn static_config(endpoints: &[SocketAddr]) -> GatewayConfig {
    GatewayConfig::static_replicas(endpoints)
        .listener("max_body_size: 16MiB")
        .listener("drain_timeout: 5s")
        .pool("aliases: {short: m}")
        .pool("retries: {max_attempts: 3, eject_after_failures: 2, ejection_time: 30s}")
}

async fn static_gateway(endpoints: &[SocketAddr]) -> App {
    static_config(endpoints).start().await
}

async fn total_inflight(gw: &App) -> u64 {
    pool_status(gw).await["inflight"].as_u64().unwrap()
}

/// A replica's entry in the pool's `/admin/status`, by name.
fn replica_entry(pool: &serde_json::Value, name: &str) -> serde_json::Value {
    replicas(pool)
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no replica {name}: {pool}"))
        .clone()
}

#[tokio::test]
async fn proxies_plain_and_streamed_answers_like_direct() {
    let replica = sim("llama-8b-h100").await;
    let gw = static_gateway(&[replica.addr]).await;
    let request = json!({"model": "m", "messages": [{"role": "user", "content": "What is a gateway?"}], "max_tokens": 12});
    let direct = post(
        &format!("http://{}/v1/chat/completions", replica.addr),
        request.clone(),
    )
    .await;
    let proxied = post(
        &format!("http://{}/v1/chat/completions", gw.gateway_addr),
        request.clone(),
    )
    .await;
    assert_eq!(proxied.status, 200, "{}", proxied.text());
    assert_eq!(
        proxied.json()["choices"][0]["message"]["content"],
        direct.json()["choices"][0]["message"]["content"],
        "same prompt, same answer"
    );
    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    let (status_code, chunks) = post_stream(
        &format!("http://{}/v1/chat/completions", gw.gateway_addr),
        streaming,
    )
    .await;
    assert_eq!(status_code, 200);
    let events = sse_json(&chunks);
    let tokens = direct.json()["usage"]["completion_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(
        events.len() as u64,
        tokens,
        "one event per token before [DONE]: {events:?}"
    );
    let streamed: String = events
        .iter()
        .map(|e| e["choices"][0]["delta"]["content"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        streamed,
        direct.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
    );
    assert!(
        chunks.len() > 1,
        "the stream is not buffered into one chunk"
    );
    assert_eq!(total_inflight(&gw).await, 0);

    let models = get(&format!("http://{}/v1/models", gw.gateway_addr))
        .await
        .json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["m", "short"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn aliases_are_rewritten_to_the_served_name() {
    let replica = sim("llama-8b-h100").await;
    let gw = static_gateway(&[replica.addr]).await;
    let reply = post(
        &format!("http://{}/v1/completions", gw.gateway_addr),
        json!({"model": "short", "prompt": "hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.headers["x-sim-request-version"], "http/1.1",
        "HTTP/1.1 upstream by default"
    );
    assert_eq!(
        reply.json()["model"],
        "m",
        "the replica saw the served name"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn large_prompts_arrive_byte_identical() {
    // The L4 profile has an 8k context; use the 8B H100 profile (32k) and a 70B-sized KV so an
    // 8 MB prompt is refused by the replica for length, after the gateway forwarded it intact.
    let replica = sim("llama-8b-h100").await;
    let gw = static_gateway(&[replica.addr]).await;
    for size in [1usize << 20, 8 << 20] {
        // `model` after `messages`, as the OpenAI SDKs send it.
        let body = format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}], \"max_tokens\": 1, \"model\": \"m\"}}",
            "a".repeat(size)
        );
        let reply = send(
            http::Method::POST,
            &format!("http://{}/v1/chat/completions", gw.gateway_addr),
            body.clone(),
        )
        .await;
        let got_len: usize = reply.headers["x-sim-request-bytes"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let got_hash: u64 = reply.headers["x-sim-request-fnv1a"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(got_len, body.len());
        assert_eq!(
            got_hash,
            fnv1a(body.as_bytes()),
            "{size} bytes forwarded unchanged"
        );
        // 1 MB is ~262k tokens: over the 32k context, so the replica itself answers 400.
        assert_eq!(reply.status, 400);
        assert!(reply.text().contains("maximum context length"));
    }
    gw.shutdown().await;
}

/// Sends raw HTTP/1.1 and returns everything the server wrote until it closed.
async fn raw_http(addr: SocketAddr, request: &[u8], then: Option<&[u8]>) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    if let Some(rest) = then {
        // Expect: 100-continue — wait for the interim answer before the body.
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        out.extend_from_slice(&buf[..n]);
        stream.write_all(rest).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn chunked_uploads_and_expect_continue_are_forwarded() {
    let replica = sim("llama-8b-h100").await;
    let gw = static_gateway(&[replica.addr]).await;
    let body = r#"{"model": "m", "prompt": "chunked hello", "max_tokens": 2}"#;
    let (a, b) = body.split_at(20);
    let chunked = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let answer = raw_http(gw.gateway_addr, chunked.as_bytes(), None).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("x-sim-request-fnv1a: {}", fnv1a(body.as_bytes()))),
        "{answer}"
    );

    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let answer = raw_http(gw.gateway_addr, head.as_bytes(), Some(body.as_bytes())).await;
    assert!(answer.starts_with("HTTP/1.1 100 Continue"), "{answer}");
    assert!(answer.contains("HTTP/1.1 200"), "{answer}");
    gw.shutdown().await;
}

#[tokio::test]
async fn client_errors_are_openai_errors() {
    let replica = sim("llama-8b-h100").await;
    let gw = static_gateway(&[replica.addr]).await;
    let base = format!("http://{}", gw.gateway_addr);
    let cases = [
        (
            post(
                &format!("{base}/v1/completions"),
                json!({"model": "secret-internal", "prompt": "x"}),
            )
            .await,
            404,
            "does not exist",
        ),
        (
            send(
                http::Method::POST,
                &format!("{base}/v1/completions"),
                "{\"model\": ",
            )
            .await,
            400,
            "malformed JSON",
        ),
        (
            post(&format!("{base}/v1/completions"), json!({"prompt": "x"})).await,
            400,
            "`model` is required",
        ),
        (
            send(
                http::Method::POST,
                &format!("{base}/v1/completions"),
                vec![b' '; 17 << 20],
            )
            .await,
            413,
            "larger than",
        ),
        (get(&format!("{base}/v2/unknown")).await, 404, "no route"),
    ];
    for (reply, code, message) in cases {
        assert_openai_error(&reply, code, message);
        assert!(
            !reply.text().contains("127.0.0.1"),
            "no internal address leaks: {}",
            reply.text()
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn an_address_in_use_is_refused_by_name() {
    let replica = sim("llama-8b-h100").await;
    let first = static_gateway(&[replica.addr]).await;
    let config = GatewayConfig::static_replicas(&[replica.addr])
        .gateway_listen(first.gateway_addr)
        .config();
    let Err(error) = app::start(config).await else {
        panic!("a second gateway on a taken address started");
    };
    let message = format!("{error:#}");
    assert!(
        message.contains(&format!(
            "cannot listen on {} (listeners.gateway)",
            first.gateway_addr
        )) && message.contains("in use"),
        "{message}"
    );
    // The first one still answers.
    let reply = get(&format!("http://{}/v1/models", first.gateway_addr)).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn a_dead_replica_at_start_costs_nothing() {
    let live = sim("llama-8b-h100").await;
    // A port bound but not listening: connections to it are refused, and no other test's
    // server can take it meanwhile (a released port could be handed out again).
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = held.local_addr().unwrap();
    // Scrapes far apart: this test is about the request path finding the dead replica.
    let gw = static_config(&[dead, live.addr])
        .pool("metrics: {scrape_interval: 10s}")
        .start()
        .await;
    completions_in_turn(
        gw.gateway_addr,
        20,
        Duration::ZERO,
        |i| json!({"model": "m", "prompt": format!("n{i}"), "max_tokens": 1}),
    )
    .await;
    let s = pool_status(&gw).await;
    assert_eq!(replica_entry(&s, &dead.to_string())["ejected"], true, "{s}");
    let metrics = metrics_page(gw.admin_addr).await;
    assert_eq!(
        metric(&metrics, "infergate_ejections_total", &[("pool", "p")]),
        Some(1.0)
    );
    // One retry per request that met the dead replica, and at most two met it: two failures
    // in a row eject it for 30 s (a failed scrape may have been the first).
    let retries = metric(&metrics, "infergate_retries_total", &[("pool", "p")]).unwrap();
    assert!((1.0..=2.0).contains(&retries), "{retries} retries");
    assert_eq!(
        metric(&metrics, "infergate_requests_total", &[("status", "200")]),
        Some(20.0)
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn client_disconnect_returns_inflight_to_zero() {
    let replica = sim("llama-8b-l4").await;
    let gw = static_gateway(&[replica.addr]).await;
    let stream = spawn_stream(
        &format!("http://{}/v1/completions", gw.gateway_addr),
        streamed_completion("long", 5000),
    );
    let inflight = async || total_inflight(&gw).await;
    let seen = poll_until(Duration::from_secs(2), inflight, |n| *n == 1).await;
    assert_eq!(seen, 1, "the stream is in flight");
    stream.abort();
    let after = poll_until(Duration::from_secs(2), inflight, |n| *n == 0).await;
    assert_eq!(after, 0, "the guard was released when the client went away");
    gw.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_lets_streams_finish() {
    let replica = sim("llama-8b-l4").await;
    let gw = static_gateway(&[replica.addr]).await;
    let stream = spawn_stream(
        &format!("http://{}/v1/completions", gw.gateway_addr),
        streamed_completion("x", 10),
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let gateway_addr = gw.gateway_addr;
    gw.shutdown().await;
    let events = stream_to_done(stream).await;
    assert_eq!(events.len(), 10, "all ten tokens, then [DONE]: {events:?}");
    assert!(
        tokio::net::TcpStream::connect(gateway_addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn gateway_metrics_pass_promtool() {
    if !tool_available("promtool", &["--version"]) {
        return;
    }
    let replica = sim("llama-8b-h100").await;
    let gw = static_gateway(&[replica.addr]).await;
    post_stream(
        &format!("http://{}/v1/completions", gw.gateway_addr),
        json!({"model": "m", "prompt": "x", "max_tokens": 3, "stream": true}),
    )
    .await;
    let text = metrics_page(gw.admin_addr).await;
    gw.shutdown().await;
    let (code, said) = promtool_check_metrics(text.as_bytes());
    assert_eq!(code, Some(0), "promtool: {said}");
    assert_eq!(
        metric(
            &text,
            "infergate_stream_first_chunk_seconds_count",
            &[("pool", "p")]
        ),
        Some(1.0),
        "the one stream's first chunk"
    );
}

/// The embedded default's shape with real child processes: the gateway starts two simulators,
/// one is killed mid-stream, the client gets a clean error event, the replica is ejected and the
/// next requests succeed on the other.
#[tokio::test]
async fn local_replica_killed_mid_stream() {
    let gw = GatewayConfig::local(2, &["--profile", "llama-8b-l4"])
        .listener("drain_timeout: 2s")
        .pool("retries: {max_attempts: 3, eject_after_failures: 1, ejection_time: 60s}")
        .start()
        .await;
    let pids = gw.local_replica_pids().await;
    assert_eq!(pids.len(), 2, "both local replicas started");
    let stream = spawn_stream(
        &format!("http://{}/v1/chat/completions", gw.gateway_addr),
        json!({"model": "m", "messages": [{"role": "user", "content": "long"}], "max_tokens": 2000, "ignore_eos": true, "stream": true}),
    );
    // Find the replica serving it, then kill that process.
    let serving = poll_until(
        Duration::from_secs(2),
        async || {
            replicas(&pool_status(&gw).await)
                .iter()
                .find(|r| r["inflight"] == 1)
                .map(|r| r["name"].as_str().unwrap().to_string())
        },
        Option::is_some,
    )
    .await;
    let serving = serving.expect("one replica has the stream");
    tokio::time::sleep(Duration::from_millis(200)).await; // let a few tokens through
    let pid = pids
        .iter()
        .find(|(addr, _)| addr.to_string() == serving)
        .unwrap()
        .1;
    send_signal(pid, "KILL");
    let (code, chunks) = stream.await.unwrap();
    assert_eq!(code, 200);
    let events = sse_events(&chunks);
    assert!(events.len() >= 2, "some tokens arrived before the kill");
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap())
        .expect("the stream ends with a JSON error event");
    // The connection broke (not an idle timeout): a 502 saying so, no internal detail.
    assert_eq!(
        last["error"]["message"], "the model server failed to answer",
        "{last}"
    );
    assert_eq!(last["error"]["code"], 502, "{last}");
    // The gateway is up, the dead replica is out, and requests succeed on the other one.
    completions_in_turn(
        gw.gateway_addr,
        5,
        Duration::ZERO,
        |i| json!({"model": "m", "prompt": format!("after {i}"), "max_tokens": 2}),
    )
    .await;
    let s = pool_status(&gw).await;
    assert_eq!(replica_entry(&s, &serving)["ejected"], true, "{s}");
    assert_eq!(total_inflight(&gw).await, 0);
    gw.shutdown().await;
}

#[test]
fn official_openai_client_streams_through_the_gateway() {
    if !tool_available("python3", &["-c", "import openai"]) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (replica, gw) = rt.block_on(async {
        let replica = sim("llama-8b-h100").await;
        let gw = static_gateway(&[replica.addr]).await;
        (replica, gw)
    });
    let run = |addr: SocketAddr| openai_chat_stream(addr, "Name three rivers.", 9, "None");
    let via_gateway = run(gw.gateway_addr);
    let direct = run(replica.addr);
    assert_eq!(via_gateway, direct);
    // "user\nName three rivers.\n" is 24 bytes: 6 tokens at 4 bytes per token.
    assert_eq!(via_gateway["prompt_tokens"], 6, "{via_gateway}");
    let content = via_gateway["content"].as_str().unwrap();
    let tokens = via_gateway["completion_tokens"].as_u64().unwrap();
    assert!((1..=9).contains(&tokens), "{via_gateway}");
    assert_eq!(
        content.split_whitespace().count() as u64,
        tokens,
        "one word per token: {via_gateway}"
    );
    rt.block_on(gw.shutdown());
}

#[tokio::test]
async fn h2c_downstream_and_upstream() {
    use http_body_util::{BodyExt, Full};
    let replica = sim("llama-8b-h100").await;
    let gw = static_config(&[replica.addr])
        .pool("upstream_protocol: h2c")
        .start()
        .await;
    // A client speaking HTTP/2 with prior knowledge to the gateway, which speaks h2c upstream.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<bytes::Bytes>>();
    for stream in [false, true] {
        let body = json!({"model": "m", "prompt": "over h2", "max_tokens": 3, "ignore_eos": true, "stream": stream});
        let request = http::Request::post(format!("http://{}/v1/completions", gw.gateway_addr))
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(
                serde_json::to_vec(&body).unwrap(),
            )))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["x-sim-request-version"],
            "h2",
            "the pool spoke h2c upstream"
        );
        let text = String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        if stream {
            assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        } else {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["usage"]["completion_tokens"], 3);
        }
    }
    assert_eq!(total_inflight(&gw).await, 0);
    gw.shutdown().await;
}

/// With one replica ten times slower, predicted-TTFT routing sends it less traffic than round
/// robin does, and clients see a lower p90 time to first token. Same replicas, same bounded
/// load, one policy after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predicted_ttft_beats_round_robin_with_a_slow_replica() {
    let fast = sim("llama-8b-h100").await;
    let mut slow_opts = sim_options("llama-8b-h100");
    slow_opts.profile.t0 *= 10.0;
    slow_opts.profile.prefill_per_token *= 10.0;
    let slow = start_sim(slow_opts).await;
    let mut results = Vec::new();
    for policy in ["round-robin", "predicted-ttft"] {
        let gw = static_config(&[fast.addr, slow.addr])
            .pool(&format!("routing: {{policy: {policy}}}"))
            .pool("metrics: {scrape_interval: 50ms}")
            .start()
            .await;
        let before = requests_finished(slow.addr).await;
        let args = LoadArgs {
            requests: 80,
            concurrency: 8,
            duration: Duration::from_secs(60),
            prompt_tokens: 512,
            max_tokens: 16,
            ..load_args(gw.gateway_addr)
        };
        let report = infergate::loadgen::run(args, |_, _| {}).await.unwrap();
        assert_eq!((report.ok, report.failed), (80, 0), "{}", report.render());
        let slow_share = (requests_finished(slow.addr).await - before) / 80.0;
        let mut ttft = report.ttft.clone();
        ttft.sort_by(f64::total_cmp);
        let p90 = ttft[(ttft.len() * 9) / 10];
        results.push((policy, slow_share, p90));
        gw.shutdown().await;
    }
    eprintln!("(policy, share of requests on the slow replica, p90 TTFT s): {results:?}");
    let (rr, pt) = (results[0], results[1]);
    assert_eq!(rr.1, 0.5, "round robin splits evenly: {results:?}");
    assert!(
        pt.1 < rr.1 - 0.15,
        "predicted-ttft sends the slow replica less: {results:?}"
    );
    assert!(
        pt.2 < rr.2 * 0.8,
        "and p90 TTFT is lower by a margin: {results:?}"
    );
}

#[tokio::test]
async fn session_affinity_keeps_a_session_on_one_replica() {
    let (a, b) = (sim("llama-8b-h100").await, sim("llama-8b-h100").await);
    let gw = static_config(&[a.addr, b.addr])
        .pool("routing: {policy: session-affinity}")
        .start()
        .await;
    let url = format!("http://{}/v1/completions", gw.gateway_addr);
    let body = serde_json::to_vec(&json!({"model": "m", "prompt": "hi", "max_tokens": 1})).unwrap();
    let mut homes = std::collections::HashSet::new();
    // 16 sessions: all on one replica by chance has odds 2 in 65536.
    for n in 0..16 {
        let session = format!("session-{n}");
        let session = session.as_str();
        let (before_a, before_b) = (
            requests_finished(a.addr).await,
            requests_finished(b.addr).await,
        );
        for _ in 0..3 {
            let reply = send_with(
                http::Method::POST,
                &url,
                &[("x-session-id", session)],
                body.clone(),
            )
            .await;
            assert_eq!(reply.status, 200);
        }
        let (on_a, on_b) = (
            requests_finished(a.addr).await - before_a,
            requests_finished(b.addr).await - before_b,
        );
        assert!(
            (on_a, on_b) == (3.0, 0.0) || (on_a, on_b) == (0.0, 3.0),
            "{session}: {on_a} on a, {on_b} on b"
        );
        homes.insert(on_a > 0.0);
    }
    assert_eq!(homes.len(), 2, "sessions use both replicas");
    gw.shutdown().await;
}

/// Prefix-cache hits the replicas report, summed.
async fn prefix_hits(sims: &[infergate::http_server::Server]) -> f64 {
    let mut hits = 0.0;
    for sim in sims {
        let text = metrics_page(sim.addr).await;
        hits += metric(&text, "vllm:prefix_cache_hits_total", &[]).unwrap_or(0.0);
    }
    hits
}

/// Requests sharing a long system prompt: prefix affinity keeps each group on the replica that
/// has its prefix cached, so the replicas report far more prefix-cache hits than under round
/// robin. Fresh replicas per policy, the same requests in the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_affinity_raises_replica_cache_hits() {
    let mut hits = Vec::new();
    for policy in ["round-robin", "prefix-affinity"] {
        let mut sims = Vec::new();
        for _ in 0..4 {
            sims.push(sim("llama-8b-h100").await);
        }
        let addrs: Vec<SocketAddr> = sims.iter().map(|s| s.addr).collect();
        let gw = static_config(&addrs)
            .pool(&format!("routing: {{policy: {policy}}}"))
            .start()
            .await;
        let url = format!("http://{}/v1/chat/completions", gw.gateway_addr);
        // 5 groups × 6 requests, interleaved across groups (5 and 4 replicas are coprime, so
        // round robin walks each group over every replica).
        for turn in 0..6 {
            for group in 0..5 {
                let system = format!("You are assistant number {group}. ").repeat(120);
                let body = json!({"model": "m", "max_tokens": 1, "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": format!("question {turn}")}]});
                assert_eq!(post(&url, body).await.status, 200);
            }
        }
        hits.push((policy, prefix_hits(&sims).await));
        gw.shutdown().await;
    }
    eprintln!("(policy, prefix-cache hit tokens on the replicas): {hits:?}");
    assert!(hits[1].1 > 2.0 * hits[0].1, "{hits:?}");
}

async fn status_queued(gw: &App) -> u64 {
    pool_status(gw).await["queued"].as_u64().unwrap()
}

/// Requests of pool `p` that have waited in the gateway's admission queue so far.
async fn held_so_far(gw: &App) -> f64 {
    gateway_metric(gw, "infergate_queue_wait_seconds_count", &[("pool", "p")])
        .await
        .unwrap_or(0.0)
}

/// Waits (at most 2 s) until the gateway has read its first replica's metrics page.
async fn wait_for_first_page(gw: &App) {
    eventually(
        Duration::from_secs(2),
        "the replica's page was read",
        async || !pool_status(gw).await["replicas"][0]["engine"].is_null(),
    )
    .await;
}

/// Non-streamed answers tell nothing about the engine's queue until they end, so dozens of them
/// in flight to a replica that answers at once (its pages show nothing waiting) are never held
/// at the gateway: it passes them all on, as a plain proxy would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streamed_requests_to_a_fast_replica_are_not_held() {
    let mut opts = sim_options("llama-8b-h100");
    opts.instant = true;
    let replica = start_sim(opts).await;
    let gw = static_gateway(&[replica.addr]).await;
    wait_for_first_page(&gw).await;
    let url = format!("http://{}/v1/completions", gw.gateway_addr);
    for _ in 0..4 {
        let replies = futures::future::join_all((0..48).map(|i| {
            post(
                &url,
                json!({"model": "m", "prompt": format!("question {i}"), "max_tokens": 8}),
            )
        }))
        .await;
        assert!(replies.iter().all(|r| r.status == 200));
    }
    let answered = gateway_metric(
        &gw,
        "infergate_requests_total",
        &[("pool", "p"), ("status", "200")],
    )
    .await;
    assert_eq!(answered, Some(192.0));
    assert_eq!(
        held_so_far(&gw).await,
        0.0,
        "requests were held at the gateway"
    );
}

/// A stream held at the gateway (its replica already had streams waiting for their first
/// token) goes on as soon as one of those gets its first token, not at the first waiter's
/// periodic re-check (every 50 ms). With one stream let through per first token (an engine step
/// of about 10 ms here), 40 held streams all start well within the first answer's ~1 s; one per
/// re-check would take 2 s. Pages come every 30 s, so scrapes wake nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_streams_go_on_when_a_stream_there_starts() {
    let replica = sim("llama-8b-h100").await;
    let gw = static_config(&[replica.addr])
        .pool("admission: {max_waiting_per_replica: 1}")
        .pool("metrics: {scrape_interval: 30s, stale_after: 120s}")
        .start()
        .await;
    wait_for_first_page(&gw).await;
    let url = format!("http://{}/v1/completions", gw.gateway_addr);
    let t0 = std::time::Instant::now();
    let streams: Vec<_> = (0..42)
        .map(|i| {
            let url = url.clone();
            let body = json!({"model": "m", "prompt": format!("question {i}"), "max_tokens": 100,
                              "ignore_eos": true, "stream": true});
            tokio::spawn(async move {
                let sent = t0.elapsed();
                let (status, chunks) = post_stream(&url, body).await;
                assert_eq!(status, 200);
                let first = sent + chunks.first().expect("a chunk").0;
                let end = sent + chunks.last().unwrap().0;
                (first, end)
            })
        })
        .collect();
    let mut times = Vec::new();
    for stream in streams {
        times.push(stream.await.unwrap());
    }
    let first_end = times.iter().map(|t| t.1).min().unwrap();
    let last_start = times.iter().map(|t| t.0).max().unwrap();
    assert!(
        last_start < first_end,
        "a held stream's first token ({last_start:?}) came only after an answer ended ({first_end:?})"
    );
    // Some were held (or the test tests nothing), each at most once, and never the first.
    let held = held_so_far(&gw).await;
    assert!((1.0..=41.0).contains(&held), "{held} of 42 streams held");
}

/// Two long answers fill a replica limited to two in flight; what comes next waits at the
/// gateway (and is answered once capacity frees), unless its class is sheddable, the queue is
/// full, or its wait runs out — those get 429 with Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_pool_queues_sheds_and_bounds() {
    let replica = sim("llama-8b-l4").await;
    let gw = static_config(&[replica.addr])
        .pool("admission: {max_inflight_per_replica: 2, max_queue: 2, max_queue_wait: 10s}")
        .start()
        .await;
    let url = format!("http://{}/v1/completions", gw.gateway_addr);
    let long = streamed_completion("long", 60);
    let t0 = std::time::Instant::now();
    let streams: Vec<_> = (0..2).map(|_| spawn_stream(&url, long.clone())).collect();
    let inflight = poll_until(
        Duration::from_secs(2),
        async || total_inflight(&gw).await,
        |n| *n == 2,
    )
    .await;
    assert_eq!(inflight, 2);
    let short = json!({"model": "m", "prompt": "short", "max_tokens": 2});
    // Sheddable: refused at once.
    let shed = send_with(
        http::Method::POST,
        &url,
        &[("x-priority", "sheddable")],
        serde_json::to_vec(&short).unwrap(),
    )
    .await;
    assert_openai_error(&shed, 429, "sheddable");
    assert_eq!(shed.headers["retry-after"], "1");
    // Two standard requests wait (the queue holds 2); a third finds it full.
    let waiting: Vec<_> = (0..2).map(|_| spawn_post(&url, short.clone())).collect();
    let queued = poll_until(
        Duration::from_secs(2),
        async || status_queued(&gw).await,
        |n| *n == 2,
    )
    .await;
    assert_eq!(queued, 2, "waiting at the gateway, not at the replica");
    // The replica holds exactly the two long answers: once its engine has stepped, both run
    // and none waits (its metrics are as of its last step).
    let engine = poll_until(
        Duration::from_secs(2),
        async || {
            let text = metrics_page(replica.addr).await;
            (
                metric(&text, "vllm:num_requests_running", &[]).unwrap(),
                metric(&text, "vllm:num_requests_waiting", &[]).unwrap(),
            )
        },
        |engine| engine.0 == 2.0,
    )
    .await;
    assert_eq!(engine, (2.0, 0.0), "at {:?}", t0.elapsed());
    assert_eq!(status_queued(&gw).await, 2);
    let full = post(
        &url,
        json!({"model": "m", "prompt": "third", "max_tokens": 2}),
    )
    .await;
    assert_openai_error(&full, 429, "too many requests are waiting");
    // Capacity frees as the long answers end: the queued ones are answered.
    for w in waiting {
        assert_eq!(w.await.unwrap().status, 200);
    }
    for s in streams {
        stream_to_done(s).await;
    }
    assert_eq!(status_queued(&gw).await, 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_times_out_with_429() {
    let replica = sim("llama-8b-l4").await;
    let gw = static_config(&[replica.addr])
        .pool("admission: {max_inflight_per_replica: 1, max_queue: 10, max_queue_wait: 300ms}")
        .start()
        .await;
    let url = format!("http://{}/v1/completions", gw.gateway_addr);
    let hog = spawn_stream(&url, streamed_completion("long", 40));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let late = post(&url, json!({"model": "m", "prompt": "x", "max_tokens": 1})).await;
    assert_openai_error(&late, 429, "in time");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "it waited before giving up"
    );
    stream_to_done(hog).await;
    gw.shutdown().await;
}

/// A replica whose metrics port stops answering leaves routing without any request failing on
/// it, and comes back half-open when its ejection time is up — not because its page answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_replicas_leave_routing_and_come_back() {
    let replica = sim("llama-8b-h100").await;
    let addr = replica.addr;
    let gw = GatewayConfig::static_replicas(&[addr])
        .pool("retries: {max_attempts: 3, eject_after_failures: 2, ejection_time: 1500ms}")
        .pool("metrics: {scrape_interval: 50ms}")
        .start()
        .await;
    let ejected = async || {
        pool_status(&gw).await["replicas"][0]["ejected"]
            .as_bool()
            .unwrap()
    };
    assert!(!ejected().await);
    replica.shutdown(Duration::from_millis(100)).await;
    eventually(
        Duration::from_secs(2),
        "two failed scrapes eject it",
        async || ejected().await,
    )
    .await;
    let ejected_at = std::time::Instant::now();
    // The same address answers again.
    let mut opts = sim_options("llama-8b-h100");
    opts.listen = addr;
    let back = start_sim(opts).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        ejected().await,
        "scrapes answer again, but that does not end the ejection"
    );
    eventually(
        Duration::from_secs(4),
        "back when the ejection time is up",
        async || !ejected().await,
    )
    .await;
    assert!(ejected_at.elapsed() >= Duration::from_millis(1000));
    let reply = post(
        &format!("http://{}/v1/completions", gw.gateway_addr),
        json!({"model": "m", "prompt": "x", "max_tokens": 1}),
    )
    .await;
    assert_eq!(reply.status, 200);
    let s = pool_status(&gw).await;
    let kv = s["replicas"][0]["engine"]["kv_cache_usage"].as_f64();
    assert!(
        kv.is_some_and(|kv| (0.0..=1.0).contains(&kv)),
        "scraped stats are shown: {s}"
    );
    gw.shutdown().await;
    back.shutdown(Duration::from_millis(100)).await;
}
