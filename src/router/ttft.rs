//! The predicted-ttft policy's cost model as a pure function: the seconds until a request's
//! first token on one replica, from numbers read off the replica and the request
//! ([`predicted_secs`]). The policy ([`super::policy`]) reads them and compares replicas.

/// What the cost model reads from one replica, and what the request would need there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaLoad {
    /// Seconds per prompt token of prefill learned on the replica, once a first byte was seen.
    pub learned_secs_per_token: Option<f64>,
    /// Requests in flight there from every gateway (this one's exact count, the peers' as
    /// last heard).
    pub inflight: u64,
    /// Prompt tokens of every gateway's streams there still without a first byte (tokens).
    pub pending_prefill: u64,
    /// Mean prompt tokens of the requests sent there (tokens; 0 before the first).
    pub mean_prompt_tokens: f64,
    /// The engine step a request sent now waits out before its own prefill step ends
    /// (seconds; 0 for an idle replica).
    pub expected_step: f64,
    /// The replica's fresh scraped engine state; None when stale or never scraped.
    pub engine: Option<EngineLoad>,
    /// Prompt tokens the request would prefill there: those its cached prefix does not cover.
    pub own_tokens: u64,
    /// Seconds to load the request's LoRA adapter there: 0 when the replica holds it or the
    /// request names none.
    pub adapter_load: f64,
}

/// A replica's scraped engine state, as the cost model reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineLoad {
    /// Sequences in its running batch (requests).
    pub running: f64,
    /// Requests in its queue, corrected by what this gateway sent since the scrape.
    pub waiting: f64,
    /// KV-cache use (0–1), when the page shows it.
    pub kv_usage: Option<f64>,
}

/// What the cost model reads from the request and the pool: the same for every replica.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestLoad {
    /// The pool's typical prefill speed (seconds per token): what a replica without a learned
    /// speed is assumed to have, and the most an idle one is assumed to need.
    pub pool_secs_per_token: f64,
    /// The request's prompt (tokens, at least 1).
    pub prompt_tokens: f64,
    /// The least prefill any replica would need for the request (tokens): what the best-placed
    /// holder of its prefix needs.
    pub least_own_tokens: u64,
}

/// Predicted seconds to the request's first token on the replica:
///
/// `(step + speed × (ahead + own)) × kv_factor + adapter_load + speed × (own − least_own) × running`
///
/// - `speed`: the replica's learned seconds per token; the pool's when none is learned; for an
///   idle replica at most the pool's (a speed learned under an old burst must not keep it idle,
///   never to be re-learned).
/// - `ahead`: prefill tokens queued ahead of the request: the gateways' pending prefill,
///   or the scraped waiting queue in tokens (waiting × the mean prompt sent there, else this
///   prompt) when that is larger.
/// - `kv_factor`: 1, raised by 10 × (KV use − 0.9) above 90 % KV use (preemption risk).
/// - the last term: prefill done here that the best-placed replica would not do lengthens the
///   steps of every sequence decoding here (`running`: scraped, else the gateways' in
///   flight), a delay to the others that is part of the cost.
pub fn predicted_secs(replica: &ReplicaLoad, request: &RequestLoad) -> f64 {
    let speed = match replica.learned_secs_per_token {
        Some(learned) if replica.inflight == 0 => learned.min(request.pool_secs_per_token),
        Some(learned) => learned,
        None => request.pool_secs_per_token,
    };
    let own = replica.own_tokens;
    let mut ahead = replica.pending_prefill as f64;
    let mut kv_factor = 1.0;
    let mut running = replica.inflight as f64;
    if let Some(engine) = replica.engine {
        running = engine.running;
        let per_request = match replica.mean_prompt_tokens {
            m if m > 0.0 => m,
            _ => request.prompt_tokens,
        };
        ahead = ahead.max(engine.waiting * per_request);
        if let Some(kv) = engine.kv_usage {
            kv_factor += 10.0 * (kv - 0.9).max(0.0);
        }
    }
    // Its prefill step ends one engine step after the one running now at the earliest, and
    // every decoding sequence makes that step longer: the step time observed on the replica's
    // streams (none for an idle replica, whose next step starts at once). Prefill it does here
    // that a replica holding more of its prefix would not do also lengthens the steps every
    // sequence running here decodes in: that delay to the others is part of the cost, so a
    // cache miss on a busy replica costs what it really costs.
    let delay_to_others = speed * own.saturating_sub(request.least_own_tokens) as f64 * running;
    (replica.expected_step + speed * (ahead + own as f64)) * kv_factor
        + replica.adapter_load
        + delay_to_others
}

#[cfg(test)]
mod tests {
    use super::*;

    // Speeds and sizes are powers of two, so every expected value below is exact in binary.
    const FAST: f64 = 1.0 / 1024.0; // s/token
    const SLOW: f64 = 1.0 / 512.0;

    /// An idle replica without a learned speed or stats, for a 1024-token prompt it holds
    /// none of.
    fn idle() -> ReplicaLoad {
        ReplicaLoad {
            learned_secs_per_token: None,
            inflight: 0,
            pending_prefill: 0,
            mean_prompt_tokens: 0.0,
            expected_step: 0.0,
            engine: None,
            own_tokens: 1024,
            adapter_load: 0.0,
        }
    }

    fn request() -> RequestLoad {
        RequestLoad {
            pool_secs_per_token: FAST,
            prompt_tokens: 1024.0,
            least_own_tokens: 1024,
        }
    }

    #[test]
    fn an_idle_replica_costs_its_own_prefill_at_the_pools_speed() {
        // 1024 tokens × 1/1024 s.
        assert_eq!(predicted_secs(&idle(), &request()), 1.0);
    }

    #[test]
    fn the_speed_is_the_learned_one_but_an_idle_replica_gets_at_most_the_pools() {
        let busy = ReplicaLoad {
            learned_secs_per_token: Some(SLOW),
            inflight: 1,
            ..idle()
        };
        // Busy: its own slow speed, 1024 / 512 = 2 s.
        assert_eq!(predicted_secs(&busy, &request()), 2.0);
        // Idle: the pool's speed caps it, 1 s; a learned speed faster than the pool's stays.
        let idle_slow = ReplicaLoad {
            inflight: 0,
            ..busy
        };
        assert_eq!(predicted_secs(&idle_slow, &request()), 1.0);
        let idle_fast = ReplicaLoad {
            learned_secs_per_token: Some(1.0 / 2048.0),
            ..idle()
        };
        assert_eq!(predicted_secs(&idle_fast, &request()), 0.5);
    }

    #[test]
    fn work_ahead_is_the_pending_prefill_or_the_scraped_queue_whichever_is_more() {
        let pending = ReplicaLoad {
            inflight: 2,
            pending_prefill: 512,
            own_tokens: 256,
            ..idle()
        };
        let request = RequestLoad {
            least_own_tokens: 256,
            ..request()
        };
        // No stats: (512 + 256) / 1024.
        assert_eq!(predicted_secs(&pending, &request), 0.75);
        // 4 waiting × 256 mean tokens = 1024 ahead, more than 512: (1024 + 256) / 1024.
        let queued = ReplicaLoad {
            mean_prompt_tokens: 256.0,
            engine: Some(EngineLoad {
                running: 0.0,
                waiting: 4.0,
                kv_usage: None,
            }),
            ..pending
        };
        assert_eq!(predicted_secs(&queued, &request), 1.25);
        // Nothing sent there yet: each waiting request counts as this prompt (1024 tokens):
        // 4096 ahead, (4096 + 256) / 1024.
        let unknown_mean = ReplicaLoad {
            mean_prompt_tokens: 0.0,
            ..queued
        };
        assert_eq!(predicted_secs(&unknown_mean, &request), 4.25);
        // A queue shorter than the pending prefill: the pending prefill, 0.75 s again.
        let short = ReplicaLoad {
            engine: Some(EngineLoad {
                running: 0.0,
                waiting: 1.0,
                kv_usage: None,
            }),
            ..queued
        };
        assert_eq!(predicted_secs(&short, &request), 0.75);
    }

    #[test]
    fn the_step_and_a_nearly_full_kv_cache_scale_the_prefill_then_the_adapter_load_adds() {
        let stepping = ReplicaLoad {
            inflight: 1,
            expected_step: 0.125,
            ..idle()
        };
        // 0.125 + 1024 / 1024.
        assert_eq!(predicted_secs(&stepping, &request()), 1.125);
        // 0.9625 − 0.9 is exactly 1/16 in binary: kv_factor = 1 + 10/16 = 1.625, and
        // 1.125 × 1.625 = 1.828125.
        assert_eq!(0.9625 - 0.9, 0.0625);
        let full = ReplicaLoad {
            engine: Some(EngineLoad {
                running: 0.0,
                waiting: 0.0,
                kv_usage: Some(0.9625),
            }),
            ..stepping
        };
        assert_eq!(predicted_secs(&full, &request()), 1.828125);
        // Below 90 % KV use there is no raise.
        let roomy = ReplicaLoad {
            engine: Some(EngineLoad {
                running: 0.0,
                waiting: 0.0,
                kv_usage: Some(0.5),
            }),
            ..stepping
        };
        assert_eq!(predicted_secs(&roomy, &request()), 1.125);
        // Loading an adapter is not scaled by the KV factor: 1.828125 + 0.25.
        let loading = ReplicaLoad {
            adapter_load: 0.25,
            ..full
        };
        assert_eq!(predicted_secs(&loading, &request()), 2.078125);
    }

    #[test]
    fn a_cache_miss_delays_every_sequence_running_there() {
        // Another replica holds the prefix: it needs 256 tokens, this one 1024; the 768 extra
        // tokens take 0.75 s, which each of the 8 running sequences waits: 1 + 6 = 7 s.
        let request = RequestLoad {
            least_own_tokens: 256,
            ..request()
        };
        let busy = ReplicaLoad {
            engine: Some(EngineLoad {
                running: 8.0,
                waiting: 0.0,
                kv_usage: None,
            }),
            ..idle()
        };
        assert_eq!(predicted_secs(&busy, &request), 7.0);
        // Without stats, this gateway's 2 in flight stand for the batch: 1 + 0.75 × 2.
        let unscraped = ReplicaLoad {
            inflight: 2,
            engine: None,
            ..busy
        };
        assert_eq!(predicted_secs(&unscraped, &request), 2.5);
        // The best-placed replica delays nobody.
        let holder = ReplicaLoad {
            own_tokens: 256,
            ..busy
        };
        assert_eq!(predicted_secs(&holder, &request), 0.25);
    }
}
