//! `infergate load`: a bounded load generator for OpenAI-compatible endpoints (the gateway or a
//! replica). A fixed number of concurrent clients send chat completions until a request count
//! or a time limit is reached, printing progress each second and a latency report at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

impl LoadReport {
    pub fn render(&self) -> String {
        let mut ttft = self.ttft.clone();
        let mut e2e = self.e2e.clone();
        ttft.sort_by(f64::total_cmp);
        e2e.sort_by(f64::total_cmp);
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let ms = |v: f64| v * 1000.0;
        format!(
            "requests: {} ok, {} failed in {:.1}s ({:.1} req/s, {:.0} output tokens/s)\n\
             ttft ms:   p50 {:.1}  p90 {:.1}  p99 {:.1}\n\
             e2e  ms:   p50 {:.1}  p90 {:.1}  p99 {:.1}",
            self.ok,
            self.failed,
            secs,
            self.ok as f64 / secs,
            self.output_tokens as f64 / secs,
            ms(percentile(&ttft, 50.0)),
            ms(percentile(&ttft, 90.0)),
            ms(percentile(&ttft, 99.0)),
            ms(percentile(&e2e, 50.0)),
            ms(percentile(&e2e, 90.0)),
            ms(percentile(&e2e, 99.0)),
        )
    }
}

struct Sample {
    ttft: Option<f64>,
    e2e: f64,
    ok: bool,
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
                let sample = tokio::time::timeout(remaining, one_request(&client, request, sent, args.stream)).await.unwrap_or(Sample {
                    ttft: None,
                    e2e: sent.elapsed().as_secs_f64(),
                    ok: false,
                });
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

async fn one_request(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    request: http::Request<Full<Bytes>>,
    sent: Instant,
    stream: bool,
) -> Sample {
    let fail = |sent: Instant| Sample {
        ttft: None,
        e2e: sent.elapsed().as_secs_f64(),
        ok: false,
    };
    let Ok(response) = client.request(request).await else {
        return fail(sent);
    };
    if !response.status().is_success() {
        return fail(sent);
    }
    let mut body = response.into_body();
    let mut ttft = None;
    let mut tail = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return fail(sent);
        };
        if let Some(data) = frame.data_ref() {
            ttft.get_or_insert_with(|| sent.elapsed().as_secs_f64());
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
    }
}
