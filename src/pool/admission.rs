//! The admission rules, as pure functions of what a pool looks like: whether an arriving request
//! goes on at once, waits at the gateway or is shed; whether the queue has room; whether the
//! first in line may go; and which class's first waiter goes next. The gateway's queue
//! ([`super::queue`]) and the fleet simulation's both decide through these, on a [`Gate`]
//! read by [`gate`].

use std::time::Instant;

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
