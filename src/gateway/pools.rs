//! The model pools at run time: which pool serves which model name (aliases included), each
//! pool's replica snapshot behind one `ArcSwap`, its upstream HTTP client and metric handles.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use serde_json::json;

use super::upstream::UpstreamClient;
use crate::config::{self, RoutingPolicy};
use crate::metrics::{Metrics, PoolMetrics};
use crate::replica::{Placement, Replica};
use crate::router::Snapshot;

/// One pool while the gateway runs.
pub struct PoolRuntime {
    pub config: config::Pool,
    snapshot: ArcSwap<Snapshot>,
    /// Request sequence number, for round robin.
    sequence: AtomicU64,
    /// One client (connection pool) per gateway worker thread, used only from that thread (its
    /// connection tasks run in that worker's `LocalSet`).
    clients: Vec<UpstreamClient>,
    pub metrics: PoolMetrics,
    inflight_gauges: prometheus::IntGaugeVec,
    epoch: Instant,
    /// Requests waiting at the gateway for capacity.
    pub admission: super::admission::Admission,
    /// Which replica served which prompt blocks, for policies that use prefix affinity.
    pub prefix_index: Option<crate::router::prefix::PrefixIndex>,
    /// The scaler's latest decision, for `/admin/status` (written by the scaler only).
    pub scaler_status: arc_swap::ArcSwapOption<ScalerStatus>,
    /// Whether the Kubernetes API answers this pool's watch (Kubernetes discovery only).
    pub kube_health: std::sync::OnceLock<Arc<crate::kubernetes::ApiHealth>>,
}

/// The scaler's latest decision about a pool.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScalerStatus {
    pub desired: u32,
    pub ready: u32,
    pub starting: u32,
    pub draining: u32,
    pub reason: String,
    /// Whether this gateway replica acts on the decision (an enabled provider, and the leader
    /// lease when leader election is on).
    pub acting: bool,
    /// The last failure to act, until an action succeeds.
    pub error: Option<String>,
}

impl PoolRuntime {
    pub fn new(
        config: config::Pool,
        metrics: &Metrics,
        epoch: Instant,
        workers: usize,
        priority_classes: usize,
    ) -> Self {
        let clients = (0..workers.max(1))
            .map(|_| UpstreamClient::new(&config))
            .collect();
        let prefix_index = matches!(
            config.routing.policy,
            RoutingPolicy::PrefixAffinity | RoutingPolicy::PredictedTtft | RoutingPolicy::Weighted
        )
        .then(|| {
            crate::router::prefix::PrefixIndex::new(config.routing.prefix_cache_entries as usize)
        });
        Self {
            metrics: metrics.pool(&config.name),
            inflight_gauges: metrics.inflight.clone(),
            clients,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            sequence: AtomicU64::new(0),
            config,
            epoch,
            prefix_index,
            admission: super::admission::Admission::new(priority_classes),
            scaler_status: arc_swap::ArcSwapOption::empty(),
            kube_health: std::sync::OnceLock::new(),
        }
    }

    /// Requests waiting at the gateway for this pool.
    pub fn queued(&self) -> u64 {
        self.admission.waiting()
    }

    /// Whether every replica taking traffic is saturated (true when there is none).
    pub fn saturated(&self, now: Instant) -> bool {
        crate::router::all_saturated(
            &self.snapshot.load(),
            &self.config.admission,
            now,
            self.config.metrics.stale_after,
        )
    }

    /// In-flight requests over all replicas.
    pub fn inflight(&self) -> u64 {
        self.snapshot
            .load()
            .replicas
            .iter()
            .map(|r| r.inflight())
            .sum()
    }

    /// One failure of `replica` (connect error, broken stream): after
    /// `retries.eject_after_failures` in a row it leaves routing for `retries.ejection_time`.
    pub fn record_failure(&self, replica: &Replica, now: Instant, cause: &str) {
        let retries = &self.config.retries;
        let ejection_ms = retries.ejection_time.as_millis() as u64;
        if replica.record_failure(now, retries.eject_after_failures, ejection_ms) {
            self.ejected(replica, cause);
        }
    }

    /// Takes `replica` out of routing at once for `retries.ejection_time` (it is unreachable).
    pub fn eject(&self, replica: &Replica, now: Instant, cause: &str) {
        if replica.eject(now, self.config.retries.ejection_time.as_millis() as u64) {
            self.ejected(replica, cause);
        }
    }

    fn ejected(&self, replica: &Replica, cause: &str) {
        self.metrics.ejections.inc();
        tracing::warn!(pool = self.name(), replica = %replica.name, cause, "replica ejected from routing");
    }

    /// Mean KV-cache use of the replicas taking traffic whose scraped stats are fresh; None
    /// when none is (a missing signal, not a zero).
    pub fn mean_kv_usage(&self, now: Instant) -> Option<f64> {
        crate::replica::mean_kv_usage(
            &self.snapshot.load().replicas,
            now,
            self.config.metrics.stale_after,
        )
    }

    /// How old a GPU reading may be: `metrics.gpu.stale_after` (no reading is used without a
    /// GPU source; the engine stats' age then stands in).
    pub fn gpu_stale_after(&self) -> Duration {
        self.config.metrics.gpu_stale_after()
    }

    /// Mean GPU use (0–1) of the replicas taking traffic that have a fresh reading; None when
    /// none has (a missing signal, not a zero).
    pub fn mean_gpu_use(&self, now: Instant) -> Option<f64> {
        let stale_after = self.gpu_stale_after();
        let snapshot = self.snapshot.load();
        let (sum, n) = snapshot
            .replicas
            .iter()
            .filter(|r| !r.is_ejected(now))
            .filter_map(|r| r.gpu_use(now, stale_after))
            .fold((0.0, 0u32), |(s, n), v| (s + v, n + 1));
        (n > 0).then(|| sum / f64::from(n))
    }

    /// Replicas taking traffic now.
    pub fn ready_count(&self, now: Instant) -> u32 {
        self.snapshot
            .load()
            .replicas
            .iter()
            .filter(|r| !r.is_ejected(now))
            .count() as u32
    }

    /// The upstream client of gateway worker `worker`.
    pub fn client(&self, worker: usize) -> &UpstreamClient {
        &self.clients[worker % self.clients.len()]
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    pub fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a replica (no-op if it is already there). Called by discovery, off the hot path.
    pub fn add_replica(&self, scheme: Scheme, authority: Authority) -> Arc<Replica> {
        self.add_placed_replica(scheme, authority, Placement::default())
    }

    /// Adds a replica whose pod and node are known (no-op if its address is already there).
    pub fn add_placed_replica(
        &self,
        scheme: Scheme,
        authority: Authority,
        placement: Placement,
    ) -> Arc<Replica> {
        let current = self.snapshot.load();
        if let Some(existing) = current.replicas.iter().find(|r| r.authority == authority) {
            return existing.clone();
        }
        let gauge = self
            .inflight_gauges
            .with_label_values(&[&self.config.name, authority.as_str()]);
        let replica = Arc::new(Replica::placed(
            scheme, authority, placement, gauge, self.epoch,
        ));
        let mut replicas = current.replicas.clone();
        replicas.push(replica.clone());
        self.publish(replicas);
        replica
    }

    /// Removes a replica from routing; requests already sent to it finish normally.
    pub fn remove_replica(&self, authority: &Authority) -> Option<Arc<Replica>> {
        let current = self.snapshot.load();
        let index = current
            .replicas
            .iter()
            .position(|r| &r.authority == authority)?;
        let mut replicas = current.replicas.clone();
        let removed = replicas.remove(index);
        self.publish(replicas);
        Some(removed)
    }

    fn publish(&self, replicas: Vec<Arc<Replica>>) {
        self.metrics.replicas.set(replicas.len() as i64);
        self.snapshot.store(Arc::new(Snapshot::new(replicas)));
        self.refresh_prefix_budgets();
        self.admission.wake();
    }

    /// Gives the prefix index the current replicas and their budgets, from the KV capacity each
    /// has reported (after a replica-set change and after each scrape round).
    pub fn refresh_prefix_budgets(&self) {
        let Some(index) = &self.prefix_index else {
            return;
        };
        index.register(
            &self.snapshot.load().replicas,
            self.config.routing.prefix_block_chars,
        );
    }

    /// Whether the pool can take a request now.
    pub fn has_ready_replica(&self, now: Instant) -> bool {
        self.snapshot
            .load()
            .replicas
            .iter()
            .any(|r| !r.is_ejected(now))
    }
}

/// How a model name resolves.
#[derive(Debug, Clone)]
pub struct Route {
    pub pool: usize,
    /// For an alias, the served name the request is rewritten to.
    pub rewrite_to: Option<String>,
    /// `infergate_requests_total{pool, model, status="200"}`, resolved once: the common case
    /// costs one atomic add instead of a labelled lookup.
    pub ok_requests: prometheus::IntCounter,
    /// The LoRA adapter the served name is (`routing.lora_adapters`), if it is one.
    pub adapter: Option<u64>,
}

/// All pools and the model-name index.
pub struct Pools {
    pub pools: Vec<Arc<PoolRuntime>>,
    by_model: HashMap<String, Route>,
    /// `GET /v1/models`, rendered once.
    pub models_json: Bytes,
}

impl Pools {
    pub fn new(
        configs: &[config::Pool],
        metrics: &Metrics,
        epoch: Instant,
        workers: usize,
        priority_classes: usize,
    ) -> Self {
        let mut by_model = HashMap::new();
        let mut data = Vec::new();
        let created = crate::openai::unix_seconds();
        for (i, pool) in configs.iter().enumerate() {
            let adapter = |served: &String| {
                pool.routing
                    .lora_adapters
                    .contains(served)
                    .then(|| crate::replica::adapter_id(served))
            };
            for model in &pool.models {
                by_model.insert(
                    model.clone(),
                    Route {
                        pool: i,
                        rewrite_to: None,
                        ok_requests: metrics
                            .requests
                            .with_label_values(&[&pool.name, model, "200"]),
                        adapter: adapter(model),
                    },
                );
                data.push(json!({"id": model, "object": "model", "created": created, "owned_by": pool.name}));
            }
            for (alias, target) in &pool.aliases {
                by_model.insert(
                    alias.clone(),
                    Route {
                        pool: i,
                        rewrite_to: Some(target.clone()),
                        ok_requests: metrics
                            .requests
                            .with_label_values(&[&pool.name, alias, "200"]),
                        adapter: adapter(target),
                    },
                );
                data.push(json!({"id": alias, "object": "model", "created": created, "owned_by": pool.name, "root": target}));
            }
        }
        let models_json = Bytes::from(
            serde_json::to_vec(&json!({"object": "list", "data": data})).expect("JSON"),
        );
        Self {
            pools: configs
                .iter()
                .map(|c| {
                    Arc::new(PoolRuntime::new(
                        c.clone(),
                        metrics,
                        epoch,
                        workers,
                        priority_classes,
                    ))
                })
                .collect(),
            by_model,
            models_json,
        }
    }

    pub fn route(&self, model: &str) -> Option<&Route> {
        self.by_model.get(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_index_follows_the_replica_set_and_reported_kv_capacity() {
        let mut config = crate::config::embedded_default().pools[0].clone();
        config.routing.policy = RoutingPolicy::PredictedTtft;
        config.routing.prefix_cache_entries = 1000;
        let metrics = Metrics::new();
        let pool = PoolRuntime::new(config, &metrics, Instant::now(), 1, 1);
        let a = pool.add_replica(Scheme::HTTP, "127.0.0.1:1".parse().unwrap());
        let b = pool.add_replica(Scheme::HTTP, "127.0.0.1:2".parse().unwrap());
        let index = pool.prefix_index.as_ref().unwrap();
        // Replica a reports a KV cache of 8 blocks of 16 tokens: 128 tokens, two index blocks
        // of 64 tokens (256 prompt bytes). Replica b reports nothing: half the index.
        let small = crate::replica::EngineStats {
            kv_blocks: Some(8),
            kv_block_tokens: Some(16),
            ..Default::default()
        };
        a.record_scrape(small, Instant::now());
        pool.refresh_prefix_budgets();
        for block in 1..=3 {
            index.record(&[block], a.id);
            index.record(&[block + 100], b.id);
        }
        let holder = |block: u64| index.lookup(&[block]).replicas.first().map(|r| r.0);
        assert_eq!(holder(1), None, "evicted from a's two-block cache");
        assert_eq!(holder(2), Some(a.id));
        assert_eq!(holder(3), Some(a.id));
        assert_eq!(holder(101), Some(b.id));
        // b leaves the pool: its entries go with it.
        pool.remove_replica(&b.authority);
        assert_eq!(holder(101), None);
        assert_eq!(holder(103), None);
        assert_eq!(holder(3), Some(a.id));
    }
}
