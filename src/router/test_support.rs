//! Fixtures shared by the router's tests: a pool of fresh replicas, the default routing and
//! admission settings, a pick context, scraped stats, and picks that hold their requests as the
//! proxy does.

use std::sync::Arc;
use std::time::Instant;

use http::uri::{Authority, Scheme};
use prometheus::IntGauge;

use super::{PickContext, RequestFeatures, Snapshot, own_prefill_tokens, pick, prefix};
use crate::config::{Routing, RoutingPolicy};
use crate::replica::Replica;

/// `n` idle replicas at 127.0.0.1:1000, :1001, …
pub fn snapshot(n: usize) -> Snapshot {
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

/// The embedded default's routing settings with `policy`.
pub fn routing(policy: RoutingPolicy) -> Routing {
    // Parsed once: tests pick thousands of times.
    static DEFAULT: std::sync::OnceLock<Routing> = std::sync::OnceLock::new();
    let mut r = DEFAULT
        .get_or_init(|| crate::config::embedded_default().pools[0].routing.clone())
        .clone();
    r.policy = policy;
    r
}

/// A context at the current instant: stats stale after 1 s, GPU readings after 3 s.
pub fn ctx(random: u64, sequence: u64) -> PickContext {
    PickContext {
        now: Instant::now(),
        random,
        sequence,
        stale_after: std::time::Duration::from_secs(1),
        gpu_stale_after: std::time::Duration::from_secs(3),
        limits: limits(),
    }
}

/// The embedded default's admission thresholds.
pub fn limits() -> crate::config::Admission {
    static DEFAULT: std::sync::OnceLock<crate::config::Admission> = std::sync::OnceLock::new();
    *DEFAULT.get_or_init(|| crate::config::embedded_default().pools[0].admission)
}

/// Picks `n` times at `now`, holding each request as the proxy does (in flight, with the
/// prefill tokens it would count), so every pick sees the ones before it. Returns the
/// replicas in pick order and the guards that hold them.
pub fn pick_holding(
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

/// How many of `order`'s picks went to each of `replicas` replicas.
pub fn counts(order: &[usize], replicas: usize) -> Vec<usize> {
    (0..replicas)
        .map(|r| order.iter().filter(|&&i| i == r).count())
        .collect()
}

/// Scraped engine stats with `waiting` and `running` requests, nothing else known.
pub fn stats(waiting: f64, running: f64) -> crate::replica::EngineStats {
    crate::replica::EngineStats {
        waiting,
        running,
        ..Default::default()
    }
}

/// A request whose session key is `session`.
pub fn with_session(session: u64) -> RequestFeatures {
    RequestFeatures {
        session: Some(session),
        ..Default::default()
    }
}

/// A request whose prefix (`total` blocks) replica `replica` holds the first `blocks` of.
pub fn prefix_on(s: &Snapshot, replica: usize, blocks: u32, total: u32) -> RequestFeatures {
    RequestFeatures {
        prefix: prefix::PrefixMatch {
            replicas: vec![(s.replicas[replica].id, blocks)],
            total_blocks: total,
        },
        ..Default::default()
    }
}
