//! Validation of a pool's `routing` section: fractions, counts, the prefill prior and the
//! weighted policy's weights.

use super::Checker;
use crate::config::raw::RawRouting;
use crate::config::types::{Routing, Weights};

pub(super) fn routing(c: &mut Checker, p: &str, raw: &RawRouting) -> Routing {
    let p = format!("{p}.routing");
    if raw.imbalance_ratio < 1.0 {
        c.fail(
            format!("{p}.imbalance_ratio"),
            format!("must be at least 1 (got {})", raw.imbalance_ratio),
        );
    }
    Routing {
        policy: raw.policy,
        prefix_min_match: c.fraction(format!("{p}.prefix_min_match"), raw.prefix_min_match),
        prefix_block_chars: c.at_least(
            format!("{p}.prefix_block_chars"),
            raw.prefix_block_chars,
            1,
        ),
        prefix_cache_entries: c.at_least(
            format!("{p}.prefix_cache_entries"),
            raw.prefix_cache_entries,
            1,
        ),
        imbalance_requests: raw.imbalance_requests,
        imbalance_ratio: raw.imbalance_ratio,
        prefill_tokens_per_second: {
            if raw.prefill_tokens_per_second.is_nan() || raw.prefill_tokens_per_second <= 0.0 {
                c.fail(
                    format!("{p}.prefill_tokens_per_second"),
                    format!(
                        "must be greater than 0 (got {})",
                        raw.prefill_tokens_per_second
                    ),
                );
            }
            raw.prefill_tokens_per_second
        },
        weights: {
            let w = &raw.weights;
            for (name, value) in [
                ("queue", w.queue),
                ("kv_cache", w.kv_cache),
                ("prefix", w.prefix),
                ("gpu", w.gpu),
            ] {
                if value.is_nan() || value < 0.0 {
                    c.fail(
                        format!("{p}.weights.{name}"),
                        format!("must be 0 or more (got {value})"),
                    );
                }
            }
            Weights {
                queue: w.queue,
                kv_cache: w.kv_cache,
                prefix: w.prefix,
                gpu: w.gpu,
            }
        },
        tie_margin: c.fraction(format!("{p}.tie_margin"), raw.tie_margin),
        load_bound: {
            let bound = raw.load_bound;
            if !(bound == 0.0 || (1.0..f64::INFINITY).contains(&bound)) {
                c.fail(
                    format!("{p}.load_bound"),
                    format!("must be 0 (off) or at least 1 (got {bound})"),
                );
            }
            bound
        },
        lora_adapters: raw.lora_adapters.clone(),
        lora_load_time: c.duration(format!("{p}.lora_load_time"), &raw.lora_load_time),
    }
}
