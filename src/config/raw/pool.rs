//! The schema of one pool: its models and aliases, where its replicas come from (discovery),
//! the protocol spoken to them, and its admission, timeout and retry settings. Its metrics,
//! routing and scaler sections have files of their own.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Quantity, RawMetrics, RawRouting, RawScaler};

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
    /// How `https://` replicas are verified: by the system's CA roots, plus a private CA here.
    /// Only for pools whose replicas are `https://` (static URLs, or `discovery.kubernetes.scheme:
    /// https`).
    pub upstream_tls: RawUpstreamTls,
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
    /// The pool's service-level objective, for its streamed answers: the share of them whose
    /// first token comes within `ttft` and whose mean gap between chunks is within `itl`, over
    /// the last `window`. `/admin/status` and `infergate_slo_attainment` show it; chat is told
    /// when it falls below `target` (and when it is back). The `infergate` scaler holds the
    /// headroom the pool's past bursts within one cold start call for at `target` (and keeps a
    /// burst's replicas only that long, not `scale_down_stabilization`): the bursts of the last
    /// day, or, where two days or more show a daily shape (each past day's bursts were within
    /// what the other days' same hours called for), those within an hour of now's time of day
    /// (UTC) on the past week's days and today's last hour. Unset: none.
    pub slo: Option<RawSlo>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawSlo {
    /// Longest time to first token (duration).
    pub ttft: Quantity,
    /// Longest mean inter-token latency (duration).
    pub itl: Quantity,
    /// Share of answers that must meet both (0–1).
    pub target: f64,
    /// Over how long (duration, at least 1m).
    pub window: Quantity,
}

impl Default for RawSlo {
    fn default() -> Self {
        Self {
            ttft: "2s".into(),
            itl: "100ms".into(),
            target: 0.99,
            window: "5m".into(),
        }
    }
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
    /// Base URLs of the replicas, e.g. `http://10.0.0.5:8000`, or `https://` ones (verified as
    /// `upstream_tls` says).
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
    /// How the replicas are spoken to: `http`, or `https` (verified as `upstream_tls` says;
    /// endpoints are pod IPs, so their certificates must name the IP, or set
    /// `upstream_tls.server_name`).
    pub scheme: ReplicaScheme,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaScheme {
    /// Plain HTTP.
    #[default]
    Http,
    /// HTTP over TLS.
    Https,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstreamTls {
    /// PEM file of CA certificates that sign the replicas' certificates (a private CA), trusted
    /// besides the system's roots. Re-read on every reload. A relative path is taken from the
    /// working directory.
    pub ca: Option<String>,
    /// The name the replicas' certificates must carry, instead of the host in each replica's
    /// URL (e.g. the Service's DNS name when endpoints are pod IPs).
    pub server_name: Option<String>,
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
    /// HTTP/2 over cleartext (prior knowledge); not for `https://` replicas.
    H2c,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmission {
    /// Most requests waiting at the gateway for this pool; beyond it requests get 429. While
    /// the scaler starts replicas, the queue also holds what they will take once ready
    /// (`max_inflight_per_replica` each).
    pub max_queue: u32,
    /// Longest a request waits at the gateway before it gets 429 with `Retry-After` (duration).
    /// While replicas start, counted from when they are expected ready (the pool's cold start
    /// as learned, `scaler.cold_start` until then) if that is later: a request is held through
    /// a cold start rather than refused in the middle of it.
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
    /// A replica is saturated when this many requests are in flight to it: this gateway's,
    /// plus its peers' as last heard (`cluster.sync_interval`) when there are several gateways.
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
    /// Time to open a connection to a replica (duration), the TLS handshake included for
    /// `https://` ones.
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
