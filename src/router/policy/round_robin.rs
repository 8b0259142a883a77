//! Round robin and random: a scan of the pool from a start position, the first eligible replica
//! wins. The start is the pool's request sequence number (each replica in turn) or a random
//! number (uniformly random); both policies are this one code path.

use crate::router::Snapshot;

/// The first eligible replica from `start` (mod the pool size) on, wrapping around.
pub fn round_robin(
    snapshot: &Snapshot,
    start: u64,
    eligible: impl Fn(&usize) -> bool,
) -> Option<usize> {
    let n = snapshot.replicas.len();
    if n == 0 {
        return None;
    }
    let start = start as usize % n;
    (0..n).map(|k| (start + k) % n).find(eligible)
}

#[cfg(test)]
mod tests {
    use crate::config::RoutingPolicy;
    use crate::router::test_support::*;
    use crate::router::{RequestFeatures, pick};

    #[test]
    fn round_robin_cycles() {
        let s = snapshot(3);
        let f = RequestFeatures::default();
        let order: Vec<usize> = (0..6)
            .map(|q| pick(&routing(RoutingPolicy::RoundRobin), &s, &f, ctx(0, q), &[]).unwrap())
            .collect();
        assert_eq!(order, vec![0, 1, 2, 0, 1, 2]);
    }
}
