//! The other gateways of a deployment, and the load only they know. The replicas' own pages are
//! read alike by every gateway; what each gateway alone knows is the requests it holds in its
//! queue and the answers it has in flight. Every gateway publishes both per pool on its
//! `/metrics` (`infergate_pool_inflight`, `infergate_queued_requests`, and its identity in
//! `infergate_gateway_info`); this module reads the peers' pages so that the scaler's signal is
//! the cluster's, the same whichever gateway holds the lease.
//!
//! A peer that cannot be read is reported (`/admin/status`, `infergate_peer_up`) and its last
//! reading still counts until it is older than `stale_after`; then the signal is what the
//! readable gateways know — never zero because one peer is gone. A peer list may include this
//! gateway itself (every endpoint of the gateways' Service): a page with its own identity is
//! skipped. The list is static (`cluster.peers`) or the endpoints of the gateways' own
//! Kubernetes Service (`cluster.kubernetes`), watched.
//!
//! What routing needs of the peers — their requests per replica and the prefixes they placed,
//! fresher than a scrape — is exchanged apart, at `/admin/routing` ([`routing`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::{JoinHandle, JoinSet};

pub mod routing;

use crate::scrape::exposition;
use crate::scrape::{HttpClient, ScrapeError, fetch_with};

/// One gateway's own load on one pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolLoad {
    /// Answers in flight from that gateway to the pool's replicas.
    pub inflight: u64,
    /// Requests held in that gateway's queue for the pool.
    pub queued: u64,
}

/// A peer's page, as last read.
#[derive(Debug, Clone, PartialEq)]
struct Reading {
    at: Instant,
    pools: HashMap<String, PoolLoad>,
    /// Replicas the peer is draining, by pool.
    draining: HashMap<String, Vec<String>>,
}

/// One peer gateway.
struct Peer {
    /// Its admin address (`host:port`).
    address: String,
    last: ArcSwapOption<Reading>,
    /// The last failure, until a read succeeds.
    error: ArcSwapOption<String>,
    /// It is this gateway (its page carries our identity).
    is_self: std::sync::atomic::AtomicBool,
    up: prometheus::IntGauge,
}

/// The peers of this gateway and what they last said.
pub struct Peers {
    /// This gateway's identity, published on its own page.
    pub id: String,
    /// The current peer list (static, or the gateways' Service endpoints as watched).
    peers: ArcSwap<Vec<Arc<Peer>>>,
    interval: Duration,
    stale_after: Duration,
    up: prometheus::IntGaugeVec,
    /// The list comes from a watch (it may be empty now and grow).
    pub watched: bool,
    /// The admin token the peers require (the same on every gateway of a deployment).
    pub token: Option<String>,
}

/// The load of the readable peers on one pool, and how many could not be counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerSum {
    pub load: PoolLoad,
    /// Peers whose reading is missing or stale (their load is unknown, not zero).
    pub unknown: u32,
}

/// What `/admin/status` shows of a peer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    pub address: String,
    pub up: bool,
    /// Seconds since its page was last read.
    pub read_ago: Option<f64>,
    pub error: Option<String>,
}

impl Peers {
    /// Peers at `addresses` (admin `host:port`), read every `interval`, a reading counted for
    /// `stale_after`; `up` is the `infergate_peer_up` family.
    pub fn new(
        id: String,
        addresses: &[String],
        interval: Duration,
        stale_after: Duration,
        up: &prometheus::IntGaugeVec,
    ) -> Self {
        let peers = Self {
            id,
            peers: ArcSwap::from_pointee(Vec::new()),
            interval,
            stale_after,
            up: up.clone(),
            watched: false,
            token: None,
        };
        peers.set_addresses(addresses);
        peers
    }

    /// Replaces the peer list; peers still listed keep their last reading.
    pub fn set_addresses(&self, addresses: &[String]) {
        let current = self.peers.load();
        let next: Vec<Arc<Peer>> = addresses
            .iter()
            .map(|address| {
                current
                    .iter()
                    .find(|p| &p.address == address)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Peer {
                            address: address.clone(),
                            last: ArcSwapOption::empty(),
                            error: ArcSwapOption::empty(),
                            is_self: std::sync::atomic::AtomicBool::new(false),
                            up: self.up.with_label_values(&[address]),
                        })
                    })
            })
            .collect();
        for gone in current.iter().filter(|p| !addresses.contains(&p.address)) {
            let _ = self.up.remove_label_values(&[&gone.address]);
        }
        self.peers.store(Arc::new(next));
    }

    /// The other gateways' admin addresses (those not yet recognised as this one included).
    pub fn addresses(&self) -> Vec<String> {
        self.others().iter().map(|p| p.address.clone()).collect()
    }

    fn others(&self) -> Vec<Arc<Peer>> {
        self.peers
            .load()
            .iter()
            .filter(|p| !p.is_self.load(std::sync::atomic::Ordering::Relaxed))
            .cloned()
            .collect()
    }

    /// Each other gateway's last reading if it is still fresh at `now` (None: its load is
    /// unknown).
    fn fresh_readings(&self, now: Instant) -> Vec<Option<Arc<Reading>>> {
        self.others()
            .iter()
            .map(|peer| {
                peer.last
                    .load_full()
                    .filter(|r| now.saturating_duration_since(r.at) <= self.stale_after)
            })
            .collect()
    }

    /// The other gateways' load on `pool` at `now`.
    pub fn load(&self, pool: &str, now: Instant) -> PeerSum {
        let mut sum = PeerSum::default();
        for reading in self.fresh_readings(now) {
            match reading {
                Some(reading) => {
                    let load = reading.pools.get(pool).copied().unwrap_or_default();
                    sum.load.inflight += load.inflight;
                    sum.load.queued += load.queued;
                }
                None => sum.unknown += 1,
            }
        }
        sum
    }

    /// Replicas of `pool` that a peer (the one scaling) is draining, by fresh readings.
    pub fn draining(&self, pool: &str, now: Instant) -> Vec<String> {
        self.fresh_readings(now)
            .into_iter()
            .flatten()
            .flat_map(|reading| reading.draining.get(pool).cloned().unwrap_or_default())
            .collect()
    }

    /// Whether any peer is configured or discovered (a Kubernetes peer list may be empty at
    /// first and grow).
    pub fn has_any(&self) -> bool {
        self.watched || !self.peers.load().is_empty()
    }

    /// Each peer's state, for `/admin/status`.
    pub fn status(&self, now: Instant) -> Vec<PeerStatus> {
        self.others()
            .iter()
            .map(|peer| {
                let last = peer.last.load();
                let read_ago = last
                    .as_deref()
                    .map(|r| now.saturating_duration_since(r.at).as_secs_f64());
                PeerStatus {
                    address: peer.address.clone(),
                    up: peer.up.get() == 1,
                    read_ago,
                    error: peer.error.load().as_deref().cloned(),
                }
            })
            .collect()
    }
}

/// The gateways' Service endpoints are the peers (their admin listeners).
impl crate::discovery::kubernetes::EndpointSink for Peers {
    fn set(&self, members: Vec<crate::discovery::kubernetes::Member>) {
        let addresses: Vec<String> = members
            .iter()
            .filter(|m| !m.terminating)
            .filter_map(|m| m.authority.as_ref().map(|a| a.to_string()))
            .collect();
        self.set_addresses(&addresses);
    }

    fn known(&self) -> usize {
        self.peers.load().len()
    }
}

/// Keeps the replicas of a Kubernetes pool that a peer gateway is draining (for its
/// scale-down) out of this gateway's routing too, until aborted: each exclusion is renewed
/// every read while the peer marks the replica, and lapses soon after it stops.
pub fn follow_drains(
    pool: String,
    members: Arc<crate::discovery::kubernetes::Members>,
    peers: Arc<Peers>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let every = peers.interval;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            for replica in peers.draining(&pool, now) {
                if let Ok(authority) = replica.parse::<http::uri::Authority>() {
                    members.exclude(&authority, now + 3 * every);
                }
            }
        }
    })
}

/// A new gateway identity: unique per process start.
pub fn new_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

/// Reads every peer's page every `interval` until aborted.
pub fn spawn(peers: Arc<Peers>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        let mut tick = tokio::time::interval(peers.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A read may take up to one interval (at least 100 ms).
        let timeout = peers.interval.max(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let mut reads = JoinSet::new();
            for peer in peers.peers.load().iter().cloned() {
                let (id, client, token) = (peers.id.clone(), client.clone(), peers.token.clone());
                reads.spawn(async move {
                    let read = read(&client, &peer.address, token.as_deref());
                    let read = tokio::time::timeout(timeout, read).await;
                    let result =
                        read.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
                    record(&id, &peer, result);
                });
            }
            while reads.join_next().await.is_some() {}
        }
    })
}

fn record(own_id: &str, peer: &Peer, result: Result<(String, Reading), String>) {
    match result {
        Ok((id, reading)) => {
            if id == own_id {
                peer.is_self
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            peer.last.store(Some(Arc::new(reading)));
            if peer.error.load().is_some() {
                tracing::info!(peer = %peer.address, "peer gateway answers again");
            }
            peer.error.store(None);
            peer.up.set(1);
        }
        Err(e) => {
            if peer.error.load().is_none() {
                tracing::warn!(peer = %peer.address, "cannot read peer gateway: {e}");
            }
            peer.error.store(Some(Arc::new(e)));
            peer.up.set(0);
        }
    }
}

async fn read(
    client: &HttpClient,
    address: &str,
    token: Option<&str>,
) -> Result<(String, Reading), String> {
    let uri: http::Uri = format!("http://{address}/metrics")
        .parse()
        .map_err(|e| format!("bad peer address {address}: {e}"))?;
    let body = fetch_with(client, uri, token).await.map_err(|e| match e {
        ScrapeError::Unreachable(e) | ScrapeError::Bad(e) => e,
    })?;
    let page = std::str::from_utf8(&body).map_err(|_| "metrics page is not UTF-8".to_string())?;
    parse(page, Instant::now())
}

/// A peer's identity and per-pool load from its `/metrics` page.
fn parse(page: &str, at: Instant) -> Result<(String, Reading), String> {
    let samples = exposition::samples(page).map_err(|e| e.to_string())?;
    let mut id = None;
    let mut pools: HashMap<String, PoolLoad> = HashMap::new();
    let mut draining: HashMap<String, Vec<String>> = HashMap::new();
    for sample in &samples {
        let count = || sample.value.max(0.0) as u64;
        match sample.name {
            "infergate_gateway_info" => id = sample.label("id").map(str::to_string),
            "infergate_draining_replica" if sample.value > 0.0 => {
                if let (Some(pool), Some(replica)) = (sample.label("pool"), sample.label("replica"))
                {
                    draining
                        .entry(pool.to_string())
                        .or_default()
                        .push(replica.to_string());
                }
            }
            "infergate_pool_inflight" | "infergate_queued_requests" => {
                let Some(pool) = sample.label("pool") else {
                    continue;
                };
                let load = pools.entry(pool.to_string()).or_default();
                if sample.name == "infergate_pool_inflight" {
                    load.inflight = count();
                } else {
                    load.queued = count();
                }
            }
            _ => {}
        }
    }
    let id = id.ok_or("not an infergate page (no infergate_gateway_info)")?;
    Ok((
        id,
        Reading {
            at,
            pools,
            draining,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# TYPE infergate_gateway_info gauge
infergate_gateway_info{id=\"peer-1\"} 1
infergate_pool_inflight{pool=\"chat\"} 7
infergate_pool_inflight{pool=\"embed\"} 0
infergate_queued_requests{pool=\"chat\"} 3
infergate_draining_replica{pool=\"chat\",replica=\"10.0.0.2:8000\"} 1
infergate_upstream_inflight{pool=\"chat\",replica=\"10.0.0.1:8000\"} 7
";

    fn peers(addresses: &[&str]) -> Peers {
        let up =
            prometheus::IntGaugeVec::new(prometheus::Opts::new("test_peer_up", "t"), &["peer"])
                .unwrap();
        let addresses: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
        Peers::new(
            "me".into(),
            &addresses,
            Duration::from_millis(100),
            Duration::from_secs(2),
            &up,
        )
    }

    #[test]
    fn a_peer_page_gives_its_identity_and_load_per_pool() {
        let now = Instant::now();
        let (id, reading) = parse(PAGE, now).unwrap();
        assert_eq!(id, "peer-1");
        assert_eq!(
            reading.pools["chat"],
            PoolLoad {
                inflight: 7,
                queued: 3
            }
        );
        assert_eq!(reading.pools["embed"], PoolLoad::default());
        assert_eq!(reading.draining["chat"], ["10.0.0.2:8000"]);
        assert!(
            parse("up 1\n", now)
                .unwrap_err()
                .contains("not an infergate page")
        );
    }

    #[test]
    fn peers_add_up_skip_themselves_and_count_what_is_unknown() {
        let p = peers(&["a:1", "b:1", "c:1", "self:1"]);
        let list = p.peers.load_full();
        let now = Instant::now();
        let reading = |inflight, queued, at| {
            let pools = [("chat".to_string(), PoolLoad { inflight, queued })].into();
            let draining = [("chat".to_string(), vec![format!("10.0.0.{inflight}:8000")])].into();
            Ok((
                "peer".to_string(),
                Reading {
                    at,
                    pools,
                    draining,
                },
            ))
        };
        record("me", &list[0], reading(5, 1, now));
        record("me", &list[1], reading(2, 4, now - Duration::from_secs(1)));
        record("me", &list[2], Err("connection refused".into()));
        record(
            "me",
            &list[3],
            Ok((
                "me".to_string(),
                Reading {
                    at: now,
                    pools: HashMap::new(),
                    draining: HashMap::new(),
                },
            )),
        );
        let sum = p.load("chat", now);
        assert_eq!(
            sum.load,
            PoolLoad {
                inflight: 7,
                queued: 5
            }
        );
        assert_eq!(sum.unknown, 1, "c was never read");
        assert_eq!(p.draining("chat", now), ["10.0.0.5:8000", "10.0.0.2:8000"]);
        assert_eq!(p.load("other", now).load, PoolLoad::default());
        // b's reading ages out; a's last one still counts while fresh, even after a failure.
        record("me", &list[0], Err("timed out".into()));
        let later = now + Duration::from_millis(1500);
        let sum = p.load("chat", later);
        assert_eq!(
            sum.load,
            PoolLoad {
                inflight: 5,
                queued: 1
            }
        );
        assert_eq!(sum.unknown, 2);
        let status = p.status(later);
        assert_eq!(status.len(), 3, "this gateway is not its own peer");
        assert!(!status[0].up);
        assert_eq!(status[0].error.as_deref(), Some("timed out"));
        assert!(status[1].up);
        // The list changes (the gateways' Service scaled): b stays with its reading, c goes.
        p.set_addresses(&["b:1".to_string(), "d:1".to_string()]);
        let sum = p.load("chat", now);
        assert_eq!(
            sum.load,
            PoolLoad {
                inflight: 2,
                queued: 4
            }
        );
        assert_eq!(sum.unknown, 1, "d is not read yet");
    }
}
