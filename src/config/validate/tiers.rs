//! Checks of the `tiers` section: 2–4 pools that exist, each in one tier at most, each
//! scaled by the `infergate` policy with a price per replica-hour; the tier's name served by
//! no pool and split by no `versions` entry.

use std::collections::{HashMap, HashSet};

use super::Checker;
use crate::config::raw::{RawPool, RawTier, RawVersions, ScalerPolicy};
use crate::config::types::Tier;

/// Most pools in one tier (the allocation tries every mix).
pub const MAX_TIER_POOLS: usize = 4;

pub(super) fn tiers(
    c: &mut Checker,
    raw: &[RawTier],
    pools: &[RawPool],
    versions: &[RawVersions],
) -> Vec<Tier> {
    let served: HashSet<&String> = pools
        .iter()
        .flat_map(|p| p.models.iter().chain(p.aliases.keys()))
        .collect();
    let mut names = HashSet::new();
    let mut owner: HashMap<&str, usize> = HashMap::new();
    raw.iter()
        .enumerate()
        .map(|(i, tier)| {
            let p = format!("tiers[{i}]");
            if tier.model.is_empty() {
                c.fail(format!("{p}.model"), "the served model name is required");
            } else if served.contains(&tier.model) {
                c.fail(
                    format!("{p}.model"),
                    format!(
                        "`{}` is served by a pool directly; a tier needs a name of its own",
                        tier.model
                    ),
                );
            } else if versions.iter().any(|v| v.model == tier.model) {
                c.fail(
                    format!("{p}.model"),
                    format!("`{}` is also a `versions` split", tier.model),
                );
            } else if !names.insert(&tier.model) {
                c.fail(
                    format!("{p}.model"),
                    format!("`{}` is tiered twice", tier.model),
                );
            }
            if !(2..=MAX_TIER_POOLS).contains(&tier.pools.len()) {
                c.fail(
                    format!("{p}.pools"),
                    format!(
                        "a tier is 2–{MAX_TIER_POOLS} pools (got {})",
                        tier.pools.len()
                    ),
                );
            }
            let members = tier
                .pools
                .iter()
                .enumerate()
                .filter_map(|(j, name)| {
                    let at = format!("{p}.pools[{j}]");
                    let Some(index) = pools.iter().position(|x| x.name.as_deref() == Some(name))
                    else {
                        c.fail(at, format!("no pool is named `{name}`"));
                        return None;
                    };
                    if let Some(other) = owner.insert(name, i) {
                        let message = if other == i {
                            format!("`{name}` is listed twice")
                        } else {
                            format!("`{name}` is already in tiers[{other}]")
                        };
                        c.fail(at, message);
                        return Some(index);
                    }
                    let scaler = &pools[index].scaler;
                    let member = format!("pools[{index}].scaler");
                    if !scaler.enabled {
                        c.fail(
                            format!("{member}.enabled"),
                            format!("pool `{name}` is in {p}, which is scaled as one: enable its scaler"),
                        );
                    }
                    if scaler.policy != ScalerPolicy::Infergate {
                        c.fail(
                            format!("{member}.policy"),
                            format!("pool `{name}` is in {p}, which only the `infergate` policy scales (it chooses among the pools by cost)"),
                        );
                    }
                    if scaler.replica_cost_per_hour.is_none() {
                        c.fail(
                            format!("{member}.replica_cost_per_hour"),
                            format!("pool `{name}` is in {p}: its price per replica-hour is what the tier's scaler chooses by"),
                        );
                    }
                    Some(index)
                })
                .collect();
            Tier {
                model: tier.model.clone(),
                pools: members,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tier_needs_pools_it_can_price_and_scale_together() {
        let pool = |name: &str, scaler: &str| {
            format!(
                "  - name: {name}
    models: [{name}-m]
    discovery: {{static: {{endpoints: [\"http://127.0.0.1:1\"]}}}}
    scaler: {scaler}
"
            )
        };
        let yaml = format!(
            "tiers:
  - model: a-m
    pools: [a]
  - model: t
    pools: [a, b, nope, b]
  - model: u
    pools: [c, d]
pools:
{}{}{}{}",
            pool(
                "a",
                "{enabled: true, provider: static, replica_cost_per_hour: 1}"
            ),
            pool(
                "b",
                "{enabled: true, provider: static, policy: hpa, replica_cost_per_hour: 2}"
            ),
            pool("c", "{enabled: false, speed: 0}"),
            pool(
                "d",
                "{enabled: true, provider: static, replica_cost_per_hour: 4, speed: 6}"
            ),
        );
        let errors = crate::config::parse(&yaml, "test").unwrap_err().to_string();
        for expected in [
            "tiers[0].model: `a-m` is served by a pool directly",
            "tiers[0].pools: a tier is 2–4 pools (got 1)",
            "tiers[1].pools[0]: `a` is already in tiers[0]",
            "tiers[1].pools[2]: no pool is named `nope`",
            "tiers[1].pools[3]: `b` is listed twice",
            "pools[1].scaler.policy: pool `b` is in tiers[1], which only the `infergate` policy",
            "pools[2].scaler.enabled: pool `c` is in tiers[2], which is scaled as one",
            "pools[2].scaler.replica_cost_per_hour: pool `c` is in tiers[2]",
            "pools[2].scaler.speed: must be more than 0 (got 0)",
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in:\n{errors}"
            );
        }
        assert!(!errors.contains(": pools[3]."), "{errors}");
        assert_eq!(errors.matches("pool `b` is in").count(), 1, "{errors}");
    }
}
