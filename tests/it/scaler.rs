//! The scaler end to end, on real child-process simulators (sped up ten times) started and
//! stopped by the gateway's local provider: a load ramp scales the pool up, the load stopping
//! scales it back down, no request fails; from zero replicas the first request is held and
//! answered.

use std::time::{Duration, Instant};

use infergate::app::App;
use infergate::loadgen::{self, LoadArgs};
use serde_json::{Value, json};

use crate::support::*;

/// A pool of local child-process simulators (ten times faster than real time), `initial` at
/// start, scaled between `min` and `max` at 4 in flight per replica; `scaler_extra` adds
/// scaler settings.
async fn local_gateway(min: u32, max: u32, initial: u32, scaler_extra: &[&str]) -> App {
    let mut scaler = format!(
        "scaler:
  enabled: true
  min_replicas: {min}
  max_replicas: {max}
  interval: 200ms
  targets: {{concurrency: 4, kv_cache_usage: null, queue_wait: null}}
  scale_up_window: 1s
  scale_down_window: 1s
  scale_down_stabilization: 2s
  drain_timeout: 10s"
    );
    for setting in scaler_extra {
        scaler.push_str(
            "
  ",
        );
        scaler.push_str(setting);
    }
    GatewayConfig::local(initial, &["--speed", "10"])
        .listener("drain_timeout: 5s")
        .pool("admission: {max_queue_wait: 20s}")
        .pool(&scaler)
        .start()
        .await
}

fn ready(status: &serde_json::Value) -> u64 {
    replicas(status).len() as u64
}

/// Polls the pool's status (at most 20 s) until `ready` replicas route and none drains.
async fn settled_at(gw: &App, ready_count: u64) -> serde_json::Value {
    poll_until(
        Duration::from_secs(20),
        async || pool_status(gw).await,
        |s| ready(s) == ready_count && s["scaler"]["draining"] == 0,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_ramp_scales_up_then_down_without_a_failure() {
    let gw = local_gateway(1, 3, 1, &[]).await;
    assert_eq!(ready(&pool_status(&gw).await), 1);
    let args = LoadArgs {
        requests: 400,
        concurrency: 12,
        prompt_tokens: 64,
        max_tokens: 64,
        ..load_args(gw.gateway_addr)
    };
    let load = tokio::spawn(loadgen::run(args, |_, _| {}));
    let mut most = 1;
    while !load.is_finished() {
        most = most.max(ready(&pool_status(&gw).await));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = load.await.unwrap().unwrap();
    assert_eq!(report.failed, 0, "{}", report.render());
    assert_eq!(report.ok, 400, "{}", report.render());
    assert!(
        (2..=3).contains(&most),
        "12 concurrent streams at 4 per replica scaled the pool up, within max_replicas 3 (max seen {most})"
    );
    // Load gone: back to the minimum after the 2 s stabilisation, draining first.
    let status = settled_at(&gw, 1).await;
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
    let gw = local_gateway(0, 2, 0, &["scale_to_zero_after: 1s"]).await;
    assert_eq!(ready(&pool_status(&gw).await), 0);
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
    let status = settled_at(&gw, 0).await;
    assert_eq!(ready(&status), 0, "{status}");
    assert_eq!(status["scaler"]["draining"], 0, "{status}");
    assert_eq!(
        gw.local_replica_pids().await.len(),
        0,
        "the scaled-down process was stopped"
    );
    // Readiness: the pool can scale from zero, so the gateway stays ready.
    let readyz = readyz(&gw).await;
    assert_eq!(readyz.status, 200, "{}", readyz.text());
    gw.shutdown().await;
}

/// Requests that arrive while a replica starts are held for it: from zero, with a 3 s cold
/// start, a 1 s `max_queue_wait` and room for one waiter, three requests sent at once are all
/// answered (the queue's bound and deadline stretch for the replica coming), and the pool's
/// cold start is learned from the start — and kept by a reload, whose scaler sees no replica
/// start (none is wanted) yet expects the measured cold start, not the configured one — and
/// by a restart, through the `state_file` the shutdown wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_held_through_a_cold_start_longer_than_the_queue_wait() {
    let state = std::env::temp_dir().join(format!("infergate-it-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let state_file = state.join("scalers.json");
    let config = GatewayConfig::local(0, &["--speed", "10", "--startup-delay", "3s"])
        .top(&format!("state_file: {}", state_file.display()))
        .listener("drain_timeout: 5s")
        .pool("admission: {max_queue: 1, max_queue_wait: 1s, max_inflight_per_replica: 4}")
        .pool(
            "scaler:
  enabled: true
  min_replicas: 0
  max_replicas: 1
  interval: 200ms
  cold_start: 30s
  targets: {concurrency: 4, kv_cache_usage: null, queue_wait: null}",
        );
    let gw = config.start().await;
    let url = format!("http://{}/v1/chat/completions", gw.gateway_addr);
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "wake up"}], "max_tokens": 4});
    // The first wakes the scaler; the other two come once the replica is starting.
    let first = spawn_post(&url, body.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (second, third) = (
        spawn_post(&url, body.clone()),
        spawn_post(&url, body.clone()),
    );
    for reply in [first, second, third] {
        let reply = reply.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    // The scaler's next tick sees the replica ready.
    eventually(
        Duration::from_secs(5),
        "the cold start learned",
        async || pool_status(&gw).await["scaler"]["cold_start_learned"] == true,
    )
    .await;
    let status = pool_status(&gw).await;
    let learned = status["scaler"]["cold_start"].as_f64().unwrap();
    assert!((2.5..10.0).contains(&learned), "{learned} s: {status}");

    let gw = gw
        .reload(config.config())
        .await
        .map_err(|(_, e)| e)
        .unwrap();
    let status = expects_cold_start(&gw, learned).await;
    assert_eq!(
        status["scaler"]["starting"], 0,
        "nothing was measured anew: {status}"
    );
    // A restart (a new gateway with nothing kept in memory) reads it back from the state
    // file its shutdown wrote.
    gw.shutdown().await;
    assert!(state_file.exists(), "the shutdown saved the state");
    let gw = config.start().await;
    expects_cold_start(&gw, learned).await;
    gw.shutdown().await;
    std::fs::remove_dir_all(&state).unwrap();
}

/// Waits for the pool's scaler status and checks that it expects the cold start `learned`, as
/// learned (not configured); returns the status.
async fn expects_cold_start(gw: &App, learned: f64) -> Value {
    let status = poll_until(
        Duration::from_secs(5),
        async || pool_status(gw).await,
        |s| s["scaler"]["cold_start"].is_number(),
    )
    .await;
    assert_eq!(
        status["scaler"]["cold_start"].as_f64(),
        Some(learned),
        "{status}"
    );
    assert_eq!(status["scaler"]["cold_start_learned"], true, "{status}");
    status
}

/// With the `static` provider the scaler only recommends: the desired count is exported and
/// shown while the replica set stays as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_provider_exports_the_recommendation_only() {
    let replica = sim("llama-8b-l4").await;
    let gw = GatewayConfig::static_replicas(&[replica.addr])
        .pool(
            "scaler:
  enabled: true
  provider: static
  min_replicas: 1
  max_replicas: 8
  interval: 100ms
  targets: {concurrency: 1, kv_cache_usage: null, queue_wait: null}
  scale_up_window: 300ms",
        )
        .start()
        .await;
    let url = format!("http://{}/v1/completions", gw.gateway_addr);
    let streams: Vec<_> = (0..3)
        .map(|_| spawn_stream(&url, streamed_completion("x", 30)))
        .collect();
    let desired = poll_until(
        Duration::from_secs(2),
        async || {
            gateway_metric(&gw, "infergate_scaler_desired_replicas", &[("pool", "p")])
                .await
                .unwrap_or(0.0)
        },
        |desired| *desired >= 3.0,
    )
    .await;
    assert_eq!(desired, 3.0, "three in flight at a target of one each");
    let status = pool_status(&gw).await;
    assert_eq!(ready(&status), 1, "nothing was started: {status}");
    let reason = status["scaler"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("scale up: concurrency ") && reason.ends_with(" / target 1 per replica"),
        "{status}"
    );
    for s in streams {
        stream_to_done(s).await;
    }
    gw.shutdown().await;
    replica.shutdown(Duration::from_millis(100)).await;
}

/// The pool `name`'s entry of `/admin/status`.
async fn named_pool_status(gw: &App, name: &str) -> Value {
    let status = admin_status(gw).await;
    let pools = status["pools"].as_array().expect("pools").clone();
    pools
        .into_iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no pool {name} in {status}"))
}

/// Scaling up vs out: one model served by a tier of two local pools, both at zero — `small`
/// ($1 a replica-hour, 2 in flight at speed 1) and `big` ($3, 8 in flight at speed 4). The
/// first request is held and answered by a `small` replica started for it (the cheapest
/// replica); a load of 16 concurrent streams needs more than the three `small` replicas allowed
/// (and a `big` one costs less than four): the tier's scaler starts `big` replicas, the router
/// sends them requests, and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_starts_its_cheapest_replica_then_buys_capacity_where_it_costs_least() {
    let bin = env!("CARGO_BIN_EXE_infergate");
    let pool = |name: &str, price: u32, concurrency: u32, speed: u32| {
        format!(
            "  - name: {name}
    models: [{name}-m]
    discovery:
      local: {{replicas: 0, startup_timeout: 20s, command: [\"{bin}\", \"sim\", \"--port\", \"0\", \"--model\", \"{name}-m\", \"--speed\", \"10\"]}}
    metrics: {{scrape_interval: 100ms}}
    admission: {{max_queue_wait: 20s}}
    scaler:
      enabled: true
      min_replicas: 0
      max_replicas: 3
      interval: 200ms
      targets: {{concurrency: {concurrency}, kv_cache_usage: null, queue_wait: null}}
      scale_up_window: 1s
      scale_down_window: 1s
      scale_down_stabilization: 30s
      replica_cost_per_hour: {price}
      speed: {speed}
"
        )
    };
    let yaml = format!(
        "listeners: {{gateway: 127.0.0.1:0, admin: 127.0.0.1:0, drain_timeout: 5s}}
tiers:
  - model: t
    pools: [small, big]
pools:
{}{}",
        pool("small", 1, 2, 1),
        pool("big", 3, 8, 4)
    );
    let config = infergate::config::parse(&yaml, "test").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let gw = infergate::app::start(config).await.unwrap();
    let url = format!("http://{}/v1/chat/completions", gw.gateway_addr);
    let reply = post(
        &url,
        json!({"model": "t", "messages": [{"role": "user", "content": "wake up"}], "max_tokens": 4}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // Rewritten to, and answered by, the small pool's model.
    assert_eq!(reply.json()["model"], "small-m", "{}", reply.text());
    assert_eq!(replicas(&named_pool_status(&gw, "small").await).len(), 1);
    let big = named_pool_status(&gw, "big").await;
    assert_eq!(replicas(&big).len(), 0, "{big}");
    let reason = named_pool_status(&gw, "small").await["scaler"]["reason"].clone();
    assert!(
        reason.as_str().is_some_and(|r| r.contains("tier `t`")),
        "{reason}"
    );
    let args = LoadArgs {
        requests: 160,
        concurrency: 16,
        prompt_tokens: 64,
        max_tokens: 64,
        model: "t".into(),
        ..load_args(gw.gateway_addr)
    };
    let report = loadgen::run(args, |_, _| {}).await.unwrap();
    assert_eq!(report.failed, 0, "{}", report.render());
    assert_eq!(report.ok, 160, "{}", report.render());
    // Once it is ready (it may still be starting when the load ends), the router sends it
    // its share: the one least loaded for its capacity.
    eventually(Duration::from_secs(20), "the big replica answers", async || {
        let body = json!({"model": "t", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16});
        let sent: Vec<_> = (0..4).map(|_| spawn_post(&url, body.clone())).collect();
        for reply in sent {
            assert_eq!(reply.await.unwrap().status, 200);
        }
        let labels = [("pool", "big"), ("model", "t"), ("status", "200")];
        gateway_metric(&gw, "infergate_requests_total", &labels)
            .await
            .is_some_and(|served| served > 0.0)
    })
    .await;
    gw.shutdown().await;
}
