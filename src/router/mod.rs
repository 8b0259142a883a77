//! Replica selection: pure, synchronous picking over a pool's snapshot. Time, randomness and a
//! request sequence number are passed in, so the same code runs in real and virtual time and is
//! tested with exact expectations.

use std::sync::Arc;
use std::time::Instant;

use crate::config::RoutingPolicy;
use crate::load::Replica;

mod session;

/// The replicas of one pool as the router sees them; replaced whole (behind an `ArcSwap`)
/// when replicas come or go, with what is derived from the replica set built once here.
#[derive(Debug)]
pub struct Snapshot {
    pub replicas: Vec<Arc<Replica>>,
    sessions: session::SessionRing,
}

impl Snapshot {
    pub fn new(replicas: Vec<Arc<Replica>>) -> Self {
        Self {
            sessions: session::SessionRing::new(&replicas),
            replicas,
        }
    }
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
}

/// Policies available in this build.
pub fn is_supported(policy: RoutingPolicy) -> bool {
    matches!(
        policy,
        RoutingPolicy::LeastInflight
            | RoutingPolicy::RoundRobin
            | RoutingPolicy::Random
            | RoutingPolicy::PredictedTtft
            | RoutingPolicy::SessionAffinity
    )
}

/// Picks a replica index, skipping ejected replicas and those in `exclude` (already tried for
/// this request). None when no replica is eligible.
pub fn pick(
    policy: RoutingPolicy,
    snapshot: &Snapshot,
    features: &RequestFeatures,
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
        RoutingPolicy::PredictedTtft => predicted_ttft(snapshot, ctx, eligible),
        // Requests without a session key are spread by load.
        RoutingPolicy::SessionAffinity => match features.session {
            Some(session) => snapshot.sessions.pick(session, eligible),
            None => least_inflight(snapshot, ctx.random, eligible),
        },
        _ => least_inflight(snapshot, ctx.random, eligible),
    }
}

/// Least predicted time to first token: the replica's own observed time to first byte (EWMA;
/// the pool's mean while it has none) times one plus the requests ahead of this one — its
/// scraped engine queue corrected by what this gateway sent since the scrape, or, when the
/// scrape is stale, this gateway's own in-flight count. A slow replica thus gets proportionally
/// less, and a burst between two scrapes spreads instead of piling onto the idlest-looking one.
fn predicted_ttft(
    snapshot: &Snapshot,
    ctx: PickContext,
    eligible: impl Fn(&usize) -> bool,
) -> Option<usize> {
    let (sum, known) = snapshot
        .replicas
        .iter()
        .filter_map(|r| r.first_byte_ewma())
        .fold((0.0, 0u32), |(s, n), d| (s + d.as_secs_f64(), n + 1));
    let pool_mean = if known == 0 {
        1.0
    } else {
        sum / f64::from(known)
    };
    let mut best: Option<(f64, u64, usize)> = None;
    for i in (0..snapshot.replicas.len()).filter(eligible) {
        let r = &snapshot.replicas[i];
        let base = r.first_byte_ewma().map_or(pool_mean, |d| d.as_secs_f64());
        let ahead = match r.estimated_queue(ctx.now, ctx.stale_after) {
            Some((waiting, running)) => waiting + running,
            None => r.inflight() as f64,
        };
        let score = base * (1.0 + ahead);
        let inflight = r.inflight();
        let better = match best {
            None => true,
            Some((s, f, _)) => score < s || (score == s && inflight < f),
        };
        if better {
            best = Some((score, inflight, i));
        }
    }
    best.map(|(_, _, i)| i)
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

    fn ctx(random: u64, sequence: u64) -> PickContext {
        PickContext {
            now: Instant::now(),
            random,
            sequence,
            stale_after: std::time::Duration::from_secs(1),
        }
    }

    fn stats(waiting: f64, running: f64) -> crate::load::exposition::EngineStats {
        crate::load::exposition::EngineStats {
            waiting,
            running,
            ..Default::default()
        }
    }

    #[test]
    fn predicted_ttft_gives_a_slow_replica_proportionally_less() {
        let s = snapshot(2);
        s.replicas[0].observe_first_byte(std::time::Duration::from_millis(100));
        s.replicas[1].observe_first_byte(std::time::Duration::from_millis(200));
        let f = RequestFeatures::default();
        let mut guards = Vec::new();
        let mut counts = [0; 2];
        for r in 0..60 {
            let i = pick(RoutingPolicy::PredictedTtft, &s, &f, ctx(r, r), &[]).unwrap();
            counts[i] += 1;
            guards.push(s.replicas[i].start_request());
        }
        // Equilibrium (1 + a) × 100 = (1 + b) × 200 with a + b = 60: a = 40.3, b = 19.7.
        assert_eq!(counts, [40, 20], "{counts:?}");
    }

    #[test]
    fn predicted_ttft_spreads_a_burst_between_scrapes() {
        let s = snapshot(4);
        let now = Instant::now();
        for r in &s.replicas {
            r.record_scrape(stats(0.0, 0.0), now);
        }
        let f = RequestFeatures::default();
        let mut guards = Vec::new();
        for q in 0..100 {
            let i = pick(RoutingPolicy::PredictedTtft, &s, &f, ctx(q, q), &[]).unwrap();
            guards.push(s.replicas[i].start_request());
        }
        assert!(
            s.replicas.iter().all(|r| r.inflight() == 25),
            "no scrape in between, yet spread"
        );
    }

    #[test]
    fn predicted_ttft_reads_the_scraped_queue_and_still_uses_stale_replicas() {
        let s = snapshot(3);
        let now = Instant::now();
        // Replica 0 has a deep engine queue (other gateways' traffic), replica 1 is idle,
        // replica 2's stats are stale: it is routed on this gateway's counts alone.
        s.replicas[0].record_scrape(stats(30.0, 10.0), now);
        s.replicas[1].record_scrape(stats(0.0, 5.0), now);
        s.replicas[2].record_scrape(stats(0.0, 0.0), now - std::time::Duration::from_secs(5));
        let f = RequestFeatures::default();
        let mut guards = Vec::new();
        let mut counts = [0; 3];
        for q in 0..20 {
            let i = pick(
                RoutingPolicy::PredictedTtft,
                &s,
                &f,
                PickContext { now, ..ctx(q, q) },
                &[],
            )
            .unwrap();
            counts[i] += 1;
            guards.push(s.replicas[i].start_request());
        }
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!(
            counts[2] > 0,
            "the stale replica still takes traffic: {counts:?}"
        );
        // Scores: replica 1 is (1 + 5 + n1), replica 2 is (1 + n2): n2 = n1 + 5 at balance.
        assert_eq!(counts, [0, 8, 12], "{counts:?}");
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
                RoutingPolicy::SessionAffinity,
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
                        RoutingPolicy::SessionAffinity,
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
            RoutingPolicy::SessionAffinity,
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
                    RoutingPolicy::SessionAffinity,
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
            RoutingPolicy::SessionAffinity,
            &s,
            &with_session(k),
            ctx(0, 0),
            &[before[0]],
        )
        .unwrap();
        assert_ne!(other, before[0]);
        assert_eq!(
            pick(
                RoutingPolicy::SessionAffinity,
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
                    RoutingPolicy::SessionAffinity,
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
    fn round_robin_cycles() {
        let s = snapshot(3);
        let f = RequestFeatures::default();
        let order: Vec<usize> = (0..6)
            .map(|q| pick(RoutingPolicy::RoundRobin, &s, &f, ctx(0, q), &[]).unwrap())
            .collect();
        assert_eq!(order, vec![0, 1, 2, 0, 1, 2]);
    }
}
