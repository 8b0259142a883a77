//! Model versions: a served name split by weight across two pools, each in front of its own
//! simulated replica — the split measured, sticky users, pins (and who may pin), the
//! version-comparison status, and a reload that moves the weights while a stream finishes on
//! the version it started on.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use infergate::app::{self, App};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Two pools `v1` and `v2` (serving `chat-v1`, `chat-v2`), `chat` split between them.
pub fn config(
    v1: std::net::SocketAddr,
    v2: std::net::SocketAddr,
    weights: (u32, u32),
    extra: &str,
) -> String {
    config_with(v1, v2, weights, extra, None)
}

/// [`config`] with a third pool `shadow` (serving `chat-v3` at `shadow`) mirrored at `share`.
fn config_with(
    v1: std::net::SocketAddr,
    v2: std::net::SocketAddr,
    weights: (u32, u32),
    extra: &str,
    shadow: Option<(std::net::SocketAddr, f64)>,
) -> String {
    let (mirror, shadow_pool) = match shadow {
        Some((addr, share)) => (
            format!("mirror: {{pool: shadow, share: {share}}}"),
            format!(
                "  - name: shadow\n    models: [chat-v3]\n    discovery: {{static: {{endpoints: [\"http://{addr}\"]}}}}\n"
            ),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "listeners: {{gateway: 127.0.0.1:0, admin: 127.0.0.1:0, drain_timeout: 20s}}
{extra}
versions:
  - model: chat
    sticky_header: x-user
    split: [{{pool: v1, weight: {}}}, {{pool: v2, weight: {}}}]
    {mirror}
pools:
  - name: v1
    models: [chat-v1]
    discovery: {{static: {{endpoints: [\"http://{v1}\"]}}}}
  - name: v2
    models: [chat-v2]
    discovery: {{static: {{endpoints: [\"http://{v2}\"]}}}}
{shadow_pool}",
        weights.0, weights.1
    )
}

pub async fn replica(model: &str, speed: f64) -> infergate::http_server::Server {
    let mut opts = sim_options("llama-8b-h100");
    opts.models = vec![model.into()];
    opts.speed = speed;
    start_sim(opts).await
}

pub async fn start(yaml: &str) -> App {
    app::start(infergate::config::parse(yaml, "test").unwrap())
        .await
        .unwrap()
}

/// Sends one short request for `chat` with `headers`; the version that answered.
async fn ask(gw: &App, headers: &[(&str, &str)]) -> (u16, Option<String>) {
    let body = serde_json::json!({"model": "chat", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]});
    let url = format!("http://{}/v1/chat/completions", gw.gateway_addr);
    let reply = send_with(
        hyper::Method::POST,
        &url,
        headers,
        serde_json::to_vec(&body).unwrap(),
    )
    .await;
    let version = reply
        .headers
        .get("x-infergate-version")
        .map(|v| v.to_str().unwrap().to_string());
    (reply.status.as_u16(), version)
}

#[tokio::test]
async fn a_split_holds_its_weights_keeps_users_on_one_version_and_obeys_pins() {
    let (r1, r2) = (
        replica("chat-v1", 50.0).await,
        replica("chat-v2", 50.0).await,
    );
    let gw = start(&config(r1.addr, r2.addr, (90, 10), "")).await;
    let models = get(&format!("http://{}/v1/models", gw.gateway_addr))
        .await
        .json();
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "chat")
    );

    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..1000 {
        let (status, version) = ask(&gw, &[]).await;
        assert_eq!(status, 200);
        *counts.entry(version.unwrap()).or_default() += 1;
    }
    let v2 = counts.get("v2").copied().unwrap_or(0);
    assert!(
        (70..=130).contains(&v2),
        "10 % ± 3 points of 1,000: {counts:?}"
    );

    // A user stays on one version, request after request.
    let mut users_on_v2 = 0;
    for user in 0..60 {
        let user = format!("user-{user}");
        let (_, first) = ask(&gw, &[("x-user", &user)]).await;
        for _ in 0..4 {
            assert_eq!(
                ask(&gw, &[("x-user", &user)]).await.1,
                first,
                "{user} moved"
            );
        }
        users_on_v2 += usize::from(first.as_deref() == Some("v2"));
    }
    assert!(
        users_on_v2 < 20,
        "{users_on_v2} of 60 users on the 10 % version"
    );
    // A pin wins over the draw; an unknown version is a 400.
    for _ in 0..20 {
        assert_eq!(
            ask(&gw, &[("x-infergate-version", "v2")])
                .await
                .1
                .as_deref(),
            Some("v2")
        );
    }
    assert_eq!(ask(&gw, &[("x-infergate-version", "v9")]).await.0, 400);

    // The versions side by side.
    let status = admin_status(&gw).await;
    let split = &status["versions"][0];
    assert_eq!(split["model"], "chat");
    let answers: Vec<u64> = split["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["answers"].as_u64().unwrap())
        .collect();
    assert_eq!(answers.iter().sum::<u64>(), 1000 + 300 + 20, "{split}");
    assert_eq!(split["versions"][1]["weight"], 10);
    assert_eq!(split["versions"][0]["errors"], 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn with_api_keys_only_a_key_allowed_to_may_pin_a_version() {
    let (r1, r2) = (
        replica("chat-v1", 50.0).await,
        replica("chat-v2", 50.0).await,
    );
    let digest = key_sha256;
    let keys = format!(
        "auth: {{keys: [{{name: app, sha256: \"{}\"}}, {{name: tester, sha256: \"{}\", pin_versions: true}}]}}",
        digest("app-key"),
        digest("test-key")
    );
    let gw = start(&config(r1.addr, r2.addr, (100, 0), &keys)).await;
    let pin = ("x-infergate-version", "v2");
    let (app_pin, _) = ask(&gw, &[("authorization", "Bearer app-key"), pin]).await;
    assert_eq!(app_pin, 403);
    let (status, version) = ask(&gw, &[("authorization", "Bearer test-key"), pin]).await;
    assert_eq!((status, version.as_deref()), (200, Some("v2")));
    let (_, unpinned) = ask(&gw, &[("authorization", "Bearer app-key")]).await;
    assert_eq!(
        unpinned.as_deref(),
        Some("v1"),
        "weight 0: pinned requests only"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_reload_moves_new_requests_while_a_stream_finishes_on_its_version() {
    let (r1, r2) = (
        replica("chat-v1", 0.2).await,
        replica("chat-v2", 50.0).await,
    );
    let gw = start(&config(r1.addr, r2.addr, (100, 0), "")).await;
    let gateway = gw.gateway_addr;
    let mut conn = TcpStream::connect(gateway).await.unwrap();
    let body = r#"{"model":"chat","stream":true,"max_tokens":40,"ignore_eos":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let stream = tokio::spawn(async move {
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).to_string()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stream.is_finished());
    let reloaded =
        infergate::config::parse(&config(r1.addr, r2.addr, (0, 100), ""), "test").unwrap();
    let gw = gw.reload(reloaded).await.map_err(|(_, e)| e).unwrap();
    assert_eq!(gw.gateway_addr, gateway);
    for _ in 0..10 {
        assert_eq!(ask(&gw, &[]).await.1.as_deref(), Some("v2"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stream.is_finished() {
        assert!(Instant::now() < deadline, "the stream never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = stream.await.unwrap();
    assert!(answer.contains("x-infergate-version: v1"), "{answer}");
    assert_eq!(
        answer.matches("\"content\":").count(),
        40,
        "every token: {answer}"
    );
    assert!(answer.contains("data: [DONE]"));
    // The versions side by side: only v1 streamed, its gaps ~40 ms (speed 0.2).
    let status = admin_status(&gw).await;
    let versions = &status["versions"][0]["versions"];
    let itl = versions[0]["itl_p90_s"].as_f64().expect("v1 streamed");
    assert!(itl > 0.02 && itl <= 0.5, "{versions}");
    assert!(versions[1]["itl_p90_s"].is_null(), "{versions}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_mirror_gets_copies_whose_failures_never_reach_clients() {
    // The shadow pool's replica fails every request.
    let (r1, r2) = (
        replica("chat-v1", 50.0).await,
        replica("chat-v2", 50.0).await,
    );
    let mut failing = sim_options("llama-8b-h100");
    failing.models = vec!["chat-v3".into()];
    failing.fail_rate = 1.0;
    let shadow = start_sim(failing).await;
    let yaml = config_with(r1.addr, r2.addr, (100, 0), "", Some((shadow.addr, 0.5)));
    let gw = start(&yaml).await;
    for _ in 0..200 {
        let (status, version) = ask(&gw, &[]).await;
        assert_eq!((status, version.as_deref()), (200, Some("v1")));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mirror = loop {
        let status = admin_status(&gw).await;
        let mirror = status["versions"][0]["mirror"].clone();
        if mirror["errors"].as_u64().unwrap_or(0) + mirror["answers"].as_u64().unwrap_or(0) >= 60 {
            break mirror;
        }
        assert!(
            Instant::now() < deadline,
            "the mirror saw too few: {mirror}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let copies = mirror["errors"].as_u64().unwrap();
    assert_eq!(mirror["answers"], 0, "every copy failed: {mirror}");
    assert!(
        (60..=140).contains(&copies),
        "about half of 200 copied: {mirror}"
    );
    let page = get(&format!("http://{}/metrics", shadow.addr)).await.text();
    assert!(page.contains("vllm:"), "the shadow replica was reached");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_mirror_is_shed_when_its_pool_is_full_and_never_holds_the_primary() {
    // The shadow's one replica is slow and takes 2 requests at a time; the primary is fast.
    let (r1, r2) = (
        replica("chat-v1", 50.0).await,
        replica("chat-v2", 50.0).await,
    );
    let shadow = replica("chat-v3", 1.0).await;
    let yaml = config_with(r1.addr, r2.addr, (100, 0), "", Some((shadow.addr, 1.0))).replace(
        "    models: [chat-v3]\n",
        "    models: [chat-v3]\n    admission: {max_inflight_per_replica: 2}\n",
    );
    let gw = start(&yaml).await;
    let metrics_url = format!("http://{}/metrics", gw.admin_addr);
    let ask_long = || async {
        // 300 tokens: ~0.05 s on the primary, seconds on the shadow.
        let body = serde_json::json!({"model": "chat", "max_tokens": 300, "ignore_eos": true,
            "messages": [{"role": "user", "content": "hi"}]});
        post(
            &format!("http://{}/v1/chat/completions", gw.gateway_addr),
            body,
        )
        .await
    };
    let shadow_inflight = || async {
        let page = get(&metrics_url).await.text();
        metric_sum(
            &page,
            "infergate_replica_inflight_requests",
            &[("pool", "shadow")],
        )
    };
    // Two copies fill the shadow.
    for _ in 0..2 {
        assert_eq!(ask_long().await.status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while shadow_inflight().await < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the shadow never got its two copies"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Ten more: every answer whole and quick, every copy shed.
    for _ in 0..10 {
        let reply = ask_long().await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["usage"]["completion_tokens"], 300);
    }
    let page = get(&metrics_url).await.text();
    assert_eq!(
        metric(&page, "infergate_mirror_shed_total", &[("pool", "shadow")]),
        Some(10.0),
        "{page}"
    );
    // The shed copies were never sent, and the ten answers ended while the first two copies
    // still ran: no primary waited for its mirror.
    assert_eq!(shadow_inflight().await, 2.0);
    // The two copies end and are counted as the shadow's answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = get(&metrics_url).await.text();
        let answered = metric_sum(&page, "infergate_requests_total", &[("pool", "shadow")]);
        if answered == 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "shadow answers: {answered}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.shutdown().await;
}

/// A split of `chat` between `v1` (stable, 100) and `v2` (canary, 0) with a rollout plan.
fn rollout_config(v1: std::net::SocketAddr, v2: std::net::SocketAddr, rollout: &str) -> String {
    config(v1, v2, (100, 0), "").replace(
        "    sticky_header: x-user\n",
        &format!("    sticky_header: x-user\n    rollout: {rollout}\n"),
    )
}

/// Streams requests for `chat` until the rollout's state is `until` (at most 600, or 90 s on
/// a busy machine).
async fn drive(gw: &App, until: &str) -> serde_json::Value {
    let url = format!("http://{}/v1/chat/completions", gw.gateway_addr);
    let body = serde_json::json!({"model": "chat", "stream": true, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]});
    let deadline = Instant::now() + Duration::from_secs(90);
    for _ in 0..600 {
        post(&url, body.clone()).await;
        let rollout = admin_status(gw).await["versions"][0]["rollout"].clone();
        if rollout["state"] == until {
            return rollout;
        }
        assert!(Instant::now() < deadline, "never {until}: {rollout}");
    }
    panic!("never {until}");
}

#[tokio::test]
async fn a_failing_canary_is_rolled_back_in_its_first_step_and_a_healthy_one_promoted() {
    let stable = replica("chat-v1", 50.0).await;
    let mut failing = sim_options("llama-8b-h100");
    failing.models = vec!["chat-v2".into()];
    failing.speed = 50.0;
    failing.fail_rate = 0.2;
    let canary = start_sim(failing).await;
    let plan = "{canary: v2, min_requests: 20, max_error_rate: 0.05, steps: [{weight: 50, duration: 60s}, {weight: 100, duration: 60s}]}";
    let gw = start(&rollout_config(stable.addr, canary.addr, plan)).await;
    let rollout = drive(&gw, "rolled back").await;
    let verdicts = rollout["verdicts"].as_array().unwrap();
    let last = verdicts.last().unwrap().as_str().unwrap();
    assert!(last.starts_with("step 1 failed:"), "{rollout}");
    assert!(last.contains("% failed (max 5.0 %)"), "{last}");
    assert_eq!(rollout["canary_weight"], 0);
    for _ in 0..20 {
        assert_eq!(
            ask(&gw, &[]).await.1.as_deref(),
            Some("v1"),
            "rolled back: stable only"
        );
    }
    gw.shutdown().await;

    // The same plan with a canary as healthy as the stable, and short steps: promoted.
    let healthy = replica("chat-v2", 50.0).await;
    let plan = "{canary: v2, min_requests: 10, steps: [{weight: 50, duration: 1s}, {weight: 100, duration: 1s}]}";
    let gw = start(&rollout_config(stable.addr, healthy.addr, plan)).await;
    let rollout = drive(&gw, "promoted").await;
    let verdicts: Vec<&str> = rollout["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        verdicts.iter().any(|v| v.starts_with("step 1 passed")),
        "{verdicts:?}"
    );
    assert!(
        verdicts.iter().any(|v| v.starts_with("step 2 passed")),
        "{verdicts:?}"
    );
    assert!(
        verdicts
            .last()
            .unwrap()
            .ends_with("promoted: every step passed")
    );
    for _ in 0..20 {
        assert_eq!(
            ask(&gw, &[]).await.1.as_deref(),
            Some("v2"),
            "promoted: canary only"
        );
    }
    // The weights as a dashboard reads them.
    let page = get(&format!("http://{}/metrics", gw.admin_addr))
        .await
        .text();
    let weight = |v: &str| {
        metric(
            &page,
            "infergate_version_weight",
            &[("model", "chat"), ("version", v)],
        )
    };
    assert_eq!(
        (weight("v1"), weight("v2")),
        (Some(0.0), Some(100.0)),
        "{page}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_operator_aborts_a_rollout() {
    let (r1, r2) = (
        replica("chat-v1", 50.0).await,
        replica("chat-v2", 50.0).await,
    );
    let plan = "{canary: v2, steps: [{weight: 50, duration: 10m}]}";
    let gw = start(&rollout_config(r1.addr, r2.addr, plan)).await;
    let actions = format!("http://{}/admin/actions", gw.admin_addr);
    let abort = serde_json::json!({"action": "abort", "model": "chat"});
    let reply = post(&actions, abort.clone()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rollout = admin_status(&gw).await["versions"][0]["rollout"].clone();
        if rollout["state"] == "rolled back" {
            assert_eq!(rollout["canary_weight"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "{rollout}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = post(&actions, abort).await;
    assert_eq!(again.status, 400, "over: {}", again.text());
    let none = post(
        &actions,
        serde_json::json!({"action": "promote", "model": "nope"}),
    )
    .await;
    assert_eq!(none.status, 404);
    gw.shutdown().await;
}
