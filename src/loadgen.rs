//! Load generators for OpenAI-compatible endpoints (the gateway, a replica, or vLLM itself).
//! `infergate load` is closed-loop: a fixed number of concurrent clients send chat completions
//! until a request count or a time limit is reached. `infergate loadgen` is open-loop: it replays
//! a workload (a trace or a generator, as `infergate simulate` takes them) in real time,
//! streaming, and reports TTFT, inter-token latency and end-to-end latency the same way the
//! fleet simulation does, so the two can be compared. Both print progress and stop by
//! themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::fleet_sim::stats::Summary;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

/// What to send and how much.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Base URL of the endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Model name to request.
    #[arg(long, default_value = "llama")]
    pub model: String,
    /// Total requests (the run stops at this count or at --duration, whichever comes first).
    #[arg(long, default_value_t = 200)]
    pub requests: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u64,
    /// Longest the run may take (e.g. 60s).
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "60s")]
    pub duration: Duration,
    /// Approximate prompt length (tokens, at 4 bytes per token).
    #[arg(long, default_value_t = 256)]
    pub prompt_tokens: u32,
    /// Answer length (tokens; sent with ignore_eos so every answer has this length).
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
    /// Stream answers (SSE) and measure time to first token.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub stream: bool,
}

/// Results of a run.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    pub elapsed: Duration,
    pub ttft: Vec<f64>,
    pub e2e: Vec<f64>,
    pub output_tokens: u64,
}

impl LoadReport {
    pub fn render(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        // Percentiles in ms, the same nearest-rank ones the fleet simulation reports.
        let line = |values: &[f64]| match Summary::of(&mut values.to_vec()) {
            s if s.count == 0 => "none".to_string(),
            s => format!(
                "p50 {:.1}  p90 {:.1}  p99 {:.1}",
                s.p50 * 1000.0,
                s.p90 * 1000.0,
                s.p99 * 1000.0
            ),
        };
        format!(
            "requests: {} ok, {} failed in {:.1}s ({:.1} req/s, {:.0} output tokens/s)\n\
             ttft ms:   {}\n\
             e2e  ms:   {}",
            self.ok,
            self.failed,
            secs,
            self.ok as f64 / secs,
            self.output_tokens as f64 / secs,
            line(&self.ttft),
            line(&self.e2e),
        )
    }
}

struct Sample {
    ttft: Option<f64>,
    e2e: f64,
    ok: bool,
    /// Seconds between consecutive body chunks after the first (streams: token gaps).
    gaps: Vec<f64>,
}

/// Runs the load; `progress` is called about once a second with (done, failed).
pub async fn run(
    args: LoadArgs,
    progress: impl Fn(u64, u64) + Send + 'static,
) -> anyhow::Result<LoadReport> {
    let uri: http::Uri =
        format!("{}/v1/chat/completions", args.url.trim_end_matches('/')).parse()?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + args.duration;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency {
        let (client, uri, args, tx) = (client.clone(), uri.clone(), args.clone(), tx.clone());
        let (issued, done, failed) = (issued.clone(), done.clone(), failed.clone());
        workers.spawn(async move {
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= args.requests || Instant::now() >= deadline {
                    return;
                }
                // Distinct prompts (no accidental prefix sharing between requests).
                let filler = "lorem ipsum dolor sit amet ".repeat((args.prompt_tokens as usize * 4) / 27 + 1);
                let body = json!({
                    "model": args.model,
                    "messages": [{"role": "user", "content": format!("request {n} from worker {worker}: {filler}")}],
                    "max_tokens": args.max_tokens, "ignore_eos": true, "stream": args.stream,
                });
                let request = http::Request::post(uri.clone())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(serde_json::to_vec(&body).expect("JSON"))))
                    .expect("valid request");
                let sent = Instant::now();
                let remaining = deadline.saturating_duration_since(sent) + Duration::from_secs(5);
                let sample = tokio::time::timeout(remaining, one_request(&client, request, sent, args.stream)).await.unwrap_or_else(|_| Sample::failed(sent));
                if sample.ok {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                let _ = tx.send(sample);
            }
        });
    }
    drop(tx);
    let ticker = {
        let (done, failed) = (done.clone(), failed.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                progress(done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
            }
        })
    };
    let mut report = LoadReport::default();
    while let Some(sample) = rx.recv().await {
        if sample.ok {
            report.ok += 1;
            report.output_tokens += u64::from(args.max_tokens);
            report.e2e.push(sample.e2e);
            report.ttft.extend(sample.ttft);
        } else {
            report.failed += 1;
        }
    }
    while workers.join_next().await.is_some() {}
    ticker.abort();
    report.elapsed = start.elapsed();
    Ok(report)
}

impl Sample {
    fn failed(sent: Instant) -> Self {
        Self {
            ttft: None,
            e2e: sent.elapsed().as_secs_f64(),
            ok: false,
            gaps: Vec::new(),
        }
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn one_request(
    client: &HttpClient,
    request: http::Request<Full<Bytes>>,
    sent: Instant,
    stream: bool,
) -> Sample {
    let Ok(response) = client.request(request).await else {
        return Sample::failed(sent);
    };
    if !response.status().is_success() {
        return Sample::failed(sent);
    }
    let mut body = response.into_body();
    let mut ttft = None;
    let mut gaps = Vec::new();
    let mut last_chunk = sent;
    let mut tail = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Sample::failed(sent);
        };
        if let Some(data) = frame.data_ref() {
            let now = Instant::now();
            if ttft.is_none() {
                ttft = Some(now.duration_since(sent).as_secs_f64());
            } else {
                gaps.push(now.duration_since(last_chunk).as_secs_f64());
            }
            last_chunk = now;
            // Keep only the end: enough to see `[DONE]` or an error event.
            tail.extend_from_slice(data);
            if tail.len() > 4096 {
                tail.drain(..tail.len() - 4096);
            }
        }
    }
    let tail = String::from_utf8_lossy(&tail);
    // A stream is complete only with its `[DONE]`; one that broke off ends with an error event.
    let ok = if stream {
        tail.trim_end().ends_with("data: [DONE]")
    } else {
        !tail.contains("\"error\"")
    };
    Sample {
        ttft,
        e2e: sent.elapsed().as_secs_f64(),
        ok,
        gaps,
    }
}

/// Flags of `infergate loadgen`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  infergate loadgen --generator ramp --rate 2 --rate-end 20 --duration 2m --admin-url http://127.0.0.1:9090
  infergate loadgen --url http://127.0.0.1:8000 --model my-model \\
      --trace azure_llm_conv.csv --time-scale 0.1 --window 5m --out run.json")]
pub struct ReplayArgs {
    /// Base URL of the endpoint (the gateway, a replica, or vLLM); several, comma-separated,
    /// for several gateways: a request goes to one by its session, else in turn (as
    /// `simulate --gateways` sends them).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Model for requests whose workload names none.
    #[arg(long, default_value = "llama")]
    pub model: String,
    #[command(flatten)]
    pub workload: crate::fleet_sim::WorkloadArgs,
    /// Header carrying a request's session key (when the workload has one).
    #[arg(long, default_value = "x-session-id")]
    pub session_header: String,
    /// Header carrying a request's priority class (when the workload has one).
    #[arg(long, default_value = "x-priority")]
    pub priority_header: String,
    /// Most requests in flight; arrivals beyond it wait (and count their wait in TTFT).
    #[arg(long, default_value_t = 4096)]
    pub max_inflight: usize,
    /// The gateway's admin URL: its ready replicas are recorded once a second.
    #[arg(long)]
    pub admin_url: Option<String>,
    /// A request with no answer this long after it was sent fails.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "10m")]
    pub timeout: Duration,
    /// TTFT target for SLO attainment and goodput.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "2s")]
    pub ttft_slo: Duration,
    /// Mean inter-token latency target for SLO attainment and goodput.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "100ms")]
    pub itl_slo: Duration,
    /// Write the report (the same JSON as `simulate` writes per run) to this file.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// Replays the workload in real time against `args.url` and returns the measured run.
pub async fn replay(args: ReplayArgs) -> anyhow::Result<crate::fleet_sim::stats::RunReport> {
    use crate::fleet_sim::stats::{Failure, Recorder, RunReport, Sample as Point, Slo};
    let requests = args.workload.load()?;
    anyhow::ensure!(args.max_inflight > 0, "--max-inflight must be at least 1");
    let uris = args
        .url
        .split(',')
        .map(|url| format!("{}/v1/completions", url.trim().trim_end_matches('/')).parse())
        .collect::<Result<Vec<http::Uri>, _>>()?;
    let session_header = http::HeaderName::try_from(args.session_header.as_str())?;
    let priority_header = http::HeaderName::try_from(args.priority_header.as_str())?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let slo = Slo {
        ttft: args.ttft_slo.as_secs_f64(),
        itl: args.itl_slo.as_secs_f64(),
    };
    let total = requests.len();
    let span = requests.last().map_or(0.0, |r| r.arrival);
    eprintln!("loadgen: {total} requests over {span:.0} s to {}", args.url);
    let slots = Arc::new(tokio::sync::Semaphore::new(args.max_inflight));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Sample)>();
    let start = Instant::now();
    let sender = {
        let (client, args_model) = (client.clone(), args.model.clone());
        let timeout = args.timeout;
        tokio::spawn(async move {
            for (i, r) in requests.iter().enumerate() {
                tokio::time::sleep_until((start + Duration::from_secs_f64(r.arrival)).into()).await;
                let permit = slots.clone().acquire_owned().await.expect("never closed");
                let body = json!({
                    "model": r.model.clone().unwrap_or_else(|| args_model.clone()),
                    "prompt": r.prompt_text(),
                    "max_tokens": r.output_tokens, "ignore_eos": true, "stream": true,
                });
                let uri = uris[r.gateway(i, uris.len())].clone();
                let mut request =
                    http::Request::post(uri).header("content-type", "application/json");
                if let Some(session) = &r.session {
                    request = request.header(&session_header, session.as_str());
                }
                if let Some(priority) = &r.priority {
                    request = request.header(&priority_header, priority.as_str());
                }
                let request = request
                    .body(Full::new(Bytes::from(
                        serde_json::to_vec(&body).expect("JSON"),
                    )))
                    .expect("valid request");
                // TTFT counts from the planned arrival, so a saturated client shows as latency.
                let planned = start + Duration::from_secs_f64(r.arrival);
                let (client, tx) = (client.clone(), tx.clone());
                tokio::spawn(async move {
                    let sample =
                        tokio::time::timeout(timeout, one_request(&client, request, planned, true))
                            .await
                            .unwrap_or_else(|_| Sample::failed(planned));
                    drop(permit);
                    let _ = tx.send((i, sample));
                });
            }
        })
    };
    let replicas = Arc::new(std::sync::Mutex::new(Vec::<(f64, u32, u64)>::new()));
    let poller = args.admin_url.clone().map(|admin| {
        let (client, replicas) = (client.clone(), replicas.clone());
        tokio::spawn(async move {
            let Ok(uri) =
                format!("{}/admin/status", admin.trim_end_matches('/')).parse::<http::Uri>()
            else {
                return;
            };
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Some((ready, inflight)) = ready_replicas(&client, &uri).await {
                    let t = start.elapsed().as_secs_f64();
                    replicas
                        .lock()
                        .expect("not poisoned")
                        .push((t, ready, inflight));
                }
            }
        })
    });
    let mut rec = Recorder::default();
    let mut done = 0usize;
    let mut last_print = Instant::now();
    while let Some((_, sample)) = rx.recv().await {
        done += 1;
        match sample.ttft {
            Some(ttft) if sample.ok => {
                rec.first_token(ttft);
                for gap in &sample.gaps {
                    rec.itl.record(*gap);
                }
                let tokens = sample.gaps.len() as u32 + 1;
                rec.finished(ttft, sample.e2e, tokens, 0, 0, slo);
            }
            _ => rec.fail(Failure::Error),
        }
        if last_print.elapsed() >= Duration::from_secs(2) || done == total {
            last_print = Instant::now();
            let failed: usize = rec.failed.values().sum();
            eprintln!(
                "loadgen: {done} of {total} answered ({failed} failed), {:.0} s",
                start.elapsed().as_secs_f64()
            );
        }
        if done == total {
            break;
        }
    }
    sender.abort();
    if let Some(p) = poller {
        p.abort();
    }
    let wall = start.elapsed().as_secs_f64();
    let replicas = std::mem::take(&mut *replicas.lock().expect("not poisoned"));
    let replica_seconds = replicas
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * f64::from(w[0].1))
        .sum();
    let changes = |up: bool| {
        replicas
            .windows(2)
            .filter(|w| if up { w[1].1 > w[0].1 } else { w[1].1 < w[0].1 })
            .count() as u32
    };
    Ok(RunReport {
        name: "loadgen (real time)".into(),
        routing: String::new(),
        scaler: String::new(),
        requests: total,
        completed: rec.completed,
        failed: rec.failed.clone(),
        ttft: Summary::of(&mut rec.ttft),
        itl: rec.itl.summary(),
        e2e: Summary::of(&mut rec.e2e),
        throughput: rec.output_tokens as f64 / span.max(1e-9),
        slo,
        slo_attainment: rec.good_requests as f64 / total.max(1) as f64,
        goodput: rec.good_tokens as f64 / span.max(1e-9),
        // Only the replicas know these (their /metrics pages).
        prefix_cache_hit_rate: 0.0,
        preemptions: 0,
        replica_seconds,
        cost: None,
        scale_ups: changes(true),
        scale_downs: changes(false),
        max_replicas: replicas.iter().map(|r| r.1).max().unwrap_or(0),
        duration: wall,
        wall_seconds: wall,
        timeline: replicas
            .iter()
            .map(|&(t, ready, inflight)| Point {
                t,
                ready,
                inflight,
                ..Default::default()
            })
            .collect(),
        rollout: Vec::new(),
        replicas: Vec::new(),
        per_request: Vec::new(),
    })
}

/// Ready replicas and answers in flight over all pools, from the gateway's `/admin/status`.
async fn ready_replicas(client: &HttpClient, uri: &http::Uri) -> Option<(u32, u64)> {
    let response = client.get(uri.clone()).await.ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    let status: serde_json::Value = serde_json::from_slice(&body).ok()?;
    let pools = status.get("pools")?.as_array()?;
    let ready = pools
        .iter()
        .filter_map(|p| p.get("replicas")?.as_array())
        .map(|r| r.len() as u32)
        .sum();
    let inflight = pools
        .iter()
        .filter_map(|p| p.get("inflight")?.as_u64())
        .sum();
    Some((ready, inflight))
}
