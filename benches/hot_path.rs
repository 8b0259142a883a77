//! Criterion benchmarks of the per-request work on the gateway's hot path: classifying a request
//! body (the issue's goal: a 256 KB prompt well under a millisecond) and picking a replica as
//! pools grow.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::HeaderMap;
use http::uri::{Authority, Scheme};
use infergate::config::RoutingPolicy;
use infergate::gateway::classify::classify;
use infergate::replica::Replica;
use infergate::router::{PickContext, RequestFeatures, Snapshot, pick};

fn chat_body(prompt_bytes: usize) -> Vec<u8> {
    // Natural-ish text with the escapes a real prompt has (quotes, newlines); `model` last, as
    // the OpenAI SDKs send it.
    let sentence = r#"The \"gateway\" routes each request to the replica that answers first.\n "#;
    let content = sentence.repeat(prompt_bytes / sentence.len() + 1);
    format!(
        r#"{{"messages": [{{"role": "system", "content": "You are helpful."}}, {{"role": "user", "content": "{content}"}}], "stream": true, "max_tokens": 256, "model": "llama"}}"#
    )
    .into_bytes()
}

fn bench_classify(c: &mut Criterion) {
    let classes = infergate::config::embedded_default().classification;
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group("classify");
    for size in [1024usize, 256 * 1024, 8 << 20] {
        let body = chat_body(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| classify(black_box(std::slice::from_ref(body)), &headers, &classes).unwrap())
        });
    }
    // A question about an inline image: 256 KiB of base64 in a data URL.
    let image = format!(
        r#"{{"messages": [{{"role": "user", "content": [{{"type": "text", "text": "What is in this image?"}}, {{"type": "image_url", "image_url": {{"url": "data:image/png;base64,{}"}}}}]}}], "max_tokens": 256, "model": "llama"}}"#,
        "iVBORw0K".repeat(256 * 1024 / 8)
    )
    .into_bytes();
    group.throughput(Throughput::Bytes(image.len() as u64));
    group.bench_with_input("image_256KiB", &image, |b, body| {
        b.iter(|| classify(black_box(std::slice::from_ref(body)), &headers, &classes).unwrap())
    });
    group.finish();
}

fn snapshot(n: usize) -> Snapshot {
    let epoch = Instant::now();
    let registry = prometheus::IntGaugeVec::new(prometheus::Opts::new("b", "b"), &["r"]).unwrap();
    let replicas: Vec<Arc<Replica>> = (0..n)
        .map(|i| {
            let authority: Authority = format!("10.0.{}.{}:8000", i / 250, i % 250)
                .parse()
                .unwrap();
            let gauge = registry.with_label_values(&[authority.as_str()]);
            Arc::new(Replica::new(Scheme::HTTP, authority, gauge, epoch))
        })
        .collect();
    // Uneven load so the scan has something to compare.
    let mut guards = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        for _ in 0..(i * 7919 % 13) {
            guards.push(r.start_request());
        }
    }
    std::mem::forget(guards);
    Snapshot::new(replicas)
}

fn bench_pick(c: &mut Criterion) {
    let features = RequestFeatures::default();
    let config = infergate::config::embedded_default();
    // The GPU variant has a reading on every replica: the near-tie pass runs on each pick.
    for (name, policy, gpu) in [
        ("pick_least_inflight", RoutingPolicy::LeastInflight, false),
        ("pick_predicted_ttft", RoutingPolicy::PredictedTtft, false),
        (
            "pick_predicted_ttft_gpu",
            RoutingPolicy::PredictedTtft,
            true,
        ),
    ] {
        let mut group = c.benchmark_group(name);
        let mut routing = config.pools[0].routing.clone();
        routing.policy = policy;
        for n in [16usize, 256, 1000] {
            let snap = snapshot(n);
            // Fresh scraped stats and latency history on every replica: the policy's full path.
            let now = Instant::now();
            for (i, r) in snap.replicas.iter().enumerate() {
                let stats = infergate::replica::EngineStats {
                    waiting: (i % 5) as f64,
                    running: (i % 17) as f64,
                    ..Default::default()
                };
                r.record_scrape(stats, now);
                if gpu {
                    r.record_gpu((i % 10) as f64 / 10.0, now);
                }
                r.start_request_with(100)
                    .first_byte(std::time::Duration::from_millis(20 + (i % 7) as u64));
            }
            let mut random = 1u64;
            group.bench_with_input(BenchmarkId::from_parameter(n), &snap, |b, snap| {
                b.iter(|| {
                    random = random.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let ctx = PickContext {
                        now,
                        random,
                        sequence: random,
                        stale_after: std::time::Duration::from_secs(3600),
                        gpu_stale_after: std::time::Duration::from_secs(3600),
                        limits: config.pools[0].admission,
                    };
                    pick(&routing, black_box(snap), &features, ctx, &[])
                })
            });
        }
        group.finish();
    }
}

fn bench_prefix(c: &mut Criterion) {
    // A 4,000-token prompt (16,000 bytes at 4 bytes a token) in 256-byte blocks, against an
    // index that has seen 2,000 other prompts.
    let index = infergate::router::prefix::PrefixIndex::new(100_000);
    // 16 replicas of equal capacity sharing the index.
    let budgets: Vec<(u64, u64)> = (0..16u64).map(|r| (r, 100_000 / 16)).collect();
    index.set_replicas(&budgets);
    for p in 0..2000u64 {
        let other = format!("{p:08}").repeat(2000);
        let blocks = infergate::openai::chained_block_hashes(other.as_bytes(), 256, 512);
        index.record(&blocks, p % 16);
    }
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(16_000 / 45 + 1);
    let mut group = c.benchmark_group("prefix_4000_tokens");
    group.bench_function("hash", |b| {
        b.iter(|| infergate::openai::chained_block_hashes(black_box(prompt.as_bytes()), 256, 512))
    });
    let blocks = infergate::openai::chained_block_hashes(prompt.as_bytes(), 256, 512);
    index.record(&blocks, 3);
    group.bench_function("longest_match", |b| {
        b.iter(|| index.lookup(black_box(&blocks)))
    });
    // Sent again to the replica that holds it (the common case: affinity worked) ...
    index.record(&blocks, 5);
    group.bench_function("insert_again", |b| {
        b.iter(|| index.record(black_box(&blocks), 5))
    });
    // ... and to a replica that does not (every block changes owner).
    let mut replica = 0u64;
    group.bench_function("insert_elsewhere", |b| {
        b.iter(|| {
            replica = (replica + 1) % 16;
            index.record(black_box(&blocks), replica)
        })
    });
    group.finish();
}

/// A simulator replica's full `/metrics` page (histograms included, as vLLM serves it) after
/// some traffic, parsed as the scraper does.
fn bench_metrics_page(c: &mut Criterion) {
    let profile = infergate::vllm_sim::profile::profile("llama-8b-h100").unwrap();
    let metrics = infergate::vllm_sim::metrics::SimMetrics::new(
        infergate::vllm_sim::metrics::MetricsFlavor::Vllm,
        "bench-model",
        &profile,
        "bench-pod",
        false,
    );
    let stats = infergate::vllm_sim::engine::EngineStats {
        waiting: 7,
        running: 48,
        kv_usage: 0.62,
        prefix_queries_tokens: 1_000_000,
        prefix_hits_tokens: 420_000,
        ..Default::default()
    };
    metrics.update(&stats, 1.7e9);
    for i in 0..500 {
        metrics.observe_token_gap(0.005 + f64::from(i % 40) * 0.001);
    }
    let page = String::from_utf8(metrics.render()).unwrap();
    let mut group = c.benchmark_group("metrics_page");
    group.throughput(Throughput::Bytes(page.len() as u64));
    group.bench_function(BenchmarkId::new("parse_vllm", page.len()), |b| {
        b.iter(|| {
            infergate::scrape::exposition::parse(
                infergate::config::MetricsFormat::Vllm,
                black_box(&page),
            )
            .unwrap()
        })
    });
    group.finish();
}

/// One decision of each scaler policy with a full history behind it (ten minutes of
/// observations once a second; `infergate-slo`: with the pool's SLO stated, a day of them, so
/// the burst headroom's quantile is over a full history — it is recomputed every 10 s, so one
/// decision in ten of those seen here pays for sorting a day of ratios).
fn bench_scaler(c: &mut Criterion) {
    use infergate::scaler::policy::{self, Observation};
    let mut group = c.benchmark_group("scaler_recommend");
    let slo = infergate::config::SloTarget {
        ttft: std::time::Duration::from_secs(2),
        itl: std::time::Duration::from_millis(100),
        target: 0.95,
        window: std::time::Duration::from_secs(300),
    };
    for (kind, slo) in [
        (infergate::config::ScalerPolicy::Infergate, None),
        (infergate::config::ScalerPolicy::Infergate, Some(slo)),
        (infergate::config::ScalerPolicy::Hpa, None),
        (infergate::config::ScalerPolicy::Kpa, None),
    ] {
        let mut config = infergate::config::embedded_default().pools[0]
            .scaler
            .clone();
        config.policy = kind;
        config.max_replicas = 64;
        config.targets.kv_cache_usage = Some(0.8);
        let mut p = policy::build(&config, slo, None);
        let obs = |t: u32| Observation {
            now: f64::from(t),
            ready: 8,
            inflight: u64::from(40 + t % 30),
            queued: u64::from(t % 3),
            kv_cache_usage: Some(0.5 + f64::from(t % 10) * 0.03),
            cold_start: 60.0,
            arrivals: u64::from(10 + t % 7),
            ..Default::default()
        };
        let history = if slo.is_some() { 86_400 } else { 600 };
        for t in 0..history {
            p.recommend(&obs(t));
        }
        let mut t = history;
        let name = infergate::config::yaml_name(&kind) + if slo.is_some() { "-slo" } else { "" };
        group.bench_function(name, |b| {
            b.iter(|| {
                t += 1;
                p.recommend(black_box(&obs(t)))
            })
        });
    }
    group.finish();
}

/// The API-key check of a request: SHA-256 of a 51-byte key and a lookup among 100 keys.
fn bench_api_key(c: &mut Criterion) {
    use sha2::{Digest, Sha256};
    let keys: String = (0..100)
        .map(|i| {
            let key = format!("sk-{i:048}");
            let hex: String = Sha256::digest(key.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("    - {{name: k{i}, sha256: {hex}}}\n")
        })
        .collect();
    let yaml = format!(
        "auth:\n  keys:\n{keys}pools:\n  - name: p\n    models: [m]\n    discovery: {{static: {{endpoints: [\"http://127.0.0.1:1\"]}}}}\n"
    );
    let config = infergate::config::parse(&yaml, "bench").unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer sk-{:048}", 57).parse().unwrap(),
    );
    c.bench_function("api_key_check", |b| {
        b.iter(|| infergate::gateway::auth::authenticate(&config.auth, black_box(&headers)).is_ok())
    });
}

/// A request's span with tracing on: started from the client's headers, its context put in the
/// replica's headers, ended. Unsampled (what `sample_ratio: 0` costs every request without a
/// sampled `traceparent`) and sampled (handed to the exporter's queue; the collector is a closed
/// port, so batches fail and are dropped off the measured thread).
fn bench_trace(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter();
    let mut group = c.benchmark_group("request_span");
    for (name, ratio) in [("unsampled", 0.0), ("sampled", 1.0)] {
        let config = infergate::config::Tracing {
            endpoint: "http://127.0.0.1:1/v1/traces".parse().unwrap(),
            sample_ratio: ratio,
            service_name: "bench".into(),
            export_timeout: std::time::Duration::from_secs(1),
        };
        let counter =
            prometheus::IntCounterVec::new(prometheus::Opts::new("x", "x"), &["result"]).unwrap();
        let tracer = infergate::otel::Tracer::start(&config, counter).unwrap();
        let client = HeaderMap::new();
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut span = tracer.span(black_box(&client), "POST /v1/chat/completions");
                let mut upstream = HeaderMap::new();
                span.inject(&mut upstream);
                span.set("infergate.pool", "p");
                span.end(http::StatusCode::OK);
                upstream
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_trace,
    bench_api_key,
    bench_classify,
    bench_pick,
    bench_prefix,
    bench_metrics_page,
    bench_scaler
);
criterion_main!(benches);
