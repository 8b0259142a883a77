//! Replica selection: pure, synchronous picking over a pool's snapshot. Time, randomness and a
//! request sequence number are passed in, so the same code runs in real and virtual time and is
//! tested with exact expectations.

use std::sync::Arc;
use std::time::Instant;

use crate::config::{Routing, RoutingPolicy};
use crate::replica::Replica;

mod block_table;
pub mod prefix;
mod session;

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

    /// Replicas a scoring policy looks at: all of them in a small pool; in a large one `SAMPLE`
    /// distinct ones drawn at random plus those holding the prompt's prefix, so the decision
    /// costs the same at 1000 replicas as at 16 (power-of-k choices).
    fn candidates<'a>(
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

/// Candidates scored per pick in a large pool.
const SAMPLE: usize = 16;

/// A start and a step coprime with `n`, so `start + j·step (mod n)` visits distinct replicas.
fn stride(n: usize, random: u64) -> (usize, usize) {
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

/// Whether a replica should take no more requests now: this gateway has
/// `max_inflight_per_replica` in flight to it, or its fresh scraped stats show more than
/// `max_waiting_per_replica` waiting (less what of ours started since, and at least this
/// gateway's streams there without a first token) or KV-cache use above
/// `max_kv_cache_usage`. Stale stats count as unknown, never as saturated.
pub fn saturated(
    replica: &Replica,
    limits: &crate::config::Admission,
    now: Instant,
    stale_after: std::time::Duration,
) -> bool {
    if replica.inflight() >= u64::from(limits.max_inflight_per_replica) {
        return true;
    }
    replica.engine_view(now, stale_after).is_some_and(|view| {
        view.admission_waiting > f64::from(limits.max_waiting_per_replica)
            || view
                .kv_usage
                .is_some_and(|kv| kv > limits.max_kv_cache_usage)
    })
}

/// Whether every replica taking traffic is saturated (true when none is).
pub fn all_saturated(
    snapshot: &Snapshot,
    limits: &crate::config::Admission,
    now: Instant,
    stale_after: std::time::Duration,
) -> bool {
    snapshot
        .replicas
        .iter()
        .filter(|r| !r.is_ejected(now))
        .all(|r| saturated(r, limits, now, stale_after))
}

/// Picks a replica index, skipping ejected replicas and those in `exclude` (already tried for
/// this request). None when no replica is eligible.
pub fn pick(
    routing: &Routing,
    snapshot: &Snapshot,
    features: &RequestFeatures,
    ctx: PickContext,
    exclude: &[usize],
) -> Option<usize> {
    let eligible = |i: &usize| !exclude.contains(i) && !snapshot.replicas[*i].is_ejected(ctx.now);
    let n = snapshot.replicas.len();
    let policy = routing.policy;
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
        RoutingPolicy::PredictedTtft => predicted_ttft(routing, snapshot, features, ctx, eligible),
        RoutingPolicy::PowerOfTwo => power_of_two(snapshot, ctx.random, eligible),
        RoutingPolicy::Weighted => weighted(routing, snapshot, features, ctx, eligible),
        RoutingPolicy::PrefixAffinity => {
            prefix_affinity(routing, snapshot, features, ctx, eligible)
        }
        // Requests without a session key are spread by load.
        RoutingPolicy::SessionAffinity => match features.session {
            Some(session) => session_affinity(snapshot, session, ctx, eligible),
            None => least_inflight(snapshot, ctx.random, eligible),
        },
        _ => least_inflight(snapshot, ctx.random, eligible),
    }
}

/// The session's replica on the ring; while it is saturated, the next one on the ring that is
/// not (the same one for every request of the session, so its cache stays warm there too); when
/// all are saturated, the session's own (the gateway queue holds requests back before that).
fn session_affinity(
    snapshot: &Snapshot,
    session: u64,
    ctx: PickContext,
    eligible: impl Fn(&usize) -> bool,
) -> Option<usize> {
    snapshot
        .sessions
        .pick(session, |i| {
            eligible(i)
                && !saturated(
                    &snapshot.replicas[*i],
                    &ctx.limits,
                    ctx.now,
                    ctx.stale_after,
                )
        })
        .or_else(|| snapshot.sessions.pick(session, &eligible))
}

/// Least predicted time to first token: the replica's current engine step (decoding batches
/// make every step longer), plus the prefill work ahead of this request on the replica and its
/// own prompt tokens not covered by the replica's cached prefix, times the replica's prefill
/// speed, raised as its KV cache nears full (preemption risk). The work ahead is this
/// gateway's exact pending prefill on the replica, or its scraped waiting queue (corrected by
/// what was sent since) in tokens when that is larger — stale stats are not used. The speed is
/// learned per replica from observed time to first token (the pool's mean, then
/// `prefill_tokens_per_second`, before that), so a pool mixing fast and slow GPUs balances by
/// speed, and prefix affinity holds exactly as long as it saves more than the queue costs.
/// A request for a LoRA adapter adds `lora_load_time` on replicas that do not hold it, so it
/// goes where the adapter is loaded unless the queue there costs more than loading it elsewhere.
/// Where replicas have GPU readings, near-ties go to the least busy GPU.
fn predicted_ttft(
    routing: &Routing,
    snapshot: &Snapshot,
    features: &RequestFeatures,
    ctx: PickContext,
    eligible: impl Fn(&usize) -> bool,
) -> Option<usize> {
    // The pool's typical speed: the median of the candidates' learned ones (one replica's odd
    // estimate does not move it), or the configured prior before any is learned.
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
    let prompt = f64::from(features.prompt_tokens.max(1));
    let lora_load = routing.lora_load_time.as_secs_f64();
    // The least prefill any replica would need: what the best-placed holder of the prefix needs.
    let least_own = features
        .prefix
        .replicas
        .first()
        .map_or(u64::MAX, |(id, _)| own_prefill_tokens(features, *id));
    let predict = |r: &Replica| {
        // An idle replica is given the benefit of the doubt (at most the pool's mean cost):
        // a speed learned under an old burst must not keep it idle, never to be re-learned.
        let speed = match r.secs_per_token() {
            Some(learned) if r.inflight() == 0 => learned.min(default_speed),
            Some(learned) => learned,
            None => default_speed,
        };
        let own = own_prefill_tokens(features, r.id);
        let mut ahead = r.pending_prefill() as f64;
        let mut kv_factor = 1.0;
        let mut running = r.inflight() as f64;
        if let Some(view) = r.engine_view(ctx.now, ctx.stale_after) {
            running = view.running;
            let per_request = match r.mean_prompt_tokens() {
                m if m > 0.0 => m,
                _ => prompt,
            };
            ahead = ahead.max(view.waiting * per_request);
            if let Some(kv) = view.kv_usage {
                kv_factor += 10.0 * (kv - 0.9).max(0.0);
            }
        }
        // A replica without the requested adapter loads it before anything else.
        let load = match features.adapter {
            Some(adapter) if !r.holds_adapter(adapter, ctx.now, ctx.stale_after) => lora_load,
            _ => 0.0,
        };
        // Its prefill step ends one engine step after the one running now at the earliest,
        // and every decoding sequence makes that step longer: the step time observed on the
        // replica's streams (none for an idle replica, whose next step starts at once).
        // Prefill it does here that a replica holding more of its prefix would not do also
        // lengthens the steps every sequence running here decodes in: that delay to the others
        // is part of the cost, so a cache miss on a busy replica costs what it really costs.
        let delay_to_others = speed * own.saturating_sub(least_own) as f64 * running;
        (r.expected_step() + speed * (ahead + own as f64)) * kv_factor + load + delay_to_others
    };
    // Each candidate's numbers, kept for the near-tie pass (a large pool's candidates beyond
    // these are computed again there).
    let mut scored = [(0.0f64, f64::INFINITY, 0u64, 0usize); KEEP];
    let mut kept = 0;
    let mut best: Option<(f64, u64, usize)> = None;
    let mut any_gpu = false;
    for i in snapshot.candidates(features, ctx.random).filter(&eligible) {
        let r = &snapshot.replicas[i];
        let predicted = predict(r);
        let gpu = r.gpu_use(ctx.now, ctx.gpu_stale_after);
        any_gpu |= gpu.is_some();
        let inflight = r.inflight();
        if kept < KEEP {
            scored[kept] = (predicted, gpu.unwrap_or(f64::INFINITY), inflight, i);
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
    // Near-ties (within `tie_margin` of the fastest): with GPU readings the least busy GPU wins
    // — an unknown one after every known one — then the faster prediction, then fewer in
    // flight; without, the one with less to prefill (a cache hit saves every request on that
    // replica time), then fewer in flight, then the faster prediction. Predictions are rough;
    // a busy GPU and a large decoding batch are real costs they do not see.
    let limit = fastest * (1.0 + routing.tie_margin);
    let rest = snapshot
        .candidates(features, ctx.random)
        .filter(&eligible)
        .skip(KEEP)
        .map(|i| {
            let r = &snapshot.replicas[i];
            let gpu = r.gpu_use(ctx.now, ctx.gpu_stale_after);
            (predict(r), gpu.unwrap_or(f64::INFINITY), r.inflight(), i)
        });
    let key = |t: &(f64, f64, u64, usize)| {
        if any_gpu {
            (t.1, t.0, t.2 as f64)
        } else {
            let own = own_prefill_tokens(features, snapshot.replicas[t.3].id);
            (own as f64, t.2 as f64, t.0)
        }
    };
    scored[..kept]
        .iter()
        .copied()
        .chain(rest)
        .filter(|(predicted, ..)| *predicted <= limit)
        .min_by(|a, b| {
            key(a)
                .partial_cmp(&key(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(|t| t.3)
        .or(Some(first))
}

/// Candidates whose scores `predicted_ttft` keeps on the stack for its near-tie pass.
const KEEP: usize = 2 * SAMPLE;

/// Prompt tokens replica `id` would have to prefill for this request: those its cached prefix
/// does not cover (at least one). The proxy counts them as the request's pending prefill.
pub fn own_prefill_tokens(features: &RequestFeatures, id: u64) -> u64 {
    let prompt = f64::from(features.prompt_tokens.max(1));
    (prompt * (1.0 - features.prefix.fraction(id)))
        .ceil()
        .max(1.0) as u64
}

/// The replica holding the largest share of the prompt's prefix, when that share reaches
/// `prefix_min_match` and the pool is not imbalanced (busiest and idlest differ by more than
/// `imbalance_requests` and by more than `imbalance_ratio`); otherwise least in flight. The
/// imbalance guard is what stops affinity from piling a popular prefix onto one replica.
fn prefix_affinity(
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

/// The Inference Extension's scheme: each candidate scores `queue` (1 − its waiting over the
/// longest waiting among candidates), `kv_cache` (1 − KV use; 0.5 when unknown), `prefix`
/// (share of the prompt it holds) and `gpu` (1 − GPU use; 0.5 when unknown), weighted; the
/// highest total wins, fewer in flight on a tie. Stale stats count as unknown.
fn weighted(
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

/// Two distinct replicas at random, the one with fewer in flight (falls back to a full scan
/// when a drawn one is not eligible).
fn power_of_two(
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
        Snapshot::new(
            (0..n)
                .map(|i| {
                    let gauge = IntGauge::new(format!("g{i}"), "test").unwrap();
                    let authority: Authority = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
                    Arc::new(Replica::new(Scheme::HTTP, authority, gauge, epoch))
                })
                .collect(),
        )
    }

    fn routing(policy: RoutingPolicy) -> Routing {
        // Parsed once: tests pick thousands of times.
        static DEFAULT: std::sync::OnceLock<Routing> = std::sync::OnceLock::new();
        let mut r = DEFAULT
            .get_or_init(|| crate::config::embedded_default().pools[0].routing.clone())
            .clone();
        r.policy = policy;
        r
    }

    fn ctx(random: u64, sequence: u64) -> PickContext {
        PickContext {
            now: Instant::now(),
            random,
            sequence,
            stale_after: std::time::Duration::from_secs(1),
            gpu_stale_after: std::time::Duration::from_secs(3),
            limits: limits(),
        }
    }

    fn limits() -> crate::config::Admission {
        static DEFAULT: std::sync::OnceLock<crate::config::Admission> = std::sync::OnceLock::new();
        *DEFAULT.get_or_init(|| crate::config::embedded_default().pools[0].admission)
    }

    /// Picks `n` times at `now`, holding each request as the proxy does (in flight, with the
    /// prefill tokens it would count), so every pick sees the ones before it. Returns the
    /// replicas in pick order and the guards that hold them.
    fn pick_holding(
        policy: RoutingPolicy,
        s: &Snapshot,
        f: &RequestFeatures,
        now: Instant,
        n: u64,
    ) -> (Vec<usize>, Vec<crate::replica::InflightGuard>) {
        let mut order = Vec::new();
        let mut guards = Vec::new();
        for q in 0..n {
            let i = pick(
                &routing(policy),
                s,
                f,
                PickContext { now, ..ctx(q, q) },
                &[],
            )
            .unwrap();
            order.push(i);
            guards.push(s.replicas[i].start_request_with(own_prefill_tokens(f, s.replicas[i].id)));
        }
        (order, guards)
    }

    fn counts(order: &[usize], replicas: usize) -> Vec<usize> {
        (0..replicas)
            .map(|r| order.iter().filter(|&&i| i == r).count())
            .collect()
    }

    fn stats(waiting: f64, running: f64) -> crate::replica::EngineStats {
        crate::replica::EngineStats {
            waiting,
            running,
            ..Default::default()
        }
    }

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
        assert!(counts.iter().all(|&c| c > 700), "{counts:?}");
    }

    #[test]
    fn a_burst_spreads_across_replicas() {
        // Guards are held as the proxy holds them: each pick sees the ones before it.
        let s = snapshot(4);
        let f = RequestFeatures::default();
        let _held = pick_holding(RoutingPolicy::LeastInflight, &s, &f, Instant::now(), 100);
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

    fn with_session(session: u64) -> RequestFeatures {
        RequestFeatures {
            session: Some(session),
            ..Default::default()
        }
    }

    #[test]
    fn session_affinity_is_sticky_and_spreads_sessions() {
        let s = snapshot(4);
        let mut per_replica = [0; 4];
        for session in 0..400u64 {
            let key = session.wrapping_mul(0x9E3779B97F4A7C15);
            let first = pick(
                &routing(RoutingPolicy::SessionAffinity),
                &s,
                &with_session(key),
                ctx(1, 1),
                &[],
            )
            .unwrap();
            // Load does not move a session.
            let _busy = s.replicas[first].start_request();
            for r in 0..5 {
                assert_eq!(
                    pick(
                        &routing(RoutingPolicy::SessionAffinity),
                        &s,
                        &with_session(key),
                        ctx(r, r),
                        &[]
                    ),
                    Some(first)
                );
            }
            per_replica[first] += 1;
        }
        assert!(per_replica.iter().all(|&n| n > 50), "{per_replica:?}");
        // Without a session key: least in flight.
        let _a = s.replicas[0].start_request();
        let i = pick(
            &routing(RoutingPolicy::SessionAffinity),
            &Snapshot::new(s.replicas[..2].to_vec()),
            &RequestFeatures::default(),
            ctx(0, 0),
            &[],
        );
        assert_eq!(i, Some(1));
    }

    #[test]
    fn session_affinity_fails_over_and_moves_few_sessions_on_growth() {
        let s = snapshot(4);
        let keys: Vec<u64> = (0..1000u64)
            .map(|k| k.wrapping_mul(0x9E3779B97F4A7C15))
            .collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| {
                pick(
                    &routing(RoutingPolicy::SessionAffinity),
                    &s,
                    &with_session(*k),
                    ctx(0, 0),
                    &[],
                )
                .unwrap()
            })
            .collect();
        // Excluding a session's replica sends it elsewhere, the same place each time.
        let k = keys[0];
        let other = pick(
            &routing(RoutingPolicy::SessionAffinity),
            &s,
            &with_session(k),
            ctx(0, 0),
            &[before[0]],
        )
        .unwrap();
        assert_ne!(other, before[0]);
        assert_eq!(
            pick(
                &routing(RoutingPolicy::SessionAffinity),
                &s,
                &with_session(k),
                ctx(9, 9),
                &[before[0]]
            ),
            Some(other)
        );
        // A fifth replica takes about a fifth of the sessions; the rest stay put.
        let grown = snapshot(5);
        let moved = keys
            .iter()
            .zip(&before)
            .filter(|(k, b)| {
                pick(
                    &routing(RoutingPolicy::SessionAffinity),
                    &grown,
                    &with_session(**k),
                    ctx(0, 0),
                    &[],
                )
                .unwrap()
                    != **b
            })
            .count();
        assert!(
            (120..300).contains(&moved),
            "{moved} of 1000 sessions moved"
        );
    }

    #[test]
    fn session_affinity_leaves_a_saturated_replica_and_comes_back() {
        let s = snapshot(4);
        let now = Instant::now();
        let r = routing(RoutingPolicy::SessionAffinity);
        let c = PickContext { now, ..ctx(0, 0) };
        let f = with_session(0x9E3779B97F4A7C15);
        let home = pick(&r, &s, &f, c, &[]).unwrap();
        let next_on_ring = pick(&r, &s, &f, c, &[home]).unwrap();
        assert_eq!(
            c.limits.max_waiting_per_replica, 32,
            "the default threshold"
        );
        // 33 waiting on the session's replica: saturated, the session goes to the next one on
        // the ring, the same one every time.
        s.replicas[home].record_scrape(stats(33.0, 0.0), now);
        for q in 0..10 {
            assert_eq!(
                pick(&r, &s, &f, PickContext { now, ..ctx(q, q) }, &[]),
                Some(next_on_ring)
            );
        }
        // 32 waiting is not saturated: back home.
        s.replicas[home].record_scrape(stats(32.0, 0.0), now);
        assert_eq!(pick(&r, &s, &f, c, &[]), Some(home));
        // Every replica saturated: the session stays home.
        for replica in &s.replicas {
            replica.record_scrape(stats(40.0, 0.0), now);
        }
        assert_eq!(pick(&r, &s, &f, c, &[]), Some(home));
        // Stale stats are unknown, not saturated.
        let later = PickContext {
            now: now + std::time::Duration::from_secs(2),
            ..c
        };
        s.replicas[home].record_scrape(stats(40.0, 0.0), now);
        assert_eq!(pick(&r, &s, &f, later, &[]), Some(home));
    }

    fn prefix_on(s: &Snapshot, replica: usize, blocks: u32, total: u32) -> RequestFeatures {
        RequestFeatures {
            prefix: prefix::PrefixMatch {
                replicas: vec![(s.replicas[replica].id, blocks)],
                total_blocks: total,
            },
            ..Default::default()
        }
    }

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
        // 65 in flight on it, 0 elsewhere: imbalanced, so load decides.
        guards.push(s.replicas[2].start_request());
        assert_ne!(
            pick(
                &routing(RoutingPolicy::PrefixAffinity),
                &s,
                &f,
                ctx(1, 1),
                &[]
            ),
            Some(2)
        );
        // A small share (below prefix_min_match 0.3) does not count.
        let small = prefix_on(&s, 1, 2, 10);
        let _busy = s.replicas[1].start_request();
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
        // Replica 0 loses every draw it is in; the other two share the rest.
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!(counts[1] > 1000 && counts[2] > 1000, "{counts:?}");
    }

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
