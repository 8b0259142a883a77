//! The request path: read the body (bounded), classify it, find the pool, ask the router for a
//! replica, forward the same bytes, and stream the answer back. Connect failures are retried on
//! another replica before any byte reaches the client; nothing is retried after that.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use hyper::body::{Body, Incoming};

use super::auth;
use super::body::{GatewayBody, ProxiedBody, RequestBody};
use super::classify::{self, Scanner, classify_scanned, rewrite_model};
use super::error::{GatewayError, echo};
use super::pools::{GatewayPool, Pools};
use super::usage::{Access, AnswerRecord};
use crate::config::Config;
use crate::http_server::{BodyError, BodyTimeouts, read_body_frames};
use crate::pool::queue::Refused;
use crate::router;

/// Shared by every request.
pub struct GatewayState {
    pub config: Config,
    pub pools: Pools,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The other gateways of the deployment (for `/admin/status`).
    pub peers: Arc<crate::peers::Peers>,
    /// Set when shutdown begins: `/readyz` says so, so that load balancers stop sending here
    /// while the open answers finish.
    pub draining: std::sync::atomic::AtomicBool,
    /// What configuration reloads have done (for `/admin/status`).
    pub reloads: Arc<crate::admin::Reloads>,
    /// The request rates of the API keys that have one.
    pub rate_limits: auth::RateLimits,
    /// SHA-256 of the admin listener's bearer token, when it requires one.
    pub admin_token: Option<[u8; 32]>,
    /// The prompt prefixes sent, for the peers' reads of `/admin/routing` (when the gateways
    /// exchange routing state).
    pub placements: Option<Arc<crate::peers::routing::PlacementLog>>,
    /// The operators' actions (`/admin/actions`), kept across reloads.
    pub actions: Arc<crate::admin::actions::ActionLog>,
    /// Events to chat (`chatops.notify`).
    pub notifier: crate::notify::Notifier,
    /// Each pool's replica count over the last hour, kept across reloads.
    pub history: Arc<crate::admin::history::History>,
    /// Request spans to the OTLP collector (`tracing`).
    pub tracer: Option<Arc<crate::otel::Tracer>>,
}

/// Answers one request on gateway worker thread `worker`. Every answer carries the request's
/// id (`x-request-id`: the client's, else a new one), which the replica gets too, as it gets
/// the request's trace context when tracing is on.
pub async fn handle(
    state: Arc<GatewayState>,
    worker: usize,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<GatewayBody> {
    let received = Instant::now();
    let request_id = request_id(req.headers());
    let path = req.uri().path();
    // Probes are not traced.
    let span = match &state.tracer {
        Some(tracer) if path != "/health" => {
            let mut span = tracer.span(req.headers(), span_name(req.method(), path));
            if span.recording() {
                span.set("http.request.method", req.method().to_string());
                span.set("url.path", echo(path));
                span.set("client.address", peer.ip().to_string());
                let id = String::from_utf8_lossy(request_id.as_bytes()).into_owned();
                span.set("infergate.request_id", id);
            }
            Some(span)
        }
        _ => None,
    };
    let access = state.config.listeners.access_log.then(|| {
        Box::new(Access {
            request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
            client: Some(peer),
            method: req.method().to_string(),
            path: echo(path),
            trace_id: span.as_ref().map_or(String::new(), |s| s.trace_id()),
            ..Access::default()
        })
    });
    let mut ctx = RequestContext {
        request_id: request_id.clone(),
        received,
        counted: false,
        access,
        span,
    };
    let mut response = match (req.method(), path) {
        (&Method::POST, path) if PROXIED.contains(&path) => {
            match proxy(state.clone(), worker, req, peer, &mut ctx).await {
                Ok(response) => response,
                Err(e) => refused(&state, e, &mut ctx),
            }
        }
        (&Method::GET, "/v1/models") => {
            let pools = &state.pools.pools;
            let listing = state
                .pools
                .models
                .listing(|p| pools.get(p).and_then(|pool| pool.listed_models.load_full()));
            let mut response = Response::new(GatewayBody::full(listing));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        (&Method::GET, "/health") => Response::new(GatewayBody::full(Bytes::new())),
        (_, path) if path == "/v1/models" || PROXIED.contains(&path) => {
            refused(&state, GatewayError::MethodNotAllowed, &mut ctx)
        }
        (_, path) => {
            let error = GatewayError::NotFound(echo(path));
            refused(&state, error, &mut ctx)
        }
    };
    response.headers_mut().insert(REQUEST_ID, request_id);
    // A proxied answer's span ends with its stream; any other ends here.
    if let Some(span) = ctx.span {
        span.end(response.status());
    }
    response
}

/// A span's name: the method and, for the gateway's own paths, the path (a client's unknown
/// paths would make names without end).
fn span_name(method: &Method, path: &str) -> &'static str {
    static PROXIED_NAMES: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| PROXIED.iter().map(|p| format!("POST {p}")).collect());
    match PROXIED.iter().position(|p| *p == path) {
        Some(i) if method == Method::POST => &PROXIED_NAMES[i],
        _ if method == Method::GET && path == "/v1/models" => "GET /v1/models",
        _ if method == Method::GET => "GET",
        _ if method == Method::POST => "POST",
        _ => "HTTP",
    }
}

/// The paths proxied to a replica of the request's model (each a POST): OpenAI's and vLLM's
/// generation, pooling and utility endpoints. A body is JSON with a `model`, or for audio a
/// multipart form with a `model` field.
const PROXIED: &[&str] = &[
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/rerank",
    "/v2/rerank",
    "/rerank",
    "/v1/score",
    "/score",
    "/tokenize",
    "/detokenize",
    "/pooling",
    "/classify",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
];

/// The request id header: the client's own, else one made here.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client's request id if it is a sensible one (1–128 visible ASCII characters), else a
/// new random one (32 hex digits).
fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(REQUEST_ID)
        .filter(|v| (1..=128).contains(&v.len()) && v.as_bytes().iter().all(u8::is_ascii_graphic))
        .cloned()
        .unwrap_or_else(|| {
            let id = format!("{:016x}{:016x}", random_u64(), random_u64());
            HeaderValue::from_str(&id).expect("hex digits")
        })
}

/// What the request path keeps of one request from start to answer.
struct RequestContext {
    request_id: HeaderValue,
    received: Instant,
    /// `infergate_requests_total` has counted it (once it was routed).
    counted: bool,
    /// The access-log line's fields so far (when the log is on).
    access: Option<Box<Access>>,
    /// The request's span (when tracing is on) until its answer's record takes it.
    span: Option<crate::otel::RequestSpan>,
}

/// A request answered with an error by the gateway itself: counted (with empty pool and model
/// labels when it was refused before routing: a client's model name is not a label) and logged.
fn refused(
    state: &GatewayState,
    error: GatewayError,
    ctx: &mut RequestContext,
) -> Response<GatewayBody> {
    let status = error.status();
    if !ctx.counted {
        state
            .metrics
            .requests
            .with_label_values(&["", "", status.as_str()])
            .inc();
    }
    if let Some(access) = &ctx.access {
        super::usage::log_access(access, status, None, ctx.received.elapsed(), None);
    }
    error.into_response()
}

async fn proxy(
    state: Arc<GatewayState>,
    worker: usize,
    req: Request<Incoming>,
    peer: SocketAddr,
    ctx: &mut RequestContext,
) -> Result<Response<GatewayBody>, GatewayError> {
    let received = ctx.received;
    let (mut parts, body) = req.into_parts();
    // Before the body is read: an unknown client sends nothing further.
    let key = auth::authenticate(&state.config.auth, &parts.headers)?;
    let budget = match key {
        Some(key) => state.rate_limits.admit(key, received)?,
        None => None,
    };
    // The replica logs the same id, in the same trace.
    parts.headers.insert(REQUEST_ID, ctx.request_id.clone());
    if let Some(span) = &ctx.span {
        span.inject(&mut parts.headers);
    }
    let listeners = &state.config.listeners;
    let limit = listeners.max_body_size;
    // A client waiting for `100 Continue` with a declared body over the limit gets 413 at once:
    // it has sent nothing to read and drop yet.
    // (hyper read the declared length already: the body's size hint.)
    if body.size_hint().lower() > limit && parts.headers.contains_key(header::EXPECT) {
        return Err(GatewayError::BodyTooLarge(limit));
    }
    let timeouts = BodyTimeouts {
        idle: listeners.body_idle_timeout,
        total: listeners.body_timeout,
    };
    // Classified as it arrives, each frame while it is still in cache (a form is read whole).
    let form = classify::is_form(&parts.headers);
    let mut scanner = Scanner::new();
    let frames = read_body_frames(body, limit as usize, timeouts, |frame| {
        if !form {
            scanner.feed(frame);
        }
    });
    let body = match frames.await {
        Ok(frames) => RequestBody::new(frames),
        Err(BodyError::TooLarge) => return Err(GatewayError::BodyTooLarge(limit)),
        Err(BodyError::Unreadable) => return Err(GatewayError::BodyRead),
        Err(BodyError::TimedOut) => return Err(GatewayError::BodyTimeout),
    };
    let classes = &state.config.classification;
    let mut classified = if form {
        classify::classify_form(body.frames(), &parts.headers, classes)?
    } else {
        classify_scanned(scanner, body.frames(), &parts.headers, classes)?
    };
    if let Some(key) = key {
        if !auth::may_use(key, &classified.model) {
            return Err(GatewayError::Forbidden(echo(&classified.model)));
        }
        let default = state.config.classification.default_priority;
        classified.features.priority = auth::priority(key, classified.features.priority, default);
        // The gateway's key is not the replicas' business.
        parts.headers.remove(header::AUTHORIZATION);
    }
    let route = state
        .pools
        .route(&classified.model)
        .ok_or_else(|| GatewayError::UnknownModel(echo(&classified.model)))?;
    let version = match &route.route.split {
        Some(split) => Some(choose_version(split, &parts.headers, key)?),
        None => None,
    };
    let (pool_index, rewrite_to) = match (version, &route.route.tier) {
        (Some(v), _) => (v.pool, Some(&v.served)),
        (None, Some(tier)) => {
            let (pool, served) = state.pools.tier_member(tier, &classified.features);
            (pool, Some(served))
        }
        (None, None) => (route.route.pool, route.route.rewrite_to.as_ref()),
    };
    let pool = state.pools.pools[pool_index].clone();
    classified.features.adapter = route.route.adapter;
    pool.metrics.bytes_in.inc_by(body.len() as u64);
    // Prefix blocks of the prompt as sent (before any alias rewrite), for pools that use them.
    let blocks = match (&pool.prefix_index, &classified.prompt_span) {
        (Some(index), Some(span)) => {
            let block_chars = pool.config.routing.prefix_block_chars as usize;
            let blocks = crate::openai::chained_block_hashes_of(
                classify::slices(body.frames(), span.clone()),
                block_chars,
                router::prefix::MAX_BLOCKS,
            );
            classified.features.prefix = index.lookup(&blocks);
            blocks
        }
        _ => Vec::new(),
    };
    if let Some((mirror, share)) = route.route.split.as_ref().and_then(|s| s.mirror.as_ref())
        && ((random_u64() >> 11) as f64 / (1u64 << 53) as f64) < *share
    {
        let copy = Copy {
            parts: &parts,
            body: &body,
            features: &classified.features,
            model: &classified.model,
            peer,
        };
        mirror_request(&state, worker, mirror, copy);
    }
    let body = match rewrite_to {
        Some(target) if form => {
            let whole = classify::contiguous(body.frames());
            let content_type = parts.headers[header::CONTENT_TYPE].to_str().unwrap_or("");
            let renamed = classify::rewrite_form_model(&whole, content_type, target)
                .ok_or(GatewayError::MissingModel)?;
            RequestBody::from(Bytes::from(renamed))
        }
        Some(target) => {
            let whole = classify::contiguous(body.frames());
            RequestBody::from(Bytes::from(rewrite_model(&whole, target)?))
        }
        None => body,
    };
    let version_name = version.map_or("", |v| v.name.as_str());
    let key_name = key.map_or("", |k| k.name.as_str());
    if let Some(access) = &mut ctx.access {
        access.model = echo(&classified.model);
        access.pool = pool.name().to_string();
        access.version = version_name.to_string();
        access.key = key_name.to_string();
    }
    if let Some(span) = ctx.span.as_mut().filter(|s| s.recording()) {
        span.set("gen_ai.request.model", echo(&classified.model));
        span.set("infergate.pool", pool.name().to_string());
        span.set("infergate.version", version_name.to_string());
        span.set("infergate.api_key", key_name.to_string());
        span.set(
            "infergate.policy",
            crate::config::yaml_name(&pool.config.routing.policy),
        );
        span.set(
            "infergate.prompt_tokens_estimate",
            i64::from(classified.features.prompt_tokens),
        );
    }
    let tokens = |kind| {
        let labels = [pool.name(), &classified.model, version_name, key_name, kind];
        state.metrics.tokens.with_label_values(&labels)
    };
    // The answer's record logs it and ends its span when it ends; when there is no answer
    // from a replica, it comes back and `handle` does.
    let mut record = Some(AnswerRecord::new(
        budget,
        u64::from(classified.features.prompt_tokens),
        [tokens("prompt"), tokens("completion")],
        ctx.access.take(),
        ctx.span.take(),
    ));
    let request = Outgoing {
        parts: &parts,
        body,
        peer,
        over_tls: state.config.listeners.tls.is_some(),
        record: &mut record,
        features: &classified.features,
        blocks: &blocks,
        received,
    };
    let mut result = forward(&pool, worker, &state.config.classification, request).await;
    if let Some(unanswered) = record {
        ctx.access = unanswered.access;
        ctx.span = unanswered.span;
    }
    if let (Some(v), Ok(response)) = (version, &mut result) {
        // Which version answered, for A/B analysis on the client's side.
        if let Ok(name) = HeaderValue::from_str(&v.name) {
            response.headers_mut().insert(VERSION_HEADER, name);
        }
    }
    let status = match &result {
        Ok(response) => response.status(),
        Err(e) => e.status(),
    };
    ctx.counted = true;
    // The resolved counter names the route's own pool: a split's versions and a tier's
    // pools count by theirs.
    if status == http::StatusCode::OK && version.is_none() && route.route.tier.is_none() {
        route.ok_requests.inc();
    } else {
        state
            .metrics
            .requests
            .with_label_values(&[pool.name(), &classified.model, status.as_str()])
            .inc();
    }
    result
}

/// What a mirrored request copies from the client's.
struct Copy<'a> {
    parts: &'a http::request::Parts,
    /// The body as the client sent it (before any rewrite).
    body: &'a RequestBody,
    features: &'a router::RequestFeatures,
    /// The name the client asked for (the metrics' `model` label).
    model: &'a str,
    peer: SocketAddr,
}

/// Sends a copy of the request to a split's shadow version, on this worker, and reads its
/// answer to the end (the pool's metrics record it) and drops it. Only when the shadow's pool
/// takes it at once: a mirror never queues, so under load it is shed first.
fn mirror_request(
    state: &Arc<GatewayState>,
    worker: usize,
    mirror: &crate::pool::models::Version,
    copy: Copy<'_>,
) {
    use crate::pool::admission::{self, Admit};
    let pool = state.pools.pools[mirror.pool].clone();
    if !matches!(
        admission::on_arrival(pool.gate(Instant::now()), true),
        Admit::Go
    ) {
        state
            .metrics
            .mirror_shed
            .with_label_values(&[pool.name()])
            .inc();
        return;
    }
    let Ok(body) = rewrite_model(&classify::contiguous(copy.body.frames()), &mirror.served) else {
        return;
    };
    let Ok(request) = Request::builder()
        .method(copy.parts.method.clone())
        .uri(copy.parts.uri.clone())
        .version(copy.parts.version)
        .body(())
    else {
        return;
    };
    let (mut parts, ()) = request.into_parts();
    parts.headers = copy.parts.headers.clone();
    // The primary pool's prefix matches and adapter say nothing of the shadow's replicas.
    let features = router::RequestFeatures {
        prefix: Default::default(),
        adapter: None,
        ..copy.features.clone()
    };
    let (state, model, peer) = (state.clone(), copy.model.to_string(), copy.peer);
    tokio::task::spawn_local(async move {
        let request = Outgoing {
            parts: &parts,
            body: RequestBody::from(Bytes::from(body)),
            peer,
            features: &features,
            blocks: &[],
            received: Instant::now(),
            over_tls: state.config.listeners.tls.is_some(),
            // A shadow's answer goes to no client: it spends nobody's tokens.
            record: &mut None,
        };
        let result = forward(&pool, worker, &state.config.classification, request).await;
        let status = match result {
            Ok(response) => {
                let status = response.status();
                // Read to the end, as a client would: the stream's timings are recorded as
                // it passes; a failure on the way counts as the pool's.
                match http_body_util::BodyExt::collect(response.into_body()).await {
                    Ok(_) => status,
                    Err(_) => http::StatusCode::BAD_GATEWAY,
                }
            }
            Err(e) => e.status(),
        };
        state
            .metrics
            .requests
            .with_label_values(&[pool.name(), &model, status.as_str()])
            .inc();
    });
}

/// The response header naming the version (pool) that answered a split model's request.
const VERSION_HEADER: HeaderName = HeaderName::from_static("x-infergate-version");

/// The version of a split model for this request: the one its pin header names (if its key may
/// pin), else drawn by its sticky header's value, else at random.
fn choose_version<'a>(
    split: &'a crate::pool::models::VersionSplit,
    headers: &http::HeaderMap,
    key: Option<&crate::config::ApiKey>,
) -> Result<&'a crate::pool::models::Version, GatewayError> {
    let pinned = headers
        .get(&split.pin_header)
        .map(|v| v.to_str().unwrap_or_default());
    if pinned.is_some() && key.is_some_and(|k| !k.pin_versions) {
        return Err(GatewayError::PinForbidden);
    }
    let sticky = split
        .sticky_header
        .as_ref()
        .and_then(|h| headers.get(h))
        .map(|v| v.as_bytes());
    split
        .choose(pinned, sticky, random_u64())
        .ok_or_else(|| GatewayError::UnknownVersion(echo(pinned.unwrap_or_default())))
}

/// A classified request on its way to a replica.
struct Outgoing<'a> {
    parts: &'a http::request::Parts,
    body: RequestBody,
    peer: SocketAddr,
    /// The client came over TLS (`X-Forwarded-Proto: https`).
    over_tls: bool,
    /// What to record of the answer when it ends (tokens, budget, access log, span): taken
    /// by the answer, left here when there is none.
    record: &'a mut Option<AnswerRecord>,
    features: &'a router::RequestFeatures,
    /// The prompt's prefix blocks, recorded against the chosen replica.
    blocks: &'a [u64],
    received: Instant,
}

async fn forward(
    pool: &Arc<GatewayPool>,
    worker: usize,
    classes: &crate::config::Classification,
    request: Outgoing<'_>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let Outgoing {
        parts,
        body,
        peer,
        over_tls,
        record,
        features,
        blocks,
        received,
    } = request;
    let held = admit(
        pool,
        features.priority,
        classes.is_sheddable(features.priority),
        received,
    )
    .await?;
    if let Some(span) = record.as_mut().and_then(AnswerRecord::span) {
        span.set("infergate.queue_wait_ms", crate::otel::millis(held));
    }
    let snapshot = pool.snapshot();
    let retries = &pool.config.retries;
    let mut tried: Vec<usize> = Vec::new();
    let mut last_error = GatewayError::NoReplica;
    for attempt in 0..retries.max_attempts {
        let now = Instant::now();
        // A shared counter bounces between cores: only round robin needs it.
        let sequence = if pool.config.routing.policy == crate::config::RoutingPolicy::RoundRobin {
            pool.next_sequence()
        } else {
            0
        };
        let ctx = crate::pool::pick_context(&pool.config, now, random_u64(), sequence);
        let Some(index) = router::pick(&pool.config.routing, &snapshot, features, ctx, &tried)
        else {
            break;
        };
        let replica = snapshot.replicas[index].clone();
        if let Some(span) = record.as_mut().and_then(AnswerRecord::span) {
            let routing = &pool.config.routing;
            let predicted = router::predicted_ttft_secs(routing, &snapshot, features, ctx, index);
            span.set("infergate.predicted_ttft_ms", predicted * 1000.0);
            span.set("infergate.replica", replica.name.clone());
            span.set("infergate.retries", attempt as i64);
        }
        let prefill_tokens = router::own_prefill_tokens(features, replica.id);
        let guard = if features.stream {
            replica.start_request_with(prefill_tokens)
        } else {
            replica.start_unstreamed_request(prefill_tokens)
        };
        if let Some(adapter) = features.adapter {
            replica.note_adapter(adapter);
        }
        if let Some(index) = &pool.prefix_index {
            index.record(blocks, replica.id);
            pool.log_placement(replica.id, blocks);
        }
        let upstream = upstream_request(parts, body.clone(), &replica, peer, over_tls);
        // The pick's clock reading is the send time too (building the request takes a
        // microsecond; clock reads show in the profile).
        let sent = now;
        let deadline = tokio::time::Instant::from_std(sent + pool.config.timeouts.first_byte);
        match tokio::time::timeout_at(deadline, pool.client(worker).send(&replica, upstream, sent))
            .await
        {
            Ok(Ok((response, lent))) => {
                pool.metrics.ttfb.observe(sent.elapsed().as_secs_f64());
                let (mut head, incoming) = response.into_parts();
                strip_hop_by_hop(&mut head.headers);
                let sse = head
                    .headers
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
                let mut body = ProxiedBody::new(
                    incoming,
                    guard,
                    pool.clone(),
                    (worker, lent),
                    sse,
                    received,
                    sent,
                )
                .server_error(head.status.is_server_error())
                .tokens_marked(
                    (sse && parts.uri.path() == "/v1/responses")
                        .then_some(&b"response.output_text.delta"[..]),
                )
                .recorded(head.status, record.take().map(|r| r.replica(&replica.name)));
                body.gather().await;
                return Ok(Response::from_parts(
                    head,
                    GatewayBody::Proxied(Box::new(body)),
                ));
            }
            Ok(Err(e)) => {
                pool.record_failure(&replica, now, "upstream request failed");
                if e.is_connect() {
                    // Nothing reached the replica: safe to try another.
                    tracing::debug!(pool = pool.name(), replica = %replica.name, error = %e, attempt, "connect failed, retrying");
                    if attempt + 1 < retries.max_attempts {
                        pool.metrics.retries.inc();
                    }
                    tried.push(index);
                    last_error = GatewayError::UpstreamUnreachable;
                    continue;
                }
                tracing::warn!(pool = pool.name(), replica = %replica.name, error = %e, "upstream request failed");
                return Err(GatewayError::UpstreamFailed);
            }
            Err(_) => {
                tracing::warn!(pool = pool.name(), replica = %replica.name, "no response headers within timeouts.first_byte");
                // Not retried (the replica may be working on it), but a failure all the same.
                pool.record_failure(&replica, Instant::now(), "no first byte in time");
                return Err(GatewayError::UpstreamTimeout);
            }
        }
    }
    Err(last_error)
}

/// Admission ([`PoolState::admit`](crate::pool::PoolState::admit)): a request goes on at
/// once while some replica has room. When every replica is saturated — or there is none yet
/// and the scaler is starting one (scale from zero) — it waits in the pool's queue by priority
/// class, bounded by `admission.max_queue` and `admission.max_queue_wait`; a sheddable class is
/// refused at once instead. Every refusal is 429 with `Retry-After`. Admitted: how long the
/// request waited.
async fn admit(
    pool: &GatewayPool,
    priority: usize,
    sheddable: bool,
    received: Instant,
) -> Result<std::time::Duration, GatewayError> {
    let (outcome, held) = pool.admit(priority, sheddable, received).await;
    if let Some(held) = held {
        pool.metrics.queue_wait.observe(held.as_secs_f64());
    }
    outcome
        .map(|()| held.unwrap_or_default())
        .map_err(|refused| match refused {
            Refused::Shed => GatewayError::Shed,
            Refused::Full => GatewayError::QueueFull,
            Refused::Timeout => GatewayError::QueueTimeout,
        })
}

/// The request as sent to the replica: same method, path, query, body and end-to-end headers;
/// hop-by-hop headers stripped; `X-Forwarded-For` and `-Proto` (`https` when the client came
/// `over_tls`) added.
fn upstream_request(
    parts: &http::request::Parts,
    body: RequestBody,
    replica: &crate::replica::Replica,
    peer: SocketAddr,
    over_tls: bool,
) -> Request<RequestBody> {
    // Scheme, authority and path are all shared `Bytes`: building the URI copies nothing.
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(replica.scheme.clone());
    uri.authority = Some(replica.authority.clone());
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    let uri = Uri::from_parts(uri).expect("scheme, authority and path come from valid parts");
    // One pass over the client's headers (no clone of the whole map, then removals).
    let named = connection_named(&parts.headers);
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 2);
    let mut previous_for = None;
    for (name, value) in &parts.headers {
        if is_hop_by_hop(name)
            || name == header::HOST
            || name == header::CONTENT_LENGTH // set from the body we send
            || name == header::EXPECT // the body has been read already
            || named.contains(name)
        {
            continue;
        }
        if name == FORWARDED_FOR {
            previous_for = previous_for.or(Some(value));
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    let forwarded_for = match previous_for.and_then(|v| v.to_str().ok()) {
        Some(previous) => HeaderValue::from_str(&format!("{previous}, {}", peer.ip())).ok(),
        None => Some(peer_value(peer.ip())),
    };
    if let Some(value) = forwarded_for {
        headers.insert(FORWARDED_FOR, value);
    }
    let proto = if over_tls { "https" } else { "http" };
    headers.insert(FORWARDED_PROTO, HeaderValue::from_static(proto));
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    request
}

/// A client address as a header value, remembered per worker thread for the last address seen
/// (clients tend to come back on their keep-alive connections: no formatting per request).
fn peer_value(ip: std::net::IpAddr) -> HeaderValue {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(std::net::IpAddr, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((seen, value)) if *seen == ip => value.clone(),
        _ => {
            let value =
                HeaderValue::from_str(&ip.to_string()).expect("an address is a valid header value");
            *last = Some((ip, value.clone()));
            value
        }
    })
}

const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes the headers that belong to one connection, including those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One look at each name, then removals of those present only (an answer typically has
    // one, `transfer-encoding`).
    let present = headers
        .keys()
        .filter_map(hop_by_hop_index)
        .fold(0u16, |mask, i| mask | 1 << i);
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        for name in connection_named(headers) {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.into_iter().enumerate() {
        if present & 1 << i != 0 {
            headers.remove(name);
        }
    }
}

/// The headers that always belong to one connection, `Connection` first.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    HOP_BY_HOP.iter().position(|h| h == name)
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_index(name).is_some()
}

/// The headers a `Connection` header names (empty, without allocating, when there is none).
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// A random number per pick: a thread-local xorshift seeded from the clock (no syscall, no
/// lock on the hot path).
fn random_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0x9E37_79B9, |d| d.as_nanos() as u64) | 1
        );
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert("authorization", "Bearer t".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("authorization"));
    }

    #[test]
    fn the_upstream_request_keeps_end_to_end_headers_only() {
        let request = Request::post("/v1/completions?x=1")
            .header(header::HOST, "gateway")
            .header(header::CONNECTION, "keep-alive, x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header(header::CONTENT_LENGTH, "2")
            .header(header::EXPECT, "100-continue")
            .header(FORWARDED_FOR, "10.0.0.1")
            .header(FORWARDED_FOR, "10.0.0.2")
            .header("authorization", "Bearer t")
            .header("x-custom", "a")
            .header("x-custom", "b")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let replica = crate::replica::Replica::new(
            http::uri::Scheme::HTTP,
            http::uri::Authority::from_static("127.0.0.1:9"),
            prometheus::IntGauge::new("test_upstream_inflight", "test").unwrap(),
            Instant::now(),
        );
        let peer: SocketAddr = "192.168.1.7:5000".parse().unwrap();
        let upstream = upstream_request(
            &parts,
            RequestBody::from(Bytes::from_static(b"{}")),
            &replica,
            peer,
            false,
        );
        assert_eq!(upstream.uri(), "http://127.0.0.1:9/v1/completions?x=1");
        let h = upstream.headers();
        let names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "authorization",
                "x-custom",
                FORWARDED_FOR.as_str(),
                FORWARDED_PROTO.as_str()
            ]
        );
        let custom: Vec<_> = h.get_all("x-custom").iter().collect();
        assert_eq!(custom, ["a", "b"]);
        assert_eq!(h[FORWARDED_FOR], "10.0.0.1, 192.168.1.7");
        assert_eq!(h[FORWARDED_PROTO], "http");
        let over_tls = upstream_request(&parts, RequestBody::default(), &replica, peer, true);
        assert_eq!(over_tls.headers()[FORWARDED_PROTO], "https");
    }
}
