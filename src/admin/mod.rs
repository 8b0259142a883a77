//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process is up), `/readyz`
//! (at least one pool can take a request), `/admin/status` (pools and replicas as JSON),
//! `/admin/history` (each pool's replica count over the last hour, [`history`]),
//! `/admin/page` (the live status page, [`page`]), `/admin/routing` (what peer gateways read),
//! `POST /admin/actions` ([`actions`]), and `POST /chat/slack`, `/chat/mattermost` (slash
//! commands, [`chatops`]). With an admin token, `/metrics` and `/admin/*` need it
//! ([`token`]); probes do not. Without one, only loopback clients get more than the probes.

pub mod actions;
pub mod chatops;
pub mod client;
pub mod history;
pub mod page;
pub mod token;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;

use crate::gateway::body::GatewayBody;
use crate::gateway::proxy::GatewayState;

/// What configuration reloads have done, for `/admin/status` (kept across reloads).
#[derive(Default)]
pub struct Reloads {
    last: arc_swap::ArcSwapOption<ReloadOutcome>,
    /// A reload asked for through `/admin/actions` (the serve loop waits on it).
    requested: tokio::sync::Notify,
}

/// The last reload: when, and why it was refused if it was.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadOutcome {
    /// Unix seconds.
    pub at: u64,
    pub applied: bool,
    pub error: Option<String>,
}

impl Reloads {
    /// Asks the serve loop for a reload, as SIGHUP does.
    pub fn request(&self) {
        self.requested.notify_one();
    }

    /// Resolves when a reload is asked for.
    pub async fn requested(&self) {
        self.requested.notified().await;
    }

    pub fn record(&self, error: Option<String>) {
        self.last.store(Some(Arc::new(ReloadOutcome {
            at: crate::openai::unix_seconds(),
            applied: error.is_none(),
            error,
        })));
    }

    pub fn last(&self) -> Option<Arc<ReloadOutcome>> {
        self.last.load_full()
    }
}

pub async fn handle(
    state: Arc<GatewayState>,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Response<GatewayBody> {
    let path = req.uri().path();
    // Chat platforms sign their requests (or send a token) instead of the admin token.
    let chat = match path {
        "/chat/slack" => Some(chatops::Platform::Slack),
        "/chat/mattermost" => Some(chatops::Platform::Mattermost),
        _ => None,
    };
    if let Some(platform) = chat {
        return chat_command(&state, platform, req).await;
    }
    let probe = path == "/healthz" || path == "/readyz";
    // Without a token, only this machine may read or act: a listener reachable from elsewhere
    // needs one (the log says so at start).
    if !probe && !open_to(state.admin_token.is_some(), peer) {
        return text(
            StatusCode::UNAUTHORIZED,
            "this admin listener is reachable beyond its machine: set INFERGATE_ADMIN_TOKEN and send it as a bearer token\n",
        );
    }
    if path == page::PATH {
        return page::handle(&state, req).await;
    }
    if !probe && !token::authorized(state.admin_token.as_ref(), &req) {
        return text(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
    }
    if path == "/admin/actions" {
        return action(&state, req, peer).await;
    }
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/metrics" => {
            // Gauges read from live state at scrape time.
            let metrics = &state.metrics;
            metrics.draining.reset();
            for pool in &state.pools.pools {
                for replica in pool.draining.load().iter() {
                    metrics
                        .draining
                        .with_label_values(&[pool.name(), replica])
                        .set(1);
                }
                let name = &[pool.name()];
                metrics
                    .queued
                    .with_label_values(name)
                    .set(pool.queued() as i64);
                let inflight: u64 = pool.snapshot().replicas.iter().map(|r| r.inflight()).sum();
                metrics
                    .pool_inflight
                    .with_label_values(name)
                    .set(inflight as i64);
            }
            for route in state.pools.models.routes() {
                if let Some(split) = &route.split {
                    for (version, weight) in split.versions.iter().zip(split.weights()) {
                        metrics
                            .version_weight
                            .with_label_values(&[&route.model, &version.name])
                            .set(i64::from(weight));
                    }
                }
            }
            let mut r = Response::new(GatewayBody::full(Bytes::from(state.metrics.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.draining.load(std::sync::atomic::Ordering::Relaxed) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"ready": false, "draining": true}),
        ),
        "/readyz" => {
            let now = Instant::now();
            let ready: Vec<&str> = state
                .pools
                .pools
                .iter()
                // A pool the scaler can grow from zero takes requests (they wait at the gateway).
                .filter(|p| p.has_ready_replica(now) || p.config.scaler.enabled)
                .map(|p| p.name())
                .collect();
            let status = if ready.is_empty() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            // Routing goes on through an API outage; say so rather than fail the probe (every
            // gateway replica would go unready at once).
            let detail: serde_json::Map<String, serde_json::Value> = state
                .pools
                .pools
                .iter()
                .filter_map(|p| {
                    let (since, error) = p.api_health.get()?.outage()?;
                    let message = format!(
                        "Kubernetes API unreachable for {}s, routing on the last known {} replica(s): {error}",
                        now.saturating_duration_since(since).as_secs(),
                        p.snapshot().replicas.len()
                    );
                    Some((p.name().to_string(), message.into()))
                })
                .collect();
            json_response(
                status,
                &json!({"ready": !ready.is_empty(), "pools_ready": ready, "detail": detail}),
            )
        }
        "/admin/status" => json_response(StatusCode::OK, &status(&state)),
        "/admin/history" => json_response(
            StatusCode::OK,
            &json!({"every_s": history::EVERY.as_secs(), "pools": state.history.get()}),
        ),
        "/admin/routing" => {
            let since = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("since=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let routing = crate::peers::routing::state(
                &state.peers.id,
                state.pools.live(),
                state.placements.as_deref(),
                since,
            );
            json_response(StatusCode::OK, &json!(routing))
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Each split model's versions side by side: weight, answers and errors so far (from
/// `infergate_requests_total`), and TTFT quantiles of its streams (from its pool's histogram).
fn versions(state: &GatewayState) -> serde_json::Value {
    // A version's (its pool's) answers to the model and its streams' TTFT and ITL.
    let numbers = |pool: &str, model: &str| {
        let (answers, errors) = state.metrics.answers(pool, model);
        let ttft = state.metrics.ttft_quantiles(pool, &[0.5, 0.9]);
        let itl = state.metrics.itl_quantiles(pool, &[0.5, 0.9]);
        json!({"pool": pool, "answers": answers, "errors": errors,
               "ttft_p50_s": ttft[0], "ttft_p90_s": ttft[1], "itl_p50_s": itl[0], "itl_p90_s": itl[1]})
    };
    let splits: Vec<serde_json::Value> = state
        .pools
        .models
        .routes()
        .iter()
        .filter_map(|route| {
            let split = route.split.as_ref()?;
            let weights = split.weights();
            let versions: Vec<serde_json::Value> = split
                .versions
                .iter()
                .zip(weights)
                .map(|(v, weight)| {
                    let mut version = numbers(&v.name, &route.model);
                    version["weight"] = json!(weight);
                    version["configured_weight"] = json!(v.weight);
                    version
                })
                .collect();
            let mirror = split.mirror.as_ref().map(|(v, share)| {
                let mut mirror = numbers(&v.name, &route.model);
                mirror["share"] = json!(share);
                mirror
            });
            let rollout = split.rollout.as_ref().map(|r| r.status());
            Some(json!({"model": route.model, "sticky_header": split.sticky_header.as_ref().map(|h| h.as_str()), "versions": versions, "mirror": mirror, "rollout": rollout}))
        })
        .collect();
    json!(splits)
}

/// Whether a client at `peer` may go past the probes: with a token set, whoever sends it
/// (checked next); without one, this machine only.
fn open_to(token_set: bool, peer: std::net::SocketAddr) -> bool {
    token_set || peer.ip().is_loopback()
}

/// A slash command from chat ([`chatops`]).
async fn chat_command(
    state: &GatewayState,
    platform: chatops::Platform,
    req: Request<Incoming>,
) -> Response<GatewayBody> {
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST a slash command\n");
    }
    let (parts, body) = req.into_parts();
    let body = match crate::http_server::read_body(
        body,
        16 * 1024,
        crate::http_server::BodyTimeouts::DEFAULT,
    )
    .await
    {
        Ok(body) => body,
        Err(_) => return text(StatusCode::BAD_REQUEST, "unreadable body\n"),
    };
    let answer = chatops::handle(state, platform, &parts.headers, &body);
    json_response(answer.status, &answer.body)
}

/// `POST /admin/actions`: an [`actions::Action`] as JSON; its result as JSON (`ok`, `result`).
async fn action(
    state: &GatewayState,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Response<GatewayBody> {
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST an action\n");
    }
    // Without a token, anyone who reaches the listener could act: only this machine may.
    if state.admin_token.is_none() && !peer.ip().is_loopback() {
        return text(
            StatusCode::UNAUTHORIZED,
            "actions from beyond this machine need INFERGATE_ADMIN_TOKEN to be set\n",
        );
    }
    let refused = |status: StatusCode, message: String| {
        json_response(status, &json!({"ok": false, "result": message}))
    };
    let body = match crate::http_server::read_body(
        req.into_body(),
        64 * 1024,
        crate::http_server::BodyTimeouts::DEFAULT,
    )
    .await
    {
        Ok(body) => body,
        Err(e) => return refused(StatusCode::BAD_REQUEST, format!("unreadable body: {e:?}")),
    };
    let action: actions::Action = match serde_json::from_slice(&body) {
        Ok(action) => action,
        Err(e) => return refused(StatusCode::BAD_REQUEST, format!("not an action: {e}")),
    };
    match actions::apply(state, action, &peer.to_string()) {
        Ok(result) => json_response(StatusCode::OK, &json!({"ok": true, "result": result})),
        Err(e @ actions::ActionError::NotFound(_)) => refused(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => refused(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// Pools, their replicas, in-flight counts and health.
pub fn status(state: &GatewayState) -> serde_json::Value {
    let now = Instant::now();
    let pools: Vec<serde_json::Value> = state
        .pools
        .pools
        .iter()
        .map(|pool| {
            let snapshot = pool.snapshot();
            let replicas: Vec<serde_json::Value> = snapshot
                .replicas
                .iter()
                .map(|r| {
                    let engine = r.fresh_stats(now, pool.config.metrics.stale_after).map(|s| {
                        json!({
                            "waiting": s.stats.waiting,
                            "running": s.stats.running,
                            "kv_cache_usage": s.stats.kv_usage,
                            "prefix_cache_hit_rate": s.stats.prefix_hit_rate,
                            "lora_adapters": s.stats.running_loras.iter().chain(&s.stats.waiting_loras).collect::<Vec<_>>(),
                            "age_ms": now.saturating_duration_since(s.at).as_millis() as u64,
                        })
                    });
                    let gpu = r.gpu_use(now, pool.gpu_stale_after());
                    json!({"name": r.name, "pod": r.placement.pod, "node": r.placement.node, "inflight": r.inflight(), "peers_inflight": r.cluster_inflight() - r.inflight(), "ejected": r.is_ejected(now), "cordoned": r.is_cordoned(), "drained": actions::drained(r, now, pool.config.metrics.stale_after), "engine": engine, "gpu_utilization": gpu})
                })
                .collect();
            json!({
                "name": pool.name(),
                "models": pool.config.models,
                "policy": pool.config.routing.policy,
                "inflight": snapshot.replicas.iter().map(|r| r.inflight()).sum::<u64>(),
                "queued": pool.queued(),
                "replicas": replicas,
                "scaler": pool.scaler_status.load().as_deref(),
                "scaler_hold": {"paused": pool.hold.paused(), "pinned": pool.hold.pinned()},
                "slo": pool.slo.as_ref().map(|slo| {
                    let seen = slo.attainment(now);
                    json!({"target": slo.target.target, "ttft_s": slo.target.ttft.as_secs_f64(),
                           "itl_s": slo.target.itl.as_secs_f64(), "window_s": slo.target.window.as_secs(),
                           "attainment": seen.share(), "met": seen.met, "answers": seen.total})
                }),
                "kubernetes_api_up": pool.api_health.get().map(|h| h.is_up()),
            })
        })
        .collect();
    json!({
        "gateway": state.peers.id,
        "version": env!("CARGO_PKG_VERSION"),
        "pools": pools,
        "peers": state.peers.status(now),
        "config_reload": state.reloads.last().as_deref(),
        "actions": state.actions.recent(),
        "versions": versions(state),
    })
}

fn text(status: StatusCode, body: &'static str) -> Response<GatewayBody> {
    let mut r = Response::new(GatewayBody::full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<GatewayBody> {
    let mut r = Response::new(GatewayBody::full(Bytes::from(
        serde_json::to_vec(value).expect("JSON"),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_a_token_only_this_machine_gets_past_the_probes() {
        let at = |a: &str| a.parse::<std::net::SocketAddr>().unwrap();
        assert!(super::open_to(false, at("127.0.0.1:5000")));
        assert!(super::open_to(false, at("[::1]:5000")));
        assert!(!super::open_to(false, at("10.1.2.3:5000")));
        assert!(!super::open_to(false, at("[fd00::1]:5000")));
        assert!(
            super::open_to(true, at("10.1.2.3:5000")),
            "the token is checked next"
        );
    }
}
