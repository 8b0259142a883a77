//! What the scaler sees of a pool at one tick, read the same way by the control loop and the
//! fleet simulation: the replicas taking traffic, the gateway's exact in-flight count to them,
//! their mean KV-cache and GPU use (fresh readings only; None is a missing signal, not a zero),
//! and what the caller knows besides — replicas starting, requests queued, the longest wait,
//! and the other gateways' own in-flight and queued counts (so the signal is the cluster's).

use std::time::Instant;

use super::policy::Observation;
use crate::config;
use crate::peers::PoolLoad;
use crate::router::Snapshot;

/// What the replica set does not tell.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Beyond {
    /// Seconds on the caller's clock (real or virtual), for the policy's windows.
    pub now_secs: f64,
    /// Replicas asked for that are not ready yet.
    pub starting: u32,
    /// Requests waiting at the gateway.
    pub queued: u64,
    /// Longest wait of the requests that left the queue since the last tick (seconds).
    pub queue_wait: Option<f64>,
    /// What the other gateways hold and have in flight on the pool.
    pub peers: PoolLoad,
    /// Seconds a replica asked for now takes to be ready (measured, or configured until then).
    pub cold_start: f64,
    /// Requests that arrived at this gateway for the pool since the previous tick.
    pub arrivals: u64,
    /// The Unix time (seconds) at which `now_secs` read zero; 0 in the fleet simulation, whose
    /// days start with its workload.
    pub clock_start: f64,
}

/// The scaler's [`Observation`] of the pool's replica set at `now`.
pub fn observe(
    snapshot: &Snapshot,
    pool: &config::Pool,
    now: Instant,
    beyond: Beyond,
) -> Observation {
    let routed = || snapshot.replicas.iter().filter(|r| r.takes_traffic(now));
    let gpu_stale_after = pool.metrics.gpu_stale_after();
    let (gpu_sum, gpu_n) = routed()
        .filter_map(|r| r.gpu_use(now, gpu_stale_after))
        .fold((0.0, 0u32), |(s, n), v| (s + v, n + 1));
    Observation {
        now: beyond.now_secs,
        ready: routed().count() as u32,
        starting: beyond.starting,
        inflight: snapshot.replicas.iter().map(|r| r.inflight()).sum::<u64>()
            + beyond.peers.inflight,
        queued: beyond.queued + beyond.peers.queued,
        kv_cache_usage: crate::replica::mean_kv_usage(
            &snapshot.replicas,
            now,
            pool.metrics.stale_after,
        ),
        gpu_utilization: (gpu_n > 0).then(|| gpu_sum / f64::from(gpu_n)),
        queue_wait: beyond.queue_wait,
        cold_start: beyond.cold_start,
        arrivals: beyond.arrivals,
        clock_start: beyond.clock_start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::{EngineStats, Replica};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn the_observation_counts_routed_replicas_and_fresh_readings_only() {
        let mut pool = crate::config::embedded_default().pools[0].clone();
        pool.metrics.stale_after = Duration::from_secs(1);
        let epoch = Instant::now();
        let replica = |port: u16| {
            let gauge = prometheus::IntGauge::new("test_obs_inflight", "test").unwrap();
            let authority = format!("127.0.0.1:{port}").parse().unwrap();
            Arc::new(Replica::new(
                http::uri::Scheme::HTTP,
                authority,
                gauge,
                epoch,
            ))
        };
        let (a, b, c) = (replica(1), replica(2), replica(3));
        let now = epoch + Duration::from_secs(10);
        let kv = |kv: f64| EngineStats {
            kv_usage: Some(kv),
            ..Default::default()
        };
        a.record_scrape(kv(0.2), now);
        b.record_scrape(kv(0.6), now);
        c.record_scrape(kv(0.9), now - Duration::from_secs(5)); // stale: not read
        a.record_gpu(0.5, now);
        let _held = [a.start_request(), a.start_request(), c.start_request()];
        b.eject(now, 60_000);
        let snapshot = Snapshot::new(vec![a, b, c]);
        let beyond = Beyond {
            now_secs: 10.0,
            starting: 2,
            queued: 7,
            queue_wait: Some(1.5),
            peers: PoolLoad::default(),
            cold_start: 30.0,
            arrivals: 12,
            clock_start: 1.8e9,
        };
        let obs = observe(&snapshot, &pool, now, beyond);
        assert_eq!(obs.ready, 2, "the ejected replica takes no traffic");
        assert_eq!(obs.inflight, 3);
        assert_eq!(
            (obs.starting, obs.queued, obs.queue_wait),
            (2, 7, Some(1.5))
        );
        assert_eq!(obs.kv_cache_usage, Some(0.2), "b is ejected, c is stale");
        assert_eq!(obs.gpu_utilization, Some(0.5));
        assert_eq!((obs.now, obs.cold_start, obs.arrivals), (10.0, 30.0, 12));
        assert_eq!(obs.clock_start, 1.8e9);
        // Other gateways' load adds to this gateway's own.
        let peers = PoolLoad {
            inflight: 10,
            queued: 4,
        };
        let with_peers = observe(&snapshot, &pool, now, Beyond { peers, ..beyond });
        assert_eq!((with_peers.inflight, with_peers.queued), (13, 11));
    }
}
