//! Checks of the `versions` section: every version a pool that exists (once per split), the
//! weights summing to 100, the served name not also served by a pool, valid header names.

use std::collections::HashSet;

use super::Checker;
use crate::config::raw::{RawPool, RawVersions};
use crate::config::types::ModelVersions;

pub(super) fn versions(
    c: &mut Checker,
    raw: &[RawVersions],
    pools: &[RawPool],
) -> Vec<ModelVersions> {
    let served: HashSet<&String> = pools
        .iter()
        .flat_map(|p| p.models.iter().chain(p.aliases.keys()))
        .collect();
    let mut models = HashSet::new();
    raw.iter()
        .enumerate()
        .map(|(i, v)| {
            let p = format!("versions[{i}]");
            if v.model.is_empty() {
                c.fail(format!("{p}.model"), "the served model name is required");
            } else if served.contains(&v.model) {
                c.fail(
                    format!("{p}.model"),
                    format!(
                        "`{}` is served by a pool directly; a split needs a name of its own",
                        v.model
                    ),
                );
            } else if !models.insert(&v.model) {
                c.fail(
                    format!("{p}.model"),
                    format!("`{}` is split twice", v.model),
                );
            }
            if v.split.is_empty() {
                c.fail(format!("{p}.split"), "at least one version is required");
            }
            let mut seen = HashSet::new();
            let split = v
                .split
                .iter()
                .enumerate()
                .filter_map(|(j, version)| {
                    let at = format!("{p}.split[{j}]");
                    if version.weight > 100 {
                        c.fail(
                            format!("{at}.weight"),
                            format!("must be 0–100 (got {})", version.weight),
                        );
                    }
                    if !seen.insert(&version.pool) {
                        c.fail(
                            format!("{at}.pool"),
                            format!("`{}` is listed twice", version.pool),
                        );
                    }
                    let index = pools
                        .iter()
                        .position(|pool| pool.name.as_deref() == Some(version.pool.as_str()));
                    if index.is_none() {
                        c.fail(
                            format!("{at}.pool"),
                            format!("no pool is named `{}`", version.pool),
                        );
                    }
                    Some((index?, version.weight))
                })
                .collect::<Vec<_>>();
            let total: u32 = v.split.iter().map(|s| s.weight).sum();
            if !v.split.is_empty() && total != 100 {
                c.fail(
                    format!("{p}.split"),
                    format!("the weights must sum to 100 (they sum to {total})"),
                );
            }
            let mirror = v.mirror.as_ref().and_then(|m| {
                let at = format!("{p}.mirror");
                let share = c.fraction(format!("{at}.share"), m.share);
                if v.split.iter().any(|s| s.pool == m.pool) {
                    c.fail(
                        format!("{at}.pool"),
                        format!(
                            "`{}` is a version of the split; a mirror is a pool of its own",
                            m.pool
                        ),
                    );
                }
                let index = pools
                    .iter()
                    .position(|pool| pool.name.as_deref() == Some(m.pool.as_str()));
                if index.is_none() {
                    c.fail(
                        format!("{at}.pool"),
                        format!("no pool is named `{}`", m.pool),
                    );
                }
                Some((index?, share))
            });
            let rollout = v.rollout.as_ref().and_then(|r| {
                let at = format!("{p}.rollout");
                if v.split.len() != 2 {
                    c.fail(at.clone(), "a rollout needs a split of exactly two versions (stable and canary)");
                }
                let canary = v.split.iter().position(|s| s.pool == r.canary);
                if canary.is_none() {
                    c.fail(format!("{at}.canary"), format!("`{}` is not a version of this split", r.canary));
                }
                if r.steps.is_empty() {
                    c.fail(format!("{at}.steps"), "at least one step is required");
                }
                let mut last = 0;
                let steps = r
                    .steps
                    .iter()
                    .enumerate()
                    .map(|(k, step)| {
                        let s = format!("{at}.steps[{k}]");
                        if step.weight == 0 || step.weight > 100 || step.weight <= last {
                            c.fail(format!("{s}.weight"), format!("must rise from step to step within 1–100 (got {} after {last})", step.weight));
                        }
                        last = step.weight;
                        let duration = match &step.duration {
                            Some(d) => c.positive_duration(format!("{s}.duration"), d),
                            None => {
                                c.fail(s.clone(), "a step needs a duration");
                                std::time::Duration::ZERO
                            }
                        };
                        (step.weight, duration)
                    })
                    .collect();
                Some(crate::config::types::Rollout {
                    canary: canary?,
                    steps,
                    max_error_rate: c.fraction(format!("{at}.max_error_rate"), r.max_error_rate),
                    max_ttft_ratio: r.max_ttft_ratio,
                    min_requests: r.min_requests.max(1),
                })
            });
            ModelVersions {
                rollout,
                mirror,
                model: v.model.clone(),
                split,
                sticky_header: v
                    .sticky_header
                    .as_ref()
                    .map(|h| c.header(format!("{p}.sticky_header"), h)),
                pin_header: c.header(format!("{p}.pin_header"), &v.pin_header),
            }
        })
        .collect()
}
