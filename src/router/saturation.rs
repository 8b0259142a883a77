//! When a replica takes no more requests now: the thresholds of the pool's `admission` section
//! applied to one replica ([`saturated`]: session affinity moves off such a replica) and to the
//! whole pool ([`all_saturated`]: the gateway's queue holds requests back).

use std::time::Instant;

use super::Snapshot;
use crate::replica::Replica;

/// Whether a replica should take no more requests now: the gateways have
/// `max_inflight_per_replica` in flight to it (this one's count plus its peers' as last
/// heard: one limit for the deployment, not one per gateway), or its fresh scraped stats show more than
/// `max_waiting_per_replica` waiting (less what of ours started since, and at least this
/// gateway's streams there without a first token) or KV-cache use above
/// `max_kv_cache_usage`. Stale stats count as unknown, never as saturated.
pub fn saturated(
    replica: &Replica,
    limits: &crate::config::Admission,
    now: Instant,
    stale_after: std::time::Duration,
) -> bool {
    if replica.cluster_inflight() >= u64::from(limits.max_inflight_per_replica) {
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
        .filter(|r| r.takes_traffic(now))
        .all(|r| saturated(r, limits, now, stale_after))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::Admission;
    use crate::router::test_support::*;

    fn tight() -> Admission {
        Admission {
            max_inflight_per_replica: 2,
            max_waiting_per_replica: 3,
            max_kv_cache_usage: 0.9,
            ..limits()
        }
    }

    #[test]
    fn a_replica_is_saturated_by_its_inflight_its_queue_or_its_kv_cache() {
        let s = snapshot(1);
        let r = &s.replicas[0];
        let now = Instant::now();
        let stale = Duration::from_secs(1);
        let limits = tight();
        assert!(!saturated(r, &limits, now, stale), "idle, nothing scraped");
        let one = r.start_unstreamed_request(0);
        assert!(!saturated(r, &limits, now, stale));
        let two = r.start_unstreamed_request(0);
        assert!(saturated(r, &limits, now, stale), "2 in flight, the limit");
        drop(two);
        // One of ours and one of a peer gateway's: the limit is the deployment's.
        r.set_peer_load(1, 0);
        assert!(saturated(r, &limits, now, stale));
        r.set_peer_load(0, 0);
        drop(one);
        // More than 3 waiting saturates; 3 does not.
        r.record_scrape(stats(4.0, 0.0), now);
        assert!(saturated(r, &limits, now, stale));
        r.record_scrape(stats(3.0, 0.0), now);
        assert!(!saturated(r, &limits, now, stale));
        // KV use above 0.9 saturates.
        let full = crate::replica::EngineStats {
            kv_usage: Some(0.95),
            ..Default::default()
        };
        r.record_scrape(full, now);
        assert!(saturated(r, &limits, now, stale));
        // Stale stats are unknown, not saturated.
        let later = now + Duration::from_secs(2);
        assert!(!saturated(r, &limits, later, stale));
    }

    #[test]
    fn a_pool_is_saturated_when_every_replica_taking_traffic_is() {
        let s = snapshot(2);
        let now = Instant::now();
        let stale = Duration::from_secs(1);
        let limits = tight();
        s.replicas[0].record_scrape(stats(4.0, 0.0), now);
        s.replicas[1].record_scrape(stats(0.0, 0.0), now);
        assert!(!all_saturated(&s, &limits, now, stale));
        // The one with room is ejected: the rest are all saturated.
        assert!(s.replicas[1].eject(now, 60_000));
        assert!(all_saturated(&s, &limits, now, stale));
        // No replica at all: nothing can take a request.
        assert!(all_saturated(&Snapshot::default(), &limits, now, stale));
    }
}
