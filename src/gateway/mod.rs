//! The gateway: an OpenAI-aware reverse proxy on hyper. [`start`] wires a validated config into
//! running listeners (gateway and admin), pools and their replicas; [`proxy`] is the request
//! path, [`classify`] reads a request once, [`body`] streams answers, [`error`] maps every
//! failure to an OpenAI-style response.

pub mod admission;
pub mod body;
pub mod classify;
pub mod error;
pub mod metrics;
pub mod pools;
pub mod proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use http::uri::Scheme;

use crate::config::{Config, Discovery};
use crate::http_server::{self, Server};
use crate::scaler::local::LocalFleet;
use proxy::GatewayState;

/// A running gateway: where it listens and how to stop it.
pub struct RunningGateway {
    pub gateway_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: Arc<GatewayState>,
    gateway: Server,
    admin: Server,
    fleets: Vec<Arc<LocalFleet>>,
    /// Scrapers and scalers, stopped at shutdown.
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// Checks what this build cannot do yet, so that `serve` fails clearly instead of ignoring a
/// setting.
fn check_supported(config: &Config) -> anyhow::Result<()> {
    for pool in &config.pools {
        if matches!(pool.scaler.provider, crate::config::Provider::Kubernetes(_))
            && pool.scaler.enabled
        {
            anyhow::bail!(
                "pool `{}`: the Kubernetes scale provider is not available in this build yet",
                pool.name
            );
        }
        if matches!(pool.discovery, Discovery::Kubernetes(_)) {
            anyhow::bail!(
                "pool `{}`: Kubernetes discovery is not available in this build yet",
                pool.name
            );
        }
    }
    Ok(())
}

/// Binds the listeners, starts local replicas, and serves until [`RunningGateway::shutdown`].
pub async fn start(config: Config) -> anyhow::Result<RunningGateway> {
    check_supported(&config)?;
    let workers = config.listeners.worker_threads;
    let gateway_listeners =
        http_server::bind(config.listeners.gateway, workers).with_context(|| {
            format!(
                "cannot listen on {} (listeners.gateway)",
                config.listeners.gateway
            )
        })?;
    let admin_listener = http_server::bind(config.listeners.admin, 1).with_context(|| {
        format!(
            "cannot listen on {} (listeners.admin)",
            config.listeners.admin
        )
    })?;
    let metrics = Arc::new(metrics::GatewayMetrics::new());
    let epoch = Instant::now();
    let pools = pools::Pools::new(
        &config.pools,
        &metrics,
        epoch,
        workers,
        config.classification.priority_classes.len(),
    );

    let mut fleets: Vec<(Arc<pools::PoolRuntime>, Arc<LocalFleet>)> = Vec::new();
    for (pool, runtime) in config.pools.iter().zip(&pools.pools) {
        match &pool.discovery {
            Discovery::Static { endpoints, pods } => {
                for (endpoint, pod) in endpoints.iter().zip(pods) {
                    let scheme = endpoint.scheme().cloned().unwrap_or(Scheme::HTTP);
                    let authority = endpoint
                        .authority()
                        .cloned()
                        .expect("validated URL has a host");
                    let placement = crate::load::Placement {
                        pod: pod.clone(),
                        node: None,
                    };
                    runtime.add_placed_replica(scheme, authority, placement);
                }
            }
            Discovery::Local(local_config) => {
                let fleet = LocalFleet::new(
                    runtime.clone(),
                    local_config.clone(),
                    pool.scaler.drain_timeout,
                );
                fleet.start_and_wait(local_config.replicas).await;
                fleets.push((runtime.clone(), fleet));
            }
            Discovery::Kubernetes(_) => unreachable!("rejected by check_supported"),
        }
    }

    let mut background = Vec::new();
    for runtime in &pools.pools {
        background.push(crate::load::scraper::spawn(runtime.clone()));
        if runtime.config.scaler.enabled {
            let fleet = fleets
                .iter()
                .find(|(p, _)| Arc::ptr_eq(p, runtime))
                .map(|(_, f)| f.clone());
            let gauge = metrics.scaler_desired.with_label_values(&[runtime.name()]);
            let events = metrics.scale_events.clone();
            background.push(crate::scaler::spawn(
                runtime.clone(),
                fleet,
                gauge,
                events,
                epoch,
            ));
        }
    }
    let drain = config.listeners.drain_timeout;
    let state = Arc::new(GatewayState {
        config,
        pools,
        metrics,
    });
    let gateway_state = state.clone();
    let gateway = http_server::serve(gateway_listeners, drain, move |worker| {
        let state = gateway_state.clone();
        move |req, peer| proxy::handle(state.clone(), worker, req, peer)
    })?;
    let admin_state = state.clone();
    let admin = http_server::serve(admin_listener, Duration::from_secs(1), move |_| {
        let state = admin_state.clone();
        move |req, _| crate::admin::handle(state.clone(), req)
    })?;
    Ok(RunningGateway {
        gateway_addr: gateway.addr,
        admin_addr: admin.addr,
        state,
        gateway,
        admin,
        fleets: fleets.into_iter().map(|(_, f)| f).collect(),
        background,
    })
}

impl RunningGateway {
    /// Addresses and PIDs of the running local replicas (for tests that kill one).
    pub async fn local_replica_pids(&self) -> Vec<(SocketAddr, u32)> {
        let mut all = Vec::new();
        for fleet in &self.fleets {
            all.extend(fleet.pids().await);
        }
        all
    }

    /// Stops the scalers, stops accepting, lets in-flight answers finish (up to
    /// `listeners.drain_timeout`), then stops local replicas.
    pub async fn shutdown(self) {
        for task in &self.background {
            task.abort();
        }
        let drain = self.state.config.listeners.drain_timeout;
        self.gateway.shutdown(drain).await;
        self.admin.shutdown(Duration::from_millis(100)).await;
        for fleet in &self.fleets {
            fleet.stop_all(drain).await;
        }
    }
}
