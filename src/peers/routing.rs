//! The routing state the gateways of a deployment exchange, so that each routes as one gateway
//! would. What a replica's page shows is the same for every gateway; what only the sending
//! gateway knows is what it sent in the last moments: its requests in flight to each replica,
//! the prompt tokens of its streams there still waiting for their prefill, and which replica it
//! sent which prompt prefix to. Without them, N gateways send their bursts to the replica each
//! believes idle, learn prefill speeds from waits behind work they never saw, and each learns
//! 1/N of where the prefixes are cached (BENCHMARKS.md, several gateways).
//!
//! Each gateway serves its state at `/admin/routing?since=<cursor>`
//! ([`RoutingState`]: its loads, and the placements it logged after `cursor`), and reads every
//! peer's every `cluster.sync_interval` ([`spawn`]): the peers' loads are summed per replica
//! into [`crate::replica::Replica::set_peer_load`], their placements recorded in the pool's
//! prefix index. A peer whose state is older than `cluster.peer_stale_after` counts for
//! nothing (its requests end within that time or show on the replicas' pages).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::task::{JoinHandle, JoinSet};

use super::Peers;
use crate::pool::PoolState;
use crate::scrape::{HttpClient, ScrapeError, fetch_with};

/// Placements kept for the peers to read: at the default 50 ms between reads, room for
/// 80,000 requests a second.
const LOG_CAPACITY: usize = 4096;

/// Most prefix blocks in one answer (~1.3 MB of JSON): a reader that is far behind catches up
/// over several reads rather than in one answer of up to 4096 × 512 blocks.
const BLOCKS_PER_READ: usize = 65_536;

/// The prompt prefixes this gateway sent, in order, for its peers to read (bounded: a peer
/// that reads too late misses the oldest, and says so).
#[derive(Default)]
pub struct PlacementLog {
    inner: Mutex<LogInner>,
}

#[derive(Default)]
struct LogInner {
    /// The cursor of the newest entry (0: none yet).
    last: u64,
    entries: VecDeque<Logged>,
}

struct Logged {
    cursor: u64,
    pool: Arc<str>,
    placement: Placement,
}

/// One request's prompt prefix blocks ([`crate::router::prefix`]) and the replica (by id) it
/// went to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub replica: u64,
    pub blocks: Vec<u64>,
}

impl PlacementLog {
    /// Logs that `pool` sent a prompt with these prefix blocks to `replica`.
    pub fn push(&self, pool: &Arc<str>, replica: u64, blocks: &[u64]) {
        if blocks.is_empty() {
            return;
        }
        let placement = Placement {
            replica,
            blocks: blocks.to_vec(),
        };
        let mut log = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        log.last += 1;
        let cursor = log.last;
        if log.entries.len() == LOG_CAPACITY {
            log.entries.pop_front();
        }
        log.entries.push_back(Logged {
            cursor,
            pool: pool.clone(),
            placement,
        });
    }

    /// The placements logged after `since` (up to [`BLOCKS_PER_READ`] blocks), by pool; the
    /// cursor to ask from next time; and whether some were already dropped. A cursor beyond the
    /// log's end (the gateway restarted) gets everything kept.
    fn since(&self, since: u64) -> (HashMap<Arc<str>, Vec<Placement>>, u64, bool) {
        let log = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let since = if since > log.last { 0 } else { since };
        let missed = log
            .entries
            .front()
            .is_some_and(|first| first.cursor > since + 1);
        let mut pools: HashMap<Arc<str>, Vec<Placement>> = HashMap::new();
        let (mut cursor, mut blocks) = (since, 0);
        for entry in log.entries.iter().filter(|e| e.cursor > since) {
            blocks += entry.placement.blocks.len();
            if blocks > BLOCKS_PER_READ && cursor > since {
                break;
            }
            pools
                .entry(entry.pool.clone())
                .or_default()
                .push(entry.placement.clone());
            cursor = entry.cursor;
        }
        (pools, cursor, missed)
    }
}

/// What one gateway tells its peers (`/admin/routing`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutingState {
    /// The gateway's identity (a gateway skips its own state).
    pub id: String,
    /// Where the next read continues.
    pub cursor: u64,
    /// Placements were dropped since the reader's cursor (it read too late).
    pub missed: bool,
    pub pools: HashMap<String, PoolRouting>,
}

/// One pool's share of a [`RoutingState`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolRouting {
    /// (replica id, requests in flight, prompt tokens of streams without a first byte), for
    /// the replicas with any.
    pub loads: Vec<(u64, u64, u64)>,
    pub placements: Vec<Placement>,
}

/// This gateway's routing state for a peer that last read up to `since`.
pub fn state<'a>(
    id: &str,
    pools: impl Iterator<Item = &'a Arc<PoolState>>,
    log: Option<&PlacementLog>,
    since: u64,
) -> RoutingState {
    let (mut placements, cursor, missed) = match log {
        Some(log) => log.since(since),
        None => (HashMap::new(), 0, false),
    };
    let pools = pools
        .map(|pool| {
            let loads = pool
                .snapshot()
                .replicas
                .iter()
                .map(|r| (r.id, r.inflight(), r.pending_prefill()))
                .filter(|(_, inflight, _)| *inflight > 0)
                .collect();
            let placements = placements.remove(pool.name()).unwrap_or_default();
            (pool.name().to_string(), PoolRouting { loads, placements })
        })
        .collect();
    RoutingState {
        id: id.to_string(),
        cursor,
        missed,
        pools,
    }
}

/// What this gateway last read from one peer.
struct Read {
    address: String,
    cursor: u64,
    last: Option<(Instant, RoutingState)>,
}

/// Reads every peer's routing state every `interval` and applies it to `pools` until aborted.
/// `placed` counts the placements read, per peer.
pub fn spawn(
    peers: Arc<Peers>,
    pools: Vec<Arc<PoolState>>,
    interval: Duration,
    placed: prometheus::IntCounterVec,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let timeout = interval.max(Duration::from_millis(100));
        let mut reads: Vec<Read> = Vec::new();
        loop {
            tick.tick().await;
            // Follow the peer list (it may be watched); a peer still listed keeps its cursor.
            let addresses = peers.addresses();
            reads.retain(|r| addresses.contains(&r.address));
            for address in addresses {
                if !reads.iter().any(|r| r.address == address) {
                    reads.push(Read {
                        address,
                        cursor: 0,
                        last: None,
                    });
                }
            }
            let mut pending = JoinSet::new();
            for (i, read) in reads.iter().enumerate() {
                let (client, token) = (client.clone(), peers.token.clone());
                let (address, cursor) = (read.address.clone(), read.cursor);
                pending.spawn(async move {
                    let state = fetch(&client, &address, cursor, token.as_deref());
                    (i, tokio::time::timeout(timeout, state).await)
                });
            }
            while let Some(done) = pending.join_next().await {
                let Ok((i, result)) = done else { continue };
                let read = &mut reads[i];
                match result {
                    Ok(Ok(state)) if state.id != peers.id => {
                        let n = apply_placements(&pools, &state);
                        placed.with_label_values(&[&read.address]).inc_by(n);
                        read.cursor = state.cursor;
                        read.last = Some((Instant::now(), state));
                    }
                    Ok(Ok(_)) => {} // this gateway itself, listed among its peers
                    Ok(Err(e)) => tracing::debug!(peer = %read.address, "routing state: {e}"),
                    Err(_) => tracing::debug!(peer = %read.address, "routing state: timed out"),
                }
            }
            let now = Instant::now();
            let fresh = reads
                .iter()
                .filter_map(|r| r.last.as_ref())
                .filter(|(at, _)| now.saturating_duration_since(*at) <= peers.stale_after)
                .map(|(_, state)| state);
            apply_loads(&pools, fresh);
        }
    })
}

/// Records a peer's placements in the pools' prefix indexes; returns how many.
fn apply_placements(pools: &[Arc<PoolState>], state: &RoutingState) -> u64 {
    let mut n = 0;
    for pool in pools {
        let (Some(index), Some(routing)) = (&pool.prefix_index, state.pools.get(pool.name()))
        else {
            continue;
        };
        for placement in &routing.placements {
            index.record(&placement.blocks, placement.replica);
            n += 1;
        }
    }
    n
}

/// Sets each replica's peer load to the sum over the peers' `states` (zero where none has any).
pub fn apply_loads<'a>(pools: &[Arc<PoolState>], states: impl Iterator<Item = &'a RoutingState>) {
    let mut sums: HashMap<(&str, u64), (u64, u64)> = HashMap::new();
    for state in states {
        for (pool, routing) in &state.pools {
            for (replica, inflight, pending) in &routing.loads {
                let sum = sums.entry((pool.as_str(), *replica)).or_default();
                sum.0 += inflight;
                sum.1 += pending;
            }
        }
    }
    for pool in pools {
        for replica in pool.snapshot().replicas.iter() {
            let (inflight, pending) = sums
                .get(&(pool.name(), replica.id))
                .copied()
                .unwrap_or_default();
            replica.set_peer_load(inflight, pending);
        }
    }
}

async fn fetch(
    client: &HttpClient,
    address: &str,
    since: u64,
    token: Option<&str>,
) -> Result<RoutingState, String> {
    let uri: http::Uri = format!("http://{address}/admin/routing?since={since}")
        .parse()
        .map_err(|e| format!("bad peer address {address}: {e}"))?;
    let body = fetch_with(client, uri, token).await.map_err(|e| match e {
        ScrapeError::Unreachable(e) | ScrapeError::Bad(e) => e,
    })?;
    serde_json::from_slice(&body).map_err(|e| format!("bad routing state: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::uri::Scheme;

    fn pool() -> Arc<PoolState> {
        let mut config = crate::config::embedded_default().pools[0].clone();
        config.routing.policy = crate::config::RoutingPolicy::PredictedTtft;
        let metrics = crate::metrics::Metrics::new();
        let gauges = metrics.pool_gauges(&config.name);
        Arc::new(PoolState::new(config, gauges, Instant::now(), 1))
    }

    #[test]
    fn a_gateways_state_carries_its_loads_and_placements_and_its_peers_apply_them() {
        // Gateway a sends a stream of 300 prompt tokens to replica 1 and logs the prompt.
        let (a, log) = (pool(), PlacementLog::default());
        let r1 = a.add_replica(Scheme::HTTP, "127.0.0.1:1".parse().unwrap());
        let r2 = a.add_replica(Scheme::HTTP, "127.0.0.1:2".parse().unwrap());
        let _stream = r1.start_request_with(300);
        log.push(&a.name().into(), r1.id, &[7, 8, 9]);
        let from_a = state("a", [&a].into_iter(), Some(&log), 0);
        let routing = &from_a.pools[a.name()];
        assert_eq!(
            routing.loads,
            vec![(r1.id, 1, 300)],
            "replica 2 has nothing"
        );
        // Over the wire and back, as a peer reads it.
        let from_a: RoutingState =
            serde_json::from_slice(&serde_json::to_vec(&from_a).unwrap()).unwrap();

        // Gateway b knows the same replicas (by address, so by id) and reads a and c.
        let b = pool();
        let b1 = b.add_replica(Scheme::HTTP, "127.0.0.1:1".parse().unwrap());
        let b2 = b.add_replica(Scheme::HTTP, "127.0.0.1:2".parse().unwrap());
        assert_eq!((b1.id, b2.id), (r1.id, r2.id));
        let mut from_c = from_a.clone();
        from_c.pools.get_mut(b.name()).unwrap().loads = vec![(r1.id, 2, 0), (r2.id, 1, 50)];
        let pools = [b.clone()];
        apply_loads(&pools, [&from_a, &from_c].into_iter());
        assert_eq!(
            (b1.cluster_inflight(), b1.cluster_pending_prefill()),
            (3, 300)
        );
        assert_eq!(
            (b2.cluster_inflight(), b2.cluster_pending_prefill()),
            (1, 50)
        );
        assert_eq!(b1.inflight(), 0, "its own count stays its own");
        assert_eq!(apply_placements(&pools, &from_a), 1);
        let found = b.prefix_index.as_ref().unwrap().lookup(&[7, 8, 9]);
        assert_eq!(found.replicas, vec![(r1.id, 3)]);
        // A peer that no longer reports a replica's load counts for nothing there.
        apply_loads(&pools, [&from_c].into_iter());
        assert_eq!(b1.cluster_inflight(), 2);
        apply_loads(&pools, std::iter::empty());
        assert_eq!(
            (b1.cluster_inflight(), b2.cluster_pending_prefill()),
            (0, 0)
        );
    }

    #[test]
    fn the_log_serves_what_came_after_a_cursor_and_says_when_some_were_dropped() {
        let log = PlacementLog::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        log.push(&a, 1, &[10, 11]);
        log.push(&b, 2, &[20]);
        log.push(&a, 3, &[]); // nothing to place: not logged
        let (pools, cursor, missed) = log.since(0);
        assert_eq!((cursor, missed), (2, false));
        assert_eq!(pools[&a][0].blocks, vec![10, 11]);
        assert_eq!(pools[&b][0].replica, 2);
        let (pools, cursor, _) = log.since(1);
        assert_eq!(
            (pools.len(), cursor),
            (1, 2),
            "only b's came after cursor 1"
        );
        assert!(log.since(2).0.is_empty());
        // A reader whose cursor is past the end (this gateway restarted) starts over.
        assert_eq!(log.since(99).0.len(), 2);
        for i in 0..LOG_CAPACITY as u64 {
            log.push(&a, i, &[i]);
        }
        // The two first are gone: a reader that had both missed nothing, one that had only
        // the first missed one.
        assert!(!log.since(2).2);
        let (pools, cursor, missed) = log.since(1);
        assert!(missed, "the second was dropped before it was read");
        assert_eq!(pools[&a].len(), LOG_CAPACITY);
        assert_eq!(cursor, 2 + LOG_CAPACITY as u64);
    }

    #[test]
    fn a_reader_far_behind_catches_up_over_several_reads() {
        let log = PlacementLog::default();
        let a: Arc<str> = "a".into();
        let long = vec![1u64; 512];
        for i in 0..300 {
            log.push(&a, i, &long);
        }
        // 300 × 512 blocks: 128 placements fit in one read (65,536 blocks).
        let (first, cursor, _) = log.since(0);
        assert_eq!((first[&a].len(), cursor), (128, 128));
        let (second, cursor, _) = log.since(cursor);
        assert_eq!((second[&a][0].replica, cursor), (128, 256));
        let (third, cursor, _) = log.since(cursor);
        assert_eq!((third[&a].len(), cursor), (44, 300));
        let (none, cursor, _) = log.since(cursor);
        assert!(none.is_empty());
        assert_eq!(cursor, 300);
    }
}
