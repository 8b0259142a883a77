//! Least in flight: the replica with the fewest requests in flight from this gateway, ties
//! broken uniformly at random. The default policy, and the fallback of those that find no
//! better reason to choose (prefix affinity, power of two, session affinity without a key).

use crate::router::Snapshot;

/// Fewest in-flight requests; ties broken uniformly at random (reservoir sampling, no
/// allocation).
pub fn least_inflight(
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
    use std::time::Instant;

    use crate::config::RoutingPolicy;
    use crate::router::test_support::*;
    use crate::router::{RequestFeatures, pick};

    #[test]
    fn least_inflight_picks_the_idlest() {
        let s = snapshot(3);
        let _a = s.replicas[0].start_request();
        let _b = s.replicas[0].start_request();
        let _c = s.replicas[2].start_request();
        let f = RequestFeatures::default();
        for r in 0..50 {
            assert_eq!(
                pick(
                    &routing(RoutingPolicy::LeastInflight),
                    &s,
                    &f,
                    ctx(r, 0),
                    &[]
                ),
                Some(1)
            );
        }
        // Excluding the idlest leaves the next idlest.
        assert_eq!(
            pick(
                &routing(RoutingPolicy::LeastInflight),
                &s,
                &f,
                ctx(1, 0),
                &[1]
            ),
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
                &routing(RoutingPolicy::LeastInflight),
                &s,
                &f,
                ctx(r.wrapping_mul(0x9E3779B97F4A7C15), 0),
                &[],
            )
            .unwrap();
            counts[i] += 1;
        }
        // 1000 each on average; a uniform draw spreads them by a standard deviation of about 27
        // (binomial, 4000 × ¼ × ¾), so each lands within 100 of it.
        assert!(counts.iter().all(|c| (900..1100).contains(c)), "{counts:?}");
    }

    #[test]
    fn a_burst_spreads_across_replicas() {
        // Guards are held as the proxy holds them: each pick sees the ones before it.
        let s = snapshot(4);
        let f = RequestFeatures::default();
        let _held = pick_holding(RoutingPolicy::LeastInflight, &s, &f, Instant::now(), 100);
        assert!(s.replicas.iter().all(|r| r.inflight() == 25));
    }
}
