//! A pool's SLO attainment over a sliding window: each streamed answer, as it ends, counts as
//! met (first token within `slo.ttft`, mean gap between chunks within `slo.itl`) or missed, in
//! 10-second slots; [`SloTracker::attainment`] sums the slots of the last `slo.window`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::SloTarget;

/// Slots are this long.
const SLOT_SECS: u64 = 10;

pub struct SloTracker {
    pub target: SloTarget,
    epoch: Instant,
    /// Per slot: the slot number it holds now, answers met, answers in all.
    slots: Vec<[AtomicU64; 3]>,
}

/// The window's attainment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attainment {
    pub met: u64,
    pub total: u64,
}

impl Attainment {
    /// The share met; None without answers.
    pub fn share(&self) -> Option<f64> {
        (self.total > 0).then(|| self.met as f64 / self.total as f64)
    }
}

impl SloTracker {
    pub fn new(target: SloTarget, epoch: Instant) -> Self {
        let n = (target.window.as_secs() / SLOT_SECS).max(1) as usize;
        Self {
            target,
            epoch,
            slots: (0..n)
                .map(|_| {
                    [
                        AtomicU64::new(u64::MAX),
                        AtomicU64::new(0),
                        AtomicU64::new(0),
                    ]
                })
                .collect(),
        }
    }

    /// Whether an answer with this first-token time and mean chunk gap meets the objective.
    pub fn meets(&self, ttft: Duration, mean_itl: Duration) -> bool {
        ttft <= self.target.ttft && mean_itl <= self.target.itl
    }

    /// Counts one answer that ended at `now`.
    pub fn record(&self, met: bool, now: Instant) {
        let slot = now.saturating_duration_since(self.epoch).as_secs() / SLOT_SECS;
        let [held, ok, all] = &self.slots[(slot % self.slots.len() as u64) as usize];
        // A slot last used a window ago starts over. Two answers racing here can lose a count
        // at a slot's turn: an estimate, not a ledger.
        if held.swap(slot, Ordering::AcqRel) != slot {
            ok.store(0, Ordering::Relaxed);
            all.store(0, Ordering::Relaxed);
        }
        ok.fetch_add(u64::from(met), Ordering::Relaxed);
        all.fetch_add(1, Ordering::Relaxed);
    }

    /// Answers met and in all over the window ending at `now`.
    pub fn attainment(&self, now: Instant) -> Attainment {
        let current = now.saturating_duration_since(self.epoch).as_secs() / SLOT_SECS;
        let n = self.slots.len() as u64;
        let mut sum = Attainment { met: 0, total: 0 };
        for [held, ok, all] in &self.slots {
            let slot = held.load(Ordering::Acquire);
            if slot != u64::MAX && slot + n > current {
                sum.met += ok.load(Ordering::Relaxed);
                sum.total += all.load(Ordering::Relaxed);
            }
        }
        sum
    }
}

/// Answers a window needs before its attainment is judged (fewer say little).
const MIN_ANSWERS: u64 = 20;

/// Every 10 s until aborted: sets the pool's `infergate_slo_attainment` and tells chat when the
/// attainment falls below the target, or is back at it (once each way).
pub fn watch(
    pool: std::sync::Arc<super::PoolState>,
    gauge: prometheus::Gauge,
) -> Option<tokio::task::JoinHandle<()>> {
    pool.slo.as_ref()?;
    Some(tokio::spawn(async move {
        let Some(slo) = &pool.slo else { return };
        let mut tick = tokio::time::interval(Duration::from_secs(SLOT_SECS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut below = false;
        loop {
            tick.tick().await;
            let now = Instant::now();
            let seen = slo.attainment(now);
            let Some(share) = seen.share() else { continue };
            gauge.set(share);
            if seen.total < MIN_ANSWERS || (share < slo.target.target) == below {
                continue;
            }
            below = !below;
            let t = &slo.target;
            let text = format!(
                "SLO attainment {:.1} % {} the {:.1} % target over {} ({} of {} streamed answers with the first token within {} and chunks {} apart)",
                share * 100.0,
                if below { "is below" } else { "is back at" },
                t.target * 100.0,
                crate::config::format_duration(t.window),
                seen.met,
                seen.total,
                crate::config::format_duration(t.ttft),
                crate::config::format_duration(t.itl),
            );
            pool.notify(crate::config::EventKind::Slo, text);
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attainment_counts_the_last_window_only() {
        let target = SloTarget {
            ttft: Duration::from_secs(2),
            itl: Duration::from_millis(100),
            target: 0.9,
            window: Duration::from_secs(60),
        };
        let epoch = Instant::now();
        let t = SloTracker::new(target, epoch);
        assert!(t.meets(Duration::from_secs(2), Duration::from_millis(100)));
        assert!(!t.meets(Duration::from_secs(3), Duration::ZERO));
        assert!(!t.meets(Duration::ZERO, Duration::from_millis(101)));
        assert_eq!(t.attainment(epoch).share(), None);
        let at = |s: u64| epoch + Duration::from_secs(s);
        for _ in 0..9 {
            t.record(true, at(5));
        }
        t.record(false, at(15));
        assert_eq!(t.attainment(at(20)), Attainment { met: 9, total: 10 });
        // 65 s on: the first slot (0–10 s) has left the 60 s window, the second not yet.
        assert_eq!(t.attainment(at(65)), Attainment { met: 0, total: 1 });
        // Its slot is reused a window later and starts over.
        t.record(true, at(62));
        assert_eq!(t.attainment(at(65)), Attainment { met: 1, total: 2 });
        assert_eq!(t.attainment(at(200)).share(), None);
    }
}
