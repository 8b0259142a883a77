//! The scaling controller: pure policies in [`policy`], what they see in [`observation`], how a
//! recommendation becomes action in [`actuation`], the providers that act ([`local`]
//! processes, [`kubernetes`] workloads, behind [`provider::Provider`]), and the control loop
//! that feeds a policy the gateway's live view of its pool (exact in-flight and queued counts,
//! its own and its peer gateways', ready and starting replicas) and acts on each recommendation — when this gateway replica
//! holds the leader lease, if leader election is on. The fleet simulation runs the same
//! policy, observation and actuation code in virtual time. What a scaler learned of its pool
//! (its cold start, its bursts) outlives a reload, and with a `state_file` a restart, in
//! [`memory`].

pub mod actuation;
pub mod headroom;
pub mod kubernetes;
pub mod local;
pub mod memory;
pub mod observation;
pub mod policy;
pub mod provider;

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinHandle;

use crate::kubernetes::lease::Leadership;
use crate::peers::Peers;
use crate::pool::{DECISIONS_KEPT, Decision, PoolState, ScalerStatus};
use observation::Beyond;
use provider::{Action, Provider, Supply};

/// How a pool's scaler acts.
pub struct Actuation {
    /// Reports starting and draining replicas; None for a pool nothing can resize.
    pub provider: Option<Arc<dyn Provider>>,
    /// Whether the provider may act (false with the `static` provider: recommend only).
    pub enabled: bool,
    /// With leader election, acts only while this replica leads.
    pub leadership: Option<Arc<Leadership>>,
}

/// Runs the pool's scaler every `scaler.interval` until aborted. Every replica computes and
/// exports the recommendation; only an enabled provider on the leader acts on it.
pub fn spawn(
    pool: Arc<PoolState>,
    peers: Arc<Peers>,
    actuation: Actuation,
    desired_gauge: prometheus::IntGauge,
    scale_events: prometheus::IntCounterVec,
    epoch: Instant,
    memory: Arc<memory::Memory>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let config = pool.config.scaler.clone();
        // The bursts learned under the previous config go on being learned.
        let mut policy = policy::build(&config, pool.config.slo, memory.bursts(pool.name()));
        memory.keep_bursts(pool.name(), policy.bursts());
        let mut tick = tokio::time::interval(config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_desired = None;
        let mut last_error: Option<String> = None;
        let mut decisions = std::collections::VecDeque::new();
        // A cold start learned under the previous config is kept.
        let mut cold_starts = crate::pool::admission::ColdStarts::new(config.cold_start)
            .with_learned(memory.cold_start(pool.name()));
        let clock_start = unix_time_at(epoch);
        loop {
            tick.tick().await;
            let supply = match &actuation.provider {
                Some(p) => p.observe().await,
                None => Supply::default(),
            };
            let now = Instant::now();
            let from_peers = peers.load(pool.name(), now);
            let beyond = Beyond {
                peers: from_peers.load,
                now_secs: now.duration_since(epoch).as_secs_f64(),
                starting: supply.starting,
                queued: pool.queued(),
                queue_wait: pool.queue.take_max_wait().map(|d| d.as_secs_f64()),
                cold_start: cold_starts.expected().as_secs_f64(),
                arrivals: pool.take_arrivals(),
                clock_start,
            };
            let obs = observation::observe(&pool.snapshot(), &pool.config, now, beyond);
            pool.set_coming(cold_starts.observe(now, obs.starting));
            if let Some(learned) = cold_starts.learned() {
                memory.remember_cold_start(pool.name(), learned);
            }
            let mut rec = policy.recommend(&obs);
            // An operator's pin replaces the recommendation (the policy still sees the load).
            if let Some(pinned) = pool.hold.pinned() {
                rec.reason = format!("pinned at {pinned} by an operator (policy: {})", rec.reason);
                rec.desired = pinned;
            }
            desired_gauge.set(i64::from(rec.desired));
            let changed = last_desired != Some(rec.desired);
            if changed {
                tracing::info!(pool = pool.name(), ready = obs.ready, starting = obs.starting, desired = rec.desired, reason = %rec.reason, "scaler decision");
                last_desired = Some(rec.desired);
            }
            let leading = actuation.leadership.as_ref().is_none_or(|l| l.is_leader());
            let paused = pool.hold.paused();
            if paused {
                rec.reason = format!("paused by an operator (would want {})", rec.desired);
            }
            let acting = actuation.enabled && leading && !paused;
            if changed {
                if decisions.len() == DECISIONS_KEPT {
                    decisions.pop_front();
                }
                decisions.push_back(Decision {
                    at: crate::openai::unix_seconds(),
                    desired: rec.desired,
                    ready: obs.ready,
                    starting: obs.starting,
                    reason: rec.reason.clone(),
                    acting,
                });
            }
            if let Some(provider) = actuation.provider.as_ref().filter(|_| acting) {
                match provider.scale(rec.desired, &obs).await {
                    Ok(action) => {
                        last_error = None;
                        let direction = match action {
                            Action::Up(_) => "up",
                            Action::Down(_) => "down",
                            Action::None => "",
                        };
                        if !direction.is_empty() {
                            scale_events
                                .with_label_values(&[pool.name(), direction])
                                .inc();
                            pool.notify(
                                crate::config::EventKind::Scale,
                                format!(
                                    "scaling {direction} to {} replicas ({} ready, {} starting): {}",
                                    rec.desired, obs.ready, obs.starting, rec.reason
                                ),
                            );
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        if last_error.as_ref() != Some(&message) {
                            tracing::error!(pool = pool.name(), "scaling failed: {message}");
                        }
                        last_error = Some(message);
                    }
                }
            }
            pool.scaler_status.store(Some(Arc::new(ScalerStatus {
                desired: rec.desired,
                ready: obs.ready,
                starting: obs.starting,
                draining: supply.draining,
                cold_start: cold_starts.expected().as_secs_f64(),
                cold_start_learned: cold_starts.is_learned(),
                reason: rec.reason.clone(),
                acting,
                error: last_error.clone().filter(|_| acting),
                inflight: obs.inflight,
                queued: obs.queued,
                peers_unknown: from_peers.unknown,
                decisions: decisions.iter().cloned().collect(),
            })));
        }
    })
}

/// The Unix time (seconds) at `epoch`.
fn unix_time_at(epoch: Instant) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_secs_f64() - epoch.elapsed().as_secs_f64()
}
