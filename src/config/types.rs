//! The validated configuration the rest of infergate reads: addresses parsed, durations as
//! [`Duration`], cross-field rules already checked. Built only by [`super::validate`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Scheme;
use http::{HeaderName, Uri};

pub use super::raw::{
    EventKind, GpuMetric, MetricsFormat, PortRef, RoutingPolicy, ScalerPolicy, UpstreamProtocol,
    WebhookFormat,
};
pub use crate::tls::UpstreamTls;

#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Listeners,
    pub classification: Classification,
    pub leader_election: LeaderElection,
    pub cluster: Cluster,
    pub auth: Auth,
    pub chatops: Chatops,
    /// None: no spans.
    pub tracing: Option<Tracing>,
    pub versions: Vec<ModelVersions>,
    pub tiers: Vec<Tier>,
    pub pools: Vec<Pool>,
    /// Where what the scalers learned outlives a restart (None: it does not).
    pub state_file: Option<std::path::PathBuf>,
}

/// Spans to an OTLP collector.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// The collector's traces URL (`.../v1/traces`).
    pub endpoint: Uri,
    pub sample_ratio: f64,
    pub service_name: String,
    pub export_timeout: Duration,
}

/// A served model name split across versions (pools).
#[derive(Debug, Clone)]
pub struct ModelVersions {
    pub model: String,
    /// (pool index, weight in percent), in config order.
    pub split: Vec<(usize, u32)>,
    pub sticky_header: Option<HeaderName>,
    pub pin_header: HeaderName,
    /// (pool index, share 0–1) of the shadow version.
    pub mirror: Option<(usize, f64)>,
    pub rollout: Option<Rollout>,
}

/// A model served by several pools on different replica profiles, scaled as one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub model: String,
    /// Pool indexes, in config order of the tier (the first's policy decides).
    pub pools: Vec<usize>,
}

/// A canary rollout plan of a split.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Index of the canary in the split (the other is the stable).
    pub canary: usize,
    /// (canary weight, how long), in order.
    pub steps: Vec<(u32, Duration)>,
    pub max_error_rate: f64,
    pub max_ttft_ratio: f64,
    pub min_requests: u64,
}

/// A secret read from the environment or a file: shown as `<redacted>` by `Debug`, so that it
/// is never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Chat webhooks and slash commands.
#[derive(Debug, Clone, Default)]
pub struct Chatops {
    pub notify: Vec<Webhook>,
    pub commands: ChatCommands,
}

/// One chat webhook.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: Secret,
    pub format: WebhookFormat,
    /// Empty: every kind.
    pub events: Vec<EventKind>,
    pub min_interval: Duration,
}

/// Slash commands from chat.
#[derive(Debug, Clone, Default)]
pub struct ChatCommands {
    pub slack_signing_secret: Option<Secret>,
    pub mattermost_token: Option<Secret>,
    /// Command → chat users (ids or names) allowed it; `*` for everyone.
    pub allow: BTreeMap<String, Vec<String>>,
}

/// API keys of the data plane, by the SHA-256 of the key; empty: no authentication.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub keys: std::collections::HashMap<[u8; 32], ApiKey>,
}

/// What one API key may do.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    /// Model names it may use; None: every model.
    pub models: Option<std::collections::HashSet<String>>,
    /// Priority classes (indices) it may ask for with the priority header.
    pub priority_classes: Vec<usize>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub pin_versions: bool,
}

/// The Service whose endpoints are the gateway replicas' admin listeners.
#[derive(Debug, Clone)]
pub struct ClusterService {
    pub service: String,
    pub port: Option<PortRef>,
    pub namespace: Option<String>,
}

/// The other gateway replicas whose load joins this gateway's scaler signal.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Their admin addresses (`host:port`).
    pub peers: Vec<String>,
    /// Or the gateways' own Service, whose endpoints are the peers.
    pub kubernetes: Option<ClusterService>,
    pub peer_interval: Duration,
    pub peer_stale_after: Duration,
    /// How often the peers' routing state is read; None: not exchanged.
    pub sync_interval: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Listeners {
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    /// Bytes.
    pub max_body_size: u64,
    pub drain_timeout: Duration,
    /// Threads serving the gateway listener (0 resolved to the core count).
    pub worker_threads: usize,
    pub header_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub body_timeout: Duration,
    /// Open client connections on the gateway listener (0: from the open-file limit at start).
    pub max_connections: usize,
    /// The gateway listener's certificate, loaded; None: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub access_log: bool,
    /// KEDA's external scaler (gRPC); None: not served.
    pub keda: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct Classification {
    pub session_header: HeaderName,
    pub priority_header: HeaderName,
    /// Highest first.
    pub priority_classes: Vec<String>,
    /// Index into `priority_classes`.
    pub default_priority: usize,
    /// Indices into `priority_classes`.
    pub sheddable: Vec<usize>,
}

impl Classification {
    /// The priority class a request names (its header, or a trace's field), matched trimmed
    /// and in any case; the default class when it names none or an unknown one.
    pub fn priority_of(&self, name: Option<&str>) -> usize {
        name.and_then(|name| {
            self.priority_classes
                .iter()
                .position(|c| c.eq_ignore_ascii_case(name.trim()))
        })
        .unwrap_or(self.default_priority)
    }

    /// Whether requests of `class` are refused rather than held when every replica is busy.
    pub fn is_sheddable(&self, class: usize) -> bool {
        self.sheddable.contains(&class)
    }
}

#[derive(Debug, Clone)]
pub struct LeaderElection {
    pub enabled: bool,
    pub lease_name: String,
    pub namespace: Option<String>,
    pub lease_duration: Duration,
}

#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    pub models: Vec<String>,
    /// Alias → the served model name it stands for.
    pub aliases: BTreeMap<String, String>,
    pub discovery: Discovery,
    pub upstream_protocol: UpstreamProtocol,
    /// How `https://` replicas are verified (trusting nothing when the pool has none).
    pub upstream_tls: UpstreamTls,
    pub metrics: Metrics,
    pub routing: Routing,
    pub admission: Admission,
    pub timeouts: Timeouts,
    pub retries: Retries,
    pub scaler: Scaler,
    pub slo: Option<SloTarget>,
}

/// A pool's service-level objective for streamed answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SloTarget {
    pub ttft: Duration,
    pub itl: Duration,
    pub target: f64,
    pub window: Duration,
}

#[derive(Debug, Clone)]
pub enum Discovery {
    Static {
        endpoints: Vec<Uri>,
        /// The pod named for each endpoint (same order), if any.
        pods: Vec<Option<String>>,
    },
    Local(LocalDiscovery),
    Kubernetes(KubernetesDiscovery),
}

#[derive(Debug, Clone)]
pub struct LocalDiscovery {
    pub replicas: u32,
    pub command: Vec<String>,
    pub startup_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct KubernetesDiscovery {
    pub namespace: Option<String>,
    pub source: KubernetesSource,
    pub port: Option<PortRef>,
    /// `http` or `https`.
    pub scheme: Scheme,
}

#[derive(Debug, Clone)]
pub enum KubernetesSource {
    Service(String),
    Selector(BTreeMap<String, String>),
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub format: MetricsFormat,
    pub path: String,
    pub scrape_interval: Duration,
    pub scrape_timeout: Duration,
    pub stale_after: Duration,
    pub gpu: Option<GpuMetrics>,
}

impl Metrics {
    /// How old a GPU reading may be: `gpu.stale_after`, or the engine stats' age without a
    /// GPU source (no reading is used then).
    pub fn gpu_stale_after(&self) -> Duration {
        self.gpu
            .as_ref()
            .map_or(self.stale_after, |g| g.stale_after)
    }
}

#[derive(Debug, Clone)]
pub struct GpuMetrics {
    /// The DCGM exporter's page; None: the metric is on each replica's own page.
    pub url: Option<Uri>,
    pub metric: GpuMetric,
    pub scrape_interval: Duration,
    pub stale_after: Duration,
}

#[derive(Debug, Clone)]
pub struct Routing {
    pub policy: RoutingPolicy,
    pub prefix_min_match: f64,
    pub prefix_block_chars: u32,
    pub prefix_cache_entries: u32,
    pub imbalance_requests: u32,
    pub imbalance_ratio: f64,
    /// Prompt tokens per second, the prior for `predicted-ttft`.
    pub prefill_tokens_per_second: f64,
    /// `predicted-ttft`: predictions within this fraction of the best are tied; the least busy
    /// GPU wins.
    pub tie_margin: f64,
    pub load_bound: f64,
    /// Served names that are LoRA adapters.
    pub lora_adapters: Vec<String>,
    pub lora_load_time: Duration,
    pub weights: Weights,
}

/// Scorer weights of the `weighted` policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub queue: f64,
    pub kv_cache: f64,
    pub prefix: f64,
    pub gpu: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct Admission {
    pub max_queue: u32,
    pub max_queue_wait: Duration,
    pub max_waiting_per_replica: u32,
    pub max_kv_cache_usage: f64,
    pub max_inflight_per_replica: u32,
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle_stream: Duration,
}

#[derive(Debug, Clone)]
pub struct Retries {
    pub max_attempts: u32,
    pub eject_after_failures: u32,
    pub ejection_time: Duration,
}

#[derive(Debug, Clone)]
pub struct Scaler {
    pub enabled: bool,
    pub policy: ScalerPolicy,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub interval: Duration,
    pub targets: ScalerTargets,
    pub scale_up_window: Duration,
    pub scale_down_window: Duration,
    /// `kpa`'s panic window (None: a tenth of `scale_down_window`).
    pub panic_window: Option<Duration>,
    pub panic_threshold: f64,
    pub scale_down_stabilization: Duration,
    pub tolerance: f64,
    pub max_scale_down_step: u32,
    pub scale_to_zero_after: Duration,
    pub cold_start: Duration,
    pub drain_timeout: Duration,
    pub replica_cost_per_hour: Option<f64>,
    /// Relative speed within a tier (1: the reference).
    pub speed: f64,
    pub provider: Provider,
}

#[derive(Debug, Clone)]
pub struct ScalerTargets {
    pub concurrency: f64,
    pub kv_cache_usage: Option<f64>,
    pub gpu_utilization: Option<f64>,
    pub queue_wait: Option<Duration>,
}

#[derive(Debug, Clone)]
pub enum Provider {
    Local,
    Static,
    Kubernetes(ScaleTarget),
}

#[derive(Debug, Clone)]
pub struct ScaleTarget {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

impl Config {
    /// A one-line summary, as `check-config` prints it.
    pub fn summary(&self) -> String {
        let pools: Vec<String> = self
            .pools
            .iter()
            .map(|p| {
                let kind = match &p.discovery {
                    Discovery::Static { endpoints, .. } => format!("{} static", endpoints.len()),
                    Discovery::Local(l) => format!("{} local", l.replicas),
                    Discovery::Kubernetes(_) => "kubernetes".to_string(),
                };
                let scaling = if p.scaler.enabled {
                    format!(
                        ", scaled {}..{}",
                        p.scaler.min_replicas, p.scaler.max_replicas
                    )
                } else {
                    String::new()
                };
                format!("{} ({} models, {kind}{scaling})", p.name, p.models.len())
            })
            .collect();
        let tls = if self.listeners.tls.is_some() {
            " (TLS)"
        } else {
            ""
        };
        let keda = self
            .listeners
            .keda
            .map_or(String::new(), |k| format!(", KEDA scaler {k}"));
        format!(
            "ok: gateway {}{tls}, admin {}{keda}, {} pool(s): {}",
            self.listeners.gateway,
            self.listeners.admin,
            self.pools.len(),
            pools.join(", ")
        )
    }
}
