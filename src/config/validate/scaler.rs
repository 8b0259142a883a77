//! Validation of a pool's `scaler` section: replica bounds, targets, windows and the provider.

use super::Checker;
use crate::config::raw::{RawProvider, RawScaler, ScalerPolicy};
use crate::config::types::{Provider, ScaleTarget, Scaler, ScalerTargets};

/// The settings only some policies read, with those policies (every policy reads the bounds,
/// `interval`, `targets.concurrency`, `cold_start`, `drain_timeout` and the provider).
const POLICY_SETTINGS: &[(&str, &[ScalerPolicy])] = {
    use ScalerPolicy::{Hpa, Infergate, Kpa};
    &[
        ("scale_up_window", &[Infergate]),
        ("scale_down_window", &[Infergate, Kpa]),
        ("panic_window", &[Kpa]),
        ("panic_threshold", &[Kpa]),
        ("scale_down_stabilization", &[Infergate, Hpa]),
        ("tolerance", &[Infergate, Hpa]),
        ("max_scale_down_step", &[Infergate]),
        ("scale_to_zero_after", &[Infergate]),
        ("targets.kv_cache_usage", &[Infergate]),
        ("targets.gpu_utilization", &[Infergate]),
        ("targets.queue_wait", &[Infergate]),
    ]
};

/// A setting written in the file that the pool's policy does not read is an error naming the
/// policy (it would otherwise be silently ignored).
fn settings_of_other_policies(c: &mut Checker, p: &str, policy: ScalerPolicy) {
    let name = crate::config::yaml_name(&policy);
    for (setting, readers) in POLICY_SETTINGS {
        let path = format!("{p}.{setting}");
        if !readers.contains(&policy) && c.locations.contains(&path) {
            let readers: Vec<String> = readers.iter().map(crate::config::yaml_name).collect();
            c.fail(
                path,
                format!(
                    "not used by policy `{name}`: remove it, or choose a policy that reads it ({})",
                    readers.join(", ")
                ),
            );
        }
    }
}

pub(super) fn scaler(c: &mut Checker, p: &str, raw: &RawScaler) -> Scaler {
    let p = format!("{p}.scaler");
    if raw.max_replicas < raw.min_replicas {
        c.fail(
            format!("{p}.max_replicas"),
            format!("must be >= min_replicas ({})", raw.min_replicas),
        );
    }
    if raw.max_replicas == 0 {
        c.fail(format!("{p}.max_replicas"), "must be at least 1");
    }
    settings_of_other_policies(c, &p, raw.policy);
    if raw.panic_threshold.is_nan() || raw.panic_threshold < 1.0 {
        c.fail(
            format!("{p}.panic_threshold"),
            format!("must be at least 1 (got {})", raw.panic_threshold),
        );
    }
    if !(raw.speed > 0.0 && raw.speed.is_finite()) {
        c.fail(
            format!("{p}.speed"),
            format!("must be more than 0 (got {})", raw.speed),
        );
    }
    if let Some(price) = raw.replica_cost_per_hour
        && !(price >= 0.0 && price.is_finite())
    {
        c.fail(
            format!("{p}.replica_cost_per_hour"),
            format!("must be a price of at least 0 (got {price})"),
        );
    }
    let t = &raw.targets;
    if t.concurrency.is_nan() || t.concurrency <= 0.0 {
        c.fail(
            format!("{p}.targets.concurrency"),
            format!("must be greater than 0 (got {})", t.concurrency),
        );
    }
    let targets = ScalerTargets {
        concurrency: t.concurrency,
        kv_cache_usage: t
            .kv_cache_usage
            .map(|v| c.fraction(format!("{p}.targets.kv_cache_usage"), v)),
        gpu_utilization: t
            .gpu_utilization
            .map(|v| c.fraction(format!("{p}.targets.gpu_utilization"), v)),
        queue_wait: t
            .queue_wait
            .as_ref()
            .map(|v| c.positive_duration(format!("{p}.targets.queue_wait"), v)),
    };
    let provider = match &raw.provider {
        RawProvider::Local => Provider::Local,
        RawProvider::Static => Provider::Static,
        RawProvider::Kubernetes(t) => {
            if t.name.is_empty() {
                c.fail(
                    format!("{p}.provider.kubernetes.name"),
                    "missing: name the workload to scale",
                );
            }
            Provider::Kubernetes(ScaleTarget {
                api_version: t.api_version.clone(),
                kind: t.kind.clone(),
                name: t.name.clone(),
                namespace: Checker::namespace(&t.namespace),
            })
        }
    };
    Scaler {
        enabled: raw.enabled,
        policy: raw.policy,
        min_replicas: raw.min_replicas,
        max_replicas: raw.max_replicas,
        interval: c.positive_duration(format!("{p}.interval"), &raw.interval),
        targets,
        scale_up_window: c.positive_duration(format!("{p}.scale_up_window"), &raw.scale_up_window),
        scale_down_window: c
            .positive_duration(format!("{p}.scale_down_window"), &raw.scale_down_window),
        panic_window: raw
            .panic_window
            .as_ref()
            .map(|w| c.positive_duration(format!("{p}.panic_window"), w)),
        panic_threshold: raw.panic_threshold,
        scale_down_stabilization: c.duration(
            format!("{p}.scale_down_stabilization"),
            &raw.scale_down_stabilization,
        ),
        tolerance: c.fraction(format!("{p}.tolerance"), raw.tolerance),
        max_scale_down_step: c.at_least(
            format!("{p}.max_scale_down_step"),
            raw.max_scale_down_step,
            1,
        ),
        scale_to_zero_after: c
            .duration(format!("{p}.scale_to_zero_after"), &raw.scale_to_zero_after),
        cold_start: c.duration(format!("{p}.cold_start"), &raw.cold_start),
        drain_timeout: c.duration(format!("{p}.drain_timeout"), &raw.drain_timeout),
        replica_cost_per_hour: raw.replica_cost_per_hour,
        speed: raw.speed,
        provider,
    }
}
