//! Replica signals beyond the queue, through real servers on 127.0.0.1:0. GPU use: read from
//! the simulators' own pages, or from a DCGM-exporter page (a small server serving
//! dcgm-exporter's format) matched to replicas by pod name; each test shows the readings in
//! `/admin/status` and an effect (routing near-ties go to the idler GPU, the scaler's GPU signal
//! asks for replicas). LoRA adapters: requests for one go to the replica that has it loaded.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use infergate::app::App;
use infergate::gateway::body::GatewayBody;
use infergate::http_server::Server;
use serde_json::json;

use crate::support::*;

/// A replica serving `m` and the LoRA adapter `sql`.
async fn sim_with_adapter() -> Server {
    let mut opts = sim_options("llama-8b-h100");
    opts.loras = vec!["sql".into()];
    start_sim(opts).await
}

/// A gateway over `replicas` (address, pod name) serving `m` and `sql`, with `settings` more
/// under the pool.
async fn gateway_over(replicas: &[(SocketAddr, &str)], settings: &str) -> App {
    GatewayConfig::static_pods(replicas)
        .models(&["m", "sql"])
        .pool(settings)
        .start()
        .await
}

/// Each replica's GPU reading in the pool's `/admin/status` (None when it has none).
fn gpu_readings(pool: &serde_json::Value) -> Vec<Option<f64>> {
    replicas(pool)
        .iter()
        .map(|r| r["gpu_utilization"].as_f64())
        .collect()
}

/// Polls the pool's `/admin/status` (bounded: 5 s) until `done` holds; returns the last one.
async fn status_until(gw: &App, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    poll_until(Duration::from_secs(5), async || pool_status(gw).await, done).await
}

/// Requests each of `sims` answered in full (all these tests' requests run to `max_tokens`;
/// the other tenant's long answer, which never ends here, is not counted).
async fn answered(sims: [&Server; 2]) -> (f64, f64) {
    (
        requests_finished_at_max_tokens(sims[0].addr).await,
        requests_finished_at_max_tokens(sims[1].addr).await,
    )
}

/// Sends `n` short requests for `model` one after the other through the gateway, `gap` apart.
async fn sequential(gw: &App, model: &str, n: usize, gap: Duration) {
    completions_in_turn(
        gw.gateway_addr,
        n,
        gap,
        |_| json!({"model": model, "prompt": "hello", "max_tokens": 2, "ignore_eos": true}),
    )
    .await;
}

/// dcgm-exporter's page for two pods: `llama-a` on two GPUs (90 % and 90 %), `llama-b` on one
/// (70 %), and a GPU no pod uses.
const EXPORTER_PAGE: &str = r#"# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-0",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1",container="vllm",namespace="llm",pod="llama-a"} 90
DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-1",device="nvidia1",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1",container="vllm",namespace="llm",pod="llama-a"} 90
DCGM_FI_DEV_GPU_UTIL{gpu="2",UUID="GPU-2",device="nvidia2",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1",container="vllm",namespace="llm",pod="llama-b"} 70
DCGM_FI_DEV_GPU_UTIL{gpu="3",UUID="GPU-3",device="nvidia3",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1",container="",namespace="",pod=""} 0
"#;

fn exporter() -> Server {
    infergate::http_server::serve(
        "exporter",
        infergate::http_server::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap(),
        Duration::from_millis(100),
        infergate::http_server::Limits::SMALL,
        |_| {
            |_req, _peer| async {
                Response::new(GatewayBody::full(Bytes::from_static(
                    EXPORTER_PAGE.as_bytes(),
                )))
            }
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dcgm_exporter_readings_steer_ties_and_scale_the_pool() {
    let (a, b) = (sim_with_adapter().await, sim_with_adapter().await);
    let dcgm = exporter();
    let gw = gateway_over(
        &[(a.addr, "llama-a"), (b.addr, "llama-b")],
        &format!(
            "metrics:
  scrape_interval: 50ms
  gpu: {{url: \"http://{}/metrics\", scrape_interval: 50ms, stale_after: 500ms}}
scaler:
  enabled: true
  provider: static
  min_replicas: 1
  max_replicas: 8
  interval: 100ms
  targets: {{concurrency: 100, kv_cache_usage: null, gpu_utilization: 0.5, queue_wait: null}}",
            dcgm.addr
        ),
    )
    .await;
    let s = status_until(&gw, |s| {
        gpu_readings(s).iter().all(Option::is_some) && !s["scaler"].is_null()
    })
    .await;
    // llama-a: mean of its two GPUs; llama-b: its one.
    assert_eq!(gpu_readings(&s), vec![Some(0.9), Some(0.7)], "{s}");
    // Idle replicas predict the same TTFT: every request goes to the idler GPU (without GPU
    // readings the tie goes to the first replica). Spaced by more than two scrapes, so that no
    // scraped page still shows the previous request.
    sequential(&gw, "m", 10, Duration::from_millis(120)).await;
    assert_eq!(answered([&a, &b]).await, (0.0, 10.0));
    // The scaler's GPU signal: 2 replicas at a mean of 80 % against 50 % need 3.2 → 4.
    let s = status_until(&gw, |s| s["scaler"]["desired"] == 4).await;
    let scaler = &s["scaler"];
    assert_eq!(scaler["desired"], 4, "{s}");
    assert_eq!(
        scaler["reason"], "scale up: gpu use needs 3.2 replicas at target 50%",
        "{s}"
    );
    // The exporter goes away: the readings go stale (500 ms) and are shown as unknown, while
    // the engine stats stay fresh and requests are answered as before.
    dcgm.shutdown(Duration::from_millis(100)).await;
    let s = status_until(&gw, |s| gpu_readings(s).iter().all(Option::is_none)).await;
    assert_eq!(gpu_readings(&s), vec![None, None], "{s}");
    for replica in replicas(&s) {
        assert!(replica["engine"].is_object(), "{s}");
        assert_eq!(replica["ejected"], false, "{s}");
    }
    sequential(&gw, "m", 2, Duration::ZERO).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_pages_carry_the_gpu_metric() {
    let (a, b) = (sim_with_adapter().await, sim_with_adapter().await);
    let gw = gateway_over(
        &[(a.addr, "sim-a"), (b.addr, "sim-b")],
        "metrics: {scrape_interval: 50ms, gpu: {metric: DCGM_FI_DEV_GPU_UTIL}}",
    )
    .await;
    // Keep replica a's engine stepping with a long answer sent to it directly (another
    // tenant's traffic): its GPU reads busy, b's idle.
    let tenant = spawn_post(
        &format!("http://{}/v1/completions", a.addr),
        json!({"model": "m", "prompt": "x", "max_tokens": 3000, "ignore_eos": true}),
    );
    let s = status_until(&gw, |s| {
        let g = gpu_readings(s);
        g[0].is_some_and(|v| v > 0.5) && g[1] == Some(0.0)
    })
    .await;
    let g = gpu_readings(&s);
    assert!(
        g[0].is_some_and(|v| v > 0.5 && v <= 1.0),
        "busy, as a fraction of one: {s}"
    );
    assert_eq!(g[1], Some(0.0), "{s}");
    // Neither replica has anything waiting: a tie the idle GPU wins. Spaced out, so that b's
    // own short answers keep its GPU well below a's, which steps without a pause.
    sequential(&gw, "m", 5, Duration::from_millis(200)).await;
    assert_eq!(answered([&a, &b]).await, (0.0, 5.0));
    tenant.abort();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_an_adapter_go_where_it_is_loaded() {
    let (a, b) = (sim_with_adapter().await, sim_with_adapter().await);
    let gw = gateway_over(
        &[(a.addr, "sim-a"), (b.addr, "sim-b")],
        "routing: {lora_adapters: [sql]}
metrics: {scrape_interval: 50ms}",
    )
    .await;
    // Another tenant keeps the adapter running on replica b.
    let tenant = spawn_post(
        &format!("http://{}/v1/completions", b.addr),
        json!({"model": "sql", "prompt": "x", "max_tokens": 3000, "ignore_eos": true}),
    );
    let s = status_until(&gw, |s| {
        s["replicas"][1]["engine"]["lora_adapters"] == json!(["sql"])
    })
    .await;
    assert_eq!(
        s["replicas"][1]["engine"]["lora_adapters"],
        json!(["sql"]),
        "{s}"
    );
    // Both replicas are idle otherwise (a tie goes to the first): the adapter's requests go to b.
    sequential(&gw, "sql", 5, Duration::ZERO).await;
    assert_eq!(answered([&a, &b]).await, (0.0, 5.0));
    tenant.abort();
    gw.shutdown().await;
}
