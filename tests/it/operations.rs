//! Operator actions on a running gateway (`POST /admin/actions`, `infergate admin`): pinning and
//! pausing a pool's scaler, cordoning and draining a replica, reloading — and the bad input
//! and missing tokens they refuse.

use std::time::{Duration, Instant};

use infergate::app::{App, Options};

use crate::support::*;

async fn act(gw: &App, action: serde_json::Value) -> Reply {
    post(&format!("http://{}/admin/actions", gw.admin_addr), action).await
}

/// Polls the pool's status until `ok` holds (20 s at most).
async fn until(gw: &App, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pool = pool_status(gw).await;
        if ok(&pool) {
            return pool;
        }
        assert!(Instant::now() < deadline, "{what}: last status {pool}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_operator_pins_and_pauses_a_pools_scaler() {
    // An idle local pool the scaler keeps at its minimum, 1.
    let gw = GatewayConfig::local(1, &["--speed", "10"])
        .pool(
            "scaler: {enabled: true, min_replicas: 1, max_replicas: 3, interval: 100ms,
                      scale_down_window: 1s, scale_down_stabilization: 1s, drain_timeout: 5s}",
        )
        .start()
        .await;
    let reply = act(
        &gw,
        serde_json::json!({"action": "pin", "pool": "p", "replicas": 2}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["ok"], true);
    let pinned = until(&gw, "two replicas route", |p| replicas(p).len() == 2).await;
    assert_eq!(pinned["scaler_hold"]["pinned"], 2);
    assert!(
        pinned["scaler"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("pinned at 2"),
        "{pinned}"
    );
    // Paused, unpinned: the scaler would go back to 1 but does not act.
    act(&gw, serde_json::json!({"action": "pause", "pool": "p"})).await;
    act(&gw, serde_json::json!({"action": "unpin", "pool": "p"})).await;
    let paused = until(&gw, "the paused scaler wants 1", |p| {
        p["scaler"]["reason"] == "paused by an operator (would want 1)"
    })
    .await;
    assert_eq!(paused["scaler"]["acting"], false);
    assert_eq!(replicas(&paused).len(), 2, "nothing resized while paused");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        replicas(&pool_status(&gw).await).len(),
        2,
        "nothing resized while paused"
    );
    act(&gw, serde_json::json!({"action": "resume", "pool": "p"})).await;
    until(&gw, "back to one replica", |p| replicas(p).len() == 1).await;
    // Every action is in the status, with who asked and what came of it.
    let actions = admin_status(&gw).await["actions"].clone();
    let done: Vec<&str> = actions
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(done, ["pin", "pause", "unpin", "resume"]);
    assert!(actions[0]["by"].as_str().unwrap().starts_with("127.0.0.1:"));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_cordoned_replica_takes_no_new_requests_and_shows_when_drained() {
    let (r1, r2) = (
        start_sim(sim_options("llama-8b-h100")).await,
        start_sim(sim_options("llama-8b-h100")).await,
    );
    let gw = GatewayConfig::static_replicas(&[r1.addr, r2.addr])
        .start()
        .await;
    let name = r1.addr.to_string();
    let reply = act(
        &gw,
        serde_json::json!({"action": "drain", "pool": "p", "replica": name}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answered = |r: &infergate::http_server::Server| {
        let url = format!("http://{}/metrics", r.addr);
        async move { metric_sum(&get(&url).await.text(), "vllm:request_success_total", &[]) }
    };
    let before = (answered(&r1).await, answered(&r2).await);
    let url = format!("http://{}/v1/chat/completions", gw.gateway_addr);
    let request = serde_json::json!({"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..10 {
        assert_eq!(post(&url, request.clone()).await.status, 200);
    }
    assert_eq!(
        answered(&r1).await,
        before.0,
        "the cordoned replica got none"
    );
    assert_eq!(answered(&r2).await, before.1 + 10.0);
    let drained = until(&gw, "drained", |p| {
        replicas(p)
            .iter()
            .any(|r| r["name"] == name && r["drained"] == true)
    })
    .await;
    let r = replicas(&drained)
        .iter()
        .find(|r| r["name"] == name)
        .unwrap()
        .clone();
    assert_eq!(r["cordoned"], true);
    act(
        &gw,
        serde_json::json!({"action": "uncordon", "pool": "p", "replica": name}),
    )
    .await;
    for _ in 0..10 {
        assert_eq!(post(&url, request.clone()).await.status, 200);
    }
    assert!(answered(&r1).await > before.0, "back in routing");
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_actions_are_refused_with_a_reason_and_listed() {
    let replica = start_sim(sim_options("llama-8b-h100")).await;
    let gw = GatewayConfig::static_replicas(&[replica.addr])
        .start()
        .await;
    let cases = [
        (
            serde_json::json!({"action": "pause", "pool": "nope"}),
            404,
            "no pool named nope",
        ),
        (
            serde_json::json!({"action": "pause", "pool": "p"}),
            400,
            "has no scaler",
        ),
        (
            serde_json::json!({"action": "cordon", "pool": "p", "replica": "10.0.0.1:1"}),
            404,
            "no replica",
        ),
        (
            serde_json::json!({"action": "explode"}),
            400,
            "not an action",
        ),
        (
            serde_json::json!({"action": "pin", "pool": "p"}),
            400,
            "missing field `replicas`",
        ),
    ];
    for (action, status, says) in cases {
        let reply = act(&gw, action.clone()).await;
        assert_eq!(reply.status, status, "{action}: {}", reply.text());
        let answer = reply.json();
        assert_eq!(answer["ok"], false);
        assert!(
            answer["result"].as_str().unwrap().contains(says),
            "{action}: {answer}"
        );
    }
    let get_actions = get(&format!("http://{}/admin/actions", gw.admin_addr)).await;
    assert_eq!(get_actions.status, 405);
    // Refusals of well-formed actions are listed too.
    assert_eq!(
        admin_status(&gw).await["actions"].as_array().unwrap().len(),
        3
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn with_an_admin_token_actions_need_it_and_the_cli_sends_it() {
    let gw = GatewayConfig::local(1, &["--speed", "10"])
        .pool("scaler: {enabled: true, min_replicas: 1, max_replicas: 3, interval: 100ms}")
        .start_with(Options {
            admin_token: Some("s3cret".into()),
            ..Default::default()
        })
        .await;
    let reply = act(
        &gw,
        serde_json::json!({"action": "pin", "pool": "p", "replicas": 2}),
    )
    .await;
    assert_eq!(reply.status, 401);
    let cli = |token: Option<&str>, args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_infergate"));
        command
            .arg("admin")
            .arg("--admin-url")
            .arg(format!("http://{}", gw.admin_addr));
        command.env_remove("INFERGATE_ADMIN_TOKEN");
        if let Some(token) = token {
            command.env("INFERGATE_ADMIN_TOKEN", token);
        }
        command.args(args).output().unwrap()
    };
    let refused = cli(None, &["pin", "p", "2"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{refused:?}"
    );
    let done = cli(Some("s3cret"), &["pin", "p", "2"]);
    assert!(done.status.success(), "{done:?}");
    assert!(String::from_utf8_lossy(&done.stdout).contains("pinned at 2 replicas"));
    let status = cli(Some("s3cret"), &["status"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["pools"][0]["scaler_hold"]["pinned"], 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_reload_action_applies_the_changed_file_as_sighup_does() {
    let replica = start_sim(sim_options("llama-8b-h100")).await;
    let dir = std::env::temp_dir().join(format!("infergate-reload-action-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.yaml");
    let config = |aliases: &str| {
        format!(
            "listeners: {{gateway: 127.0.0.1:0, admin: 127.0.0.1:0}}
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
    let (_child, gateway, admin) = spawn_serve(&file);
    std::fs::write(&file, config("m2: m")).unwrap();
    let reply = post(
        &format!("http://{admin}/admin/actions"),
        serde_json::json!({"action": "reload"}),
    )
    .await;
    assert_eq!(reply.json()["result"], "reload requested");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let models = get(&format!("http://{gateway}/v1/models")).await.json();
        if models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "m2")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new alias never appeared: {models}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = get(&format!("http://{admin}/admin/status")).await.json();
    assert_eq!(status["config_reload"]["applied"], true, "{status}");
    std::fs::remove_dir_all(&dir).ok();
}
