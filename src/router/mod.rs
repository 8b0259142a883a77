//! Replica selection: pure, synchronous picking over a pool's snapshot. Time, randomness and a
//! request sequence number are passed in, so the same code runs in real and virtual time and is
//! tested with exact expectations.

use std::sync::Arc;
use std::time::Instant;

use crate::config::RoutingPolicy;
use crate::load::Replica;

/// The replicas of one pool as the router sees them; replaced whole (behind an `ArcSwap`)
/// when replicas come or go.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub replicas: Vec<Arc<Replica>>,
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
}

/// Inputs that vary per call but must not be read inside the router.
#[derive(Debug, Clone, Copy)]
pub struct PickContext {
    pub now: Instant,
    /// A fresh random number.
    pub random: u64,
    /// A per-pool request sequence number (round robin).
    pub sequence: u64,
}

/// Policies available in this build.
pub fn is_supported(policy: RoutingPolicy) -> bool {
    matches!(
        policy,
        RoutingPolicy::LeastInflight | RoutingPolicy::RoundRobin | RoutingPolicy::Random
    )
}

/// Picks a replica index, skipping ejected replicas and those in `exclude` (already tried for
/// this request). None when no replica is eligible.
pub fn pick(
    policy: RoutingPolicy,
    snapshot: &Snapshot,
    _features: &RequestFeatures,
    ctx: PickContext,
    exclude: &[usize],
) -> Option<usize> {
    let eligible = |i: &usize| !exclude.contains(i) && !snapshot.replicas[*i].is_ejected(ctx.now);
    let n = snapshot.replicas.len();
    match policy {
        RoutingPolicy::RoundRobin | RoutingPolicy::Random => {
            if n == 0 {
                return None;
            }
            let start = match policy {
                RoutingPolicy::RoundRobin => ctx.sequence,
                _ => ctx.random,
            } as usize
                % n;
            (0..n).map(|k| (start + k) % n).find(eligible)
        }
        _ => least_inflight(snapshot, ctx.random, eligible),
    }
}

/// Fewest in-flight requests; ties broken uniformly at random (reservoir sampling, no
/// allocation).
fn least_inflight(
    snapshot: &Snapshot,
    mut random: u64,
    eligible: impl Fn(&usize) -> bool,
) -> Option<usize> {
    let mut best: Option<(u64, usize)> = None;
    let mut ties = 0u64;
    for i in (0..snapshot.replicas.len()).filter(eligible) {
        let load = snapshot.replicas[i].inflight();
        match best {
            Some((b, _)) if load > b => {}
            Some((b, _)) if load == b => {
                ties += 1;
                // Keep the new one with probability 1/ties.
                random = random
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if (random >> 33).is_multiple_of(ties) {
                    best = Some((load, i));
                }
            }
            _ => {
                best = Some((load, i));
                ties = 1;
            }
        }
    }
    best.map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::uri::{Authority, Scheme};
    use prometheus::IntGauge;

    fn snapshot(n: usize) -> Snapshot {
        let epoch = Instant::now();
        Snapshot {
            replicas: (0..n)
                .map(|i| {
                    let gauge = IntGauge::new(format!("g{i}"), "test").unwrap();
                    let authority: Authority = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
                    Arc::new(Replica::new(Scheme::HTTP, authority, gauge, epoch))
                })
                .collect(),
        }
    }

    fn ctx(random: u64, sequence: u64) -> PickContext {
        PickContext {
            now: Instant::now(),
            random,
            sequence,
        }
    }

    #[test]
    fn least_inflight_picks_the_idlest() {
        let s = snapshot(3);
        let _a = s.replicas[0].start_request();
        let _b = s.replicas[0].start_request();
        let _c = s.replicas[2].start_request();
        let f = RequestFeatures::default();
        for r in 0..50 {
            assert_eq!(
                pick(RoutingPolicy::LeastInflight, &s, &f, ctx(r, 0), &[]),
                Some(1)
            );
        }
        // Excluding the idlest leaves the next idlest.
        assert_eq!(
            pick(RoutingPolicy::LeastInflight, &s, &f, ctx(1, 0), &[1]),
            Some(2)
        );
    }

    #[test]
    fn least_inflight_breaks_ties_at_random() {
        let s = snapshot(4);
        let f = RequestFeatures::default();
        let mut counts = [0; 4];
        for r in 0..4000u64 {
            let i = pick(
                RoutingPolicy::LeastInflight,
                &s,
                &f,
                ctx(r.wrapping_mul(0x9E3779B97F4A7C15), 0),
                &[],
            )
            .unwrap();
            counts[i] += 1;
        }
        assert!(counts.iter().all(|&c| c > 700), "{counts:?}");
    }

    #[test]
    fn a_burst_spreads_across_replicas() {
        // Guards are held as the proxy holds them: each pick sees the ones before it.
        let s = snapshot(4);
        let f = RequestFeatures::default();
        let mut guards = Vec::new();
        for r in 0..100 {
            let i = pick(RoutingPolicy::LeastInflight, &s, &f, ctx(r, 0), &[]).unwrap();
            guards.push(s.replicas[i].start_request());
        }
        assert!(s.replicas.iter().all(|r| r.inflight() == 25));
    }

    #[test]
    fn ejected_replicas_are_skipped_and_none_when_all_are_out() {
        let s = snapshot(2);
        let now = Instant::now();
        assert!(s.replicas[0].record_failure(now, 1, 60_000));
        let f = RequestFeatures::default();
        for r in 0..20 {
            assert_eq!(
                pick(RoutingPolicy::LeastInflight, &s, &f, ctx(r, r), &[]),
                Some(1)
            );
            assert_eq!(
                pick(RoutingPolicy::RoundRobin, &s, &f, ctx(r, r), &[]),
                Some(1)
            );
        }
        assert_eq!(pick(RoutingPolicy::Random, &s, &f, ctx(3, 0), &[1]), None);
        assert_eq!(
            pick(
                RoutingPolicy::LeastInflight,
                &Snapshot::default(),
                &f,
                ctx(3, 0),
                &[]
            ),
            None
        );
    }

    #[test]
    fn round_robin_cycles() {
        let s = snapshot(3);
        let f = RequestFeatures::default();
        let order: Vec<usize> = (0..6)
            .map(|q| pick(RoutingPolicy::RoundRobin, &s, &f, ctx(0, q), &[]).unwrap())
            .collect();
        assert_eq!(order, vec![0, 1, 2, 0, 1, 2]);
    }
}
