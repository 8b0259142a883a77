//! The schema of a pool's `routing` section: the policy that picks a replica and its settings.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Quantity;

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
    /// `predicted-ttft`: a replica with more than this many times the candidates' mean
    /// requests in flight (every gateway's; scaled up by its learned speed against theirs when
    /// it is faster), plus 2, is left out while another is under its bound — a bounded load, so
    /// prefix affinity and a fast replica's pull cannot pile a busy moment's sessions onto a few
    /// replicas whose decode then slows. At least 1; 0 turns it off.
    pub load_bound: f64,
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
            load_bound: 1.5,
            lora_adapters: Vec::new(),
            lora_load_time: "50ms".into(),
            weights: RawWeights::default(),
        }
    }
}
