//! Power of two choices: two distinct replicas drawn at random, the one with fewer in flight.

use super::least_inflight;
use crate::router::Snapshot;
use crate::router::candidates::stride;

/// Two distinct replicas at random, the one with fewer in flight (falls back to a full scan
/// when a drawn one is not eligible).
pub fn power_of_two(
    snapshot: &Snapshot,
    random: u64,
    eligible: impl Fn(&usize) -> bool,
) -> Option<usize> {
    let n = snapshot.replicas.len();
    let (a, step) = stride(n, random);
    let b = (a + step) % n.max(1);
    match (n > 1 && eligible(&a), n > 1 && eligible(&b)) {
        (true, true) => {
            let load = |i: usize| snapshot.replicas[i].inflight();
            Some(if load(b) < load(a) { b } else { a })
        }
        _ => least_inflight(snapshot, random, eligible),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::RoutingPolicy;
    use crate::router::test_support::*;
    use crate::router::{RequestFeatures, pick};

    #[test]
    fn power_of_two_takes_the_less_loaded_of_two() {
        let s = snapshot(3);
        let mut hot = Vec::new();
        for _ in 0..10 {
            hot.push(s.replicas[0].start_request());
        }
        let f = RequestFeatures::default();
        let mut counts = [0; 3];
        for r in 0..3000u64 {
            let i = pick(
                &routing(RoutingPolicy::PowerOfTwo),
                &s,
                &f,
                ctx(r.wrapping_mul(0x9E3779B97F4A7C15), r),
                &[],
            )
            .unwrap();
            counts[i] += 1;
        }
        // Replica 0 loses every draw it is in; the other two share the rest evenly (1500 each on
        // average, a standard deviation of about 27).
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!(
            (1400..1600).contains(&counts[1]) && (1400..1600).contains(&counts[2]),
            "{counts:?}"
        );
    }
}
