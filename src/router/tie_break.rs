//! The predicted-ttft policy's near-tie rule as a pure function ([`near_tie`]): predictions are
//! rough, and a busy GPU or a lost cache hit are real costs they do not see, so among
//! candidates within `tie_margin` of the fastest something other than the prediction decides.

/// One candidate's numbers, as the near-tie pass compares them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Predicted seconds to first token ([`super::ttft::predicted_secs`]).
    pub predicted: f64,
    /// GPU use (0–1); infinity when unknown, so an unknown one comes after every known one.
    pub gpu: f64,
    /// Requests this gateway has in flight there.
    pub inflight: u64,
    /// Index into the snapshot's replicas.
    pub index: usize,
}

/// The winner among the `candidates` whose prediction is within `tie_margin` (a fraction) of
/// `fastest`: with GPU readings (`any_gpu`) the least busy GPU, then the faster prediction, then
/// fewer in flight; without, the one with the least to prefill (`own_tokens` of a replica
/// index: a cache hit saves every request on that replica time), then fewer in flight, then the
/// faster prediction. None when no candidate is within the margin.
pub fn near_tie(
    candidates: impl Iterator<Item = Scored>,
    fastest: f64,
    tie_margin: f64,
    any_gpu: bool,
    own_tokens: impl Fn(usize) -> u64,
) -> Option<usize> {
    let limit = fastest * (1.0 + tie_margin);
    let key = |t: &Scored| {
        if any_gpu {
            (t.gpu, t.predicted, t.inflight as f64)
        } else {
            (own_tokens(t.index) as f64, t.inflight as f64, t.predicted)
        }
    };
    candidates
        .filter(|t| t.predicted <= limit)
        .min_by(|a, b| {
            key(a)
                .partial_cmp(&key(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(|t| t.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(index: usize, predicted: f64, gpu: Option<f64>, inflight: u64) -> Scored {
        Scored {
            predicted,
            gpu: gpu.unwrap_or(f64::INFINITY),
            inflight,
            index,
        }
    }

    #[test]
    fn with_gpu_readings_the_least_busy_gpu_within_the_margin_wins() {
        let own = |_: usize| 100;
        let candidates = [
            scored(0, 1.0, Some(0.9), 0),
            scored(1, 1.05, Some(0.2), 5),
            scored(2, 1.2, Some(0.0), 0), // past 1.0 × 1.1
            scored(3, 1.0, None, 0),
        ];
        assert_eq!(
            near_tie(candidates.into_iter(), 1.0, 0.1, true, own),
            Some(1)
        );
        // Without replica 1, the known GPU (busy as it is) goes before the unknown one.
        let rest = [candidates[0], candidates[2], candidates[3]];
        assert_eq!(near_tie(rest.into_iter(), 1.0, 0.1, true, own), Some(0));
        // Equal GPUs: the faster prediction, then fewer in flight.
        let equal = [
            scored(4, 1.05, Some(0.5), 0),
            scored(5, 1.0, Some(0.5), 3),
            scored(6, 1.0, Some(0.5), 2),
        ];
        assert_eq!(near_tie(equal.into_iter(), 1.0, 0.1, true, own), Some(6));
    }

    #[test]
    fn without_gpu_readings_the_best_cache_hit_within_the_margin_wins() {
        // Replica 1 has the least to prefill; replica 3 even less, but is past the margin.
        let own = |i: usize| [500, 20, 500, 10][i];
        let candidates = [
            scored(0, 1.0, None, 0),
            scored(1, 1.08, None, 4),
            scored(2, 1.0, None, 1),
            scored(3, 1.11, None, 0),
        ];
        assert_eq!(
            near_tie(candidates.into_iter(), 1.0, 0.1, false, own),
            Some(1)
        );
        // Equal prefill: fewer in flight, then the faster prediction.
        let own = |_: usize| 100;
        assert_eq!(
            near_tie(candidates.into_iter(), 1.0, 0.1, false, own),
            Some(0)
        );
        let equal = [scored(0, 1.05, None, 0), scored(1, 1.0, None, 0)];
        assert_eq!(near_tie(equal.into_iter(), 1.0, 0.1, false, own), Some(1));
    }

    #[test]
    fn margin_zero_takes_exact_ties_only_and_none_is_within_an_empty_set() {
        let own = |i: usize| [100, 1][i];
        let candidates = [scored(0, 1.0, None, 0), scored(1, 1.0 + 1e-9, None, 0)];
        assert_eq!(
            near_tie(candidates.into_iter(), 1.0, 0.0, false, own),
            Some(0)
        );
        assert_eq!(near_tie(std::iter::empty(), 1.0, 0.1, false, own), None);
    }
}
