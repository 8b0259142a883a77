//! The simulator's HTTP surface, matching vLLM's OpenAI-compatible server: completions and chat
//! completions (plain and streamed as SSE), embeddings for embedding profiles, models, health,
//! version and metrics; errors as OpenAI-style JSON bodies. This file holds the options, the
//! server's start and its routes; a request's checks are in `accept`, its answer (whole or
//! streamed) in `answer`, the response bodies in `body`.

mod accept;
mod answer;
mod body;
mod instant;
mod responses;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::driver::{self, BusyClock, Command};
use super::engine::Engine;
use super::metrics::{MetricsFlavor, SimMetrics};
use super::profile::Profile;
use crate::http_server::{self, Server};
use crate::openai::fnv1a;
use accept::Kind;
use body::{SimBody, error, full, json_response};
use instant::Endpoint;

/// Response headers with the length and FNV-1a hash of the request body as received.
pub const REQUEST_BYTES_HEADER: &str = "x-sim-request-bytes";
pub const REQUEST_HASH_HEADER: &str = "x-sim-request-fnv1a";
/// Response header naming the HTTP version the request arrived with (`h2` or `http/1.1`).
pub const REQUEST_VERSION_HEADER: &str = "x-sim-request-version";

/// Header that forces an error answer with the given status code (fault injection for tests).
pub const FORCE_ERROR_HEADER: &str = "x-sim-force-error";

/// Everything a simulator instance is configured with.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub listen: SocketAddr,
    /// Served model names; the first is the base model, the rest are LoRA adapters' names when
    /// `loras` lists them.
    pub models: Vec<String>,
    pub loras: Vec<String>,
    pub profile: Profile,
    /// Time scale: 10 runs the engine ten times faster than real time.
    pub speed: f64,
    pub seed: u64,
    /// `/health` answers 503 (and the API 503) until this long after start.
    pub startup_delay: Duration,
    /// Share of requests answered with a 500 error (0–1).
    pub fail_rate: f64,
    /// The process exits abruptly in the middle of streaming its Nth request (fault injection).
    pub crash_after: Option<u64>,
    /// Answer at once without the engine model, for measuring a proxy's own overhead.
    pub instant: bool,
    pub metrics_flavor: MetricsFlavor,
    /// Mean answer length when a request does not fix it (tokens).
    pub mean_output_tokens: f64,
    pub max_body_bytes: usize,
    /// `pod` label of the GPU gauge.
    pub pod: String,
    pub drain_timeout: Duration,
}

impl SimOptions {
    pub fn new(profile: Profile) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            models: vec!["sim-model".into()],
            loras: Vec::new(),
            profile,
            speed: 1.0,
            seed: 0,
            startup_delay: Duration::ZERO,
            fail_rate: 0.0,
            crash_after: None,
            instant: false,
            metrics_flavor: MetricsFlavor::Vllm,
            mean_output_tokens: 128.0,
            max_body_bytes: 64 << 20,
            pod: "infergate-sim".into(),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

struct Shared {
    opts: SimOptions,
    metrics: Arc<SimMetrics>,
    busy: Arc<BusyClock>,
    engine: mpsc::UnboundedSender<Command>,
    started: Instant,
    next_id: AtomicU64,
}

/// Starts a simulator on `opts.listen`; the returned server knows its bound address.
pub async fn start(opts: SimOptions) -> std::io::Result<Server> {
    let listener = http_server::bind(opts.listen, 1)?;
    let metrics = Arc::new(SimMetrics::new(
        opts.metrics_flavor,
        &opts.models[0],
        &opts.profile,
        &opts.pod,
        !opts.loras.is_empty(),
    ));
    let busy = Arc::new(BusyClock::default());
    let started = Instant::now();
    let engine = driver::spawn(
        Engine::new(opts.profile.clone()),
        opts.speed,
        metrics.clone(),
        busy.clone(),
        started,
    );
    let drain = opts.drain_timeout;
    let shared = Arc::new(Shared {
        opts,
        metrics,
        busy,
        engine,
        started,
        next_id: AtomicU64::new(1),
    });
    http_server::serve(
        "sim",
        listener,
        drain,
        http_server::Limits::SMALL,
        move |_| {
            let shared = shared.clone();
            move |req, _peer| handle(shared.clone(), req)
        },
    )
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<SimBody> {
    let ready = shared.started.elapsed() >= shared.opts.startup_delay;
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") if ready => full(StatusCode::OK, "text/plain", Bytes::new()),
        (&Method::GET, "/health") => error(StatusCode::SERVICE_UNAVAILABLE, "model is loading"),
        (&Method::GET, "/metrics") => {
            let wall_ns = shared.started.elapsed().as_nanos() as u64;
            shared
                .metrics
                .set_gpu_util_percent(shared.busy.percent_since_last(wall_ns));
            full(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                Bytes::from(shared.metrics.render()),
            )
        }
        (&Method::GET, "/version") => {
            json_response(StatusCode::OK, &json!({"version": "0.11.0+infergate-sim"}))
        }
        _ if !ready => error(StatusCode::SERVICE_UNAVAILABLE, "model is loading"),
        (&Method::GET, "/v1/models") => models(&shared),
        (&Method::POST, "/v1/completions") => generate(shared, req, Kind::Completion).await,
        (&Method::POST, "/v1/chat/completions") => generate(shared, req, Kind::Chat).await,
        (&Method::POST, "/v1/embeddings") => generate(shared, req, Kind::Embedding).await,
        (&Method::POST, "/v1/responses") => generate(shared, req, Kind::Response).await,
        (&Method::POST, "/rerank" | "/v1/rerank" | "/v2/rerank") => {
            engine_free(shared, req, Endpoint::Rerank).await
        }
        (&Method::POST, "/score" | "/v1/score") => engine_free(shared, req, Endpoint::Score).await,
        (&Method::POST, "/tokenize") => engine_free(shared, req, Endpoint::Tokenize).await,
        (&Method::POST, "/detokenize") => engine_free(shared, req, Endpoint::Detokenize).await,
        (&Method::POST, "/v1/audio/transcriptions") => {
            engine_free(shared, req, Endpoint::Transcription).await
        }
        (_, path) => error(StatusCode::NOT_FOUND, &format!("no route for {path}")),
    }
}

fn models(shared: &Shared) -> Response<SimBody> {
    let created = driver::unix_now() as u64;
    let data: Vec<Value> = shared
        .opts
        .models
        .iter()
        .chain(&shared.opts.loras)
        .map(|m| {
            json!({
                "id": m, "object": "model", "created": created, "owned_by": "vllm",
                "root": m, "parent": null, "max_model_len": shared.opts.profile.max_model_len,
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// An endpoint answered without the engine ([`instant`]).
async fn engine_free(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    endpoint: Endpoint,
) -> Response<SimBody> {
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    match read(&shared, req).await {
        Ok(body) => instant::answer(&shared, endpoint, &body, &content_type),
        Err(refused) => refused,
    }
}

/// A request's body, bounded as vLLM bounds it; an error answer when it cannot be read.
async fn read(shared: &Shared, req: Request<Incoming>) -> Result<Bytes, Response<SimBody>> {
    match http_server::read_body(
        req.into_body(),
        shared.opts.max_body_bytes,
        http_server::BodyTimeouts::DEFAULT,
    )
    .await
    {
        Ok(body) => Ok(body),
        Err(http_server::BodyError::TooLarge) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        )),
        Err(http_server::BodyError::Unreadable) => Err(error(
            StatusCode::BAD_REQUEST,
            "could not read the request body",
        )),
        Err(http_server::BodyError::TimedOut) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "the request body came too slowly",
        )),
    }
}

async fn generate(shared: Arc<Shared>, req: Request<Incoming>, kind: Kind) -> Response<SimBody> {
    if let Some(status) = req
        .headers()
        .get(FORCE_ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|v| StatusCode::from_u16(v).ok())
    {
        return error(status, "error forced by the x-sim-force-error header");
    }
    let version = req.version();
    let body = match read(&shared, req).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let fingerprint = (body.len(), fnv1a(&body));
    let mut response = answer::answer(shared, &body, kind).await;
    // What arrived, so tests can check a proxy forwarded the body byte for byte.
    let headers = response.headers_mut();
    headers.insert(REQUEST_BYTES_HEADER, HeaderValue::from(fingerprint.0));
    headers.insert(REQUEST_HASH_HEADER, HeaderValue::from(fingerprint.1));
    let version = if version == http::Version::HTTP_2 {
        "h2"
    } else {
        "http/1.1"
    };
    headers.insert(REQUEST_VERSION_HEADER, HeaderValue::from_static(version));
    response
}
