//! The schema of the `versions` section: a served model name split across versions of the
//! model, each a pool of its own (its replicas, discovery and scaler), by weight.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Quantity;

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawVersions {
    /// The model name clients send. Required; no pool may serve or alias it directly. Each
    /// request is rewritten to the chosen version's served name (its pool's first model).
    pub model: String,
    /// The versions and their shares of requests: weights summing to 100.
    pub split: Vec<RawVersion>,
    /// A request header whose value keeps its sender on one version (e.g. `x-user-id`): the
    /// same value lands on the same version as long as the weights stay. Unset: each request
    /// is drawn anew. Requests without the header are drawn anew too.
    pub sticky_header: Option<String>,
    /// A request header naming a version (its pool) to use, for testing. With API keys, only
    /// keys with `pin_versions: true` may send it.
    pub pin_header: String,
    /// A shadow version: a share of the requests is also sent to this pool, its answer read
    /// and dropped (its TTFT, inter-token latency and errors land in that pool's metrics). It
    /// never delays or fails the answer the client gets, and is skipped whenever the pool has
    /// no room at once (it never queues).
    pub mirror: Option<RawMirror>,
    /// A canary rollout of one of the split's two versions: its weight goes up step by step,
    /// each step judged on live traffic against the other (stable) version; it is promoted
    /// (all traffic) after the last step, or rolled back (none) at once when a step fails.
    pub rollout: Option<RawRollout>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawRollout {
    /// The version (pool name) rolled out. Required; the split's other version is the stable.
    pub canary: String,
    /// The steps: the canary's weight (1–100, rising) and how long it holds it before the
    /// next (each step needs a duration).
    pub steps: Vec<RawRolloutStep>,
    /// Rolled back when more than this share of the canary's answers in a step fail (0–1).
    pub max_error_rate: f64,
    /// Rolled back when the canary's TTFT p90 in a step is more than this times the stable's.
    pub max_ttft_ratio: f64,
    /// Answers the canary needs in a step before it is judged (a step lasts until then).
    pub min_requests: u64,
}

impl Default for RawRollout {
    fn default() -> Self {
        Self {
            canary: String::new(),
            steps: Vec::new(),
            max_error_rate: 0.05,
            max_ttft_ratio: 1.5,
            min_requests: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawRolloutStep {
    /// The canary's share of requests in this step (percent).
    pub weight: u32,
    /// How long the step lasts (duration). Required.
    pub duration: Option<Quantity>,
}

/// The shadow version of a split.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawMirror {
    /// The pool (by name). Required.
    pub pool: String,
    /// Share of requests copied to it (0–1).
    pub share: f64,
}

impl Default for RawVersions {
    fn default() -> Self {
        Self {
            model: String::new(),
            split: Vec::new(),
            sticky_header: None,
            pin_header: "x-infergate-version".into(),
            mirror: None,
            rollout: None,
        }
    }
}

/// One version: a pool and its weight.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawVersion {
    /// The pool serving this version (by name). Required.
    pub pool: String,
    /// Its share of requests, in percent (0–100; 0 keeps it for pinned requests only).
    pub weight: u32,
}
