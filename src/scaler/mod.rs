//! The scaling controller: pure policies in [`policy`], the local provider in [`local`], and the
//! control loop that feeds a policy the gateway's live view of its pool (exact in-flight and
//! queued counts, ready and starting replicas) and acts on each recommendation.

pub mod local;
pub mod policy;

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinHandle;

use crate::config::Provider;
use crate::gateway::pools::{PoolRuntime, ScalerStatus};
use local::LocalFleet;
use policy::Observation;

/// Runs the pool's scaler every `scaler.interval` until aborted. With the `static` provider (or
/// no fleet) it only computes and exports the recommendation.
pub fn spawn(
    pool: Arc<PoolRuntime>,
    fleet: Option<Arc<LocalFleet>>,
    desired_gauge: prometheus::IntGauge,
    scale_events: prometheus::IntCounterVec,
    epoch: Instant,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let config = pool.config.scaler.clone();
        let mut policy = policy::build(&config);
        let mut tick = tokio::time::interval(config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_desired = None;
        loop {
            tick.tick().await;
            let now = Instant::now();
            let starting = fleet.as_ref().map_or(0, |f| f.starting());
            let obs = Observation {
                now: now.duration_since(epoch).as_secs_f64(),
                ready: pool.ready_count(now),
                starting,
                inflight: pool.inflight(),
                queued: pool.queued(),
                kv_cache_usage: pool.mean_kv_usage(now),
                gpu_utilization: pool.mean_gpu_use(now),
                queue_wait: pool.admission.take_max_wait().map(|d| d.as_secs_f64()),
            };
            let rec = policy.recommend(&obs);
            desired_gauge.set(i64::from(rec.desired));
            let capacity = obs.ready + obs.starting;
            if last_desired != Some(rec.desired) {
                tracing::info!(pool = pool.name(), ready = obs.ready, starting = obs.starting, desired = rec.desired, reason = %rec.reason, "scaler decision");
                last_desired = Some(rec.desired);
            }
            pool.scaler_status.store(Some(Arc::new(ScalerStatus {
                desired: rec.desired,
                ready: obs.ready,
                starting: obs.starting,
                draining: fleet.as_ref().map_or(0, |f| f.draining()),
                reason: rec.reason.clone(),
            })));
            let Some(fleet) = fleet
                .as_ref()
                .filter(|_| matches!(config.provider, Provider::Local))
            else {
                continue;
            };
            if rec.desired > capacity {
                scale_events.with_label_values(&[pool.name(), "up"]).inc();
                fleet.start_replicas(rec.desired - capacity);
            } else if rec.desired < capacity && obs.starting == 0 {
                scale_events.with_label_values(&[pool.name(), "down"]).inc();
                fleet.scale_down(capacity - rec.desired).await;
            }
        }
    })
}
