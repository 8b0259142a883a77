//! Chat: events told to a webhook receiver on 127.0.0.1 (one message per scale-up, a burst of
//! ejections batched, a hanging receiver costing requests nothing), and slash commands taken
//! only when signed, fresh and from an allowed user.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use infergate::app::App;
use tokio::net::TcpListener;

use crate::support::*;

/// A chat webhook receiver: keeps each message's JSON; `hang` never answers.
pub struct Receiver {
    pub url: String,
    messages: Arc<Mutex<Vec<serde_json::Value>>>,
}

pub async fn receiver(hang: bool) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let messages = Arc::new(Mutex::new(Vec::new()));
    let kept = messages.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let kept = kept.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let kept = kept.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        kept.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                        if hang {
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(conn), service)
                    .await;
            });
        }
    });
    Receiver { url, messages }
}

/// A secret in a file of its own (the config names the file; the test leaves no env behind).
fn secret_file(name: &str, value: &str) -> String {
    let dir = std::env::temp_dir().join(format!("infergate-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, value).unwrap();
    path.display().to_string()
}

pub fn messages(r: &Receiver) -> Vec<serde_json::Value> {
    r.messages.lock().unwrap().clone()
}

#[tokio::test]
async fn a_scale_up_is_told_once_with_its_reason() {
    let hook = receiver(false).await;
    let url = secret_file("scale-url", &hook.url);
    let gw = GatewayConfig::local(1, &["--speed", "10"])
        .pool("scaler: {enabled: true, min_replicas: 1, max_replicas: 3, interval: 100ms}")
        .top(&format!(
            "chatops: {{notify: [{{url_file: \"{url}\", format: json, events: [scale], min_interval: 1s}}]}}"
        ))
        .start()
        .await;
    let pin = serde_json::json!({"action": "pin", "pool": "p", "replicas": 2});
    post(&format!("http://{}/admin/actions", gw.admin_addr), pin).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while replicas(&pool_status(&gw).await).len() < 2 {
        assert!(Instant::now() < deadline, "never scaled to 2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Longer than min_interval: anything else would have come by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = messages(&hook);
    assert_eq!(got.len(), 1, "{got:?}");
    let events = got[0]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{got:?}");
    assert_eq!(events[0]["kind"], "scale");
    assert_eq!(events[0]["pool"], "p");
    let text = events[0]["text"].as_str().unwrap();
    assert!(text.starts_with("scaling up to 2 replicas"), "{text}");
    assert!(
        text.contains("pinned at 2 by an operator"),
        "the reason: {text}"
    );
    gw.shutdown().await;
}

/// A pool whose only replica answers 500 at once and is ejected after each failure, for 1 ms.
async fn failing_pool(notify: &str) -> (App, infergate::http_server::Server) {
    let mut opts = sim_options("llama-8b-h100");
    opts.fail_rate = 1.0;
    let replica = start_sim(opts).await;
    let gw = GatewayConfig::static_replicas(&[replica.addr])
        .pool("retries: {max_attempts: 1, eject_after_failures: 1, ejection_time: 1ms}")
        .top(notify)
        .start()
        .await;
    (gw, replica)
}

#[tokio::test]
async fn a_burst_of_a_hundred_ejections_makes_a_few_messages() {
    let hook = receiver(false).await;
    let url = secret_file("eject-url", &hook.url);
    let (gw, _replica) = failing_pool(&format!(
        "chatops: {{notify: [{{url_file: \"{url}\", format: slack, min_interval: 2s}}]}}"
    ))
    .await;
    let request = serde_json::json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]});
    let chat = format!("http://{}/v1/chat/completions", gw.gateway_addr);
    let started = Instant::now();
    let mut ejected = 0;
    // Each ejection in a row lasts 1 ms longer than the last: 100 take about 5 s.
    while ejected < 100 && started.elapsed() < Duration::from_secs(20) {
        post(&chat, request.clone()).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        let page = get(&format!("http://{}/metrics", gw.admin_addr))
            .await
            .text();
        ejected = metric_sum(&page, "infergate_ejections_total", &[]) as u64;
    }
    assert!(ejected >= 100, "only {ejected} ejections");
    let burst = started.elapsed();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let got = messages(&hook);
    // One at once, then at most one per 2 s.
    let most = 2 + burst.as_secs() as usize / 2;
    assert!(
        (1..=most).contains(&got.len()),
        "{} messages for {ejected} ejections in {burst:?}",
        got.len()
    );
    let text: Vec<&str> = got.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert!(text[0].contains("ejected from routing"), "{text:?}");
    assert!(
        text.iter().any(|t| t.contains("more")),
        "a long burst is counted, not listed: {text:?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_hanging_chat_server_costs_requests_nothing_and_events_are_dropped_not_queued() {
    let hook = receiver(true).await;
    let url = secret_file("hang-url", &hook.url);
    let replica = start_sim(sim_options("llama-8b-h100")).await;
    let gw = GatewayConfig::static_replicas(&[replica.addr])
        .top(&format!(
            "chatops: {{notify: [{{url_file: \"{url}\", events: [action], min_interval: 1ms}}]}}"
        ))
        .start()
        .await;
    let request = serde_json::json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]});
    let chat = format!("http://{}/v1/chat/completions", gw.gateway_addr);
    let actions = format!("http://{}/admin/actions", gw.admin_addr);
    let name = replica.addr.to_string();
    // Far more events (operator actions) than the webhook's queue holds (1,024) while its one
    // send hangs, requests in between.
    for i in 0..1500 {
        let action = if i % 2 == 0 { "cordon" } else { "uncordon" };
        let reply = post(
            &actions,
            serde_json::json!({"action": action, "pool": "p", "replica": name}),
        )
        .await;
        assert_eq!(reply.status, 200);
        if i % 10 == 1 {
            assert_eq!(post(&chat, request.clone()).await.status, 200);
        }
    }
    let page = get(&format!("http://{}/metrics", gw.admin_addr))
        .await
        .text();
    let dropped = metric_sum(&page, "infergate_notify_dropped_total", &[]);
    assert!(
        dropped >= 1500.0 - 1024.0 - 1.0,
        "the full queue drops: {dropped}"
    );
    assert_eq!(messages(&hook).len(), 1, "one send, still hanging");
    gw.shutdown().await;
}

async fn command(gw: &App, path: &str, body: &str, headers: &[(&str, String)]) -> Reply {
    let mut all: Vec<(&str, &str)> = vec![("content-type", "application/x-www-form-urlencoded")];
    all.extend(headers.iter().map(|(n, v)| (*n, v.as_str())));
    let url = format!("http://{}{path}", gw.admin_addr);
    send_with(hyper::Method::POST, &url, &all, body.to_string()).await
}

#[tokio::test]
async fn slash_commands_need_a_signature_a_fresh_timestamp_and_an_allowed_user() {
    let slack = secret_file("slack-secret", "8f742231b10e8888abcd99yyyzzz85a5");
    let mattermost = secret_file("mm-token", "mm-token-123");
    let gw = GatewayConfig::local(1, &["--speed", "10"])
        .pool("scaler: {enabled: true, min_replicas: 1, max_replicas: 3, interval: 100ms}")
        .top(&format!(
            "chatops: {{commands: {{slack_signing_secret_file: \"{slack}\",
               mattermost_token_file: \"{mattermost}\",
               allow: {{status: [\"*\"], scale: [U1ALICE]}}}}}}"
        ))
        .start()
        .await;
    let signed = |body: &str, at: u64| {
        vec![
            ("x-slack-request-timestamp", at.to_string()),
            (
                "x-slack-signature",
                infergate::admin::chatops::slack_signature(
                    "8f742231b10e8888abcd99yyyzzz85a5",
                    at,
                    body.as_bytes(),
                ),
            ),
        ]
    };
    let now = infergate::openai::unix_seconds();
    let pin = "user_id=U1ALICE&user_name=alice&command=%2Finfergate&text=scale+p+pin+2";
    let by_bob = "user_id=U2BOB&user_name=bob&command=%2Finfergate&text=scale+p+pin+3";

    let wrong = command(&gw, "/chat/slack", pin, &signed("something else", now)).await;
    assert_eq!(wrong.status, 401);
    let stale = command(&gw, "/chat/slack", pin, &signed(pin, now - 600)).await;
    assert_eq!(stale.status, 401);
    assert!(stale.text().contains("older than 5 minutes"));
    let bob = command(&gw, "/chat/slack", by_bob, &signed(by_bob, now)).await;
    assert_eq!(bob.status, 200);
    assert_eq!(bob.json()["response_type"], "ephemeral");
    assert!(bob.json()["text"].as_str().unwrap().contains("not allowed"));
    assert_eq!(
        pool_status(&gw).await["scaler_hold"]["pinned"],
        serde_json::Value::Null
    );

    let alice = command(&gw, "/chat/slack", pin, &signed(pin, now)).await;
    assert_eq!(alice.status, 200);
    assert_eq!(alice.json()["response_type"], "in_channel");
    assert_eq!(pool_status(&gw).await["scaler_hold"]["pinned"], 2);
    let status = admin_status(&gw).await;
    let last = status["actions"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["by"], "slack:alice");

    // Mattermost: the command's token; bob may ask for status (everyone may).
    let ask = "token=mm-token-123&user_id=U2BOB&user_name=bob&text=status";
    let answer = command(&gw, "/chat/mattermost", ask, &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(
        answer.json()["text"].as_str().unwrap().starts_with("*p*:"),
        "{}",
        answer.text()
    );
    let forged = command(
        &gw,
        "/chat/mattermost",
        &ask.replace("mm-token-123", "guess"),
        &[],
    )
    .await;
    assert_eq!(forged.status, 401);

    // Every one of them audited.
    let page = get(&format!("http://{}/metrics", gw.admin_addr))
        .await
        .text();
    let count = |command: &str, result: &str| {
        metric_sum(
            &page,
            "infergate_chat_commands_total",
            &[("command", command), ("result", result)],
        )
    };
    assert_eq!(count("-", "unauthenticated"), 3.0);
    assert_eq!(count("scale", "refused"), 1.0);
    assert_eq!(count("scale", "done"), 1.0);
    assert_eq!(count("status", "done"), 1.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_slo_missed_over_its_window_is_told_once() {
    let hook = receiver(false).await;
    let url = secret_file("slo-url", &hook.url);
    let replica = start_sim(sim_options("llama-8b-h100")).await;
    // A first token within 1 ms: no streamed answer can meet it.
    let gw = GatewayConfig::static_replicas(&[replica.addr])
        .pool("slo: {ttft: 1ms, itl: 1s, target: 0.9, window: 1m}")
        .top(&format!(
            "chatops: {{notify: [{{url_file: \"{url}\", format: json, events: [slo], min_interval: 1s}}]}}"
        ))
        .start()
        .await;
    let url = format!("http://{}/v1/chat/completions", gw.gateway_addr);
    let body = serde_json::json!({"model": "m", "stream": true, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..25 {
        let reply = post(&url, body.clone()).await;
        assert!(reply.text().contains("[DONE]"));
    }
    let slo = pool_status(&gw).await["slo"].clone();
    assert_eq!(
        (slo["answers"].as_u64(), slo["met"].as_u64()),
        (Some(25), Some(0)),
        "{slo}"
    );
    assert_eq!(slo["attainment"], 0.0);
    // The watcher looks every 10 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    while messages(&hook).is_empty() {
        assert!(Instant::now() < deadline, "chat was never told");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let got = messages(&hook);
    assert_eq!(got.len(), 1, "{got:?}");
    let text = got[0]["events"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("SLO attainment 0.0 % is below the 90.0 % target over 1m"),
        "{text}"
    );
    let page = get(&format!("http://{}/metrics", gw.admin_addr))
        .await
        .text();
    assert_eq!(
        metric(&page, "infergate_slo_attainment", &[("pool", "p")]),
        Some(0.0)
    );
    gw.shutdown().await;
}
