//! Predicted time to first token: each candidate's predicted seconds to the request's first
//! token ([`crate::router::ttft`]), the fastest wins, near-ties decided by GPU use or cache hit
//! ([`crate::router::tie_break`]). This file reads the numbers off the replicas and the pool.

use crate::config::Routing;
use crate::replica::Replica;
use crate::router::candidates::SAMPLE;
use crate::router::tie_break::{self, Scored};
use crate::router::ttft::{self, EngineLoad, ReplicaLoad, RequestLoad};
use crate::router::{PickContext, RequestFeatures, Snapshot, own_prefill_tokens};

/// Candidates whose scores `predicted_ttft` keeps on the stack for its near-tie pass.
const KEEP: usize = 2 * SAMPLE;

/// Least predicted time to first token: the replica's current engine step (decoding batches
/// make every step longer), plus the prefill work ahead of this request on the replica and its
/// own prompt tokens not covered by the replica's cached prefix, times the replica's prefill
/// speed, raised as its KV cache nears full (preemption risk). The work ahead is the pending
/// prefill on the replica — this gateway's exact count plus its peers' as last heard — or its
/// scraped waiting queue (corrected by what was sent since) in tokens when that is larger;
/// stale stats are not used. The speed is
/// learned per replica from observed time to first token (the pool's mean, then
/// `prefill_tokens_per_second`, before that), so a pool mixing fast and slow GPUs balances by
/// speed, and prefix affinity holds exactly as long as it saves more than the queue costs.
/// A request for a LoRA adapter adds `lora_load_time` on replicas that do not hold it, so it
/// goes where the adapter is loaded unless the queue there costs more than loading it elsewhere.
/// Where replicas have GPU readings, near-ties go to the least busy GPU. A replica over its
/// load bound (`routing.load_bound`) is not a candidate while another is under its own.
pub fn predicted_ttft(
    routing: &Routing,
    snapshot: &Snapshot,
    features: &RequestFeatures,
    ctx: PickContext,
    eligible: impl Fn(&usize) -> bool,
) -> Option<usize> {
    let predictor = Predictor::new(routing, snapshot, features, ctx);
    let predict = |r: &Replica| predictor.secs(r);
    // Bounded load: a replica carrying far more than the candidates' mean sits out while
    // another is under the bound, so affinity and a fast replica's pull cannot pile the
    // sessions of a busy moment onto a few replicas whose decode then slows for all of them.
    let bound = LoadBound::new(routing, snapshot, features, ctx, &eligible);
    let under = |i: &usize| bound.admits(&snapshot.replicas[*i]);
    let any_under = snapshot
        .candidates(features, ctx.random)
        .filter(&eligible)
        .any(|i| under(&i));
    let eligible = |i: &usize| eligible(i) && (!any_under || under(i));
    // Each candidate's numbers, kept for the near-tie pass (a large pool's candidates beyond
    // these are computed again there).
    let mut scored = [Scored {
        predicted: 0.0,
        gpu: f64::INFINITY,
        inflight: 0,
        index: 0,
    }; KEEP];
    let mut kept = 0;
    let mut best: Option<(f64, u64, usize)> = None;
    let mut any_gpu = false;
    for i in snapshot.candidates(features, ctx.random).filter(&eligible) {
        let r = &snapshot.replicas[i];
        let predicted = predict(r);
        let gpu = r.gpu_use(ctx.now, ctx.gpu_stale_after);
        any_gpu |= gpu.is_some();
        let inflight = r.cluster_inflight();
        if kept < KEEP {
            scored[kept] = Scored {
                predicted,
                gpu: gpu.unwrap_or(f64::INFINITY),
                inflight,
                index: i,
            };
            kept += 1;
        }
        let better = match best {
            None => true,
            Some((p, f, _)) => predicted < p || (predicted == p && inflight < f),
        };
        if better {
            best = Some((predicted, inflight, i));
        }
    }
    let (fastest, _, first) = best?;
    let rest = snapshot
        .candidates(features, ctx.random)
        .filter(&eligible)
        .skip(KEEP)
        .map(|i| {
            let r = &snapshot.replicas[i];
            let gpu = r.gpu_use(ctx.now, ctx.gpu_stale_after);
            Scored {
                predicted: predict(r),
                gpu: gpu.unwrap_or(f64::INFINITY),
                inflight: r.cluster_inflight(),
                index: i,
            }
        });
    tie_break::near_tie(
        scored[..kept].iter().copied().chain(rest),
        fastest,
        routing.tie_margin,
        any_gpu,
        |i| own_prefill_tokens(features, snapshot.replicas[i].id),
    )
    .or(Some(first))
}

/// The most requests in flight a candidate may carry: `routing.load_bound` times the eligible
/// candidates' mean (every gateway's in flight), scaled up by the candidate's speed against
/// theirs when faster (a replica twice as fast may carry twice as much), plus [`LOAD_SLACK`].
struct LoadBound {
    /// `load_bound` × mean in flight; infinite when off.
    share: f64,
    /// The candidates' mean prefill speed (tokens per second), where learned.
    mean_speed: Option<f64>,
}

impl LoadBound {
    fn new(
        routing: &Routing,
        snapshot: &Snapshot,
        features: &RequestFeatures,
        ctx: PickContext,
        eligible: impl Fn(&usize) -> bool,
    ) -> Self {
        let (mut inflight, mut n, mut speed, mut known) = (0u64, 0u64, 0.0, 0u32);
        for i in snapshot.candidates(features, ctx.random).filter(eligible) {
            let r = &snapshot.replicas[i];
            inflight += r.cluster_inflight();
            n += 1;
            if let Some(secs) = r.secs_per_token() {
                speed += 1.0 / secs;
                known += 1;
            }
        }
        let share = if routing.load_bound > 0.0 && n > 0 {
            routing.load_bound * inflight as f64 / n as f64
        } else {
            f64::INFINITY
        };
        Self {
            share,
            mean_speed: (known > 0).then(|| speed / f64::from(known)),
        }
    }

    fn admits(&self, r: &Replica) -> bool {
        // A faster replica may carry more (up to 4x, so one odd estimate does not free it); a
        // slower one no less than the mean: each of its requests stays longer, so its count
        // runs high at its fair share already, and a tighter bound would shut it out.
        let relative = match (r.secs_per_token(), self.mean_speed) {
            (Some(secs), Some(mean)) => (1.0 / secs / mean).clamp(1.0, 4.0),
            _ => 1.0,
        };
        r.cluster_inflight() as f64 <= self.share * relative + LOAD_SLACK
    }
}

/// Requests a replica may carry over the bound's share, so a lightly loaded pool (a mean of
/// one or two) is not forced round robin.
const LOAD_SLACK: f64 = 2.0;

/// This request's predicted seconds to its first token on a replica of the pool, from the
/// moment it is sent (the gateway's queue wait is not in it).
pub fn predicted_ttft_secs(
    routing: &Routing,
    snapshot: &Snapshot,
    features: &RequestFeatures,
    ctx: PickContext,
    index: usize,
) -> f64 {
    Predictor::new(routing, snapshot, features, ctx).secs(&snapshot.replicas[index])
}

/// What a prediction reads once per request: the pool's typical speed and the request's size.
struct Predictor<'a> {
    request: RequestLoad,
    features: &'a RequestFeatures,
    ctx: PickContext,
    lora_load: f64,
}

impl<'a> Predictor<'a> {
    fn new(
        routing: &Routing,
        snapshot: &Snapshot,
        features: &'a RequestFeatures,
        ctx: PickContext,
    ) -> Self {
        // The pool's typical speed: the median of the candidates' learned ones (one replica's
        // odd estimate does not move it), or the configured prior before any is learned.
        let mut known = [0.0f64; KEEP];
        let mut n = 0;
        for speed in snapshot
            .candidates(features, ctx.random)
            .filter_map(|i| snapshot.replicas[i].secs_per_token())
            .take(KEEP)
        {
            known[n] = speed;
            n += 1;
        }
        let default_speed = if n == 0 {
            1.0 / routing.prefill_tokens_per_second
        } else {
            let known = &mut known[..n];
            known.sort_by(f64::total_cmp);
            known[n / 2]
        };
        let request = RequestLoad {
            pool_secs_per_token: default_speed,
            prompt_tokens: f64::from(features.prompt_tokens.max(1)),
            // The least prefill any replica would need: what the best-placed holder of the
            // prefix needs.
            least_own_tokens: features
                .prefix
                .replicas
                .first()
                .map_or(u64::MAX, |(id, _)| own_prefill_tokens(features, *id)),
        };
        Self {
            request,
            features,
            ctx,
            lora_load: routing.lora_load_time.as_secs_f64(),
        }
    }

    fn secs(&self, r: &Replica) -> f64 {
        let (features, ctx) = (self.features, self.ctx);
        let load = ReplicaLoad {
            learned_secs_per_token: r.secs_per_token(),
            inflight: r.cluster_inflight(),
            pending_prefill: r.cluster_pending_prefill(),
            mean_prompt_tokens: r.mean_prompt_tokens(),
            expected_step: r.expected_step(),
            engine: r
                .engine_view(ctx.now, ctx.stale_after)
                .map(|view| EngineLoad {
                    running: view.running,
                    waiting: view.waiting,
                    kv_usage: view.kv_usage,
                }),
            own_tokens: own_prefill_tokens(features, r.id),
            // A replica without the requested adapter loads it before anything else.
            adapter_load: match features.adapter {
                Some(adapter) if !r.holds_adapter(adapter, ctx.now, ctx.stale_after) => {
                    self.lora_load
                }
                _ => 0.0,
            },
        };
        ttft::predicted_secs(&load, &self.request)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::KEEP;
    use crate::config::{Routing, RoutingPolicy};
    use crate::router::candidates::SAMPLE;
    use crate::router::test_support::*;
    use crate::router::{PickContext, RequestFeatures, Snapshot, pick};

    #[test]
    fn predicted_ttft_gives_a_slow_replica_proportionally_less() {
        let s = snapshot(2);
        // One 1000-token prompt each: replica 0 took 1 s (1 ms a token), replica 1 2 s.
        s.replicas[0]
            .start_request_with(1000)
            .first_byte(std::time::Duration::from_millis(1000));
        s.replicas[1]
            .start_request_with(1000)
            .first_byte(std::time::Duration::from_millis(2000));
        let f = RequestFeatures {
            prompt_tokens: 100,
            ..Default::default()
        };
        let (order, _held) = pick_holding(RoutingPolicy::PredictedTtft, &s, &f, Instant::now(), 60);
        // Equilibrium 1 ms × (a + 1) × 100 = 2 ms × (b + 1) × 100 with a + b = 60: a ≈ 40, b ≈ 20;
        // once, the two are within the 10 % tie margin and the one with fewer in flight (the
        // slow one) takes it.
        assert_eq!(counts(&order, 2), [39, 21], "{order:?}");
    }

    #[test]
    fn predicted_ttft_spreads_a_burst_between_scrapes() {
        let s = snapshot(4);
        let now = Instant::now();
        for r in &s.replicas {
            r.record_scrape(stats(0.0, 0.0), now);
        }
        let f = RequestFeatures {
            prompt_tokens: 200,
            ..Default::default()
        };
        let _held = pick_holding(RoutingPolicy::PredictedTtft, &s, &f, now, 100);
        assert!(
            s.replicas.iter().all(|r| r.inflight() == 25),
            "no scrape in between, yet spread"
        );
    }

    #[test]
    fn predicted_ttft_reads_the_scraped_queue_and_still_uses_stale_replicas() {
        let s = snapshot(3);
        let now = Instant::now();
        // Replica 0 has a deep engine queue (other gateways' traffic: 30 waiting ≈ 3000 tokens
        // of prefill), replica 1 is idle, replica 2's stats are stale: it is routed on this
        // gateway's own pending work alone.
        s.replicas[0].record_scrape(stats(30.0, 10.0), now);
        s.replicas[1].record_scrape(stats(0.0, 5.0), now);
        s.replicas[2].record_scrape(stats(0.0, 0.0), now - std::time::Duration::from_secs(5));
        let f = RequestFeatures {
            prompt_tokens: 100,
            ..Default::default()
        };
        let (order, _held) = pick_holding(RoutingPolicy::PredictedTtft, &s, &f, now, 20);
        assert_eq!(counts(&order, 3), [0, 10, 10], "{order:?}");
    }

    #[test]
    fn predicted_ttft_counts_the_prefill_peer_gateways_sent_since_the_last_scrape() {
        let s = snapshot(2);
        let now = Instant::now();
        for r in &s.replicas {
            r.record_scrape(stats(0.0, 0.0), now);
        }
        let f = RequestFeatures {
            prompt_tokens: 100,
            ..Default::default()
        };
        let r = routing(RoutingPolicy::PredictedTtft);
        let c = PickContext { now, ..ctx(1, 1) };
        // This gateway has 50 tokens pending on replica 0; a peer 3000 on replica 1, sent after
        // the page both gateways read (it still shows both idle).
        let _ours = s.replicas[0].start_request_with(50);
        assert_eq!(pick(&r, &s, &f, c, &[]), Some(1), "alone, 1 looks idle");
        s.replicas[1].set_peer_load(1, 3000);
        assert_eq!(pick(&r, &s, &f, c, &[]), Some(0));
    }

    #[test]
    fn predicted_ttft_avoids_a_nearly_full_kv_cache() {
        let s = snapshot(2);
        let now = Instant::now();
        let full = crate::replica::EngineStats {
            kv_usage: Some(0.99),
            ..Default::default()
        };
        s.replicas[0].record_scrape(full, now);
        s.replicas[1].record_scrape(stats(0.0, 0.0), now);
        let f = RequestFeatures {
            prompt_tokens: 100,
            ..Default::default()
        };
        let _ahead = s.replicas[1].start_request_with(50);
        // Replica 1 has 50 tokens pending; replica 0 none, but at 99 % KV its cost is ×1.9.
        assert_eq!(
            pick(
                &routing(RoutingPolicy::PredictedTtft),
                &s,
                &f,
                PickContext { now, ..ctx(1, 1) },
                &[]
            ),
            Some(1)
        );
    }

    #[test]
    fn predicted_ttft_prefers_the_prefix_until_its_queue_makes_it_slower() {
        let s = snapshot(2);
        // Replica 1 holds 80 % of a 100-token prompt: 20 tokens to prefill there, 100 elsewhere.
        let mut f = prefix_on(&s, 1, 8, 10);
        f.prompt_tokens = 100;
        let (order, _held) = pick_holding(RoutingPolicy::PredictedTtft, &s, &f, Instant::now(), 6);
        // Pending on 1 grows 20 a request: 20 + p1 < 100 + p0 holds for four requests; the
        // fifth is a tie at 100, and a tie goes to the replica with less to prefill (the prefix
        // holder); at 120 replica 1 is past the 10 % margin and replica 0 takes the sixth.
        assert_eq!(order, [1, 1, 1, 1, 1, 0], "{order:?}");
    }

    #[test]
    fn predicted_ttft_counts_the_delay_a_cache_miss_causes_on_a_busy_replica() {
        let s = snapshot(2);
        let now = Instant::now();
        // Replica 0 holds the whole 1000-token prompt but has 1500 tokens of prefill queued;
        // replica 1 has none queued, misses the prefix, and decodes 40 sequences.
        let mut f = prefix_on(&s, 0, 10, 10);
        f.prompt_tokens = 1000;
        let _queued = s.replicas[0].start_request_with(1500);
        s.replicas[1].record_scrape(stats(0.0, 40.0), now);
        let c = PickContext { now, ..ctx(1, 1) };
        let r = routing(RoutingPolicy::PredictedTtft);
        // Its own first token would come sooner on replica 1 (1000 tokens against 1501), but
        // its 999 extra tokens of prefill there lengthen 40 sequences' steps: replica 0.
        assert_eq!(pick(&r, &s, &f, c, &[]), Some(0));
        // With nothing decoding on replica 1 the miss delays nobody else: replica 1.
        s.replicas[1].record_scrape(stats(0.0, 0.0), now);
        assert_eq!(pick(&r, &s, &f, c, &[]), Some(1));
    }

    /// Holds `counts[i]` requests in flight on replica `i` (decoding: no prefill pending).
    fn hold_in_flight(s: &Snapshot, counts: &[usize]) -> Vec<crate::replica::InflightGuard> {
        counts
            .iter()
            .enumerate()
            .flat_map(|(i, &n)| (0..n).map(move |_| i))
            .map(|i| s.replicas[i].start_request_with(0))
            .collect()
    }

    #[test]
    fn predicted_ttft_leaves_out_a_replica_over_the_load_bound() {
        let s = snapshot(4);
        // Replica 0 holds the whole 1000-token prompt and decodes 14 requests; the others 2
        // each: a mean of 5, a bound of 1.5 × 5 + 2 = 9.5.
        let mut f = prefix_on(&s, 0, 10, 10);
        f.prompt_tokens = 1000;
        let held = hold_in_flight(&s, &[14, 2, 2, 2]);
        let c = ctx(1, 1);
        let mut r = routing(RoutingPolicy::PredictedTtft);
        assert_eq!(r.load_bound, 1.5, "the default");
        let picked = pick(&r, &s, &f, c, &[]).unwrap();
        assert_ne!(picked, 0, "over the bound, its cache notwithstanding");
        // Unbounded, the cached prefix wins.
        r.load_bound = 0.0;
        assert_eq!(pick(&r, &s, &f, c, &[]), Some(0));
        // With 6 in flight there (a mean of 3, a bound of 6.5) it is under: the cache wins.
        r.load_bound = 1.5;
        drop(held);
        let _held = hold_in_flight(&s, &[6, 2, 2, 2]);
        assert_eq!(pick(&r, &s, &f, c, &[]), Some(0));
    }

    #[test]
    fn the_load_bound_lets_a_faster_replica_carry_more() {
        // Replica 0 carries 15, replica 1 carries 2: a mean of 8.5, a bound of 1.5 × 8.5 + 2 =
        // 14.75 at equal speeds, so replica 0 sits out and a 100-token prompt goes to 1.
        let learn = |s: &Snapshot, ms: [u64; 2]| {
            for (r, ms) in s.replicas.iter().zip(ms) {
                r.start_request_with(1000)
                    .first_byte(std::time::Duration::from_millis(ms));
            }
        };

        let f = RequestFeatures {
            prompt_tokens: 100,
            ..Default::default()
        };
        let r = routing(RoutingPolicy::PredictedTtft);
        let same = snapshot(2);
        learn(&same, [1000, 1000]);
        let _held = hold_in_flight(&same, &[15, 2]);
        assert_eq!(pick(&r, &same, &f, ctx(1, 1), &[]), Some(1));
        // Replica 0 prefills twice as fast (1 ms a token against 2): its bound is 4/3 of the
        // share, 1.5 × 8.5 × 4/3 + 2 = 19, and its faster first token wins.
        let mixed = snapshot(2);
        learn(&mixed, [1000, 2000]);
        let _held = hold_in_flight(&mixed, &[15, 2]);
        assert_eq!(pick(&r, &mixed, &f, ctx(1, 1), &[]), Some(0));
    }

    #[test]
    fn predicted_ttft_breaks_near_ties_toward_the_less_busy_gpu() {
        let s = snapshot(3);
        let now = Instant::now();
        s.replicas[0].record_gpu(0.9, now);
        s.replicas[1].record_gpu(0.2, now);
        // Replica 2 has no GPU reading: unknown, after every known one.
        let f = RequestFeatures {
            prompt_tokens: 100,
            ..Default::default()
        };
        let r = routing(RoutingPolicy::PredictedTtft);
        assert_eq!(r.tie_margin, 0.1, "the default margin");
        let c = PickContext { now, ..ctx(1, 1) };
        assert_eq!(
            pick(&r, &s, &f, c, &[]),
            Some(1),
            "all idle: the idlest GPU"
        );
        // 5 tokens pending on replica 1: 105 against 100 is within 10 %, still a tie.
        let _five = s.replicas[1].start_request_with(5);
        assert_eq!(pick(&r, &s, &f, c, &[]), Some(1));
        // 20 more: 125 is past 110, so replica 1 is out of the tie; of the two left, the one
        // whose GPU is known (busy as it is) goes before the unknown one.
        let _twenty = s.replicas[1].start_request_with(20);
        assert_eq!(pick(&r, &s, &f, c, &[]), Some(0));
        // Stale readings count as unknown: without any, fewest in flight decides (replica 0).
        let later = PickContext {
            now: now + std::time::Duration::from_secs(4),
            ..c
        };
        assert_eq!(pick(&r, &s, &f, later, &[]), Some(0));
        // Margin 0: only exact ties; 100 (replica 0) and 100 (replica 2) tie, replica 0's GPU is known.
        let exact = Routing {
            tie_margin: 0.0,
            ..r.clone()
        };
        assert_eq!(pick(&exact, &s, &f, c, &[]), Some(0));
    }

    #[test]
    fn predicted_ttft_gpu_tie_breaks_do_not_pile_a_burst_onto_one_replica() {
        let s = snapshot(2);
        let now = Instant::now();
        s.replicas[0].record_gpu(0.8, now);
        s.replicas[1].record_gpu(0.2, now);
        let f = RequestFeatures {
            prompt_tokens: 100,
            ..Default::default()
        };
        let (order, _held) = pick_holding(RoutingPolicy::PredictedTtft, &s, &f, now, 20);
        // Ties go to the idler GPU, but while one request (100 tokens) is more than 10 % of the
        // work queued, one more on it is past the margin: the burst alternates. From 9 each,
        // 1100 against 1000 is within the margin, so the idler GPU takes one more.
        let mut expected = [1, 0].repeat(9);
        expected.extend([1, 1]);
        assert_eq!(order, expected);
    }

    #[test]
    fn predicted_ttft_gpu_tie_break_sees_every_candidate_of_a_large_pool() {
        let s = snapshot(100);
        let now = Instant::now();
        // 30 replicas hold the whole prompt: with the 16 sampled ones, more candidates than the
        // pick keeps on its stack. The last holder has the idlest GPU.
        let mut f = RequestFeatures {
            prompt_tokens: 100,
            ..Default::default()
        };
        f.prefix.total_blocks = 10;
        for i in 50..80 {
            f.prefix.replicas.push((s.replicas[i].id, 10));
            s.replicas[i].record_gpu(if i == 79 { 0.1 } else { 0.5 }, now);
        }
        for random in [1u64, 0x9E3779B97F4A7C15, u64::MAX] {
            assert_eq!(
                s.candidates(&f, random).count(),
                SAMPLE + 30,
                "more than KEEP ({KEEP}) candidates"
            );
            let c = PickContext {
                now,
                ..ctx(random, 0)
            };
            assert_eq!(
                pick(&routing(RoutingPolicy::PredictedTtft), &s, &f, c, &[]),
                Some(79)
            );
        }
    }

    #[test]
    fn predicted_ttft_goes_where_the_adapter_is_loaded_until_the_queue_costs_more() {
        let s = snapshot(2);
        let now = Instant::now();
        let sql = crate::replica::adapter_id("sql");
        let loaded = crate::replica::EngineStats {
            running_loras: vec!["sql".into()],
            ..Default::default()
        };
        s.replicas[0].record_scrape(stats(0.0, 0.0), now);
        s.replicas[1].record_scrape(loaded, now);
        let r = routing(RoutingPolicy::PredictedTtft);
        assert_eq!(r.lora_load_time, std::time::Duration::from_millis(50));
        assert_eq!(r.prefill_tokens_per_second, 20_000.0);
        let c = PickContext { now, ..ctx(1, 1) };
        let f = RequestFeatures {
            prompt_tokens: 100,
            adapter: Some(sql),
            ..Default::default()
        };
        assert_eq!(pick(&r, &s, &f, c, &[]), Some(1));
        // Loading costs 50 ms, a token of prefill 50 µs: replica 1 keeps the adapter's requests
        // while it is faster by more than the 10 % tie margin: 850 tokens ahead, 47.5 ms
        // against 55 ms. At 950 ahead (52.5 ms) the two are tied, and the one with fewer in
        // flight, replica 0, takes it.
        let _ahead = s.replicas[1].start_request_with(850);
        assert_eq!(pick(&r, &s, &f, c, &[]), Some(1));
        let _more = s.replicas[1].start_request_with(100);
        assert_eq!(pick(&r, &s, &f, c, &[]), Some(0));
        // The base model (no adapter) ignores adapters: replica 0 has less queued.
        let base = RequestFeatures {
            prompt_tokens: 100,
            ..Default::default()
        };
        drop((_ahead, _more));
        let _one = s.replicas[1].start_request_with(1);
        assert_eq!(pick(&r, &s, &base, c, &[]), Some(0));
        // An adapter no replica holds costs the same everywhere: load decides.
        let other = RequestFeatures {
            adapter: Some(crate::replica::adapter_id("other")),
            ..base.clone()
        };
        assert_eq!(pick(&r, &s, &other, c, &[]), Some(0));
        // What this gateway sent counts too: replica 1 got `other` lately, so it takes it
        // despite its one pending token; `sql` is unknown everywhere once the scrape is stale.
        s.replicas[1].note_adapter(crate::replica::adapter_id("other"));
        let later = PickContext {
            now: now + std::time::Duration::from_secs(2),
            ..c
        };
        assert_eq!(pick(&r, &s, &other, later, &[]), Some(1));
        assert_eq!(pick(&r, &s, &f, later, &[]), Some(0));
    }
}
