//! Which replicas a scoring policy (predicted-ttft, weighted) looks at: all of them in a small
//! pool; in a large one [`SAMPLE`] distinct ones drawn at random plus those holding the prompt's
//! prefix, so the decision costs the same at 1000 replicas as at 16 (power-of-k choices).

use super::{RequestFeatures, Snapshot};

/// Candidates scored per pick in a large pool.
pub const SAMPLE: usize = 16;

impl Snapshot {
    /// The indexes of the replicas to score for this request, the sample drawn with `random`
    /// (holders of the prompt's prefix after the sample; some may appear twice).
    pub(super) fn candidates<'a>(
        &'a self,
        features: &'a RequestFeatures,
        random: u64,
    ) -> impl Iterator<Item = usize> + 'a {
        let n = self.replicas.len();
        let sampled = if n <= SAMPLE { 0..n } else { 0..SAMPLE };
        let (start, step) = stride(n, random);
        let all = n <= SAMPLE;
        sampled
            .map(move |j| if all { j } else { (start + j * step) % n })
            .chain(
                features
                    .prefix
                    .replicas
                    .iter()
                    .filter(move |_| !all)
                    .filter_map(|(id, _)| self.by_id.get(id).copied()),
            )
    }
}

/// A start and a step coprime with `n`, so `start + j·step (mod n)` visits distinct replicas.
pub fn stride(n: usize, random: u64) -> (usize, usize) {
    if n < 2 {
        return (0, 1);
    }
    let start = (random % n as u64) as usize;
    let mut step = 1 + ((random >> 32) % (n as u64 - 1)) as usize;
    while gcd(step, n) != 1 {
        step += 1;
    }
    (start, step % n)
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn large_pools_sample_distinct_candidates_and_keep_prefix_holders() {
        let s = snapshot(100);
        let f = prefix_on(&s, 77, 10, 10);
        for random in [1u64, 0x9E3779B97F4A7C15, u64::MAX] {
            let picked: Vec<usize> = s.candidates(&f, random).collect();
            assert_eq!(picked.len(), SAMPLE + 1);
            let distinct: std::collections::HashSet<usize> =
                picked[..SAMPLE].iter().copied().collect();
            assert_eq!(distinct.len(), SAMPLE, "{picked:?}");
            assert_eq!(
                *picked.last().unwrap(),
                77,
                "the prefix holder is always a candidate"
            );
        }
        // A small pool is scanned whole.
        let small = snapshot(5);
        assert_eq!(
            small
                .candidates(&RequestFeatures::default(), 7)
                .collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn the_stride_is_coprime_with_the_pool_size() {
        // Start: (5·2³² + 1) mod 12 = 9 (2³² ≡ 4 mod 12). Step: 1 + 5 mod 11 = 6 shares a factor
        // with 12, so the next one up, 7.
        assert_eq!(stride(12, (5 << 32) | 1), (9, 7));
        // Below two replicas there is nothing to stride over.
        assert_eq!(stride(0, 42), (0, 1));
        assert_eq!(stride(1, 42), (0, 1));
        assert_eq!(gcd(12, 18), 6);
        assert_eq!(gcd(7, 12), 1);
    }
}
