//! Replica selection: pure, synchronous picking over a pool's snapshot. Time, randomness and a
//! request sequence number are passed in, so the same code runs in real and virtual time and is
//! tested with exact expectations.
//!
//! This file is the router's interface: what a pick sees ([`Snapshot`], [`RequestFeatures`],
//! [`PickContext`]) and [`pick`], which hands the choice to the configured policy (one file
//! each under `policy`; session affinity in `session`). Around them: which replicas a
//! scoring policy looks at (`candidates`), when a replica takes no more (`saturation`),
//! predicted-ttft's cost model (`ttft`) and near-tie rule (`tie_break`), and the prefix
//! index ([`prefix`]).

use std::sync::Arc;
use std::time::Instant;

use crate::config::{Routing, RoutingPolicy};
use crate::replica::Replica;

mod block_table;
mod candidates;
mod policy;
pub mod prefix;
mod saturation;
mod session;
mod tie_break;
mod ttft;

pub use policy::predicted_ttft_secs;
pub use saturation::{all_saturated, saturated};

/// The replicas of one pool as the router sees them; replaced whole (behind an `ArcSwap`)
/// when replicas come or go, with what is derived from the replica set built once here.
#[derive(Debug)]
pub struct Snapshot {
    pub replicas: Vec<Arc<Replica>>,
    sessions: session::SessionRing,
    /// Replica id → index, for indexes (prefix) that name replicas by id.
    by_id: std::collections::HashMap<u64, usize>,
}

impl Snapshot {
    pub fn new(replicas: Vec<Arc<Replica>>) -> Self {
        Self {
            sessions: session::SessionRing::new(&replicas),
            by_id: replicas
                .iter()
                .enumerate()
                .map(|(i, r)| (r.id, i))
                .collect(),
            replicas,
        }
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

/// What the gateway knows about a request when it picks a replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFeatures {
    pub stream: bool,
    /// Estimated prompt tokens.
    pub prompt_tokens: u32,
    pub max_tokens: Option<u32>,
    /// Index into the configured priority classes.
    pub priority: usize,
    /// Hash of the session header's value, when the request has one.
    pub session: Option<u64>,
    /// Which replicas hold how much of the prompt's prefix (from the pool's prefix index).
    pub prefix: prefix::PrefixMatch,
    /// The LoRA adapter the request names ([`crate::replica::adapter_id`]), if any.
    pub adapter: Option<u64>,
}

/// Inputs that vary per call but must not be read inside the router.
#[derive(Debug, Clone, Copy)]
pub struct PickContext {
    pub now: Instant,
    /// A fresh random number.
    pub random: u64,
    /// A per-pool request sequence number (round robin).
    pub sequence: u64,
    /// Scraped stats older than this are ignored.
    pub stale_after: std::time::Duration,
    /// GPU readings older than this are ignored.
    pub gpu_stale_after: std::time::Duration,
    /// The pool's saturation thresholds (`session` leaves a saturated replica).
    pub limits: crate::config::Admission,
}

/// Picks a replica index, skipping ejected and cordoned replicas and those in `exclude` (already tried for
/// this request). None when no replica is eligible.
pub fn pick(
    routing: &Routing,
    snapshot: &Snapshot,
    features: &RequestFeatures,
    ctx: PickContext,
    exclude: &[usize],
) -> Option<usize> {
    let eligible = |i: &usize| !exclude.contains(i) && snapshot.replicas[*i].takes_traffic(ctx.now);
    let policy = routing.policy;
    match policy {
        RoutingPolicy::RoundRobin | RoutingPolicy::Random => {
            let start = match policy {
                RoutingPolicy::RoundRobin => ctx.sequence,
                _ => ctx.random,
            };
            policy::round_robin(snapshot, start, eligible)
        }
        RoutingPolicy::PredictedTtft => {
            policy::predicted_ttft(routing, snapshot, features, ctx, eligible)
        }
        RoutingPolicy::PowerOfTwo => policy::power_of_two(snapshot, ctx.random, eligible),
        RoutingPolicy::Weighted => policy::weighted(routing, snapshot, features, ctx, eligible),
        RoutingPolicy::PrefixAffinity => {
            policy::prefix_affinity(routing, snapshot, features, ctx, eligible)
        }
        // Requests without a session key are spread by load.
        RoutingPolicy::SessionAffinity => match features.session {
            Some(session) => session::session_affinity(snapshot, session, ctx, eligible),
            None => policy::least_inflight(snapshot, ctx.random, eligible),
        },
        _ => policy::least_inflight(snapshot, ctx.random, eligible),
    }
}

/// Prompt tokens replica `id` would have to prefill for this request: those its cached prefix
/// does not cover (at least one). The proxy counts them as the request's pending prefill.
pub fn own_prefill_tokens(features: &RequestFeatures, id: u64) -> u64 {
    let prompt = f64::from(features.prompt_tokens.max(1));
    (prompt * (1.0 - features.prefix.fraction(id)))
        .ceil()
        .max(1.0) as u64
}

// Fixtures for the tests of every router file.
#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn cordoned_replicas_are_skipped_until_uncordoned() {
        let s = snapshot(2);
        let f = RequestFeatures::default();
        s.replicas[1].set_cordoned(true);
        for policy in [RoutingPolicy::RoundRobin, RoutingPolicy::PredictedTtft] {
            for r in 0..10 {
                assert_eq!(pick(&routing(policy), &s, &f, ctx(r, r), &[]), Some(0));
            }
        }
        s.replicas[0].set_cordoned(true);
        assert_eq!(
            pick(&routing(RoutingPolicy::RoundRobin), &s, &f, ctx(1, 1), &[]),
            None
        );
        s.replicas[1].set_cordoned(false);
        assert_eq!(
            pick(&routing(RoutingPolicy::RoundRobin), &s, &f, ctx(1, 1), &[]),
            Some(1)
        );
    }

    #[test]
    fn ejected_replicas_are_skipped_and_none_when_all_are_out() {
        let s = snapshot(2);
        let now = Instant::now();
        assert!(s.replicas[0].record_failure(now, 1, 60_000));
        let f = RequestFeatures::default();
        for r in 0..20 {
            assert_eq!(
                pick(
                    &routing(RoutingPolicy::LeastInflight),
                    &s,
                    &f,
                    ctx(r, r),
                    &[]
                ),
                Some(1)
            );
            assert_eq!(
                pick(&routing(RoutingPolicy::RoundRobin), &s, &f, ctx(r, r), &[]),
                Some(1)
            );
        }
        assert_eq!(
            pick(&routing(RoutingPolicy::Random), &s, &f, ctx(3, 0), &[1]),
            None
        );
        assert_eq!(
            pick(
                &routing(RoutingPolicy::LeastInflight),
                &Snapshot::default(),
                &f,
                ctx(3, 0),
                &[]
            ),
            None
        );
    }
}
