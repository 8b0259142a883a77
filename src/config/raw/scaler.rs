//! The schema of a pool's `scaler` section: the scaling policy, its targets and windows, and
//! what resizes the pool.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Quantity;

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
    /// Resize this pool automatically. A setting the chosen `policy` does not read (each says
    /// which read it) is a configuration error, not silently ignored.
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
    /// Window over which load is averaged for scaling up (duration). `infergate` only.
    pub scale_up_window: Quantity,
    /// Window over which load is averaged for scaling down (duration). Under `kpa`, Knative's
    /// stable window. `infergate` and `kpa`.
    pub scale_down_window: Quantity,
    /// `kpa` only: Knative's panic window (duration), over which a burst is seen; default a tenth
    /// of `scale_down_window` (Knative's `panic-window-percentage`, 10 %).
    pub panic_window: Option<Quantity>,
    /// `kpa` only: panic (scale up at once, never down) when the load over the panic window
    /// wants at least this many times the ready replicas (Knative's
    /// `panic-threshold-percentage` / 100; its default 200 % is 2.0). At least 1.
    pub panic_threshold: f64,
    /// Scale down only to the highest count recommended during this window (duration). The
    /// default, 5 minutes as HPA's, keeps the replicas a burst needed for the next burst (a GPU
    /// replica takes minutes to come back); shorten it for steady traffic to save cost. Also
    /// `hpa`'s scale-down stabilisation window. `infergate` and `hpa`.
    pub scale_down_stabilization: Quantity,
    /// Changes smaller than this share of the current count are ignored (0–1); also `hpa`'s
    /// tolerance (HPA's default is 0.1). `infergate` and `hpa`.
    pub tolerance: f64,
    /// Most replicas removed by one decision. `infergate` only.
    pub max_scale_down_step: u32,
    /// With `min_replicas: 0`, scale to zero after the pool has been idle this long (duration).
    /// `infergate` only (`kpa` scales to zero once its stable window saw no load).
    pub scale_to_zero_after: Quantity,
    /// Expected time for a new replica to become ready (duration), until the pool's own is
    /// measured (from the scaler first seeing replicas start to the first being ready; shown in
    /// `/admin/status`; kept by a reload): how long the gateway queue holds requests for
    /// replicas starting, and the fleet simulation's cold start unless `--cold-start` is given.
    pub cold_start: Quantity,
    /// Longest wait for a scaled-down replica's in-flight answers before it is stopped anyway
    /// (duration).
    pub drain_timeout: Quantity,
    /// Price of one of this pool's replicas for an hour (any currency, e.g. the GPU's hourly
    /// price); the fleet simulation reports cost (replica-hours × price) when every pool states
    /// one. At least 0.
    pub replica_cost_per_hour: Option<f64>,
    /// For a pool in a `tiers` entry: how many times faster a request completes on its
    /// replicas than on the tier's reference (speed 1), e.g. 1 for L4s and 6 for H100s serving
    /// the same model. A request in flight counts for `speed` units of the tier's load and a
    /// replica for `speed × targets.concurrency` units of capacity, so that a slow pool's long
    /// answers do not read as more demand. Measure it as the ratio of the pools' mean request
    /// times at their concurrency targets. More than 0.
    pub speed: f64,
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
            panic_window: None,
            panic_threshold: 2.0,
            scale_down_stabilization: "5m".into(),
            tolerance: 0.1,
            max_scale_down_step: 1,
            scale_to_zero_after: "5m".into(),
            cold_start: "30s".into(),
            drain_timeout: "5m".into(),
            replica_cost_per_hour: None,
            speed: 1.0,
            provider: RawProvider::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawScalerTargets {
    /// Requests in flight plus queued per replica (requests). Every policy.
    pub concurrency: f64,
    /// KV-cache use per replica (0–1); omit to ignore this signal. `infergate` only.
    pub kv_cache_usage: Option<f64>,
    /// GPU use per replica (0–1), for pools with a GPU metrics source; omit to ignore.
    /// `infergate` only.
    pub gpu_utilization: Option<f64>,
    /// Longest acceptable wait in the gateway queue (duration); omit to ignore. `infergate`
    /// only.
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
