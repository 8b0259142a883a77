//! What the gateway records of each request: its id, its access-log line, its tokens, and the
//! requests it refused before routing.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// A request id is the client's or a new one, returned with every answer (errors too); an
/// access-log line names it with the model, pool, replica, status and tokens; the tokens of
/// the answers are counted per pool, model and kind from their `usage`; requests refused
/// before routing are counted with their status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_an_id_and_are_logged_counted_and_metered() {
    let mut opts = sim_options("llama-8b-h100");
    opts.instant = true;
    let replica = start_sim(opts).await;
    let dir = std::env::temp_dir().join(format!("infergate-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.yaml");
    std::fs::write(
        &file,
        format!(
            "listeners: {{gateway: 127.0.0.1:0, admin: 127.0.0.1:0, access_log: true}}
pools:
  - name: p
    models: [m]
    discovery: {{static: {{endpoints: [\"http://{}\"]}}}}
",
            replica.addr
        ),
    )
    .unwrap();
    let (_child, gateway, admin, log) = spawn_serve_logged(&file);
    let url = format!("http://{gateway}/v1/chat/completions");
    let body = json!({"model": "m", "max_tokens": 7, "ignore_eos": true, "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "count the tokens of this answer"}]});
    let reply = send_with(
        http::Method::POST,
        &url,
        &[("x-request-id", "client-id-42")],
        serde_json::to_vec(&body).unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["x-request-id"], "client-id-42");
    let usage = reply
        .text()
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .find(|e| e["usage"].is_object())
        .expect("a usage event")["usage"]
        .clone();
    // No id, or one too long: a new one, 32 hex digits. Errors carry theirs too.
    let bad = send_with(
        http::Method::POST,
        &url,
        &[("x-request-id", &"x".repeat(200))],
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(bad.status, 400);
    let id = bad.headers["x-request-id"].to_str().unwrap().to_string();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let unknown = post(&url, json!({"model": "nope", "messages": []})).await;
    assert_eq!(unknown.status, 404);
    assert_ne!(
        unknown.headers["x-request-id"],
        id.as_str(),
        "a new id each"
    );

    let page = get(&format!("http://{admin}/metrics")).await.text();
    let tokens = |kind: &str| {
        metric(
            &page,
            "infergate_tokens_total",
            &[("pool", "p"), ("model", "m"), ("kind", kind)],
        )
    };
    assert_eq!(tokens("prompt"), usage["prompt_tokens"].as_f64(), "{page}");
    assert_eq!(tokens("completion"), Some(7.0));
    for status in ["400", "404"] {
        let refused = metric(
            &page,
            "infergate_requests_total",
            &[("pool", ""), ("model", ""), ("status", status)],
        );
        assert_eq!(
            refused,
            Some(1.0),
            "refused before routing, {status}: {page}"
        );
    }
    assert_eq!(
        metric(
            &page,
            "infergate_requests_total",
            &[("pool", "p"), ("model", "m"), ("status", "200")]
        ),
        Some(1.0)
    );

    // The access log: one line per request, when its answer ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines: Vec<String> = log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("infergate::access"))
            .cloned()
            .collect();
        if lines.len() >= 3 || std::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let ok = lines
        .iter()
        .find(|l| l.contains("client-id-42"))
        .expect("the streamed request's line");
    for part in [
        "status=200",
        "model=m",
        "pool=p",
        &format!("replica={}", replica.addr),
        "completion_tokens=7",
        &format!("prompt_tokens={}", usage["prompt_tokens"]),
        "path=/v1/chat/completions",
    ] {
        assert!(ok.contains(part), "{part} in {ok}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&id) && l.contains("status=400"))
    );
    assert!(lines.iter().any(|l| l.contains("status=404")));
}
