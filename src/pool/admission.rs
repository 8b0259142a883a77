//! The admission rules, as pure functions of what a pool looks like: whether an arriving request
//! goes on at once, waits at the gateway or is shed; how many may wait and until when, stretched
//! while replicas start ([`Coming`]); whether the first in line may go; and which class's first
//! waiter goes next. The gateway's queue ([`super::queue`]) and the fleet simulation's both
//! decide through these, on a [`Gate`] read by [`gate`].

use std::time::{Duration, Instant};

use crate::config;
use crate::router::{self, Snapshot};

/// What the pool looks like to a request at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    /// Some replica takes traffic (neither ejected nor cordoned).
    pub has_replica: bool,
    /// Every replica taking traffic is saturated (false when there is none).
    pub saturated: bool,
    /// Requests waiting at the gateway for this pool.
    pub queued: u64,
    /// A scaler may bring replicas (so a pool without any holds requests instead of failing).
    pub scaler_enabled: bool,
}

/// Reads the gate from the pool's replica set at `now`, with `queued` requests waiting.
pub fn gate(snapshot: &Snapshot, pool: &config::Pool, now: Instant, queued: u64) -> Gate {
    let has_replica = snapshot.replicas.iter().any(|r| r.takes_traffic(now));
    let saturated = has_replica
        && router::all_saturated(snapshot, &pool.admission, now, pool.metrics.stale_after);
    Gate {
        has_replica,
        saturated,
        queued,
        scaler_enabled: pool.scaler.enabled,
    }
}

/// What becomes of a request on arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// On to the router now (which answers 503 at once when no replica is there and none will
    /// come).
    Go,
    /// Waits at the gateway, by priority class, for room (or for a replica to start).
    Queue,
    /// Refused at once with 429: a sheddable class, and every replica is saturated.
    Shed,
}

/// A request goes on while some replica has room and nobody waits before it; otherwise a
/// sheddable class is refused and the rest wait. With no replica and no scaler nothing will
/// come, so it goes on to fail at once rather than wait out its deadline.
pub fn on_arrival(gate: Gate, sheddable: bool) -> Admit {
    if !gate.has_replica && !gate.scaler_enabled {
        return Admit::Go;
    }
    if gate.has_replica && !gate.saturated && gate.queued == 0 {
        return Admit::Go;
    }
    if sheddable && gate.has_replica {
        return Admit::Shed;
    }
    Admit::Queue
}

/// Whether a request may join a queue that `queued` requests wait in (429 otherwise).
pub fn has_room(queued: u64, max_queue: u64) -> bool {
    queued < max_queue
}

/// Capacity on its way: replicas asked for and not ready yet, and when they are expected to
/// be ready (when the scaler first saw them starting, plus the pool's cold start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coming {
    pub replicas: u32,
    pub ready_at: Option<Instant>,
}

/// How many may wait at the gateway: `max_queue`, plus what the starting replicas will take
/// once ready (`max_inflight_per_replica` each, the most a replica is given before it counts
/// as saturated), so that a crowd arriving during a cold start is held for the replicas
/// starting for it rather than refused.
pub fn queue_bound(limits: &config::Admission, coming: Coming) -> u64 {
    u64::from(limits.max_queue)
        + u64::from(coming.replicas) * u64::from(limits.max_inflight_per_replica)
}

/// Until when a request that arrived at `received` may wait: `max_queue_wait`, counted from
/// when the starting replicas are expected ready if that is later (a request that could be
/// served once they are is kept through their cold start, not refused in the middle of it).
pub fn deadline(limits: &config::Admission, received: Instant, coming: Coming) -> Instant {
    let own = received + limits.max_queue_wait;
    match coming.ready_at {
        Some(ready) if coming.replicas > 0 => own.max(ready + limits.max_queue_wait),
        _ => own,
    }
}

/// Follows the replicas starting, tick by tick of the scaler, and learns the pool's cold start
/// from them: the time from first seeing replicas start to the first of them being ready, a
/// moving average of those (the configured `scaler.cold_start` until one was seen).
#[derive(Debug, Clone)]
pub struct ColdStarts {
    /// When replicas were first seen starting (None: none is starting).
    since: Option<Instant>,
    starting: u32,
    learned: Option<Duration>,
    configured: Duration,
}

impl ColdStarts {
    pub fn new(configured: Duration) -> Self {
        Self {
            since: None,
            starting: 0,
            learned: None,
            configured,
        }
    }

    /// Starts from a cold start learned earlier (under a previous config), if any.
    pub fn with_learned(mut self, learned: Option<Duration>) -> Self {
        self.learned = learned.or(self.learned);
        self
    }

    /// The cold start measured on this pool, if one was.
    pub fn learned(&self) -> Option<Duration> {
        self.learned
    }

    /// The cold start expected now: learned, else configured.
    pub fn expected(&self) -> Duration {
        self.learned.unwrap_or(self.configured)
    }

    /// Whether [`Self::expected`] was measured on this pool.
    pub fn is_learned(&self) -> bool {
        self.learned.is_some()
    }

    /// Takes one tick's count of replicas `starting` at `now`; returns what is coming.
    pub fn observe(&mut self, now: Instant, starting: u32) -> Coming {
        if starting < self.starting
            && let Some(since) = self.since
        {
            // Some became ready: one measurement per tick. The rest of their batch stays timed
            // from when it began; replicas added while others start are timed from then too,
            // so they read long, never short.
            let took = now.saturating_duration_since(since);
            self.learned = Some(match self.learned {
                Some(before) => (before + took) / 2,
                None => took,
            });
        }
        if starting > 0 && self.since.is_none() {
            self.since = Some(now);
        }
        if starting == 0 {
            self.since = None;
        }
        self.starting = starting;
        Coming {
            replicas: starting,
            ready_at: self.since.map(|since| since + self.expected()),
        }
    }
}

/// Whether the first in line may go now.
pub fn may_release(gate: Gate) -> bool {
    gate.has_replica && !gate.saturated
}

/// Which class's first waiter looks for room next: the highest class with anyone waiting
/// (classes are listed highest first).
pub fn class_to_release(waiting: impl IntoIterator<Item = u64>) -> Option<usize> {
    waiting.into_iter().position(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(has_replica: bool, saturated: bool, queued: u64, scaler_enabled: bool) -> Gate {
        Gate {
            has_replica,
            saturated,
            queued,
            scaler_enabled,
        }
    }

    #[test]
    fn arrivals_go_wait_or_are_shed() {
        // Room and nobody waiting: go, sheddable or not.
        assert_eq!(on_arrival(g(true, false, 0, false), true), Admit::Go);
        // Room, but others wait first: behind them (a sheddable one is shed).
        assert_eq!(on_arrival(g(true, false, 2, false), false), Admit::Queue);
        assert_eq!(on_arrival(g(true, false, 2, false), true), Admit::Shed);
        // Saturated.
        assert_eq!(on_arrival(g(true, true, 0, true), false), Admit::Queue);
        assert_eq!(on_arrival(g(true, true, 0, true), true), Admit::Shed);
        // No replica: a scaler may bring one (wait, even when sheddable); without one, fail fast.
        assert_eq!(on_arrival(g(false, false, 0, true), true), Admit::Queue);
        assert_eq!(on_arrival(g(false, false, 0, false), false), Admit::Go);
    }

    #[test]
    fn starting_replicas_stretch_the_queue_and_its_deadline() {
        let mut limits = crate::config::embedded_default().pools[0].admission;
        limits.max_queue = 100;
        limits.max_queue_wait = Duration::from_secs(30);
        limits.max_inflight_per_replica = 64;
        let t0 = Instant::now();
        let none = Coming::default();
        assert_eq!(queue_bound(&limits, none), 100);
        assert_eq!(deadline(&limits, t0, none), t0 + Duration::from_secs(30));
        // Three replicas expected ready 120 s from now: 3 × 64 more places, and a request
        // arriving now waits until 30 s after they are ready.
        let coming = Coming {
            replicas: 3,
            ready_at: Some(t0 + Duration::from_secs(120)),
        };
        assert_eq!(queue_bound(&limits, coming), 292);
        assert_eq!(deadline(&limits, t0, coming), t0 + Duration::from_secs(150));
        // One arriving after they were due keeps its own 30 s.
        let late = t0 + Duration::from_secs(200);
        assert_eq!(
            deadline(&limits, late, coming),
            late + Duration::from_secs(30)
        );
    }

    #[test]
    fn cold_starts_are_learned_from_replicas_becoming_ready() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut cold = ColdStarts::new(Duration::from_secs(30));
        assert_eq!(cold.observe(at(0), 0), Coming::default());
        // Two start at 10 s: expected ready at 40 s by the configured 30 s.
        let coming = cold.observe(at(10), 2);
        assert_eq!(coming.ready_at, Some(at(40)));
        assert_eq!(
            cold.observe(at(50), 2).ready_at,
            Some(at(40)),
            "late, still due"
        );
        // One is ready at 100 s: 90 s learned, and its batch-mate is due now.
        assert_eq!(cold.observe(at(100), 1).ready_at, Some(at(100)));
        assert!(cold.is_learned());
        assert_eq!(cold.expected(), Duration::from_secs(90));
        // The other is ready at 110 s, 100 s after they started: the average moves to 95 s.
        assert_eq!(cold.observe(at(110), 0), Coming::default());
        assert_eq!(cold.expected(), Duration::from_secs(95));
        // A new start is expected one learned cold start later.
        assert_eq!(cold.observe(at(200), 1).ready_at, Some(at(295)));
    }

    #[test]
    fn the_queue_bound_and_the_release_rule() {
        assert!(has_room(0, 1));
        assert!(!has_room(1, 1));
        assert!(!has_room(0, 0));
        assert!(may_release(g(true, false, 5, false)));
        assert!(!may_release(g(true, true, 5, true)));
        assert!(!may_release(g(false, false, 5, true)));
        assert_eq!(class_to_release([0, 3, 1]), Some(1));
        assert_eq!(class_to_release([2, 3]), Some(0));
        assert_eq!(class_to_release([0, 0]), None);
    }
}
