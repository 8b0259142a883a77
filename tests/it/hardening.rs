//! The gateway against clients that are slow, greedy or hostile, on 127.0.0.1: slowloris
//! headers and trickled bodies are cut off within their timeouts while normal requests go on;
//! connections over the cap are refused while the admin listener answers; a body declared too
//! large is refused before `100 Continue`; error messages repeat client input only so far; a
//! draining gateway says it is not ready.

use std::time::{Duration, Instant};

use infergate::app::{self, App};
use infergate::vllm_sim::profile::profile;
use infergate::vllm_sim::{SimOptions, start};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

async fn gateway(listeners: &str) -> (App, infergate::http_server::Server) {
    let mut opts = SimOptions::new(profile("llama-8b-h100").unwrap());
    opts.models = vec!["m".into()];
    opts.speed = 100.0;
    let replica = start(opts).await.unwrap();
    let yaml = format!(
        "listeners: {{gateway: 127.0.0.1:0, admin: 127.0.0.1:0, drain_timeout: 2s, {listeners}}}
pools:
  - name: p
    models: [m]
    discovery: {{static: {{endpoints: [\"http://{}\"]}}}}
",
        replica.addr
    );
    let config = infergate::config::parse(&yaml, "test").unwrap_or_else(|e| panic!("{e}"));
    (app::start(config).await.unwrap(), replica)
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
    gw.shutdown().await;
    gw_big.shutdown().await;
}

#[tokio::test]
async fn a_draining_gateway_is_not_ready() {
    let mut opts = SimOptions::new(profile("llama-8b-h100").unwrap());
    opts.models = vec!["m".into()];
    opts.speed = 0.05; // a long answer keeps the drain going
    let replica = start(opts).await.unwrap();
    let yaml = format!(
        "listeners: {{gateway: 127.0.0.1:0, admin: 127.0.0.1:0, drain_timeout: 3s}}
pools:
  - name: p
    models: [m]
    discovery: {{static: {{endpoints: [\"http://{}\"]}}}}
",
        replica.addr
    );
    let gw = app::start(infergate::config::parse(&yaml, "test").unwrap())
        .await
        .unwrap();
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
    shutdown.await.unwrap();
}

/// `infergate serve -c FILE` as a child process, with its gateway and admin addresses (read
/// from its log).
fn serve(file: &std::path::Path) -> (ChildGuard, std::net::SocketAddr, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["serve", "--config"])
        .arg(file)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("infergate serve starts");
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (mut gateway, mut admin) = (None, None);
    let mut lines = stderr.lines();
    while gateway.is_none() || admin.is_none() {
        let line = lines.next().expect("serve logs its addresses").unwrap();
        let addr = || {
            line.split("http://")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        if line.contains("gateway listening") {
            gateway = addr();
        } else if line.contains("admin listening") {
            admin = addr();
        }
    }
    // Keep draining its log so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (ChildGuard(child), gateway.unwrap(), admin.unwrap())
}

#[tokio::test]
async fn sighup_applies_a_changed_file_without_cutting_streams_and_keeps_serving_on_a_broken_one() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let mut opts = SimOptions::new(profile("llama-8b-h100").unwrap());
    opts.models = vec!["m".into()];
    opts.speed = 0.2; // a 60-token answer takes a few seconds
    let replica = start(opts).await.unwrap();
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
    let (child, gateway, admin) = serve(&file);
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
