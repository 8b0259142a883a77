//! Prefix affinity (SGLang's cache-aware rule): the replica holding the largest share of the
//! prompt's prefix, unless the pool is imbalanced; then least in flight.

use super::least_inflight;
use crate::config::Routing;
use crate::router::{PickContext, RequestFeatures, Snapshot};

/// The replica holding the largest share of the prompt's prefix, when that share reaches
/// `prefix_min_match` and the pool is not imbalanced (busiest and idlest differ by more than
/// `imbalance_requests` and by more than `imbalance_ratio`); otherwise least in flight. The
/// imbalance guard is what stops affinity from piling a popular prefix onto one replica.
pub fn prefix_affinity(
    routing: &Routing,
    snapshot: &Snapshot,
    features: &RequestFeatures,
    ctx: PickContext,
    eligible: impl Fn(&usize) -> bool,
) -> Option<usize> {
    let (mut low, mut high) = (u64::MAX, 0u64);
    for i in (0..snapshot.replicas.len()).filter(&eligible) {
        let load = snapshot.replicas[i].inflight();
        low = low.min(load);
        high = high.max(load);
    }
    let imbalanced = high.saturating_sub(low) > u64::from(routing.imbalance_requests)
        && high as f64 > routing.imbalance_ratio * low as f64;
    if !imbalanced {
        for (id, blocks) in &features.prefix.replicas {
            let share = f64::from(*blocks) / f64::from(features.prefix.total_blocks.max(1));
            if share < routing.prefix_min_match {
                break; // sorted best first
            }
            if let Some(i) = snapshot
                .replicas
                .iter()
                .position(|r| r.id == *id)
                .filter(|i| eligible(i))
            {
                return Some(i);
            }
        }
    }
    least_inflight(snapshot, ctx.random, eligible)
}

#[cfg(test)]
mod tests {
    use crate::config::RoutingPolicy;
    use crate::router::pick;
    use crate::router::test_support::*;

    #[test]
    fn prefix_affinity_follows_the_prefix_until_the_pool_is_imbalanced() {
        let s = snapshot(3);
        let f = prefix_on(&s, 2, 8, 10);
        let mut guards = Vec::new();
        // The prefix holder takes requests while the imbalance stays within 64 requests.
        for q in 0..64 {
            assert_eq!(
                pick(
                    &routing(RoutingPolicy::PrefixAffinity),
                    &s,
                    &f,
                    ctx(q, q),
                    &[]
                ),
                Some(2),
                "request {q}"
            );
            guards.push(s.replicas[2].start_request());
        }
        // 65 in flight on it, 0 elsewhere: imbalanced, so load decides: one of the two idle
        // replicas.
        guards.push(s.replicas[2].start_request());
        let balanced = pick(
            &routing(RoutingPolicy::PrefixAffinity),
            &s,
            &f,
            ctx(1, 1),
            &[],
        );
        assert!(matches!(balanced, Some(0 | 1)), "{balanced:?}");
        // A small share (below prefix_min_match 0.3) does not count. The pool is balanced again
        // first (else the imbalance alone would decide), with replica 0 the only idle one: were
        // the share counted, replica 1 would take the request.
        drop(guards);
        let small = prefix_on(&s, 1, 2, 10);
        let _busy = [s.replicas[1].start_request(), s.replicas[2].start_request()];
        assert_eq!(
            pick(
                &routing(RoutingPolicy::PrefixAffinity),
                &s,
                &small,
                ctx(3, 3),
                &[]
            ),
            Some(0)
        );
    }
}
