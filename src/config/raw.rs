//! The YAML schema as written by users: serde structs whose doc comments are the configuration
//! reference (`docs/config.md` is generated from them). Values with units stay strings here
//! (`250ms`, `32MiB`); [`super::validate`] turns them into typed values and checks ranges and
//! cross-field rules, reporting every problem at once.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// A number with a unit (`250ms`, `32MiB`), kept as text until validation parses it. A bare
/// number is accepted here so that validation can say "no unit" instead of "wrong type".
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(transparent)]
pub struct Quantity(pub String);

impl From<&str> for Quantity {
    fn from(text: &str) -> Self {
        Self(text.to_string())
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Str(String),
            Int(i64),
            Float(f64),
        }
        Text::deserialize(deserializer)
            .map(|t| match t {
                Text::Str(s) => Quantity(s),
                Text::Int(i) => Quantity(i.to_string()),
                Text::Float(f) => Quantity(f.to_string()),
            })
            .map_err(|_| serde::de::Error::custom("expected a number with a unit, e.g. `250ms`"))
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Addresses the gateway and its admin endpoints listen on, and limits that apply per listener.
    pub listeners: RawListeners,
    /// Which request headers carry a session key and a priority class, and the classes.
    pub classification: RawClassification,
    /// Leader election among gateway replicas on Kubernetes: every replica routes, only the
    /// leader resizes pools.
    pub leader_election: RawLeaderElection,
    /// The other gateway replicas of this deployment, whose own queued and in-flight requests
    /// join this gateway's scaler signal (so that the signal is the cluster's, whichever
    /// replica leads).
    pub cluster: RawCluster,
    /// The model pools. Each serves a set of model names from a set of replicas. At least one.
    pub pools: Vec<RawPool>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawListeners {
    /// Address (host:port) of the OpenAI-compatible gateway. Port 0 picks a free port.
    pub gateway: String,
    /// Address (host:port) of `/metrics`, `/healthz`, `/readyz` and `/admin/status`.
    pub admin: String,
    /// Largest request body accepted (bytes; `KiB`, `MiB`, `GiB` suffixes allowed). Larger
    /// bodies get 413.
    pub max_body_size: Quantity,
    /// How long a shutdown waits for in-flight answers to finish before closing them (duration).
    pub drain_timeout: Quantity,
    /// Threads serving the gateway listener, each with its own connections and upstream pools
    /// (thread per core); 0 means one per available core. Where the gateway shares its cores
    /// with busy neighbours (replicas, a load generator), fewer workers than cores give a
    /// shorter latency tail (BENCHMARKS.md: one worker on two shared cores).
    pub worker_threads: u32,
    /// Longest time a client may take to send a request's headers (duration); a slower
    /// connection is closed (slowloris). Also bounds an idle keep-alive connection's wait for its
    /// next request's first bytes to arrive in full.
    pub header_timeout: Quantity,
    /// Longest pause between two pieces of a request body (duration); the request then gets 408.
    pub body_idle_timeout: Quantity,
    /// Longest time to receive a whole request body (duration); the request then gets 408.
    pub body_timeout: Quantity,
    /// Client connections the gateway listener holds open at once; a connection over it is
    /// answered 503 and closed at once, while the admin listener and established streams go on.
    /// 0: from the open-file limit (raised to its hard limit at start) — half of it less 256, so
    /// that upstream and scrape connections and the admin listener keep file descriptors.
    pub max_connections: u32,
}

impl Default for RawListeners {
    fn default() -> Self {
        Self {
            gateway: "127.0.0.1:8080".into(),
            admin: "127.0.0.1:9090".into(),
            max_body_size: "32MiB".into(),
            drain_timeout: "30s".into(),
            worker_threads: 0,
            header_timeout: "10s".into(),
            body_idle_timeout: "10s".into(),
            body_timeout: "60s".into(),
            max_connections: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawClassification {
    /// Request header whose value is the session key (for session affinity). Case-insensitive.
    pub session_header: String,
    /// Request header whose value names the priority class. Case-insensitive.
    pub priority_header: String,
    /// Priority classes, highest first. Queued requests are released in this order.
    pub priority_classes: Vec<String>,
    /// Class of a request without the priority header (must be one of `priority_classes`).
    pub default_priority: String,
    /// Classes refused at once with 429 when a pool is saturated, instead of queued.
    pub sheddable_classes: Vec<String>,
}

impl Default for RawClassification {
    fn default() -> Self {
        Self {
            session_header: "x-session-id".into(),
            priority_header: "x-priority".into(),
            priority_classes: vec!["critical".into(), "standard".into(), "sheddable".into()],
            default_priority: "standard".into(),
            sheddable_classes: vec!["sheddable".into()],
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawCluster {
    /// Admin addresses (host:port) of the other gateway replicas, read every `peer_interval`
    /// at `/metrics`. This gateway's own address may be listed too (it recognises itself).
    pub peers: Vec<String>,
    /// On Kubernetes, instead of `peers`: the gateways' own Service, whose endpoints (on its
    /// admin port) are the peers, watched as they come and go.
    pub kubernetes: Option<RawClusterService>,
    /// How often each peer's page is read (duration); a request held at a peer reaches this
    /// gateway's scaler within it.
    pub peer_interval: Quantity,
    /// How long a peer's last reading counts once it cannot be read any more (duration); after
    /// that its load is unknown and left out (reported in `/admin/status`).
    pub peer_stale_after: Quantity,
}

/// The Service in front of the gateway replicas' admin listeners.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawClusterService {
    /// Name of the Service. Required.
    pub service: String,
    /// The Service's admin port, by number or name; the first port when unset.
    pub port: Option<PortRef>,
    /// Namespace; empty means the gateway pod's own namespace.
    pub namespace: String,
}

impl Default for RawCluster {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            kubernetes: None,
            peer_interval: "250ms".into(),
            peer_stale_after: "5s".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawLeaderElection {
    /// Elect a leader through a `coordination.k8s.io/v1` Lease (only meaningful on Kubernetes).
    pub enabled: bool,
    /// Name of the Lease object.
    pub lease_name: String,
    /// Namespace of the Lease; empty means the gateway pod's own namespace.
    pub namespace: String,
    /// How long a lease is valid without renewal (duration). A leader that cannot renew stops
    /// resizing within this time.
    pub lease_duration: Quantity,
}

impl Default for RawLeaderElection {
    fn default() -> Self {
        Self {
            enabled: false,
            lease_name: "infergate-leader".into(),
            namespace: String::new(),
            lease_duration: "15s".into(),
        }
    }
}

/// One model pool: a set of interchangeable replicas serving the same models.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawPool {
    /// Unique pool name (used in metrics labels and the admin API). Required.
    pub name: Option<String>,
    /// Model names this pool serves, as clients send them in `model`. Required, at least one.
    pub models: Vec<String>,
    /// Extra names mapped to one of `models`; the request body is rewritten to the target name.
    pub aliases: BTreeMap<String, String>,
    /// Where the pool's replicas come from. Required.
    pub discovery: Option<RawDiscovery>,
    /// Protocol spoken to replicas.
    pub upstream_protocol: UpstreamProtocol,
    /// How replica load is scraped.
    pub metrics: RawMetrics,
    /// How a replica is picked for each request.
    pub routing: RawRouting,
    /// When requests wait at the gateway instead of piling into replica queues.
    pub admission: RawAdmission,
    /// Timeouts towards replicas.
    pub timeouts: RawTimeouts,
    /// Retries and ejection of failing replicas.
    pub retries: RawRetries,
    /// Autoscaling of this pool's replica count.
    pub scaler: RawScaler,
}

/// Where replicas come from: exactly one of `static`, `local` or `kubernetes`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum RawDiscovery {
    /// A fixed list of replica base URLs.
    Static(RawStaticDiscovery),
    /// Replicas started by infergate as child processes on this machine.
    Local(RawLocalDiscovery),
    /// Replicas found through Kubernetes EndpointSlices or a pod label selector.
    Kubernetes(RawKubernetesDiscovery),
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawStaticDiscovery {
    /// Base URLs of the replicas, e.g. `http://10.0.0.5:8000`.
    pub endpoints: Vec<String>,
    /// Pod (or host) name of an endpoint, keyed by its URL as written in `endpoints`: GPU
    /// samples (`metrics.gpu.url`) are matched to replicas by it.
    pub pods: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawLocalDiscovery {
    /// Replicas started at launch (the scaler may change the count later).
    pub replicas: u32,
    /// Command that starts one replica. It must print its bound address (`host:port`) on a line
    /// of its standard output. `{infergate}` is replaced by the path of this binary. The default
    /// runs the built-in simulator on a free port.
    pub command: Vec<String>,
    /// How long a started replica may take to answer `/health` with 200 (duration).
    pub startup_timeout: Quantity,
}

impl Default for RawLocalDiscovery {
    fn default() -> Self {
        Self {
            replicas: 2,
            command: ["{infergate}", "sim", "--port", "0"]
                .map(String::from)
                .to_vec(),
            startup_timeout: "60s".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawKubernetesDiscovery {
    /// Namespace of the replicas; empty means the gateway pod's own namespace.
    pub namespace: String,
    /// Service whose EndpointSlices list the replicas. Set this or `selector`.
    pub service: Option<String>,
    /// Pod label selector, as an alternative to `service`.
    pub selector: BTreeMap<String, String>,
    /// Target port of the replicas: a number, or a name (the Service port's name with
    /// `service`, the container port's name with `selector`). Unset: the first port listed.
    pub port: Option<PortRef>,
}

/// A port given by number or by name.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 over cleartext (prior knowledge).
    H2c,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MetricsFormat {
    /// vLLM (`vllm:*`, current and pre-0.9.2 names).
    #[default]
    Vllm,
    /// SGLang (`sglang:*`).
    Sglang,
    /// Hugging Face TGI (`tgi_*`).
    Tgi,
    /// Triton with the TensorRT-LLM backend (`nv_trt_llm_*`).
    Triton,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// Exposition format of the replicas' metrics.
    pub format: MetricsFormat,
    /// HTTP path of the replicas' Prometheus metrics.
    pub path: String,
    /// Time between two scrapes of one replica (duration).
    pub scrape_interval: Quantity,
    /// Time a scrape may take before it counts as failed (duration).
    pub scrape_timeout: Quantity,
    /// Scraped stats older than this are ignored and the replica is routed on the gateway's own
    /// counts alone (duration).
    pub stale_after: Quantity,
    /// Optional GPU-use source: a DCGM exporter, or the replicas' own pages.
    pub gpu: Option<RawGpuMetrics>,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            format: MetricsFormat::Vllm,
            path: "/metrics".into(),
            scrape_interval: "100ms".into(),
            scrape_timeout: "1s".into(),
            stale_after: "1s".into(),
            gpu: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawGpuMetrics {
    /// URL of a DCGM exporter's metrics page (or of a Prometheus `/federate` page carrying its
    /// series). Samples are matched to replicas by pod name: the `exported_pod` label (after a
    /// Prometheus hop), else `pod`, else `Hostname`; several GPUs of one pod are averaged.
    /// Omit to read the metric from each replica's own metrics page instead.
    pub url: Option<String>,
    /// Metric to read.
    pub metric: GpuMetric,
    /// Time between two scrapes of the exporter at `url` (duration; default: the pool's
    /// `metrics.scrape_interval`; without `url` the metric comes with each replica scrape).
    pub scrape_interval: Option<Quantity>,
    /// GPU samples older than this are ignored (duration).
    pub stale_after: Quantity,
}

impl Default for RawGpuMetrics {
    fn default() -> Self {
        Self {
            url: None,
            metric: GpuMetric::DcgmFiDevGpuUtil,
            scrape_interval: None,
            stale_after: "3s".into(),
        }
    }
}

/// The DCGM field read as a GPU's use.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum GpuMetric {
    /// Percent of time a kernel ran (0–100).
    #[serde(rename = "DCGM_FI_DEV_GPU_UTIL")]
    DcgmFiDevGpuUtil,
    /// Ratio of time the graphics engine was active (0–1); also works on MIG slices.
    #[serde(rename = "DCGM_FI_PROF_GR_ENGINE_ACTIVE")]
    DcgmFiProfGrEngineActive,
}

impl GpuMetric {
    /// The metric's name on an exposition page.
    pub fn name(self) -> &'static str {
        match self {
            Self::DcgmFiDevGpuUtil => "DCGM_FI_DEV_GPU_UTIL",
            Self::DcgmFiProfGrEngineActive => "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        }
    }

    /// A sample's value as a fraction of the GPU (0–1).
    pub fn fraction(self, value: f64) -> f64 {
        let v = match self {
            Self::DcgmFiDevGpuUtil => value / 100.0,
            Self::DcgmFiProfGrEngineActive => value,
        };
        v.clamp(0.0, 1.0)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingPolicy {
    /// Fewest requests in flight from this gateway, random tie-break (also `least-request`).
    #[serde(alias = "least-request")]
    LeastInflight,
    /// Each replica in turn.
    RoundRobin,
    /// Uniformly random.
    Random,
    /// Two replicas drawn at random, the one with fewer in flight.
    PowerOfTwo,
    /// Weighted sum of queue, KV-cache, prefix and GPU scorers (the Gateway API Inference
    /// Extension's scheme plus GPU use; weights in `routing.weights`).
    Weighted,
    /// Least predicted time to first token: prefill work queued ahead plus this prompt's uncached
    /// tokens, at each replica's learned prefill speed, raised near a full KV cache, plus a LoRA
    /// adapter's load time where it is not loaded; near-ties go to the least busy GPU.
    #[default]
    PredictedTtft,
    /// The replica that holds the largest share of the prompt's prefix, unless the pool is
    /// imbalanced (SGLang's cache-aware rule; also `cache-aware`).
    #[serde(alias = "cache-aware")]
    PrefixAffinity,
    /// Consistent hashing of the session header onto replicas; while a session's replica is
    /// saturated (`admission` thresholds) the next one on the ring takes it (also `session`).
    #[serde(alias = "session")]
    SessionAffinity,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawRouting {
    /// Replica selection policy.
    pub policy: RoutingPolicy,
    /// Share of the prompt (0–1) that must be cached on a replica for prefix affinity to apply.
    pub prefix_min_match: f64,
    /// Prefix blocks are this many characters of prompt (about 4 characters per token).
    pub prefix_block_chars: u32,
    /// Most prefix blocks remembered per pool (bounded memory; least useful entries evicted),
    /// shared among replicas in proportion to their KV-cache capacity.
    pub prefix_cache_entries: u32,
    /// Affinity is ignored while the busiest and idlest replica differ by more than this many
    /// requests and by more than `imbalance_ratio`.
    pub imbalance_requests: u32,
    /// See `imbalance_requests` (a ratio, e.g. 1.5).
    pub imbalance_ratio: f64,
    /// Prior prefill speed of a replica (prompt tokens per second) for `predicted-ttft`, used
    /// until the replica's own speed is learned from observed time to first token.
    pub prefill_tokens_per_second: f64,
    /// `predicted-ttft`: candidates whose predicted time to first token is within this fraction
    /// of the best one count as tied: the least busy GPU among them wins (pools with
    /// `metrics.gpu`), else the one with the least prompt to prefill (the best prefix-cache
    /// hit), then the one with fewest requests in flight (0 = exact ties only).
    pub tie_margin: f64,
    /// Names among the pool's `models` that are LoRA adapters. `predicted-ttft` adds
    /// `lora_load_time` to replicas that do not have the requested adapter loaded (as their
    /// scraped running and waiting adapters show, or as this gateway sent it there lately).
    pub lora_adapters: Vec<String>,
    /// Time a replica takes to load a LoRA adapter it does not hold (duration).
    pub lora_load_time: Quantity,
    /// Scorer weights of the `weighted` policy.
    pub weights: RawWeights,
}

/// Weights of the `weighted` policy's scorers (each scorer gives 0–1 per replica).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawWeights {
    /// Short engine queue (waiting requests, relative to the longest among candidates).
    pub queue: f64,
    /// Free KV cache (1 − use).
    pub kv_cache: f64,
    /// Share of the prompt's prefix the replica holds.
    pub prefix: f64,
    /// Idle GPU (1 − GPU use; 0.5 when unknown), for pools with `metrics.gpu`.
    pub gpu: f64,
}

impl Default for RawWeights {
    fn default() -> Self {
        Self {
            queue: 2.0,
            kv_cache: 2.0,
            prefix: 3.0,
            gpu: 1.0,
        }
    }
}

impl Default for RawRouting {
    fn default() -> Self {
        Self {
            policy: RoutingPolicy::PredictedTtft,
            prefix_min_match: 0.3,
            prefix_block_chars: 256,
            prefix_cache_entries: 100_000,
            imbalance_requests: 64,
            imbalance_ratio: 1.5,
            prefill_tokens_per_second: 20_000.0,
            tie_margin: 0.1,
            lora_adapters: Vec::new(),
            lora_load_time: "50ms".into(),
            weights: RawWeights::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmission {
    /// Most requests waiting at the gateway for this pool; beyond it requests get 429.
    pub max_queue: u32,
    /// Longest a request waits at the gateway before it gets 429 with `Retry-After` (duration).
    pub max_queue_wait: Quantity,
    /// A replica is saturated when more than this many requests wait there: its engine queue
    /// as last scraped (less this gateway's requests that started since), or this gateway's
    /// streamed requests to it still without a first token, whichever is more. Those include
    /// streams in their prefill step, so this also bounds the prefills started at once: a
    /// replica that prefills many short prompts per step (vLLM's 8192 batched tokens) needs
    /// room for a burst of them (BENCHMARKS.md, streamed bursts).
    pub max_waiting_per_replica: u32,
    /// A replica is saturated when its KV-cache use (0–1) exceeds this.
    pub max_kv_cache_usage: f64,
    /// A replica is saturated when this gateway has more than this many requests in flight to it.
    pub max_inflight_per_replica: u32,
}

impl Default for RawAdmission {
    fn default() -> Self {
        Self {
            max_queue: 1000,
            max_queue_wait: "30s".into(),
            max_waiting_per_replica: 32,
            max_kv_cache_usage: 0.95,
            max_inflight_per_replica: 256,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawTimeouts {
    /// Time to open a connection to a replica (duration).
    pub connect: Quantity,
    /// Time from sending a request until the replica's response headers arrive (duration).
    pub first_byte: Quantity,
    /// Longest gap between two chunks of a streamed answer (duration).
    pub idle_stream: Quantity,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            connect: "1s".into(),
            first_byte: "120s".into(),
            idle_stream: "60s".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetries {
    /// Most replicas tried for one request (connect failures only, before any byte is sent back).
    pub max_attempts: u32,
    /// Consecutive failures after which a replica is ejected from routing.
    pub eject_after_failures: u32,
    /// How long an ejected replica stays out before it is tried again (duration).
    pub ejection_time: Quantity,
}

impl Default for RawRetries {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            eject_after_failures: 3,
            ejection_time: "10s".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScalerPolicy {
    /// Maximum over load signals, counting starting replicas, queue-aware (infergate's own).
    #[default]
    Infergate,
    /// Kubernetes HPA's ratio rule with its tolerance and scale-down stabilisation.
    Hpa,
    /// Knative KPA: stable and panic windows over concurrency.
    Kpa,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawScaler {
    /// Resize this pool automatically.
    pub enabled: bool,
    /// Scaling policy.
    pub policy: ScalerPolicy,
    /// Fewest replicas. 0 allows scale to zero (requests are held at the gateway while a replica
    /// starts).
    pub min_replicas: u32,
    /// Most replicas.
    pub max_replicas: u32,
    /// Time between two scaling decisions (duration).
    pub interval: Quantity,
    /// Per-replica load targets; the replica count is set so that each holds about this much.
    pub targets: RawScalerTargets,
    /// Window over which load is averaged for scaling up (duration).
    pub scale_up_window: Quantity,
    /// Window over which load is averaged for scaling down (duration).
    pub scale_down_window: Quantity,
    /// Scale down only to the highest count recommended during this window (duration). The
    /// default, 5 minutes as HPA's, keeps the replicas a burst needed for the next burst (a GPU
    /// replica takes minutes to come back); shorten it for steady traffic to save cost.
    pub scale_down_stabilization: Quantity,
    /// Changes smaller than this share of the current count are ignored (0–1).
    pub tolerance: f64,
    /// Most replicas removed by one decision.
    pub max_scale_down_step: u32,
    /// With `min_replicas: 0`, scale to zero after the pool has been idle this long (duration).
    pub scale_to_zero_after: Quantity,
    /// Expected time for a new replica to become ready (duration); used to judge whether the
    /// replicas already starting will be enough.
    pub cold_start: Quantity,
    /// Longest wait for a scaled-down replica's in-flight answers before it is stopped anyway
    /// (duration).
    pub drain_timeout: Quantity,
    /// What resizes the pool.
    pub provider: RawProvider,
}

impl Default for RawScaler {
    fn default() -> Self {
        Self {
            enabled: false,
            policy: ScalerPolicy::Infergate,
            min_replicas: 1,
            max_replicas: 4,
            interval: "1s".into(),
            targets: RawScalerTargets::default(),
            scale_up_window: "10s".into(),
            scale_down_window: "60s".into(),
            scale_down_stabilization: "5m".into(),
            tolerance: 0.1,
            max_scale_down_step: 1,
            scale_to_zero_after: "5m".into(),
            cold_start: "30s".into(),
            drain_timeout: "5m".into(),
            provider: RawProvider::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawScalerTargets {
    /// Requests in flight plus queued per replica (requests).
    pub concurrency: f64,
    /// KV-cache use per replica (0–1); omit to ignore this signal.
    pub kv_cache_usage: Option<f64>,
    /// GPU use per replica (0–1), for pools with a GPU metrics source; omit to ignore.
    pub gpu_utilization: Option<f64>,
    /// Longest acceptable wait in the gateway queue (duration); omit to ignore.
    pub queue_wait: Option<Quantity>,
}

impl Default for RawScalerTargets {
    fn default() -> Self {
        Self {
            concurrency: 16.0,
            kv_cache_usage: Some(0.8),
            gpu_utilization: None,
            queue_wait: Some("2s".into()),
        }
    }
}

/// What resizes the pool: `local` (child processes), `static` (only export the recommendation)
/// or `kubernetes` (the `scale` subresource of a workload).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum RawProvider {
    /// Start and stop local child processes (needs `discovery.local`).
    #[default]
    Local,
    /// Do not act; the recommendation is exported as a metric and in `/admin/status`.
    Static,
    /// Patch `spec.replicas` of a workload through its `scale` subresource.
    Kubernetes(RawScaleTarget),
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawScaleTarget {
    /// API version of the workload, e.g. `apps/v1`.
    pub api_version: String,
    /// Kind of the workload: `Deployment`, `StatefulSet`, or any kind with a `scale` subresource.
    pub kind: String,
    /// Name of the workload. Required.
    pub name: String,
    /// Namespace; empty means the gateway pod's own namespace.
    pub namespace: String,
}

impl Default for RawScaleTarget {
    fn default() -> Self {
        Self {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: String::new(),
            namespace: String::new(),
        }
    }
}
