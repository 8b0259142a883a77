//! The local provider: a pool's replicas as child processes on this machine. It starts
//! replicas (counted as "starting" until `/health` answers), and scales down without killing an
//! answer in progress: the victim (fewest in flight) leaves routing first, its in-flight answers
//! finish (up to the drain timeout), then it gets SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use tokio::sync::Mutex;

use futures::future::BoxFuture;

use super::actuation::{self, Plan};
use super::policy::Observation;
use super::provider::{Action, Provider, ProviderError, Supply};
use crate::config::LocalDiscovery;
use crate::discovery::local::{self, LocalReplica};
use crate::pool::PoolState;
use crate::router::Snapshot;

pub struct LocalProvider {
    /// Itself, for the drain tasks it spawns.
    this: std::sync::Weak<LocalProvider>,
    pool: Arc<PoolState>,
    config: LocalDiscovery,
    drain_timeout: Duration,
    /// Running replicas that take traffic.
    running: Mutex<Vec<LocalReplica>>,
    starting: AtomicU32,
    draining: AtomicU32,
}

impl LocalProvider {
    pub fn new(pool: Arc<PoolState>, config: LocalDiscovery, drain_timeout: Duration) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            this: this.clone(),
            pool,
            config,
            drain_timeout,
            running: Mutex::new(Vec::new()),
            starting: AtomicU32::new(0),
            draining: AtomicU32::new(0),
        })
    }

    /// Replicas started but not ready yet.
    pub fn starting(&self) -> u32 {
        self.starting.load(Ordering::Relaxed)
    }

    /// Replicas out of routing, finishing their answers before they stop.
    pub fn draining(&self) -> u32 {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts `n` replicas; each joins routing once healthy. Returns at once.
    pub fn start_replicas(self: &Arc<Self>, n: u32) {
        for _ in 0..n {
            self.starting.fetch_add(1, Ordering::Relaxed);
            let fleet = self.clone();
            tokio::spawn(async move {
                let started = local::start(&fleet.config).await;
                match started {
                    Ok(replica) => {
                        let (addr, authority) = (replica.addr, replica.authority());
                        fleet.running.lock().await.push(replica);
                        // Routable before it stops counting as starting: an observation in
                        // between over-counts by one (never under-counts, which would add more).
                        fleet.pool.add_replica(Scheme::HTTP, authority);
                        tracing::info!(pool = fleet.pool.name(), replica = %addr, "local replica ready");
                    }
                    Err(e) => tracing::error!(
                        pool = fleet.pool.name(),
                        "local replica failed to start: {e}"
                    ),
                }
                fleet.starting.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    /// Starts `n` replicas and waits until each is ready or failed.
    pub async fn start_and_wait(self: &Arc<Self>, n: u32) {
        self.start_replicas(n);
        while self.starting() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What scaling to `desired` does with replicas running at `running` (in this provider's
    /// order), given the routing snapshot's in-flight counts: [`actuation::plan`] — the same
    /// rule the fleet simulation applies.
    pub fn plan(
        running: &[Authority],
        snapshot: &Snapshot,
        desired: u32,
        obs: &Observation,
    ) -> Plan {
        let inflight: Vec<u64> = running
            .iter()
            .map(|authority| {
                snapshot
                    .replicas
                    .iter()
                    .find(|s| &s.authority == authority)
                    .map_or(0, |s| s.inflight())
            })
            .collect();
        actuation::plan(desired, obs.ready, obs.starting, &inflight)
    }

    /// Moves towards `desired`: starts the missing replicas, or drains the victims — out of
    /// routing now, stopped once their answers have finished (or the drain timeout passed).
    /// Returns at once.
    async fn scale_to(self: &Arc<Self>, desired: u32, obs: &Observation) -> Action {
        let mut running = self.running.lock().await;
        let authorities: Vec<Authority> = running.iter().map(|r| r.authority()).collect();
        let victims = match Self::plan(&authorities, &self.pool.snapshot(), desired, obs) {
            Plan::Hold => return Action::None,
            Plan::Add(n) => {
                self.start_replicas(n);
                return Action::Up(n);
            }
            Plan::Drain(victims) => victims,
        };
        let (leaving, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut *running)
            .into_iter()
            .enumerate()
            .partition(|(i, _)| victims.contains(i));
        *running = kept.into_iter().map(|(_, r)| r).collect();
        let count = leaving.len() as u32;
        // They drain side by side, so the order they leave in does not matter.
        for (_, replica_process) in leaving {
            let routed = self.pool.remove_replica(&replica_process.authority());
            self.draining.fetch_add(1, Ordering::Relaxed);
            let fleet = self.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + fleet.drain_timeout;
                if let Some(routed) = &routed {
                    while routed.inflight() > 0 && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    tracing::info!(pool = fleet.pool.name(), replica = %routed.name, inflight_left = routed.inflight(), "drained; stopping local replica");
                }
                replica_process.stop(fleet.drain_timeout).await;
                fleet.draining.fetch_sub(1, Ordering::Relaxed);
            });
        }
        Action::Down(count)
    }

    /// Stops every running replica (at shutdown).
    pub async fn stop_all(&self, drain: Duration) {
        let replicas: Vec<LocalReplica> = std::mem::take(&mut *self.running.lock().await);
        let mut stopping = tokio::task::JoinSet::new();
        for replica in replicas {
            stopping.spawn(replica.stop(drain));
        }
        while stopping.join_next().await.is_some() {}
    }

    /// Addresses and PIDs of running replicas.
    pub async fn pids(&self) -> Vec<(std::net::SocketAddr, u32)> {
        self.running
            .lock()
            .await
            .iter()
            .filter_map(|r| Some((r.addr, r.pid()?)))
            .collect()
    }
}

impl Provider for LocalProvider {
    fn observe(&self) -> BoxFuture<'_, Supply> {
        Box::pin(async {
            Supply {
                starting: self.starting(),
                draining: self.draining(),
            }
        })
    }

    /// Starts the missing replicas; removes surplus ones only once none is starting (a replica
    /// that is loading may be the one the load needs), fewest in flight first.
    fn scale<'a>(
        &'a self,
        desired: u32,
        obs: &'a Observation,
    ) -> BoxFuture<'a, Result<Action, ProviderError>> {
        Box::pin(async move {
            let Some(fleet) = self.this.upgrade() else {
                return Ok(Action::None);
            };
            Ok(fleet.scale_to(desired, obs).await)
        })
    }
}
