//! Weighted scoring, the Gateway API Inference Extension's scheme plus GPU use: each candidate
//! scores queue, KV cache, prefix and GPU, weighted by `routing.weights`; the highest total wins.

use crate::config::Routing;
use crate::router::{PickContext, RequestFeatures, Snapshot};

/// The Inference Extension's scheme: each candidate scores `queue` (1 − its waiting over the
/// longest waiting among candidates), `kv_cache` (1 − KV use; 0.5 when unknown), `prefix`
/// (share of the prompt it holds) and `gpu` (1 − GPU use; 0.5 when unknown), weighted; the
/// highest total wins, fewer in flight on a tie. Stale stats count as unknown.
pub fn weighted(
    routing: &Routing,
    snapshot: &Snapshot,
    features: &RequestFeatures,
    ctx: PickContext,
    eligible: impl Fn(&usize) -> bool,
) -> Option<usize> {
    let waiting = |i: usize| {
        let r = &snapshot.replicas[i];
        r.engine_view(ctx.now, ctx.stale_after)
            .map_or(r.inflight() as f64, |v| v.waiting)
    };
    let longest = snapshot
        .candidates(features, ctx.random)
        .filter(&eligible)
        .map(waiting)
        .fold(0.0, f64::max);
    let w = routing.weights;
    let mut best: Option<(f64, u64, usize)> = None;
    for i in snapshot.candidates(features, ctx.random).filter(&eligible) {
        let r = &snapshot.replicas[i];
        let queue = if longest > 0.0 {
            1.0 - waiting(i) / longest
        } else {
            1.0
        };
        let kv = r
            .engine_view(ctx.now, ctx.stale_after)
            .and_then(|v| v.kv_usage)
            .map_or(0.5, |kv| 1.0 - kv.clamp(0.0, 1.0));
        let gpu = r
            .gpu_use(ctx.now, ctx.gpu_stale_after)
            .map_or(0.5, |g| 1.0 - g.clamp(0.0, 1.0));
        let score = w.queue * queue
            + w.kv_cache * kv
            + w.prefix * features.prefix.fraction(r.id)
            + w.gpu * gpu;
        let inflight = r.inflight();
        let better = match best {
            None => true,
            Some((s, f, _)) => score > s || (score == s && inflight < f),
        };
        if better {
            best = Some((score, inflight, i));
        }
    }
    best.map(|(_, _, i)| i)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::config::RoutingPolicy;
    use crate::router::test_support::*;
    use crate::router::{PickContext, RequestFeatures, pick};

    #[test]
    fn weighted_scores_queue_kv_and_prefix() {
        let s = snapshot(3);
        let now = Instant::now();
        let with = |waiting: f64, kv: f64| crate::replica::EngineStats {
            waiting,
            kv_usage: Some(kv),
            ..Default::default()
        };
        s.replicas[0].record_scrape(with(10.0, 0.2), now); // long queue
        s.replicas[1].record_scrape(with(0.0, 0.9), now); // KV nearly full
        s.replicas[2].record_scrape(with(2.0, 0.3), now);
        let c = PickContext { now, ..ctx(1, 1) };
        // queue 2·(0, 1, 0.8) + kv 2·(0.8, 0.1, 0.7): replica 2 scores 3.0, replica 1 2.2, replica 0 1.6.
        assert_eq!(
            pick(
                &routing(RoutingPolicy::Weighted),
                &s,
                &RequestFeatures::default(),
                c,
                &[]
            ),
            Some(2)
        );
        // Holding the whole prefix adds 3 to replica 0: 4.6 beats 3.0.
        let f = prefix_on(&s, 0, 10, 10);
        assert_eq!(
            pick(&routing(RoutingPolicy::Weighted), &s, &f, c, &[]),
            Some(0)
        );
    }

    #[test]
    fn weighted_scores_gpu_use() {
        let s = snapshot(3);
        let now = Instant::now();
        let with = |waiting: f64, kv: f64| crate::replica::EngineStats {
            waiting,
            kv_usage: Some(kv),
            ..Default::default()
        };
        for r in &s.replicas {
            r.record_scrape(with(0.0, 0.5), now);
        }
        s.replicas[0].record_gpu(0.9, now);
        s.replicas[1].record_gpu(0.3, now);
        // Replica 2: no reading (0.5). Queue and KV are equal: gpu 1·(0.1, 0.7, 0.5) decides.
        let c = PickContext { now, ..ctx(1, 1) };
        let f = RequestFeatures::default();
        let mut r = routing(RoutingPolicy::Weighted);
        assert_eq!(r.weights.gpu, 1.0, "the default weight");
        assert_eq!(pick(&r, &s, &f, c, &[]), Some(1));
        // Half of the prefix on replica 0 (3 · 0.5 = 1.5) outweighs its busy GPU (0.6 behind).
        let half = prefix_on(&s, 0, 5, 10);
        assert_eq!(pick(&r, &s, &half, c, &[]), Some(0));
        // Weight 0: the GPU is ignored, the tie goes to the first with fewest in flight.
        r.weights.gpu = 0.0;
        assert_eq!(pick(&r, &s, &f, c, &[]), Some(0));
        let _busy = s.replicas[0].start_request();
        assert_eq!(pick(&r, &s, &f, c, &[]), Some(1));
    }
}
