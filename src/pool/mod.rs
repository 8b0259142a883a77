//! A pool's live state, below everything that reads or changes it (gateway, scaler,
//! discovery, scraper): its replica set (one immutable [`Snapshot`] behind an `ArcSwap`), the
//! requests held at the gateway ([`queue`]), the prefix index, the scaler's latest decision and
//! the Kubernetes API's health. The rules that decide on it are pure functions here and in the
//! router and scaler, called alike by `serve` and by the fleet simulation ([`admission`]), and
//! [`models`] says which pool serves which model name.
//!
//! One writer per piece:
//! - the replica set: discovery (static list at start, the local provider, the Kubernetes
//!   `Members`), through [`PoolState::add_replica`] and [`PoolState::remove_replica`];
//! - each replica's ejection: [`PoolState::record_failure`] and [`PoolState::eject`] (the
//!   request path and the scraper report failures; only these two decide), lifted by a
//!   successful scrape ([`crate::replica::Replica::record_scrape`]);
//! - the queue: the requests themselves, each entering and leaving its own place;
//! - the prefix index: the request path records, replica-set changes and scrapes re-budget;
//! - the scaler status: the pool's scaler loop; the API health: Kubernetes discovery;
//! - the replicas being drained: the scale provider (Kubernetes).

pub mod admission;
pub mod models;
pub mod queue;
pub mod slo;
pub mod tiers;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::uri::{Authority, Scheme};

use crate::config::{self, RoutingPolicy};
use crate::metrics::PoolGauges;
use crate::replica::{Placement, Replica};
use crate::router::{PickContext, Snapshot};
use admission::Admit;
use queue::{AdmissionQueue, Refused};

/// The router's context for one pick in `pool` at `now`: its staleness bounds and admission
/// limits, with the caller's random number and request sequence (round robin's only input).
pub fn pick_context(pool: &config::Pool, now: Instant, random: u64, sequence: u64) -> PickContext {
    PickContext {
        now,
        random,
        sequence,
        stale_after: pool.metrics.stale_after,
        gpu_stale_after: pool.metrics.gpu_stale_after(),
        limits: pool.admission,
    }
}

/// One pool while the process runs.
pub struct PoolState {
    pub config: config::Pool,
    snapshot: ArcSwap<Snapshot>,
    /// Request sequence number, for round robin.
    sequence: AtomicU64,
    /// Requests that asked this gateway for the pool since the scaler last looked.
    arrivals: AtomicU64,
    gauges: PoolGauges,
    epoch: Instant,
    /// Requests waiting at the gateway for capacity.
    pub queue: AdmissionQueue,
    /// Replicas starting (set by the scaler each tick): the queue holds requests for them.
    coming: std::sync::Mutex<admission::Coming>,
    /// Which replica served which prompt blocks, for policies that use prefix affinity.
    pub prefix_index: Option<crate::router::prefix::PrefixIndex>,
    /// The scaler's latest decision, for `/admin/status` (written by the scaler only).
    pub scaler_status: arc_swap::ArcSwapOption<ScalerStatus>,
    /// Replicas this gateway is draining for a scale-down (their addresses), published on its
    /// `/metrics` so that peer gateways stop sending to them too (written by the provider).
    pub draining: arc_swap::ArcSwap<Vec<String>>,
    /// Whether the Kubernetes API answers this pool's watch (Kubernetes discovery only).
    pub api_health: std::sync::OnceLock<Arc<crate::kubernetes::ApiHealth>>,
    /// Where this gateway logs the prompt prefixes it sends, for its peers (when they
    /// exchange routing state), with the pool's name as the log knows it.
    pub placements: std::sync::OnceLock<(Arc<crate::peers::routing::PlacementLog>, Arc<str>)>,
    /// An operator's pause or pin of the scaler (`/admin/actions`).
    pub hold: crate::admin::actions::ScalerHold,
    /// Where the pool's events (ejections, scaling) are told to chat.
    pub notifier: std::sync::OnceLock<crate::notify::Notifier>,
    /// Attainment of the pool's SLO (`slo`), when it has one.
    pub slo: Option<slo::SloTracker>,
    /// The models the replicas list on their `/v1/models` (one entry per id, as a replica gave
    /// it), read now and then by the scraper ([`crate::scrape::models`]); None until one
    /// answered (servers without the endpoint never do).
    pub listed_models: arc_swap::ArcSwapOption<Vec<serde_json::Value>>,
}

/// The scaler's latest decision about a pool, and its last changes of mind.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScalerStatus {
    pub desired: u32,
    pub ready: u32,
    pub starting: u32,
    pub draining: u32,
    /// The cold start expected of a new replica (seconds), and whether it was measured on
    /// this pool (else it is `scaler.cold_start`).
    pub cold_start: f64,
    pub cold_start_learned: bool,
    pub reason: String,
    /// Whether this gateway replica acts on the decision (an enabled provider, and the leader
    /// lease when leader election is on).
    pub acting: bool,
    /// The last failure to act, until an action succeeds.
    pub error: Option<String>,
    /// Answers in flight and requests queued, over this gateway and the peers it could read.
    pub inflight: u64,
    pub queued: u64,
    /// Peer gateways whose load is unknown (unreadable for longer than it stays fresh).
    pub peers_unknown: u32,
    /// The last changes of the desired count, oldest first (at most [`DECISIONS_KEPT`]).
    pub decisions: Vec<Decision>,
}

/// How many of the scaler's last decisions its status keeps.
pub const DECISIONS_KEPT: usize = 20;

/// A change of the scaler's desired count, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Decision {
    /// Unix seconds.
    pub at: u64,
    pub desired: u32,
    /// Ready and starting when it was decided.
    pub ready: u32,
    pub starting: u32,
    pub reason: String,
    /// Whether this gateway acted on it (not paused, leading, an enabled provider).
    pub acting: bool,
}

impl PoolState {
    pub fn new(
        config: config::Pool,
        gauges: PoolGauges,
        epoch: Instant,
        priority_classes: usize,
    ) -> Self {
        let prefix_index = matches!(
            config.routing.policy,
            RoutingPolicy::PrefixAffinity | RoutingPolicy::PredictedTtft | RoutingPolicy::Weighted
        )
        .then(|| {
            crate::router::prefix::PrefixIndex::new(config.routing.prefix_cache_entries as usize)
        });
        let slo = config.slo.map(|target| slo::SloTracker::new(target, epoch));
        Self {
            slo,
            gauges,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            sequence: AtomicU64::new(0),
            arrivals: AtomicU64::new(0),
            config,
            epoch,
            prefix_index,
            queue: AdmissionQueue::new(priority_classes),
            coming: Default::default(),
            scaler_status: arc_swap::ArcSwapOption::empty(),
            listed_models: arc_swap::ArcSwapOption::empty(),
            api_health: std::sync::OnceLock::new(),
            placements: std::sync::OnceLock::new(),
            hold: Default::default(),
            notifier: std::sync::OnceLock::new(),
            draining: arc_swap::ArcSwap::from_pointee(Vec::new()),
        }
    }

    /// Logs, for the peer gateways, that a prompt with these prefix blocks went to `replica`.
    pub fn log_placement(&self, replica: u64, blocks: &[u64]) {
        if let Some((log, name)) = self.placements.get() {
            log.push(name, replica, blocks);
        }
    }

    /// The replicas starting for this pool, as the scaler saw them last.
    pub fn coming(&self) -> admission::Coming {
        *self.coming.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The scaler's latest view of the replicas starting.
    pub fn set_coming(&self, coming: admission::Coming) {
        *self.coming.lock().unwrap_or_else(|e| e.into_inner()) = coming;
    }

    /// Requests that arrived for the pool since the previous call (the scaler's demand).
    pub fn take_arrivals(&self) -> u64 {
        self.arrivals.swap(0, Ordering::Relaxed)
    }

    /// Requests waiting at the gateway for this pool.
    pub fn queued(&self) -> u64 {
        self.queue.waiting()
    }

    /// The pool as one member of a tier sees it for a request of `tokens` (prompt and answer)
    /// at `now`, the request rewritten to `served` ([`tiers::choose`]).
    pub fn as_tier_member(&self, served: &str, tokens: u64, now: Instant) -> tiers::Member {
        let snapshot = self.snapshot.load();
        let context = self.listed_models.load().as_ref().and_then(|listed| {
            let entry = listed.iter().find(|e| e["id"] == served)?;
            entry["max_model_len"].as_u64()
        });
        tiers::Member::seen(
            &snapshot.replicas,
            self.queued(),
            self.scaler_status.load().as_ref().map_or(0, |s| s.starting),
            &self.config.scaler,
            context.is_none_or(|limit| tokens <= limit),
            now,
        )
    }

    /// What the pool looks like to a request at `now` ([`admission::gate`]).
    pub fn gate(&self, now: Instant) -> admission::Gate {
        admission::gate(&self.snapshot.load(), &self.config, now, self.queued())
    }

    /// The gateway's admission of one request that arrived at `received`: on at once, shed,
    /// or held in the queue until [`admission::may_release`] lets it go (refused when the
    /// queue is full or `admission.max_queue_wait` passes). Returns the outcome, and how long
    /// the request was held when it queued.
    pub async fn admit(
        &self,
        priority: usize,
        sheddable: bool,
        received: Instant,
    ) -> (Result<(), Refused>, Option<Duration>) {
        self.arrivals.fetch_add(1, Ordering::Relaxed);
        // The request's arrival stands in for now (microseconds earlier: one clock read less).
        match admission::on_arrival(self.gate(received), sheddable) {
            Admit::Go => return (Ok(()), None),
            Admit::Shed => return (Err(Refused::Shed), None),
            Admit::Queue => {}
        }
        let limits = &self.config.admission;
        let queued = Instant::now();
        let result = self
            .queue
            .wait(
                priority,
                admission::queue_bound(limits, self.coming()),
                || admission::deadline(limits, received, self.coming()),
                || admission::may_release(self.gate(Instant::now())),
            )
            .await;
        let held = queued.elapsed();
        if result != Err(Refused::Full) {
            // Let in or expired: the scaler's queue-wait signal (a full queue held nobody).
            self.queue.record_wait(held);
        }
        (result, Some(held))
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
        self.gauges.ejections.inc();
        tracing::warn!(pool = self.name(), replica = %replica.name, cause, "replica ejected from routing");
        self.notify(
            crate::config::EventKind::Ejection,
            format!("replica {} ejected from routing: {cause}", replica.name),
        );
    }

    /// Tells chat about this pool (when notifications are configured; never waits).
    pub fn notify(&self, kind: crate::config::EventKind, text: String) {
        if let Some(notifier) = self.notifier.get() {
            notifier.send(crate::notify::Event::new(kind, Some(self.name()), text));
        }
    }

    /// How old a GPU reading may be: `metrics.gpu.stale_after` (no reading is used without a
    /// GPU source; the engine stats' age then stands in).
    pub fn gpu_stale_after(&self) -> Duration {
        self.config.metrics.gpu_stale_after()
    }

    /// Replicas taking traffic now.
    pub fn ready_count(&self, now: Instant) -> u32 {
        self.snapshot
            .load()
            .replicas
            .iter()
            .filter(|r| r.takes_traffic(now))
            .count() as u32
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
            .gauges
            .inflight
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
        self.gauges.replicas.set(replicas.len() as i64);
        self.snapshot.store(Arc::new(Snapshot::new(replicas)));
        self.refresh_prefix_budgets();
        self.queue.wake();
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
            .any(|r| r.takes_traffic(now))
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
        let metrics = crate::metrics::Metrics::new();
        let gauges = metrics.pool_gauges(&config.name);
        let pool = PoolState::new(config, gauges, Instant::now(), 1);
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
