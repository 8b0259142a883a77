//! The gateway: an OpenAI-aware reverse proxy on hyper. [`start`] wires a validated config into
//! running listeners (gateway and admin), pools and their replicas; [`proxy`] is the request
//! path, [`classify`] reads a request once, [`body`] streams answers, [`error`] maps every
//! failure to an OpenAI-style response.

pub mod admission;
pub mod body;
pub mod classify;
pub mod error;
pub mod pools;
pub mod proxy;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use http::uri::Scheme;

use crate::config::{Config, Discovery, Provider};
use crate::discovery::kubernetes::Members;
use crate::http_server::{self, Server};
use crate::kubernetes::lease::{Elector, Leadership};
use crate::kubernetes::{ApiHealth, KubeContext};
use crate::scaler::Actuation;
use crate::scaler::kubernetes::KubeScaler;
use crate::scaler::local::LocalProvider;
use proxy::GatewayState;

/// A running gateway: where it listens and how to stop it.
pub struct RunningGateway {
    pub gateway_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: Arc<GatewayState>,
    gateway: Server,
    admin: Server,
    fleets: Vec<Arc<LocalProvider>>,
    /// Scrapers, scalers, watchers and the lease, stopped at shutdown.
    background: Vec<tokio::task::JoinHandle<()>>,
    /// The leader election, whose lease is handed back at shutdown.
    lease: Option<(Elector, Arc<Leadership>)>,
}

/// What the config does not say about the environment.
#[derive(Clone, Default)]
pub struct Options {
    /// The Kubernetes client and identity; inferred (kubeconfig or in-cluster) when a pool
    /// needs one and this is None.
    pub kube: Option<KubeContext>,
}

/// Binds the listeners, starts local replicas, and serves until [`RunningGateway::shutdown`].
pub async fn start(config: Config) -> anyhow::Result<RunningGateway> {
    start_with(config, Options::default()).await
}

/// How long `start` waits for a Kubernetes pool's first list before serving without it.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(10);

/// [`start`] with an explicit environment.
pub async fn start_with(config: Config, options: Options) -> anyhow::Result<RunningGateway> {
    let on_kubernetes = config
        .pools
        .iter()
        .any(|p| matches!(p.discovery, Discovery::Kubernetes(_)));
    let kube =
        match (options.kube, on_kubernetes) {
            (Some(kube), _) => Some(kube),
            (None, true) => Some(KubeContext::infer().await.context(
                "a pool uses Kubernetes discovery, but no Kubernetes API is configured",
            )?),
            (None, false) => None,
        };
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
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let epoch = Instant::now();
    let pools = pools::Pools::new(
        &config.pools,
        &metrics,
        epoch,
        workers,
        config.classification.priority_classes.len(),
    );

    let mut background = Vec::new();
    let lease = match (&kube, config.leader_election.enabled) {
        (Some(kube), true) => {
            let election = &config.leader_election;
            let namespace = kube.namespace(election.namespace.as_ref());
            let leadership = Arc::new(Leadership::new(
                kube.identity.clone(),
                metrics.leader.clone(),
            ));
            let elector = Elector::new(
                kube::Api::namespaced(kube.client.clone(), &namespace),
                election.lease_name.clone(),
                namespace,
                election.lease_duration,
            );
            background.push(elector.clone().spawn(leadership.clone()));
            Some((elector, leadership))
        }
        (None, true) => {
            tracing::warn!("leader_election is on but no pool is on Kubernetes; ignored");
            None
        }
        _ => None,
    };
    let mut fleets: Vec<(Arc<pools::PoolRuntime>, Arc<LocalProvider>)> = Vec::new();
    let mut actuations: Vec<(Arc<pools::PoolRuntime>, Actuation)> = Vec::new();
    for (pool, runtime) in config.pools.iter().zip(&pools.pools) {
        match &pool.discovery {
            Discovery::Static { endpoints, pods } => {
                for (endpoint, pod) in endpoints.iter().zip(pods) {
                    let scheme = endpoint.scheme().cloned().unwrap_or(Scheme::HTTP);
                    let authority = endpoint
                        .authority()
                        .cloned()
                        .expect("validated URL has a host");
                    let placement = crate::replica::Placement {
                        pod: pod.clone(),
                        node: None,
                    };
                    runtime.add_placed_replica(scheme, authority, placement);
                }
            }
            Discovery::Local(local_config) => {
                let fleet = LocalProvider::new(
                    runtime.clone(),
                    local_config.clone(),
                    pool.scaler.drain_timeout,
                );
                fleet.start_and_wait(local_config.replicas).await;
                fleets.push((runtime.clone(), fleet.clone()));
                actuations.push((
                    runtime.clone(),
                    Actuation {
                        provider: Some(fleet),
                        enabled: matches!(pool.scaler.provider, Provider::Local),
                        leadership: None,
                    },
                ));
            }
            Discovery::Kubernetes(discovery) => {
                let kube = kube.as_ref().expect("inferred above for Kubernetes pools");
                let health = Arc::new(ApiHealth::new(
                    metrics.kube_api_up.with_label_values(&[&pool.name]),
                    metrics.kube_watch_errors.with_label_values(&[&pool.name]),
                ));
                let _ = runtime.kube_health.set(health.clone());
                let members = Members::new(runtime.clone());
                background.push(crate::discovery::kubernetes::spawn(
                    discovery,
                    kube,
                    members.clone(),
                    health,
                ));
                if !members.wait_listed(FIRST_LIST_WAIT).await {
                    tracing::warn!(pool = %pool.name, "no answer from the Kubernetes API within {FIRST_LIST_WAIT:?}; serving while discovery keeps trying");
                }
                if let Provider::Kubernetes(target) = &pool.scaler.provider {
                    let leadership = lease.as_ref().map(|(_, l)| l.clone());
                    let scaler = KubeScaler::new(
                        runtime.clone(),
                        members,
                        kube,
                        target.clone(),
                        leadership.clone(),
                    );
                    actuations.push((
                        runtime.clone(),
                        Actuation {
                            provider: Some(Arc::new(scaler)),
                            enabled: true,
                            leadership,
                        },
                    ));
                }
            }
        }
    }

    for runtime in &pools.pools {
        background.push(crate::scrape::spawn(runtime.clone()));
        if runtime.config.scaler.enabled {
            let actuation = actuations
                .iter()
                .position(|(p, _)| Arc::ptr_eq(p, runtime))
                .map(|i| actuations.swap_remove(i).1)
                .unwrap_or(Actuation {
                    provider: None,
                    enabled: false,
                    leadership: None,
                });
            let gauge = metrics.scaler_desired.with_label_values(&[runtime.name()]);
            let events = metrics.scale_events.clone();
            background.push(crate::scaler::spawn(
                runtime.clone(),
                actuation,
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
    let gateway = http_server::serve("gateway", gateway_listeners, drain, move |worker| {
        let state = gateway_state.clone();
        move |req, peer| proxy::handle(state.clone(), worker, req, peer)
    })?;
    let admin_state = state.clone();
    let admin = http_server::serve("admin", admin_listener, Duration::from_secs(1), move |_| {
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
        lease,
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
        if let Some((elector, leadership)) = &self.lease {
            let _ = tokio::time::timeout(Duration::from_secs(2), elector.release(leadership)).await;
        }
        let drain = self.state.config.listeners.drain_timeout;
        self.gateway.shutdown(drain).await;
        self.admin.shutdown(Duration::from_millis(100)).await;
        for fleet in &self.fleets {
            fleet.stop_all(drain).await;
        }
    }
}
