//! The simulator's HTTP surface, matching vLLM's OpenAI-compatible server: completions and chat
//! completions (plain and streamed as SSE), embeddings for embedding profiles, models, health,
//! version and metrics; errors as OpenAI-style JSON bodies.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::driver::{self, BusyClock, Command};
use super::engine::{Engine, EngineRequest, Event, Finished};
use super::metrics::{MetricsFlavor, SimMetrics};
use super::profile::Profile;
use super::text::{Rng, token_text};
use crate::http_server::{self, Server};
use crate::openai::{self, fnv1a};

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
        (_, path) => error(StatusCode::NOT_FOUND, &format!("no route for {path}")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
    Embedding,
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

/// What an accepted request turned into, before the engine runs it.
struct Accepted {
    id: u64,
    kind: Kind,
    model: String,
    stream: bool,
    include_usage: bool,
    prompt_tokens: u32,
    output_tokens: u32,
    finish_reason: &'static str,
    inputs: usize,
    /// Seeds the answer's text and length: the same prompt gets the same answer (as with
    /// greedy decoding), whichever replica serves it.
    content_seed: u64,
    /// Prefix-cache identity of the prompt's full blocks.
    block_hashes: Vec<u64>,
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
    let body = match http_server::read_body(
        req.into_body(),
        shared.opts.max_body_bytes,
        http_server::BodyTimeouts::DEFAULT,
    )
    .await
    {
        Ok(body) => body,
        Err(http_server::BodyError::TooLarge) => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
        Err(http_server::BodyError::Unreadable) => {
            return error(StatusCode::BAD_REQUEST, "could not read the request body");
        }
        Err(http_server::BodyError::TimedOut) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "the request body came too slowly",
            );
        }
    };
    let fingerprint = (body.len(), fnv1a(&body));
    let mut response = answer(shared, &body, kind).await;
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

async fn answer(shared: Arc<Shared>, body: &[u8], kind: Kind) -> Response<SimBody> {
    let mut accepted = match accept(&shared, body, kind) {
        Ok(a) => a,
        Err((status, message)) => return error(status, &message),
    };
    let id = accepted.id;
    if shared.opts.fail_rate > 0.0
        && Rng::new(shared.opts.seed ^ id.wrapping_mul(0x9E37)).next_f64() < shared.opts.fail_rate
    {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "simulated failure (--fail-rate)",
        );
    }
    let (tx, rx) = mpsc::unbounded_channel();
    if shared.opts.instant {
        instant_events(&accepted, &tx);
    } else {
        let request = EngineRequest {
            id,
            prompt_tokens: accepted.prompt_tokens,
            block_hashes: std::mem::take(&mut accepted.block_hashes),
            output_tokens: accepted.output_tokens,
            lora: shared
                .opts
                .loras
                .contains(&accepted.model)
                .then(|| accepted.model.clone()),
        };
        if shared.engine.send(Command::Submit(request, tx)).is_err() {
            return error(StatusCode::SERVICE_UNAVAILABLE, "engine stopped");
        }
    }
    let reply = Answer {
        shared: shared.clone(),
        accepted,
        events: rx,
        text: String::new(),
        sent_role: false,
        done: false,
        finished: false,
        pending: std::collections::VecDeque::new(),
        crashing: false,
    };
    if reply.accepted.stream {
        let mut response = Response::new(SimBody::Stream(Box::new(reply)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    } else {
        reply.collect().await
    }
}

/// Checks a request body the way vLLM does and decides the answer's length.
fn accept(shared: &Shared, body: &[u8], kind: Kind) -> Result<Accepted, (StatusCode, String)> {
    let bad = |msg: &str| (StatusCode::BAD_REQUEST, msg.to_string());
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(&format!("malformed JSON: {e}")))?;
    let Some(model) = value.get("model").and_then(Value::as_str) else {
        return Err(bad("`model` is required"));
    };
    let opts = &shared.opts;
    if !opts.models.iter().chain(&opts.loras).any(|m| m == model) {
        return Err((
            StatusCode::NOT_FOUND,
            format!("The model `{model}` does not exist."),
        ));
    }
    if (kind == Kind::Embedding) != opts.profile.embedding {
        return Err(bad(if opts.profile.embedding {
            "this model only supports embeddings"
        } else {
            "this model does not support embeddings"
        }));
    }
    let stream = value
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if value.get("stream_options").is_some_and(|v| !v.is_null()) && !stream {
        return Err(bad(
            "Stream options can only be defined when `stream=True`.",
        ));
    }
    let include_usage = value
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let Some(text) = openai::prompt_text(&value) else {
        return Err(bad(match kind {
            Kind::Chat => "`messages` is required",
            Kind::Completion => "`prompt` is required",
            Kind::Embedding => "`input` is required",
        }));
    };
    let inputs = match value.get("input") {
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items.len().max(1),
        _ => 1,
    };
    let prompt_tokens = openai::approx_tokens(text.len()).max(1);
    let max_len = opts.profile.max_model_len;
    if prompt_tokens >= max_len {
        return Err(bad(&format!(
            "This model's maximum context length is {max_len} tokens. However, your request has {prompt_tokens} input tokens."
        )));
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let content_seed = opts.seed ^ fnv1a(text.as_bytes()) ^ fnv1a(model.as_bytes());
    let max_tokens = value
        .get("max_completion_tokens")
        .or_else(|| value.get("max_tokens"))
        .and_then(Value::as_u64)
        .map(|v| v.min(u64::from(u32::MAX)) as u32);
    let ignore_eos = value
        .get("ignore_eos")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let room = max_len - prompt_tokens;
    let (output_tokens, finish_reason) = if kind == Kind::Embedding {
        (1, "stop")
    } else {
        let natural = Rng::new(content_seed).answer_length(opts.mean_output_tokens);
        let limit = max_tokens.unwrap_or(room).min(room).max(1);
        if ignore_eos || natural >= limit {
            (limit, "length")
        } else {
            (natural, "stop")
        }
    };
    let kv_tokens = u64::from(opts.profile.kv_blocks) * u64::from(opts.profile.block_size);
    if u64::from(prompt_tokens + output_tokens) > kv_tokens {
        return Err(bad(&format!(
            "prompt and answer ({} tokens) exceed the KV cache ({kv_tokens} tokens)",
            prompt_tokens + output_tokens
        )));
    }
    Ok(Accepted {
        id,
        kind,
        model: model.to_string(),
        stream,
        include_usage,
        prompt_tokens,
        output_tokens,
        finish_reason,
        inputs,
        content_seed,
        block_hashes: openai::block_hashes(text.as_bytes(), opts.profile.block_size as usize),
    })
}

/// `--instant`: every token at once, no engine.
fn instant_events(a: &Accepted, tx: &mpsc::UnboundedSender<Event>) {
    for index in 0..a.output_tokens {
        let _ = tx.send(Event::Token {
            id: a.id,
            index,
            gap: None,
        });
    }
    let _ = tx.send(Event::Finished(Finished {
        id: a.id,
        prompt_tokens: a.prompt_tokens,
        output_tokens: a.output_tokens,
        cached_tokens: 0,
        queue_time: 0.0,
        ttft: 0.0,
        e2e: 0.0,
    }));
}

/// One answer in progress: turns engine events into a JSON body or SSE chunks. Dropping it
/// before the end (client gone) aborts the request in the engine.
/// How long a stream hit by `--crash-after` hangs before the process exits.
const CRASH_DELAY: Duration = Duration::from_millis(50);

/// The `--crash-after` fault: exit abruptly (status 70), as a replica that dies would.
fn crash(request: u64) -> ! {
    eprintln!("infergate sim: crashing on purpose (--crash-after {request})");
    std::process::exit(70);
}

struct Answer {
    shared: Arc<Shared>,
    accepted: Accepted,
    events: mpsc::UnboundedReceiver<Event>,
    text: String,
    sent_role: bool,
    /// `[DONE]` was sent.
    done: bool,
    /// The engine finished the request.
    finished: bool,
    pending: std::collections::VecDeque<Bytes>,
    /// `--crash-after` struck: nothing more is sent, and the process exits shortly.
    crashing: bool,
}

impl Drop for Answer {
    fn drop(&mut self) {
        if !self.finished && !self.shared.opts.instant {
            let _ = self.shared.engine.send(Command::Abort(self.accepted.id));
        }
    }
}

impl Answer {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.accepted.kind, chunk) {
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Chat, false) => "chat.completion",
            _ => "text_completion",
        }
    }

    fn id_text(&self) -> String {
        match self.accepted.kind {
            Kind::Chat => format!("chatcmpl-sim-{}", self.accepted.id),
            Kind::Completion => format!("cmpl-sim-{}", self.accepted.id),
            Kind::Embedding => format!("embd-sim-{}", self.accepted.id),
        }
    }

    fn usage(&self, f: &Finished) -> Value {
        let mut usage = json!({
            "prompt_tokens": f.prompt_tokens,
            "total_tokens": f.prompt_tokens + if self.accepted.kind == Kind::Embedding { 0 } else { f.output_tokens },
        });
        if self.accepted.kind != Kind::Embedding {
            usage["completion_tokens"] = json!(f.output_tokens);
            usage["prompt_tokens_details"] = json!({"cached_tokens": f.cached_tokens});
        }
        usage
    }

    fn record(&self, f: &Finished) {
        self.shared
            .metrics
            .observe_finished(f, self.accepted.finish_reason);
    }

    /// Whether `--crash-after` strikes this request at its token `index` (its second token:
    /// the client has a first one).
    fn crash_due(&self, index: u32) -> bool {
        self.shared.opts.crash_after == Some(self.accepted.id) && index >= 1
    }

    /// A stream stops where it is and the process exits a moment later, so the chunks already
    /// handed over reach the client first (exiting at once could beat their write when the
    /// engine delivers two tokens in a row).
    fn crash_mid_stream(&mut self) {
        self.crashing = true;
        let id = self.accepted.id;
        tokio::spawn(async move {
            tokio::time::sleep(CRASH_DELAY).await;
            crash(id);
        });
    }

    async fn collect(mut self) -> Response<SimBody> {
        while let Some(event) = self.events.recv().await {
            match event {
                Event::Token { index, .. } => {
                    if self.crash_due(index) {
                        crash(self.accepted.id); // nothing of a non-streamed answer went out
                    }
                    self.text
                        .push_str(token_text(self.accepted.content_seed, index));
                }
                Event::Preempted { .. } => {}
                Event::Finished(f) => {
                    self.finished = true;
                    self.record(&f);
                    let a = &self.accepted;
                    let created = driver::unix_now() as u64;
                    let body = match a.kind {
                        Kind::Embedding => {
                            let data: Vec<Value> = (0..a.inputs)
                                .map(|i| json!({"object": "embedding", "index": i, "embedding": embedding(a.id + i as u64, self.shared.opts.profile.embedding_dims)}))
                                .collect();
                            json!({"id": self.id_text(), "object": "list", "created": created, "model": a.model, "data": data, "usage": self.usage(&f)})
                        }
                        Kind::Chat => json!({
                            "id": self.id_text(), "object": self.object(false), "created": created, "model": a.model,
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text}, "logprobs": null, "finish_reason": a.finish_reason}],
                            "usage": self.usage(&f),
                        }),
                        Kind::Completion => json!({
                            "id": self.id_text(), "object": self.object(false), "created": created, "model": a.model,
                            "choices": [{"index": 0, "text": self.text, "logprobs": null, "finish_reason": a.finish_reason}],
                            "usage": self.usage(&f),
                        }),
                    };
                    return json_response(StatusCode::OK, &body);
                }
            }
        }
        error(StatusCode::SERVICE_UNAVAILABLE, "engine stopped")
    }

    fn chunk(&mut self, content: Option<&str>, finish: Option<&str>) -> Bytes {
        let created = driver::unix_now() as u64;
        let choice = match self.accepted.kind {
            Kind::Chat => {
                let mut delta = json!({});
                if !self.sent_role {
                    delta["role"] = json!("assistant");
                    self.sent_role = true;
                }
                if let Some(c) = content {
                    delta["content"] = json!(c);
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            _ => {
                json!({"index": 0, "text": content.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        };
        let value = json!({"id": self.id_text(), "object": self.object(true), "created": created, "model": self.accepted.model, "choices": [choice]});
        sse(&value)
    }

    /// Turns one engine event into the SSE bytes it produces.
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Token { index, .. } => {
                if self.crash_due(index) {
                    return self.crash_mid_stream();
                }
                let text = token_text(self.accepted.content_seed, index);
                let last = index + 1 == self.accepted.output_tokens;
                let finish = last.then_some(self.accepted.finish_reason);
                let bytes = self.chunk(Some(text), finish);
                self.pending.push_back(bytes);
            }
            Event::Preempted { .. } => {}
            Event::Finished(f) => {
                self.finished = true;
                self.record(&f);
                if self.accepted.include_usage {
                    let created = driver::unix_now() as u64;
                    let value = json!({"id": self.id_text(), "object": self.object(true), "created": created, "model": self.accepted.model, "choices": [], "usage": self.usage(&f)});
                    self.pending.push_back(sse(&value));
                }
                self.pending
                    .push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                self.done = true;
            }
        }
    }
}

fn sse(value: &Value) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut out, value).expect("a JSON value serializes");
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// A deterministic unit-length vector.
fn embedding(seed: u64, dims: u32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let v: Vec<f32> = (0..dims).map(|_| rng.next_f64() as f32 - 0.5).collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.into_iter().map(|x| x / norm).collect()
}

/// Response body: a whole buffer, or an SSE stream fed by engine events.
enum SimBody {
    Full(Option<Bytes>),
    Stream(Box<Answer>),
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            SimBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            SimBody::Stream(answer) => loop {
                if let Some(bytes) = answer.pending.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                if answer.crashing {
                    return Poll::Pending; // the process is about to exit
                }
                if answer.done {
                    return Poll::Ready(None);
                }
                match answer.events.poll_recv(cx) {
                    Poll::Ready(Some(event)) => answer.on_event(event),
                    // The engine went away mid-answer: end the stream.
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, SimBody::Full(None))
    }
}

fn full(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<SimBody> {
    let mut response = Response::new(SimBody::Full(Some(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response<SimBody> {
    full(
        status,
        "application/json",
        Bytes::from(serde_json::to_vec(value).expect("a JSON value serializes")),
    )
}

fn error(status: StatusCode, message: &str) -> Response<SimBody> {
    let kind = match status {
        StatusCode::BAD_REQUEST => "BadRequestError",
        StatusCode::NOT_FOUND => "NotFoundError",
        StatusCode::PAYLOAD_TOO_LARGE => "RequestTooLargeError",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailableError",
        _ => "InternalServerError",
    };
    full(
        status,
        "application/json",
        Bytes::from(openai::error_body(message, kind, status.as_u16())),
    )
}
