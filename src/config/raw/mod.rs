//! The YAML schema as written by users: serde structs whose doc comments are the configuration
//! reference (`docs/config.md` is generated from them). Values with units stay strings here
//! (`250ms`, `32MiB`); [`super::validate`] turns them into typed values and checks ranges and
//! cross-field rules, reporting every problem at once.
//!
//! This file holds the file's top level (listeners, classification, leader election) and the
//! [`Quantity`] every section uses; a pool's sections are in `pool` (discovery, admission,
//! timeouts, retries), `metrics`, `routing` and `scaler`.

mod chatops;
mod metrics;
mod pool;
mod routing;
mod scaler;
mod tiers;
mod versions;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

pub use chatops::*;
pub use metrics::*;
pub use pool::*;
pub use routing::*;
pub use scaler::*;
pub use tiers::*;
pub use versions::*;

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
    /// API keys for the OpenAI API (data plane). Without any, every request is served as
    /// before; with keys, a request needs `Authorization: Bearer <key>` of one of them.
    pub auth: RawAuth,
    /// Chat: webhooks told about scaling, ejections, reloads and operator actions, and slash
    /// commands (`status`, `scale`, `drain`) from Slack or Mattermost.
    pub chatops: RawChatops,
    /// OpenTelemetry: a span per request, exported to an OTLP collector, with the W3C trace
    /// context continued from the client and passed on to the replica.
    pub tracing: RawTracing,
    /// Model versions: a served name split by weight across pools (A/B tests, canaries).
    pub versions: Vec<RawVersions>,
    /// Scaling up vs out: a model served by several pools on different replica profiles
    /// (speeds, prices, cold starts), routed by their load and scaled as one at the least cost.
    pub tiers: Vec<RawTier>,
    /// The model pools. Each serves a set of model names from a set of replicas. At least one.
    pub pools: Vec<RawPool>,
    /// A file where the gateway keeps what its scalers learned — each pool's measured cold
    /// start, and the bursts an SLO-targeted `infergate` policy learned (a week, in 15-minute
    /// histograms) — so that a restart goes on from it: read at start, written every minute
    /// (through a temporary file renamed over it) and at shutdown. A file that cannot be read
    /// is moved aside to `<file>.unreadable` and reported; the gateway starts either way.
    /// Relative paths are taken from the working directory; missing directories are made.
    /// Unset: a restart learns anew (a reload always keeps it).
    pub state_file: Option<String>,
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
    /// answered 503 and closed at once (over TLS: closed, as an answer would need a handshake),
    /// while the admin listener and established streams go on.
    /// 0: from the open-file limit (raised to its hard limit at start) — half of it less 256, so
    /// that upstream and scrape connections and the admin listener keep file descriptors.
    pub max_connections: u32,
    /// Serve the gateway listener over TLS (HTTPS, HTTP/2 and HTTP/1.1 by ALPN) with this
    /// certificate. The files are read when the config is loaded and again on every reload
    /// (SIGHUP): new connections get the new certificate, and a file that does not load keeps
    /// the previous config serving. The TLS handshake counts against `header_timeout` and
    /// `max_connections`. Unset: plain HTTP. The admin listener stays plain HTTP.
    pub tls: Option<RawListenerTls>,
    /// Log one line per request on the gateway listener when its answer ends (target
    /// `infergate::access`, in the process's `--log-format`, human or JSON): request id,
    /// client, method, path, model, pool, version, replica, API key name, status, time to the
    /// first byte and in all, and the answer's prompt and completion tokens.
    pub access_log: bool,
    /// Address (host:port) of KEDA's external scaler, gRPC over plain HTTP/2 (h2c): a
    /// ScaledObject with `type: external` (or `external-push`) and `scalerAddress` pointing here
    /// gets each pool's wanted replicas (metric `infergate-<pool>`, target 1) and whether it is
    /// active; `scalerMetadata.pool` names the pool (default: the ScaledObject's name). Let
    /// KEDA act and give the pool `scaler.provider: static`. Unset: not served.
    pub keda: Option<String>,
}

/// A certificate and its private key, as PEM files. Relative paths are taken from the working
/// directory.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    /// The certificate chain (PEM): the gateway's own certificate first, then the
    /// intermediates. Required.
    pub cert: String,
    /// The certificate's private key (PEM: PKCS#8, RSA or EC). Required.
    pub key: String,
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
            tls: None,
            access_log: false,
            keda: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawTracing {
    /// URL of an OpenTelemetry collector's OTLP/HTTP receiver (protobuf), e.g.
    /// `http://otel-collector:4318`; spans are posted to its `/v1/traces` (a URL whose path
    /// already ends in `/v1/traces` is used as it is). `OTEL_EXPORTER_OTLP_HEADERS` adds headers
    /// (e.g. a collector's token). Unset: no spans, and a client's `traceparent` passes to the
    /// replica untouched.
    pub otlp_endpoint: Option<String>,
    /// Share of requests traced (0–1) among those whose client did not decide: a request with
    /// a sampled `traceparent` is always traced and one marked not sampled never is (W3C
    /// parent-based sampling). Either way the replica gets a `traceparent` of the request's
    /// trace. 0: only the clients' sampled requests.
    pub sample_ratio: f64,
    /// The spans' `service.name`.
    pub service_name: String,
    /// Longest wait for the collector to take one batch of spans (duration); a batch it does not
    /// take in time is dropped and counted (`infergate_trace_exports_total`).
    pub export_timeout: Quantity,
}

impl Default for RawTracing {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: 1.0,
            service_name: "infergate".into(),
            export_timeout: "10s".into(),
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

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// The keys, each stored as the SHA-256 of the key (never the key itself).
    pub keys: Vec<RawApiKey>,
}

/// One API key and what it may do.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawApiKey {
    /// Name of the key's holder, for logs. Required, unique.
    pub name: String,
    /// SHA-256 of the key, 64 hex digits (`printf %s "$KEY" | sha256sum`). Required.
    pub sha256: String,
    /// Model names (served names or aliases) the key may use; empty: every model.
    pub models: Vec<String>,
    /// Priority classes the key may ask for with the priority header; empty: none (its
    /// requests get the default class whatever the header says).
    pub priority_classes: Vec<String>,
    /// Requests per minute the key may send (a steady rate, with bursts of up to a tenth of
    /// it); over it, 429 with `Retry-After`. Unset: no limit.
    pub requests_per_minute: Option<u32>,
    /// Tokens (prompt + completion) per minute the key may use, counted from each answer's
    /// `usage` (estimated where the replica sends none): a key that has spent more than a
    /// minute's worth gets 429 with `Retry-After` until its spending falls back under it.
    /// Unset: no limit.
    pub tokens_per_minute: Option<u64>,
    /// Whether the key may pin a model version with the versions' `pin_header`.
    pub pin_versions: bool,
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
    /// How often each peer's routing state is read at `/admin/routing` (duration): its requests
    /// in flight and prefill pending per replica, and where it sent which prompt prefix since
    /// the last read. Every gateway then routes on the whole deployment's load and prefix
    /// placements, as one gateway would. `0s` turns the exchange off (each gateway routes on
    /// its own view; the scaler still reads the peers' `/metrics`).
    pub sync_interval: Quantity,
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
            sync_interval: "50ms".into(),
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
