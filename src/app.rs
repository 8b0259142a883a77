//! The one place that wires infergate together, top to bottom: listeners, the process's
//! metrics, the pools' live state, leader election, then per pool its discovery, scraper and
//! scaler loop, the sampler of the pools' history, then the gateway and admin servers. Each part is started by a function that
//! returns its handle; [`App::shutdown`] stops them in reverse.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use http::uri::Scheme;
use tokio::task::JoinHandle;

use crate::config::{Config, Discovery, Provider};
use crate::discovery::kubernetes::Members;
use crate::gateway::pools::Pools;
use crate::gateway::proxy::GatewayState;
use crate::http_server::{self, Server};
use crate::kubernetes::lease::{Elector, Leadership};
use crate::kubernetes::{ApiHealth, KubeContext};
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::pool::PoolState;
use crate::replica::Placement;
use crate::scaler::Actuation;
use crate::scaler::kubernetes::KubeScaler;
use crate::scaler::local::LocalProvider;

/// A running infergate: where it listens and how to stop it.
pub struct App {
    pub gateway_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// KEDA's external scaler, when `listeners.keda` is set.
    pub keda_addr: Option<SocketAddr>,
    pub state: Arc<GatewayState>,
    /// The listening sockets, kept to hand over to the next config on a reload.
    sockets: Sockets,
    options: Options,
    gateway: Server,
    admin: Server,
    /// KEDA's external scaler (`listeners.keda`).
    keda: Option<Server>,
    locals: Vec<Arc<LocalProvider>>,
    /// Scrapers, scalers, watchers and the lease, stopped at shutdown.
    background: Vec<JoinHandle<()>>,
    /// The leader election, whose lease is handed back at shutdown.
    lease: Option<Lease>,
}

/// What the config does not say about the environment.
#[derive(Clone, Default)]
pub struct Options {
    /// The Kubernetes client and identity; inferred (kubeconfig or in-cluster) when a pool
    /// needs one and this is None.
    pub kube: Option<KubeContext>,
    /// The process's metrics, kept across reloads (None: a new registry).
    pub metrics: Option<Arc<Metrics>>,
    /// What reloads have done so far, kept across them (None: none yet).
    pub reloads: Option<Arc<crate::admin::Reloads>>,
    /// This gateway's identity among its peers, kept across reloads (None: a new one).
    pub gateway_id: Option<String>,
    /// The bearer token `/metrics` and `/admin/*` require (None: open), which peers are read
    /// with too. `serve` takes it from `INFERGATE_ADMIN_TOKEN`, a secret rather than config.
    pub admin_token: Option<String>,
    /// The placements logged for the peers, kept across reloads (None: a new log).
    pub placements: Option<Arc<crate::peers::routing::PlacementLog>>,
    /// The operators' actions so far, kept across reloads (None: none yet).
    pub actions: Option<Arc<crate::admin::actions::ActionLog>>,
    /// The pools' replica counts so far, kept across reloads (None: none yet).
    pub history: Option<Arc<crate::admin::history::History>>,
    /// What the scalers learned (cold starts, bursts), kept across reloads (None: nothing
    /// yet).
    pub scaler_memory: Option<Arc<crate::scaler::memory::Memory>>,
    /// The clock the scalers' histories are kept on, kept across reloads (None: now).
    pub epoch: Option<Instant>,
}

/// The bound listening sockets and the addresses they were configured with.
struct Sockets {
    gateway: Vec<std::net::TcpListener>,
    admin: Vec<std::net::TcpListener>,
    /// Empty without `listeners.keda`.
    keda: Vec<std::net::TcpListener>,
    configured: (SocketAddr, SocketAddr, usize, Option<SocketAddr>),
}

impl Sockets {
    fn bind(config: &Config) -> anyhow::Result<Self> {
        let listeners = &config.listeners;
        let workers = listeners.worker_threads;
        Ok(Self {
            gateway: bind(listeners.gateway, workers, "listeners.gateway")?,
            admin: bind(listeners.admin, 1, "listeners.admin")?,
            keda: match listeners.keda {
                Some(addr) => bind(addr, 1, "listeners.keda")?,
                None => Vec::new(),
            },
            configured: (listeners.gateway, listeners.admin, workers, listeners.keda),
        })
    }

    /// Handles to the same sockets (for the next config's servers).
    fn share(&self) -> std::io::Result<Self> {
        let clone = |all: &[std::net::TcpListener]| -> std::io::Result<Vec<_>> {
            all.iter().map(|l| l.try_clone()).collect()
        };
        Ok(Self {
            gateway: clone(&self.gateway)?,
            admin: clone(&self.admin)?,
            keda: clone(&self.keda)?,
            configured: self.configured,
        })
    }
}

/// What the scalers learned: kept from the config before a reload, else read from the state
/// file (a restart), else nothing yet.
fn scaler_memory(config: &Config, options: &Options) -> Arc<crate::scaler::memory::Memory> {
    use crate::scaler::memory::Memory;
    if let Some(kept) = &options.scaler_memory {
        return kept.clone();
    }
    let Some(path) = &config.state_file else {
        return Arc::default();
    };
    let (memory, error) = Memory::load(path);
    match error {
        Some(e) => tracing::error!("state_file: {e:#}"),
        None if !memory.is_empty() => {
            tracing::info!(path = %path.display(), "what the scalers learned was read back");
        }
        None => {}
    }
    Arc::new(memory)
}

/// How long `start` waits for a Kubernetes pool's first list before serving without it.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(10);

/// Binds the listeners, starts local replicas, and serves until [`App::shutdown`].
pub async fn start(config: Config) -> anyhow::Result<App> {
    start_with(config, Options::default()).await
}

/// [`start`] with an explicit environment.
pub async fn start_with(config: Config, options: Options) -> anyhow::Result<App> {
    let sockets = Sockets::bind(&config)?;
    start_on(config, options, sockets).await
}

/// Starts everything on sockets already bound.
async fn start_on(config: Config, options: Options, sockets: Sockets) -> anyhow::Result<App> {
    let kube = kube_context(&config, options.kube.clone()).await?;
    let workers = config.listeners.worker_threads;
    let (gateway_listeners, admin_listener, keda_listener) = {
        let shared = sockets.share()?;
        (shared.gateway, shared.admin, shared.keda)
    };
    let metrics = options.metrics.clone().unwrap_or_default();
    let reloads = options.reloads.clone().unwrap_or_default();
    let epoch = options.epoch.unwrap_or_else(Instant::now);
    let pools = Pools::new(
        &config.pools,
        &config.versions,
        &config.tiers,
        &metrics,
        epoch,
        workers,
        config.classification.priority_classes.len(),
    );
    let mut background = Vec::new();
    let id = options
        .gateway_id
        .clone()
        .unwrap_or_else(crate::peers::new_id);
    let peers = start_peers(
        &config,
        id,
        &options.admin_token,
        kube.as_ref(),
        &metrics,
        &mut background,
    );
    let admin = config.listeners.admin;
    if options.admin_token.is_none() && !admin.ip().is_loopback() {
        tracing::warn!(%admin, "the admin listener is reachable beyond this machine without a token: it answers only probes to other machines; set INFERGATE_ADMIN_TOKEN");
    }
    let (notifier, senders) =
        crate::notify::Notifier::start(&config.chatops.notify, &peers.id, &metrics);
    background.extend(senders);
    for pool in pools.live() {
        let _ = pool.notifier.set(notifier.clone());
    }
    let lease = start_leader_election(&config, kube.as_ref(), &metrics, &notifier, &mut background);
    let leadership = lease.as_ref().map(|l| l.leadership.clone());
    let mut locals = Vec::new();
    let scaler_memory = scaler_memory(&config, &options);
    if let Some(path) = &config.state_file {
        let memory = scaler_memory.clone();
        background.push(crate::scaler::memory::spawn_saver(memory, path.clone()));
    }
    let mut actuations = Vec::new();
    for pool in pools.live() {
        let found =
            start_discovery(pool, kube.as_ref(), &peers, leadership.clone(), &metrics).await;
        background.extend(found.tasks);
        locals.extend(found.local.clone());
        background.push(crate::scrape::spawn(pool.clone()));
        let attainment = metrics.slo_attainment.with_label_values(&[pool.name()]);
        background.extend(crate::pool::slo::watch(pool.clone(), attainment));
        actuations.push(found.actuation);
    }
    for unit in scaled_units(
        &config,
        pools.live().cloned().zip(actuations).collect(),
        &metrics,
    ) {
        background.push(crate::scaler::spawn(
            unit.members,
            unit.tier,
            peers.clone(),
            metrics.scale_events.clone(),
            epoch,
            scaler_memory.clone(),
        ));
    }
    let placements =
        start_routing_sync(&config, &pools, &peers, &options, &metrics, &mut background);
    for route in pools.models.routes() {
        if let Some(split) = &route.split
            && let Some(control) = &split.rollout
        {
            background.push(crate::rollout::spawn(
                route.model.clone(),
                split.clone(),
                control.clone(),
                metrics.clone(),
                notifier.clone(),
            ));
        }
    }
    let rate_limits = crate::gateway::auth::RateLimits::new(&config.auth);
    let tracer = match &config.tracing {
        Some(tracing) => Some(Arc::new(
            crate::otel::Tracer::start(tracing, metrics.trace_exports.clone())
                .context("tracing: cannot start the OTLP exporter")?,
        )),
        None => None,
    };
    let state = Arc::new(GatewayState {
        config,
        pools,
        metrics,
        peers,
        draining: false.into(),
        reloads,
        rate_limits,
        admin_token: options
            .admin_token
            .as_deref()
            .map(crate::gateway::auth::digest),
        placements,
        actions: options.actions.clone().unwrap_or_default(),
        notifier,
        history: options.history.clone().unwrap_or_default(),
        tracer,
    });
    let live = state.pools.live().cloned().collect();
    background.push(crate::admin::history::spawn(state.history.clone(), live));
    let (gateway, admin) = serve(&state, gateway_listeners, admin_listener)?;
    let keda = serve_keda(&state, keda_listener)?;
    let options = Options {
        kube,
        metrics: Some(state.metrics.clone()),
        reloads: Some(state.reloads.clone()),
        gateway_id: Some(state.peers.id.clone()),
        admin_token: options.admin_token,
        placements: state.placements.clone(),
        actions: Some(state.actions.clone()),
        history: Some(state.history.clone()),
        scaler_memory: Some(scaler_memory),
        epoch: Some(epoch),
    };
    Ok(App {
        gateway_addr: gateway.addr,
        admin_addr: admin.addr,
        keda_addr: keda.as_ref().map(|k| k.addr),
        state,
        sockets,
        options,
        gateway,
        admin,
        keda,
        locals,
        background,
        lease,
    })
}

/// The Kubernetes client, when a pool needs one.
async fn kube_context(
    config: &Config,
    given: Option<KubeContext>,
) -> anyhow::Result<Option<KubeContext>> {
    let on_kubernetes = config.cluster.kubernetes.is_some()
        || config
            .pools
            .iter()
            .any(|p| matches!(p.discovery, Discovery::Kubernetes(_)));
    Ok(match (given, on_kubernetes) {
        (Some(kube), _) => Some(kube),
        (None, true) => Some(
            KubeContext::infer()
                .await
                .context("a pool uses Kubernetes discovery, but no Kubernetes API is configured")?,
        ),
        (None, false) => None,
    })
}

fn bind(
    addr: SocketAddr,
    workers: usize,
    field: &str,
) -> anyhow::Result<Vec<std::net::TcpListener>> {
    http_server::bind(addr, workers).with_context(|| format!("cannot listen on {addr} ({field})"))
}

/// The leader election and this replica's view of it.
struct Lease {
    elector: Elector,
    leadership: Arc<Leadership>,
}

/// Starts campaigning for the lease when `leader_election` is on (Kubernetes pools only).
fn start_leader_election(
    config: &Config,
    kube: Option<&KubeContext>,
    metrics: &Metrics,
    notifier: &crate::notify::Notifier,
    background: &mut Vec<JoinHandle<()>>,
) -> Option<Lease> {
    let election = &config.leader_election;
    if !election.enabled {
        return None;
    }
    let Some(kube) = kube else {
        tracing::warn!("leader_election is on but no pool is on Kubernetes; ignored");
        return None;
    };
    let namespace = kube.namespace(election.namespace.as_ref());
    let leadership = Arc::new(Leadership::new(
        kube.identity.clone(),
        metrics.leader.clone(),
    ));
    // Before the election starts: its first win is told too.
    let _ = leadership.notifier.set(notifier.clone());
    let elector = Elector::new(
        kube::Api::namespaced(kube.client.clone(), &namespace),
        election.lease_name.clone(),
        namespace,
        election.lease_duration,
    );
    background.push(elector.clone().spawn(leadership.clone()));
    Some(Lease {
        elector,
        leadership,
    })
}

/// What a pool's discovery started.
struct Discovered {
    /// The watch task, and the one following peers' drains (Kubernetes).
    tasks: Vec<JoinHandle<()>>,
    /// The local processes (local discovery).
    local: Option<Arc<LocalProvider>>,
    /// How the pool's scaler acts on its recommendations.
    actuation: Actuation,
}

/// Fills the pool's replica set: the static list, local replicas started now (and waited
/// for), or a watch of Kubernetes endpoints (waited for up to [`FIRST_LIST_WAIT`]).
async fn start_discovery(
    pool: &Arc<PoolState>,
    kube: Option<&KubeContext>,
    peers: &Arc<Peers>,
    leadership: Option<Arc<Leadership>>,
    metrics: &Metrics,
) -> Discovered {
    let config = &pool.config;
    let mut found = Discovered {
        tasks: Vec::new(),
        local: None,
        actuation: Actuation {
            provider: None,
            enabled: false,
            leadership: None,
        },
    };
    match &config.discovery {
        Discovery::Static { endpoints, pods } => {
            for (endpoint, pod) in endpoints.iter().zip(pods) {
                let scheme = endpoint.scheme().cloned().unwrap_or(Scheme::HTTP);
                let authority = endpoint
                    .authority()
                    .cloned()
                    .expect("validated URL has a host");
                let placement = Placement {
                    pod: pod.clone(),
                    node: None,
                };
                pool.add_placed_replica(scheme, authority, placement);
            }
        }
        Discovery::Local(local) => {
            let provider =
                LocalProvider::new(pool.clone(), local.clone(), config.scaler.drain_timeout);
            provider.start_and_wait(local.replicas).await;
            found.actuation = Actuation {
                provider: Some(provider.clone()),
                enabled: matches!(config.scaler.provider, Provider::Local),
                leadership: None,
            };
            found.local = Some(provider);
        }
        Discovery::Kubernetes(discovery) => {
            let kube = kube.expect("inferred at start for Kubernetes pools");
            let health = Arc::new(ApiHealth::new(
                metrics.kube_api_up.with_label_values(&[&config.name]),
                metrics.kube_watch_errors.with_label_values(&[&config.name]),
            ));
            let _ = pool.api_health.set(health.clone());
            let members = Members::new(pool.clone());
            found.tasks.push(crate::discovery::kubernetes::spawn(
                discovery,
                kube,
                members.clone(),
                health,
            ));
            if peers.has_any() {
                let follow = crate::peers::follow_drains(
                    config.name.clone(),
                    members.clone(),
                    peers.clone(),
                );
                found.tasks.push(follow);
            }
            if !members.wait_listed(FIRST_LIST_WAIT).await {
                tracing::warn!(pool = %config.name, "no answer from the Kubernetes API within {FIRST_LIST_WAIT:?}; serving while discovery keeps trying");
            }
            if let Provider::Kubernetes(target) = &config.scaler.provider {
                let scaler = KubeScaler::new(
                    pool.clone(),
                    members,
                    kube,
                    target.clone(),
                    leadership.clone(),
                );
                found.actuation = Actuation {
                    provider: Some(Arc::new(scaler)),
                    enabled: true,
                    leadership,
                };
            }
        }
    }
    found
}

/// This gateway's identity, and the reading of its peers' load: a static list, or the
/// endpoints of the gateways' own Service, watched (none configured: none read).
/// With peers and `cluster.sync_interval`, the routing state exchange: each pool logs its
/// placements (one log for the process, kept across reloads so the peers' cursors stay
/// valid) and the peers' states are read into the pools. Returns the log.
fn start_routing_sync(
    config: &Config,
    pools: &Pools,
    peers: &Arc<Peers>,
    options: &Options,
    metrics: &Metrics,
    background: &mut Vec<JoinHandle<()>>,
) -> Option<Arc<crate::peers::routing::PlacementLog>> {
    let interval = config.cluster.sync_interval?;
    if !peers.has_any() {
        return None;
    }
    let log = options.placements.clone().unwrap_or_default();
    for pool in pools.live() {
        let _ = pool.placements.set((log.clone(), pool.name().into()));
    }
    let live: Vec<_> = pools.live().cloned().collect();
    background.push(crate::peers::routing::spawn(
        peers.clone(),
        live,
        interval,
        metrics.peer_placements.clone(),
    ));
    Some(log)
}

fn start_peers(
    config: &Config,
    id: String,
    admin_token: &Option<String>,
    kube: Option<&KubeContext>,
    metrics: &Metrics,
    background: &mut Vec<JoinHandle<()>>,
) -> Arc<Peers> {
    let cluster = &config.cluster;
    let mut peers = Peers::new(
        id,
        &cluster.peers,
        cluster.peer_interval,
        cluster.peer_stale_after,
        &metrics.peer_up,
    );
    peers.watched = cluster.kubernetes.is_some();
    peers.token = admin_token.clone();
    let peers = Arc::new(peers);
    metrics.gateway_info.with_label_values(&[&peers.id]).set(1);
    if let Some(service) = &cluster.kubernetes {
        let kube = kube.expect("inferred at start for a Kubernetes cluster");
        // Its health is in the peers' own status; not a pool's gauge.
        let health = Arc::new(ApiHealth::new(
            prometheus::IntGauge::new("peers_api_up", "unexported").expect("valid"),
            prometheus::IntCounter::new("peers_watch_errors", "unexported").expect("valid"),
        ));
        background.push(crate::discovery::kubernetes::watch_service(
            kube,
            kube.namespace(service.namespace.as_ref()),
            &service.service,
            service.port.clone(),
            peers.clone(),
            health,
            "cluster peers".to_string(),
        ));
    }
    if !cluster.peers.is_empty() || cluster.kubernetes.is_some() {
        background.push(crate::peers::spawn(peers.clone()));
    }
    peers
}

/// What one scaler loop sizes: a pool, or the pools of a tier as one.
struct ScaledUnit {
    members: Vec<crate::scaler::Scaled>,
    tier: Option<String>,
}

/// The scaler loops to run: one per tier, and one per other pool with its scaler enabled
/// (`pools`: every pool in config order, with how its scaler acts).
fn scaled_units(
    config: &Config,
    pools: Vec<(Arc<PoolState>, Actuation)>,
    metrics: &Metrics,
) -> Vec<ScaledUnit> {
    let mut scaled: Vec<Option<crate::scaler::Scaled>> = pools
        .into_iter()
        .map(|(pool, actuation)| {
            pool.config.scaler.enabled.then(|| crate::scaler::Scaled {
                desired_gauge: metrics.scaler_desired.with_label_values(&[pool.name()]),
                pool,
                actuation,
            })
        })
        .collect();
    let mut units: Vec<ScaledUnit> = config
        .tiers
        .iter()
        .map(|tier| ScaledUnit {
            members: tier
                .pools
                .iter()
                .filter_map(|&p| scaled[p].take())
                .collect(),
            tier: Some(tier.model.clone()),
        })
        .collect();
    units.extend(scaled.into_iter().flatten().map(|member| ScaledUnit {
        members: vec![member],
        tier: None,
    }));
    units
}

/// Serves the gateway (one thread per worker) and the admin listener.
fn serve(
    state: &Arc<GatewayState>,
    gateway_listeners: Vec<std::net::TcpListener>,
    admin_listener: Vec<std::net::TcpListener>,
) -> anyhow::Result<(Server, Server)> {
    let listeners = &state.config.listeners;
    let drain = listeners.drain_timeout;
    let limits = http_server::Limits {
        header_timeout: listeners.header_timeout,
        max_connections: match listeners.max_connections {
            0 => http_server::default_max_connections(http_server::raise_open_file_limit()),
            n => n,
        },
    };
    let gateway_state = state.clone();
    let tls = listeners.tls.clone();
    let gateway = http_server::serve_tls(
        "gateway",
        gateway_listeners,
        drain,
        limits,
        tls,
        move |worker| {
            let state = gateway_state.clone();
            move |req, peer| crate::gateway::proxy::handle(state.clone(), worker, req, peer)
        },
    )?;
    let admin_state = state.clone();
    let (admin_drain, small) = (Duration::from_secs(1), http_server::Limits::SMALL);
    let admin = http_server::serve("admin", admin_listener, admin_drain, small, move |_| {
        let state = admin_state.clone();
        move |req, peer| crate::admin::handle(state.clone(), req, peer)
    })?;
    Ok((gateway, admin))
}

/// Serves KEDA's external scaler (gRPC, h2c) on its listener, when there is one.
fn serve_keda(
    state: &Arc<GatewayState>,
    listener: Vec<std::net::TcpListener>,
) -> anyhow::Result<Option<Server>> {
    if listener.is_empty() {
        return Ok(None);
    }
    let service = crate::keda::Scaler::service(state.pools.live().cloned().collect());
    let (drain, small) = (Duration::from_secs(1), http_server::Limits::SMALL);
    let server = http_server::serve("keda", listener, drain, small, move |_| {
        let service = service.clone();
        move |req, _peer| {
            let mut service = service.clone();
            async move {
                use tonic::codegen::Service;
                match service.call(req).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        }
    })?;
    Ok(Some(server))
}

/// How long before the drain timeout open answers are ended with an error event (time to
/// write it and close).
const CUT_NOTICE: Duration = Duration::from_millis(250);

impl App {
    /// Applies `config` the way `nginx -s reload` does: everything starts anew on the new
    /// config — pools, discovery, scrapers, scalers, local replicas, the listener's TLS
    /// certificate — on the same listening sockets, and new connections go to it; then this one
    /// stops accepting and its open answers finish on the pool state they started with (up to
    /// its drain timeout) before its local replicas stop. Changed listener addresses or worker
    /// counts need a restart, and a config that cannot start leaves this one serving: both come
    /// back as errors with this app.
    pub async fn reload(self, config: Config) -> Result<App, (App, anyhow::Error)> {
        let listeners = &config.listeners;
        let wanted = (
            listeners.gateway,
            listeners.admin,
            listeners.worker_threads,
            listeners.keda,
        );
        if wanted != self.sockets.configured {
            let error = anyhow::anyhow!(
                "listeners.gateway, listeners.admin, listeners.keda or listeners.worker_threads changed: restart to apply"
            );
            return Err((self, error));
        }
        let sockets = match self.sockets.share() {
            Ok(sockets) => sockets,
            Err(e) => return Err((self, e.into())),
        };
        match start_on(config, self.options.clone(), sockets).await {
            Ok(next) => {
                // From here on, new connections go to the new config only; the old one's
                // open answers finish in the background.
                self.gateway.stop_accepting().await;
                self.admin.stop_accepting().await;
                if let Some(keda) = &self.keda {
                    keda.stop_accepting().await;
                }
                tokio::spawn(self.shutdown());
                Ok(next)
            }
            Err(e) => Err((self, e)),
        }
    }

    /// Writes what the scalers learned to the state file, if there is one.
    async fn save_scaler_memory(&self) {
        let (Some(path), Some(memory)) = (
            self.state.config.state_file.clone(),
            self.options.scaler_memory.clone(),
        ) else {
            return;
        };
        let save = move || memory.save(&path);
        match tokio::task::spawn_blocking(save).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("scaler state not saved: {e:#}"),
            Err(e) => tracing::warn!("scaler state not saved: {e}"),
        }
    }

    /// Addresses and PIDs of the running local replicas (for tests that kill one).
    pub async fn local_replica_pids(&self) -> Vec<(SocketAddr, u32)> {
        let mut all = Vec::new();
        for local in &self.locals {
            all.extend(local.pids().await);
        }
        all
    }

    /// Stops the scalers, stops accepting, lets in-flight answers finish (up to
    /// `listeners.drain_timeout`), then stops local replicas.
    pub async fn shutdown(self) {
        self.state
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for task in &self.background {
            task.abort();
        }
        self.save_scaler_memory().await;
        if let Some(lease) = &self.lease {
            let release = lease.elector.release(&lease.leadership);
            let _ = tokio::time::timeout(Duration::from_secs(2), release).await;
        }
        let drain = self.state.config.listeners.drain_timeout;
        // Answers still open just before the drain timeout end with an error event that the
        // client can read, instead of a connection that simply breaks.
        let state = self.state.clone();
        let cutter = tokio::spawn(async move {
            tokio::time::sleep(drain.saturating_sub(CUT_NOTICE)).await;
            state.pools.cut_open_answers();
        });
        self.gateway.shutdown(drain).await;
        cutter.abort();
        self.admin.shutdown(Duration::from_millis(100)).await;
        if let Some(keda) = self.keda {
            keda.shutdown(Duration::from_millis(100)).await;
        }
        for local in &self.locals {
            local.stop_all(drain).await;
        }
        // The last answers' spans go out before the process ends.
        if let Some(tracer) = self.state.tracer.clone() {
            let flush = move || tracer.shutdown(TRACE_FLUSH);
            let _ = tokio::task::spawn_blocking(flush).await;
        }
    }
}

/// How long a shutdown waits for the last spans to reach the collector.
const TRACE_FLUSH: Duration = Duration::from_secs(5);
