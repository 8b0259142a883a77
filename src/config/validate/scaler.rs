//! Validation of a pool's `scaler` section: replica bounds, targets, windows and the provider.

use super::Checker;
use crate::config::raw::{RawProvider, RawScaler};
use crate::config::types::{Provider, ScaleTarget, Scaler, ScalerTargets};

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
        provider,
    }
}
