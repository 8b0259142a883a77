//! The pools as the request path sees them: each pool's live state ([`PoolState`]) with the
//! gateway's own plumbing for it — one upstream client per worker thread and the request
//! metrics — and the model-name index with each name's resolved success counter.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use super::upstream::UpstreamClient;
use crate::config;
use crate::metrics::{Metrics, PoolMetrics};
use crate::pool::PoolState;
use crate::pool::models::{ModelIndex, ModelRoute, TierRoute};

/// One pool on the request path.
pub struct GatewayPool {
    pub live: Arc<PoolState>,
    /// One client (connection pool) per gateway worker thread, used only from that thread (its
    /// connection tasks run in that worker's `LocalSet`).
    clients: Vec<UpstreamClient>,
    pub metrics: PoolMetrics,
    /// Turns true when the drain timeout is about to cut the answers still open.
    pub cut: tokio::sync::watch::Receiver<bool>,
}

impl GatewayPool {
    /// The upstream client of gateway worker `worker`.
    pub fn client(&self, worker: usize) -> &UpstreamClient {
        &self.clients[worker % self.clients.len()]
    }
}

/// The request path reads the pool's live state through its plumbing.
impl Deref for GatewayPool {
    type Target = PoolState;

    fn deref(&self) -> &PoolState {
        &self.live
    }
}

/// How a model name resolves on the request path.
pub struct Route<'a> {
    pub route: &'a ModelRoute,
    /// `infergate_requests_total{pool, model, status="200"}`, resolved once: the common case
    /// costs one atomic add instead of a labelled lookup.
    pub ok_requests: &'a prometheus::IntCounter,
}

/// All pools and the model-name index.
pub struct Pools {
    pub pools: Vec<Arc<GatewayPool>>,
    pub models: ModelIndex,
    /// Per route of `models`, in its order.
    ok_requests: Vec<prometheus::IntCounter>,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Pools {
    pub fn new(
        configs: &[config::Pool],
        versions: &[config::ModelVersions],
        tiers: &[config::Tier],
        metrics: &Metrics,
        epoch: Instant,
        workers: usize,
        priority_classes: usize,
    ) -> Self {
        let models = ModelIndex::new(configs, versions, tiers);
        let ok_requests = models
            .routes()
            .iter()
            .map(|r| {
                let pool = &configs[r.pool].name;
                metrics.requests.with_label_values(&[pool, &r.model, "200"])
            })
            .collect();
        let (cut, cut_seen) = tokio::sync::watch::channel(false);
        let pools = configs
            .iter()
            .map(|c| {
                let live = PoolState::new(
                    c.clone(),
                    metrics.pool_gauges(&c.name),
                    epoch,
                    priority_classes,
                );
                Arc::new(GatewayPool {
                    live: Arc::new(live),
                    clients: (0..workers.max(1))
                        .map(|_| UpstreamClient::new(c))
                        .collect(),
                    metrics: metrics.pool(&c.name),
                    cut: cut_seen.clone(),
                })
            })
            .collect();
        Self {
            pools,
            models,
            ok_requests,
            cut,
        }
    }

    /// Ends every answer still open with an error (an SSE error event, or a broken connection
    /// for other answers): the drain timeout is about to cut them.
    pub fn cut_open_answers(&self) {
        self.cut.send_replace(true);
    }

    pub fn route(&self, model: &str) -> Option<Route<'_>> {
        let (i, route) = self.models.lookup(model)?;
        Some(Route {
            route,
            ok_requests: &self.ok_requests[i],
        })
    }

    /// The pool of a tier that takes a request with `features`, and the name it is rewritten
    /// to ([`crate::pool::tiers::choose`]; the first pool when it fits none: its replicas
    /// answer why).
    pub fn tier_member<'a>(
        &self,
        tier: &'a TierRoute,
        features: &crate::router::RequestFeatures,
    ) -> (usize, &'a String) {
        let now = Instant::now();
        let tokens =
            u64::from(features.prompt_tokens) + u64::from(features.max_tokens.unwrap_or(0));
        let members: Vec<crate::pool::tiers::Member> = tier
            .members
            .iter()
            .map(|(p, served)| self.pools[*p].live.as_tier_member(served, tokens, now))
            .collect();
        let (pool, served) = &tier.members[crate::pool::tiers::choose(&members).unwrap_or(0)];
        (*pool, served)
    }

    /// Each pool's live state, for the parts below the gateway.
    pub fn live(&self) -> impl Iterator<Item = &Arc<PoolState>> {
        self.pools.iter().map(|p| &p.live)
    }
}
