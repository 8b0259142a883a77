//! The fleet simulation: exact expectations on tiny scenarios (virtual time is deterministic),
//! the trace readers on lines of the real traces, and a short compare run of the command.

use std::net::SocketAddr;
use std::process::Command;

use infergate::config::{self, RoutingPolicy};
use infergate::fleet_sim::sim::{self, FleetSpec, RunSpec};
use infergate::fleet_sim::stats::{Failure, RunReport, Slo};
use infergate::fleet_sim::workload::{self, Request, Segment, Shaping, Source, TraceFormat};
use infergate::vllm_sim::engine::{Engine, EngineRequest, Event};
use infergate::vllm_sim::profile;

use crate::support::{GatewayConfig, get, metric, requests_finished, spawn_sim};

/// A pool of `endpoints` static replicas (virtual ones: the simulation sends them nothing).
fn pool_config(endpoints: u16, policy: &str, scaler: &str) -> config::Config {
    let endpoints: Vec<SocketAddr> = (0..endpoints)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i)))
        .collect();
    GatewayConfig::static_replicas(&endpoints)
        .pool(&format!("routing: {{policy: {policy}}}"))
        .pool(scaler)
        .config()
}

const NO_SCALER: &str = "scaler: {enabled: false}";

/// A generated workload of 120 s: one prompt group, no shared system prompt, Poisson-like
/// spacing (cv 1) unless changed.
fn generator(kind: workload::GeneratorKind, seed: u64) -> workload::Generator {
    workload::Generator {
        kind,
        rate: 1.0,
        rate_end: 0.0,
        duration: 120.0,
        cv: 1.0,
        period: 1.0,
        amplitude: 0.0,
        prompt_tokens: 1000,
        output_tokens: 100,
        groups: 1,
        prompts_per_group: 1,
        system_prompt_tokens: 0,
        seed,
    }
}

fn spec(initial: u32, cold_start: Option<f64>) -> FleetSpec {
    FleetSpec {
        profiles: vec![profile::profile("llama-8b-h100").unwrap()],
        fail_rates: vec![0.0],
        initial: vec![initial],
        slow_fraction: 0.0,
        slow_factor: 1.0,
        unscraped_fraction: 0.0,
        cold_start,
        scaler_phase: None,
        slo: Slo {
            ttft: 1.0,
            itl: 0.1,
        },
        seed: 3,
        sample_every: 1.0,
        tail: 600.0,
        gateways: 1,
        sync_interval: None,
        keep_requests: true,
    }
}

fn request(arrival: f64, prompt_tokens: u32, output_tokens: u32, id: u64) -> Request {
    Request {
        arrival,
        model: None,
        prompt_tokens,
        output_tokens,
        segments: vec![Segment {
            id,
            blocks: prompt_tokens / 16,
        }],
        session: None,
        priority: None,
    }
}

fn run(config: &config::Config, spec: &FleetSpec, workload: &[Request]) -> RunReport {
    let run = RunSpec {
        name: "test".into(),
        routing: None,
        scaler: None,
    };
    sim::run(config, spec, &run, workload, &mut |_, _| {})
}

/// Time to the first token of a lone request on a fresh engine, straight from the engine model.
fn lone_engine_ttft(prompt_tokens: u32) -> f64 {
    let mut engine = Engine::new(profile::profile("llama-8b-h100").unwrap());
    let req = request(0.0, prompt_tokens, 10, 1);
    engine.submit(
        EngineRequest {
            id: 1,
            prompt_tokens,
            block_hashes: req.block_hashes(),
            output_tokens: 10,
            lora: None,
        },
        0.0,
    );
    let mut now = 0.0;
    loop {
        let step = engine.step(now).expect("work to do");
        now = step.end;
        if step
            .events
            .iter()
            .any(|e| matches!(e, Event::Token { index: 0, .. }))
        {
            return now;
        }
    }
}

#[test]
fn one_request_on_one_replica_has_the_engine_models_ttft() {
    let config = pool_config(1, "least-request", NO_SCALER);
    let report = run(&config, &spec(1, None), &[request(0.5, 1000, 10, 1)]);
    assert_eq!(report.completed, 1);
    let expected = lone_engine_ttft(1000);
    // The profile's formula: one prefill step of 1000 tokens.
    let p = profile::profile("llama-8b-h100").unwrap();
    assert!(
        (expected - (p.t0 + 1000.0 * p.prefill_per_token)).abs() < 0.002,
        "{expected}"
    );
    let ttft = report.per_request[0].ttft.unwrap();
    assert!((ttft - expected).abs() < 1e-6, "{ttft} vs {expected}");
}

#[test]
fn two_replicas_under_round_robin_alternate() {
    let config = pool_config(2, "round-robin", NO_SCALER);
    let workload: Vec<Request> = (0..8u32)
        .map(|k| request(f64::from(k), 200, 5, k.into()))
        .collect();
    let report = run(&config, &spec(2, None), &workload);
    let replicas: Vec<usize> = report
        .per_request
        .iter()
        .map(|r| r.replica.unwrap().1)
        .collect();
    for pair in replicas.windows(2) {
        assert_ne!(pair[0], pair[1], "{replicas:?}");
    }
    assert_eq!(report.completed, 8);
    // Two replicas for the whole run; no price stated, no cost.
    assert!((report.replica_seconds - 2.0 * report.duration).abs() < 1e-6);
    assert_eq!(report.cost, None);
    assert!(report.replicas.iter().all(|r| r.scraped));
    let mut priced = config.clone();
    priced.pools[0].scaler.replica_cost_per_hour = Some(4.0);
    let report = run(&priced, &spec(2, None), &workload);
    let hours = 2.0 * report.duration / 3600.0;
    assert!(
        (report.cost.unwrap() - 4.0 * hours).abs() < 1e-9,
        "{:?}",
        report.cost
    );
}

#[test]
fn replicas_without_metrics_are_every_kth_from_the_first_and_still_serve() {
    let config = pool_config(4, "least-request", NO_SCALER);
    let workload: Vec<Request> = (0..40u32)
        .map(|k| request(f64::from(k) * 0.1, 200, 20, k.into()))
        .collect();
    let spec = FleetSpec {
        unscraped_fraction: 0.5,
        ..spec(4, None)
    };
    let report = run(&config, &spec, &workload);
    let scraped: Vec<bool> = report.replicas.iter().map(|r| r.scraped).collect();
    assert_eq!(scraped, [false, true, false, true]);
    assert_eq!(report.completed, 40);
    assert!(
        report.replicas.iter().all(|r| r.requests > 0),
        "a replica without metrics is routed on the gateway's own counts: {:?}",
        report.replicas
    );
}

#[test]
fn a_cold_start_delays_the_first_answer_by_exactly_the_start_time() {
    // Scale from zero: the scaler sees the held request at its first tick (1 s), starts a
    // replica, which is ready `cold_start` later; then the request is sent.
    let scaler =
        "scaler: {enabled: true, min_replicas: 0, max_replicas: 2, interval: 1s, provider: static}";
    let config = pool_config(1, "least-request", scaler);
    let workload = [request(0.25, 1000, 10, 1)];
    let engine = lone_engine_ttft(1000);
    for cold_start in [7.0, 20.0] {
        let report = run(&config, &spec(0, Some(cold_start)), &workload);
        assert_eq!(report.completed, 1, "{:?}", report.failed);
        let ttft = report.per_request[0].ttft.unwrap();
        let expected = 1.0 + cold_start - 0.25 + engine;
        assert!(
            (ttft - expected).abs() < 1e-6,
            "cold start {cold_start}: {ttft} vs {expected}"
        );
        assert_eq!(report.scale_ups, 1);
    }
    // `--scaler-phase 0.5s`: the first tick, and so the start, comes at 0.5 s.
    let phased = FleetSpec {
        scaler_phase: Some(0.5),
        ..spec(0, Some(7.0))
    };
    let ttft = run(&config, &phased, &workload).per_request[0]
        .ttft
        .unwrap();
    let expected = 0.5 + 7.0 - 0.25 + engine;
    assert!((ttft - expected).abs() < 1e-6, "{ttft} vs {expected}");
}

#[test]
fn requests_longer_than_the_context_window_fail_like_vllms() {
    let config = pool_config(1, "least-request", NO_SCALER);
    let report = run(
        &config,
        &spec(1, None),
        &[request(0.0, 40_000, 10, 1), request(0.1, 100, 10, 2)],
    );
    assert_eq!(report.completed, 1);
    assert_eq!(report.failed.get(&Failure::TooLong), Some(&1));
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/traces")
        .join(name)
}

/// Reads a trace file as `format`, unshaped.
fn load_trace(path: std::path::PathBuf, format: TraceFormat) -> anyhow::Result<Vec<Request>> {
    workload::load(&Source::Trace { path, format }, &Shaping::default())
}

fn read(name: &str, format: TraceFormat) -> Vec<Request> {
    load_trace(fixture(name), format).unwrap()
}

#[test]
fn trace_readers_parse_lines_of_the_real_traces() {
    // First lines of ../shared/traces/mooncake_conversation.jsonl.
    let mooncake = read("mooncake_conversation.head.jsonl", TraceFormat::Mooncake);
    assert_eq!(mooncake.len(), 12);
    assert_eq!(
        (mooncake[0].prompt_tokens, mooncake[0].output_tokens),
        (6758, 500)
    );
    assert_eq!(mooncake[11].arrival, 3.0); // "timestamp": 3000 (ms)
    // Every conversation starts with the same 512-token block (hash id 0) and nothing more.
    let (a, b) = (mooncake[0].block_hashes(), mooncake[1].block_hashes());
    assert_eq!(a[..32], b[..32]);
    assert_ne!(a[32], b[32]);
    assert_eq!(
        workload::detect_format(&fixture("mooncake_conversation.head.jsonl")).unwrap(),
        TraceFormat::Mooncake
    );

    // First lines of azure_llm_conv.csv: 18:15:46.6805900 then 18:15:50.9951690.
    let conv = read("azure_llm_conv.head.csv", TraceFormat::Azure);
    assert_eq!(conv.len(), 12);
    assert_eq!(
        (
            conv[0].arrival,
            conv[0].prompt_tokens,
            conv[0].output_tokens
        ),
        (0.0, 374, 44)
    );
    assert!(
        (conv[1].arrival - 4.314579).abs() < 1e-6,
        "{}",
        conv[1].arrival
    );
    let code = read("azure_llm_code.head.csv", TraceFormat::Azure);
    assert_eq!((code[0].prompt_tokens, code[0].output_tokens), (4808, 10));
    assert!(code.windows(2).all(|w| w[0].arrival <= w[1].arrival));
}

#[test]
fn the_jsonl_format_reads_groups_sessions_and_priorities_and_rejects_bad_lines() {
    let dir = tempdir();
    let good = dir.join("trace.jsonl");
    std::fs::write(
        &good,
        concat!(
            r#"{"time": 0.5, "model": "m", "prompt_tokens": 800, "output_tokens": 20, "prefix_group": "sys-a", "shared_prefix_tokens": 512, "session": "u1", "priority": "critical"}"#,
            "\n",
            r#"{"time": 0.1, "prompt_tokens": 900, "output_tokens": 5, "prefix_group": "sys-a", "shared_prefix_tokens": 512}"#,
            "\n\n"
        ),
    )
    .unwrap();
    let requests = load_trace(good, TraceFormat::Jsonl).unwrap();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].arrival, 0.1, "sorted by arrival");
    assert_eq!(requests[1].session.as_deref(), Some("u1"));
    assert_eq!(requests[1].priority.as_deref(), Some("critical"));
    let (a, b) = (requests[0].block_hashes(), requests[1].block_hashes());
    assert_eq!(a[..32], b[..32], "512 shared tokens = 32 blocks");
    assert_ne!(a[32], b[32]);

    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"time\": 1, \"prompt_tokens\": 10, \"output_tokens\": 2}\n{\"time\": 2, \"prompt_tokenz\": 10}\n").unwrap();
    let err = load_trace(bad, TraceFormat::Jsonl).unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("bad.jsonl:2") && text.contains("prompt_tokenz"),
        "{text}"
    );
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "infergate-fleet-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn predicted_ttft_routes_around_slow_replicas_in_simulation() {
    // Deterministic: same workload and seed, a fleet where every other replica is 8× slower.
    let config = pool_config(4, "round-robin", NO_SCALER);
    let mut spec = spec(4, None);
    spec.slow_fraction = 0.5;
    spec.slow_factor = 8.0;
    spec.keep_requests = false;
    let g = workload::Generator {
        rate: 12.0,
        prompt_tokens: 1500,
        ..generator(workload::GeneratorKind::Poisson, 5)
    };
    let workload = workload::generate(&g);
    let runs = infergate::fleet_sim::compared_runs(
        &[RoutingPolicy::PredictedTtft, RoutingPolicy::RoundRobin],
        &[],
    );
    let reports: Vec<RunReport> = runs
        .iter()
        .map(|r| sim::run(&config, &spec, r, &workload, &mut |_, _| {}))
        .collect();
    let (smart, rr) = (&reports[0], &reports[1]);
    assert_eq!(smart.completed, workload.len());
    assert_eq!(rr.completed, workload.len());
    assert!(
        smart.ttft.p90 * 2.0 < rr.ttft.p90,
        "p90 TTFT predicted-ttft {} vs round-robin {}",
        smart.ttft.p90,
        rr.ttft.p90
    );
}

#[test]
fn the_scaler_follows_a_ramp_up_and_back_down_without_failures() {
    // The embedded default (scaler 1..4, concurrency target 8) under a ramp, then quiet.
    let config = config::embedded_default();
    let mut spec = spec(1, Some(5.0));
    spec.keep_requests = false;
    let mut workload = workload::generate(&workload::Generator {
        rate: 2.0,
        rate_end: 60.0,
        output_tokens: 300,
        ..generator(workload::GeneratorKind::Ramp, 9)
    });
    // One last request after a quiet spell longer than the scale-down stabilisation.
    workload.push(request(300.0, 100, 5, 77));
    let report = run(&config, &spec, &workload);
    assert_eq!(
        report.failed.values().sum::<usize>(),
        0,
        "{:?}",
        report.failed
    );
    assert_eq!(
        report.max_replicas, 4,
        "reached max_replicas under the ramp"
    );
    // One replica at a time, up to 4 and back down to 1, without a step back and forth.
    assert_eq!(
        (report.scale_ups, report.scale_downs),
        (3, 3),
        "ready replicas each second: {:?}",
        report.timeline.iter().map(|s| s.ready).collect::<Vec<_>>()
    );
    let before_last = report.timeline.iter().rev().find(|s| s.t < 299.0).unwrap();
    assert_eq!(
        before_last.ready, 1,
        "back to min_replicas after the quiet spell"
    );
}

#[test]
fn simulate_compares_policies_and_writes_its_report_and_plots() {
    let out = tempdir().join("sim-out");
    let output = Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args([
            "simulate",
            "--generator",
            "shared-prefix",
            "--rate",
            "8",
            "--duration",
            "30s",
            "--replicas",
            "3",
            "--no-scaler",
            "--routing",
            "predicted-ttft,round-robin,cache-aware",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for name in ["predicted-ttft", "round-robin", "prefix-affinity"] {
        assert!(stdout.contains(name), "{name} missing from\n{stdout}");
    }
    assert!(stderr.contains("100.0 %"), "progress shown: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    let requests = report["workload"]["requests"].as_u64().unwrap();
    assert!(requests > 150);
    for run in runs {
        assert_eq!(run["completed"].as_u64(), Some(requests), "{run}");
    }
    // Shared system prompts: prefix-aware routing gets more cache hits than round robin.
    let hits = |i: usize| runs[i]["prefix_cache_hit_rate"].as_f64().unwrap();
    assert!(
        hits(0) > hits(1) && hits(2) > hits(1),
        "{} {} {}",
        hits(0),
        hits(1),
        hits(2)
    );
    for svg in ["timeline.svg", "compare.svg"] {
        let text = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("predicted-ttft"),
            "{svg}"
        );
    }

    // Bad input: a clear error and exit 1.
    let bad = Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["simulate", "--trace", "/nonexistent/trace.jsonl"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cannot open /nonexistent/trace.jsonl"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_replays_a_workload_against_a_real_replica() {
    let (_sim, addr) = spawn_sim(&["--model", "sim-m", "--speed", "20"]);
    let out = tempdir().join("loadgen.json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args([
            "loadgen",
            "--url",
            &format!("http://{addr}"),
            "--model",
            "sim-m",
            "--generator",
            "shared-prefix",
            "--rate",
            "20",
            "--duration",
            "3s",
            "--prompt-tokens",
            "64",
            "--output-tokens",
            "20",
            "--system-prompt-tokens",
            "512",
            "--out",
        ])
        .arg(&out)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let requests = report["requests"].as_u64().unwrap();
    assert!(requests > 30, "{report}");
    assert_eq!(report["completed"].as_u64(), Some(requests), "{report}");
    // No first token before one engine step (the default profile's fixed step time, run 20
    // times faster).
    let step = profile::profile("llama-8b-h100").unwrap().t0 / 20.0;
    let p50 = report["ttft"]["p50"].as_f64().unwrap();
    assert!(
        p50 >= step,
        "p50 TTFT {p50} s under one step ({step} s): {report}"
    );
    // The replica saw exactly those requests, and their shared system prompts hit its cache.
    let served = requests_finished(addr).await;
    let page = get(&format!("http://{addr}/metrics")).await.text();
    assert_eq!(served, requests as f64, "{served} of {requests}: {page}");
    let hits = metric(&page, "vllm:prefix_cache_hits_total", &[]).unwrap_or(0.0);
    let queried = metric(&page, "vllm:prefix_cache_queries_total", &[]).unwrap_or(0.0);
    assert!(
        hits > 0.0 && hits <= queried,
        "shared prefixes reach the replica as shared text: {hits} of {queried} tokens"
    );
}

/// Several URLs (several gateways): requests without a session go to each in turn, as
/// `simulate --gateways` sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_spreads_requests_over_several_urls_in_turn() {
    let (_a, a) = spawn_sim(&["--model", "sim-m", "--instant"]);
    let (_b, b) = spawn_sim(&["--model", "sim-m", "--instant"]);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args([
            "loadgen",
            "--url",
            &format!("http://{a}, http://{b}/"),
            "--model",
            "sim-m",
        ])
        .args([
            "--rate",
            "20",
            "--duration",
            "2s",
            "--output-tokens",
            "4",
            "--seed",
            "5",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (on_a, on_b) = (requests_finished(a).await, requests_finished(b).await);
    assert!(on_a + on_b > 20.0, "{on_a} + {on_b}");
    assert!(
        on_a - on_b == 0.0 || on_a - on_b == 1.0,
        "in turn, the first URL first: {on_a} and {on_b}"
    );
}

/// A KV cache too small for the running requests preempts them, in simulation as in the
/// engine (the report counts it); a large one does not.
#[test]
fn a_small_kv_cache_preempts_and_the_report_counts_it() {
    let config = pool_config(1, "least-request", NO_SCALER);
    let workload: Vec<Request> = (0..16u32)
        .map(|i| request(f64::from(i) * 0.01, 2000, 600, u64::from(i)))
        .collect();
    let roomy = run(&config, &spec(1, None), &workload);
    assert_eq!(roomy.preemptions, 0);
    let mut small = spec(1, None);
    // 16 requests of 2,600 tokens at their longest; room for about 6.
    small.profiles[0].kv_blocks = 1000;
    let tight = run(&config, &small, &workload);
    assert_eq!(tight.completed, 16, "preempted requests still finish");
    assert!(tight.preemptions > 0, "{}", tight.preemptions);
}

/// Two gateways, and every client's connection on the second one: the first gateway, which
/// scales, sees none of the requests itself — yet it scales up to the same count as a lone
/// gateway would, on the load its peer publishes; and the replicas serve every request.
#[test]
fn with_two_gateways_the_scaling_one_counts_its_peers_load() {
    let config = config::embedded_default();
    let mut workload = workload::generate(&workload::Generator {
        rate: 2.0,
        rate_end: 60.0,
        output_tokens: 300,
        ..generator(workload::GeneratorKind::Ramp, 9)
    });
    // One session, chosen so that it lands on the second gateway.
    let session = (0..)
        .map(|n| format!("client-{n}"))
        .find(|s| infergate::openai::fnv1a(s.as_bytes()) % 2 == 1)
        .unwrap();
    for r in &mut workload {
        r.session = Some(session.clone());
    }
    let mut spec = spec(1, Some(5.0));
    spec.keep_requests = false;
    let one = run(&config, &spec, &workload);
    spec.gateways = 2;
    let two = run(&config, &spec, &workload);
    assert_eq!(
        one.max_replicas, 4,
        "the lone gateway scales to max_replicas"
    );
    assert_eq!(
        two.max_replicas, 4,
        "the scaling gateway counts the load its peer holds"
    );
    assert_eq!(two.completed, workload.len());
    assert_eq!(two.failed.values().sum::<usize>(), 0, "{:?}", two.failed);
}

/// `simulate --model chat` on one of the rollout configs of `benches/fleet`: its report.
fn replay_rollout(config: &str) -> serde_json::Value {
    let out = tempdir();
    let output = Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args([
            "simulate",
            "-c",
            &format!("benches/fleet/{config}"),
            "--model",
            "chat",
        ])
        .args([
            "--rate",
            "10",
            "--duration",
            "240s",
            "--sample-every",
            "5s",
            "--quiet",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let run = report["runs"][0].clone();
    // What the report holds, the command prints.
    for event in run["rollout"].as_array().unwrap() {
        assert!(stdout.contains(event["text"].as_str().unwrap()), "{stdout}");
    }
    run
}

/// The rollout's events as (time, canary weight, text).
fn rollout_events(run: &serde_json::Value) -> Vec<(f64, u64, String)> {
    run["rollout"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let text = e["text"].as_str().unwrap().to_string();
            (
                e["t"].as_f64().unwrap(),
                e["canary_weight"].as_u64().unwrap(),
                text,
            )
        })
        .collect()
}

/// The canary's weight in the last timeline point.
fn last_weight(run: &serde_json::Value) -> u64 {
    let timeline = run["timeline"].as_array().unwrap();
    timeline.last().unwrap()["canary_weight"].as_u64().unwrap()
}

#[test]
fn the_simulation_rolls_back_a_canary_that_fails_within_its_first_step() {
    let run = replay_rollout("rollout-failing.yaml");
    let events = rollout_events(&run);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!((events[0].0, events[0].1), (0.0, 10));
    let (t, weight, text) = &events[1];
    // Judged once it has 20 answers: at 10 % of 10 requests/s, about 20 s in; the step lasts 60.
    assert!(*t > 10.0 && *t < 60.0, "{events:?}");
    assert_eq!(*weight, 0);
    assert!(
        text.starts_with("step 1 failed") && text.ends_with("rolled back"),
        "{text}"
    );
    assert_eq!(last_weight(&run), 0);
    // The clients saw the canary's 500s until the rollback, and none after it.
    let errors = run["failed"]["server-error"].as_u64().unwrap();
    assert!(
        (1..=12).contains(&errors),
        "{errors} of about 20 canary answers failed"
    );
}

#[test]
fn the_simulation_rolls_back_a_slower_canary_on_its_ttft() {
    let run = replay_rollout("rollout-slow.yaml");
    let events = rollout_events(&run);
    assert_eq!(events.len(), 2, "{events:?}");
    let (t, weight, text) = &events[1];
    assert!(*t < 60.0 && *weight == 0, "{events:?}");
    assert!(
        text.contains("0.0 % failed") && text.contains("max 1.50x"),
        "{text}"
    );
    assert!(run["failed"].get("server-error").is_none());
}

#[test]
fn the_simulation_promotes_a_faster_canary_after_every_step() {
    let run = replay_rollout("rollout-faster.yaml");
    let events = rollout_events(&run);
    let steps: Vec<(f64, u64)> = events.iter().map(|e| (e.0, e.1)).collect();
    // Each step holds its 60 s: 10 %, then 50 %, then all traffic.
    assert_eq!(
        steps,
        [(0.0, 10), (60.0, 10), (60.0, 50), (120.0, 50), (120.0, 100)],
        "{events:?}"
    );
    assert!(events[4].2.contains("promoted"), "{events:?}");
    assert_eq!(last_weight(&run), 100);
    // The timeline shows each step's weight in its time.
    let timeline = run["timeline"].as_array().unwrap();
    let weight_at = |t: f64| {
        timeline
            .iter()
            .find(|p| p["t"].as_f64().unwrap() >= t)
            .unwrap()["canary_weight"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        (weight_at(30.0), weight_at(90.0), weight_at(150.0)),
        (10, 50, 100)
    );
}
