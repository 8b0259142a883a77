//! The last hour of each pool's replica count, for the status page's chart (`/admin/history`):
//! one task samples every pool every [`EVERY`] — replicas, ready, starting, desired, in flight,
//! queued — and the last [`KEPT`] samples are kept. Every pool is sampled, with a scaler or not.
//! The history is kept across reloads by pool name; a pool a reload removed is forgotten.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;

use crate::pool::PoolState;

/// How often each pool is sampled.
pub const EVERY: Duration = Duration::from_secs(10);
/// Samples kept per pool: an hour's at [`EVERY`].
pub const KEPT: usize = 360;

/// A pool at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Unix seconds.
    pub at: u64,
    /// Replicas in the pool's set.
    pub replicas: u32,
    /// Of those, the ones taking traffic (not ejected, not cordoned).
    pub ready: u32,
    /// Asked for and not ready yet (the scaler's last reading; 0 without a scaler).
    pub starting: u32,
    /// The scaler's last decision (None without a scaler, or before its first tick).
    pub desired: Option<u32>,
    /// This gateway's answers in flight to the pool, and requests waiting at it.
    pub inflight: u64,
    pub queued: u64,
}

/// Every pool's samples, oldest first.
#[derive(Default)]
pub struct History {
    pools: Mutex<BTreeMap<String, VecDeque<Sample>>>,
}

impl History {
    /// Adds one sample to each named pool, dropping its oldest past [`KEPT`]; pools not named
    /// are forgotten (a reload removed them).
    pub fn record(&self, samples: Vec<(String, Sample)>) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|name, _| samples.iter().any(|(n, _)| n == name));
        for (name, sample) in samples {
            let kept = pools.entry(name).or_default();
            if kept.len() == KEPT {
                kept.pop_front();
            }
            kept.push_back(sample);
        }
    }

    /// Each pool's samples, oldest first.
    pub fn get(&self) -> BTreeMap<String, Vec<Sample>> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .iter()
            .map(|(name, kept)| (name.clone(), kept.iter().copied().collect()))
            .collect()
    }
}

/// The pool at `now` (`at`: the same moment in Unix seconds).
pub fn sample(pool: &PoolState, now: Instant, at: u64) -> Sample {
    let snapshot = pool.snapshot();
    let scaler = pool.scaler_status.load();
    Sample {
        at,
        replicas: snapshot.replicas.len() as u32,
        ready: snapshot
            .replicas
            .iter()
            .filter(|r| r.takes_traffic(now))
            .count() as u32,
        starting: scaler.as_ref().map_or(0, |s| s.starting),
        desired: scaler.as_ref().map(|s| s.desired),
        inflight: snapshot.replicas.iter().map(|r| r.inflight()).sum(),
        queued: pool.queued(),
    }
}

/// Samples `pools` into `history` at once and then every [`EVERY`], until aborted.
pub fn spawn(history: Arc<History>, pools: Vec<Arc<PoolState>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (now, at) = (Instant::now(), crate::openai::unix_seconds());
            let samples = pools
                .iter()
                .map(|p| (p.name().to_string(), sample(p, now, at)))
                .collect();
            history.record(samples);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at: u64) -> Sample {
        Sample {
            at,
            replicas: 1,
            ready: 1,
            starting: 0,
            desired: None,
            inflight: 0,
            queued: 0,
        }
    }

    #[test]
    fn an_hour_is_kept_per_pool_and_removed_pools_are_forgotten() {
        let history = History::default();
        for t in 0..(KEPT as u64 + 5) {
            history.record(vec![("a".into(), at(t)), ("b".into(), at(t))]);
        }
        let kept = history.get();
        assert_eq!(kept["a"].len(), KEPT);
        assert_eq!(kept["a"][0].at, 5, "the oldest went first");
        assert_eq!(kept["a"].last().unwrap().at, KEPT as u64 + 4);
        // A reload left only `b` and added `c`.
        history.record(vec![("b".into(), at(1000)), ("c".into(), at(1000))]);
        let kept = history.get();
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!((kept["b"].len(), kept["c"].len()), (KEPT, 1));
    }
}
