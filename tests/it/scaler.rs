//! The scaler end to end, on real child-process simulators (sped up ten times) started and
//! stopped by the gateway's local provider: a load ramp scales the pool up, the load stopping
//! scales it back down, no request fails; from zero replicas the first request is held and
//! answered.

use std::time::{Duration, Instant};

use infergate::app::{self, App};
use infergate::loadgen::{self, LoadArgs};
use serde_json::json;

use crate::support::*;

async fn local_gateway(min: u32, max: u32, initial: u32, extra: &str) -> App {
    let exe = env!("CARGO_BIN_EXE_infergate");
    let yaml = format!(
        "listeners: {{gateway: 127.0.0.1:0, admin: 127.0.0.1:0, drain_timeout: 5s}}
pools:
  - name: p
    models: [m]
    discovery:
      local:
        replicas: {initial}
        command: [\"{exe}\", sim, --port, \"0\", --model, m, --speed, \"10\"]
        startup_timeout: 20s
    admission: {{max_queue_wait: 20s}}
    scaler:
      enabled: true
      min_replicas: {min}
      max_replicas: {max}
      interval: 200ms
      targets: {{concurrency: 4, kv_cache_usage: null, queue_wait: null}}
      scale_up_window: 1s
      scale_down_window: 1s
      scale_down_stabilization: 2s
      drain_timeout: 10s
{extra}"
    );
    let config = infergate::config::parse(&yaml, "test").unwrap_or_else(|e| panic!("{e}"));
    app::start(config).await.unwrap()
}

async fn scaler_status(gw: &App) -> serde_json::Value {
    get(&format!("http://{}/admin/status", gw.admin_addr))
        .await
        .json()["pools"][0]
        .clone()
}

fn ready(status: &serde_json::Value) -> u64 {
    status["replicas"].as_array().unwrap().len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_ramp_scales_up_then_down_without_a_failure() {
    let gw = local_gateway(1, 3, 1, "").await;
    assert_eq!(ready(&scaler_status(&gw).await), 1);
    let args = LoadArgs {
        url: format!("http://{}", gw.gateway_addr),
        model: "m".into(),
        requests: 400,
        concurrency: 12,
        duration: Duration::from_secs(30),
        prompt_tokens: 64,
        max_tokens: 64,
        stream: true,
    };
    let load = tokio::spawn(loadgen::run(args, |_, _| {}));
    let mut most = 1;
    while !load.is_finished() {
        most = most.max(ready(&scaler_status(&gw).await));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = load.await.unwrap().unwrap();
    assert_eq!(report.failed, 0, "{}", report.render());
    assert_eq!(report.ok, 400, "{}", report.render());
    assert!(
        most >= 2,
        "12 concurrent streams at 4 per replica scaled the pool up (max seen {most})"
    );
    // Load gone: back to the minimum after the 2 s stabilisation, draining first.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = scaler_status(&gw).await;
    while Instant::now() < deadline && !(ready(&status) == 1 && status["scaler"]["draining"] == 0) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = scaler_status(&gw).await;
    }
    assert_eq!(ready(&status), 1, "{status}");
    assert_eq!(status["scaler"]["draining"], 0, "{status}");
    assert_eq!(
        gw.local_replica_pids().await.len(),
        1,
        "scaled-down processes were stopped"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_zero_the_first_request_is_held_and_answered() {
    let gw = local_gateway(0, 2, 0, "      scale_to_zero_after: 1s\n").await;
    assert_eq!(ready(&scaler_status(&gw).await), 0);
    let started = Instant::now();
    let reply = post(
        &format!("http://{}/v1/chat/completions", gw.gateway_addr),
        json!({"model": "m", "messages": [{"role": "user", "content": "wake up"}], "max_tokens": 4}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["usage"]["completion_tokens"], 4);
    assert!(started.elapsed() < Duration::from_secs(20));
    // Idle again: back to zero replicas after scale_to_zero_after and the stabilisation window.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = scaler_status(&gw).await;
    while Instant::now() < deadline && !(ready(&status) == 0 && status["scaler"]["draining"] == 0) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = scaler_status(&gw).await;
    }
    assert_eq!(ready(&status), 0, "{status}");
    // Readiness: the pool can scale from zero, so the gateway stays ready.
    let readyz = get(&format!("http://{}/readyz", gw.admin_addr)).await;
    assert_eq!(readyz.status, 200, "{}", readyz.text());
    gw.shutdown().await;
}

/// With the `static` provider the scaler only recommends: the desired count is exported and
/// shown while the replica set stays as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_provider_exports_the_recommendation_only() {
    let mut opts = infergate::vllm_sim::SimOptions::new(
        infergate::vllm_sim::profile::profile("llama-8b-l4").unwrap(),
    );
    opts.models = vec!["m".into()];
    let replica = infergate::vllm_sim::start(opts).await.unwrap();
    let yaml = format!(
        "listeners: {{gateway: 127.0.0.1:0, admin: 127.0.0.1:0}}
pools:
  - name: p
    models: [m]
    discovery: {{static: {{endpoints: [\"http://{}\"]}}}}
    scaler:
      enabled: true
      provider: static
      min_replicas: 1
      max_replicas: 8
      interval: 100ms
      targets: {{concurrency: 1, kv_cache_usage: null, queue_wait: null}}
      scale_up_window: 300ms
",
        replica.addr
    );
    let gw = app::start(infergate::config::parse(&yaml, "test").unwrap())
        .await
        .unwrap();
    let url = format!("http://{}/v1/completions", gw.gateway_addr);
    let mut streams = Vec::new();
    for _ in 0..3 {
        let url = url.clone();
        streams.push(tokio::spawn(async move {
            post_stream(&url, json!({"model": "m", "prompt": "x", "max_tokens": 30, "ignore_eos": true, "stream": true})).await
        }));
    }
    let mut desired = 0.0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let text = get(&format!("http://{}/metrics", gw.admin_addr))
            .await
            .text();
        desired =
            metric(&text, "infergate_scaler_desired_replicas", &[("pool", "p")]).unwrap_or(0.0);
        if desired >= 3.0 {
            break;
        }
    }
    assert_eq!(desired, 3.0, "three in flight at a target of one each");
    let status = scaler_status(&gw).await;
    assert_eq!(ready(&status), 1, "nothing was started: {status}");
    assert!(
        status["scaler"]["reason"]
            .as_str()
            .unwrap()
            .contains("concurrency"),
        "{status}"
    );
    for s in streams {
        assert_eq!(s.await.unwrap().0, 200);
    }
    gw.shutdown().await;
    replica.shutdown(Duration::from_millis(100)).await;
}
