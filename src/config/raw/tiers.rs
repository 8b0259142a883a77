//! The schema of the `tiers` section: one model served by several pools on different replica
//! profiles (e.g. an 8B model on L4s and on H100s), scaled as one.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawTier {
    /// The model name clients send. Required; no pool may serve or alias it directly, and no
    /// `versions` split may use it. Each request goes to one of the pools (the one with the
    /// lowest load for its capacity now, among those whose context fits the request) and is
    /// rewritten to that pool's served name (its first model).
    pub model: String,
    /// The pools serving it (2–4, by name). One decision sizes them all, every `scaler.interval`
    /// of the first: the first pool's policy (it must be `infergate`; its windows, tolerance and
    /// the first pool's `slo` apply to the tier) says how much capacity the load needs, counting
    /// a request in flight as its pool's `scaler.speed` and a replica as `speed ×
    /// targets.concurrency` such units, and that capacity is bought at
    /// the least cost per hour from the pools' `scaler.replica_cost_per_hour` (required), each
    /// within its own `min_replicas`..`max_replicas`. A change of mix (e.g. five L4s for one
    /// H100) is made only when it saves more than a tenth of the cost, and the pool that
    /// shrinks waits until the capacity replacing it is ready.
    pub pools: Vec<String>,
}
