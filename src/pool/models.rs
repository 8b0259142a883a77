//! Which pool serves which model name: every served name and alias of every pool, with the
//! name an alias is rewritten to and the LoRA adapter a served name is, and the names split
//! across versions ([`VersionSplit`]: which pool a request goes to). One lookup for the gateway
//! and the fleet simulation alike. Also the gateway's `GET /v1/models` ([`ModelIndex::listing`]),
//! from what the replicas list.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use crate::config;

/// How a model name resolves.
#[derive(Debug, Clone)]
pub struct ModelRoute {
    /// Index of the pool in the config.
    pub pool: usize,
    /// The name as the request gives it.
    pub model: String,
    /// For an alias, the served name the request is rewritten to.
    pub rewrite_to: Option<String>,
    /// The LoRA adapter the served name is (`routing.lora_adapters`), if it is one.
    pub adapter: Option<u64>,
    /// For a name split across versions, the split; `pool` and `rewrite_to` are then the
    /// first version's, and each request draws its own ([`VersionSplit::choose`]).
    pub split: Option<Arc<VersionSplit>>,
    /// For a name served by a tier of pools, its pools; `pool` and `rewrite_to` are then the
    /// first's, and each request goes where [`crate::pool::tiers::choose`] says.
    pub tier: Option<Arc<TierRoute>>,
}

/// The pools of a tier, each with the name a request is rewritten to (its first model).
#[derive(Debug)]
pub struct TierRoute {
    pub members: Vec<(usize, String)>,
}

/// A served name's versions, each a pool, with their weights.
#[derive(Debug)]
pub struct VersionSplit {
    pub versions: Vec<Version>,
    /// Each version's weight now: the configured ones, moved by a rollout
    /// ([`crate::rollout`]).
    pub live: Vec<std::sync::atomic::AtomicU32>,
    pub sticky_header: Option<http::HeaderName>,
    pub pin_header: http::HeaderName,
    /// The shadow version and the share of requests copied to it.
    pub mirror: Option<(Version, f64)>,
    /// The canary rollout of one of the versions, when the config plans one.
    pub rollout: Option<Arc<crate::rollout::RolloutControl>>,
}

/// One version of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Index of its pool, and the pool's name (what a pin names).
    pub pool: usize,
    pub name: String,
    /// The name the request is rewritten to: the pool's first served model.
    pub served: String,
    /// Percent of requests.
    pub weight: u32,
}

impl VersionSplit {
    /// The version for one request: the pinned one (by pool name; None if no version has that
    /// name); else by the sticky key's hash when there is one, else by `random` — each a point
    /// in 0..100 that falls in one version's share.
    pub fn choose(
        &self,
        pinned: Option<&str>,
        sticky: Option<&[u8]>,
        random: u64,
    ) -> Option<&Version> {
        if let Some(name) = pinned {
            return self.versions.iter().find(|v| v.name == name);
        }
        let weights: Vec<u64> = self.weights().into_iter().map(u64::from).collect();
        let total: u64 = weights.iter().sum();
        if total == 0 {
            return self.versions.first();
        }
        let point = match sticky {
            Some(key) => spread(crate::openai::fnv1a(key)),
            None => random,
        } % total;
        let mut upto = 0;
        let i = weights.iter().position(|w| {
            upto += w;
            point < upto
        })?;
        self.versions.get(i)
    }

    /// The weights now, in version order.
    pub fn weights(&self) -> Vec<u32> {
        self.live
            .iter()
            .map(|w| w.load(std::sync::atomic::Ordering::Relaxed))
            .collect()
    }

    /// Sets the weights (a rollout's step, promotion or rollback), in version order.
    pub fn set_weights(&self, weights: &[u32]) {
        for (live, w) in self.live.iter().zip(weights) {
            live.store(*w, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Every model name of every pool.
pub struct ModelIndex {
    /// Routes in config order (served names, then aliases, pool by pool).
    routes: Vec<ModelRoute>,
    by_name: HashMap<String, usize>,
    /// `GET /v1/models` from the config: each entry, and what it lists.
    listed: Vec<(Listed, serde_json::Value)>,
}

/// What a `/v1/models` entry of the config is.
enum Listed {
    /// A served name of the pool.
    Served { pool: usize, name: String },
    /// An alias in the pool of one of its served names.
    Alias { pool: usize, target: String },
    /// A name split across versions, or served by a tier of pools.
    Split,
}

impl ModelIndex {
    pub fn new(
        pools: &[config::Pool],
        versions: &[config::ModelVersions],
        tiers: &[config::Tier],
    ) -> Self {
        let mut routes = Vec::new();
        let mut data = Vec::new();
        let created = crate::openai::unix_seconds();
        for (i, pool) in pools.iter().enumerate() {
            let adapter = |served: &String| {
                pool.routing
                    .lora_adapters
                    .contains(served)
                    .then(|| crate::replica::adapter_id(served))
            };
            for model in &pool.models {
                routes.push(ModelRoute {
                    pool: i,
                    model: model.clone(),
                    rewrite_to: None,
                    adapter: adapter(model),
                    split: None,
                    tier: None,
                });
                let entry = json!({"id": model, "object": "model", "created": created, "owned_by": pool.name});
                let served = Listed::Served {
                    pool: i,
                    name: model.clone(),
                };
                data.push((served, entry));
            }
            for (alias, target) in &pool.aliases {
                routes.push(ModelRoute {
                    pool: i,
                    model: alias.clone(),
                    rewrite_to: Some(target.clone()),
                    adapter: adapter(target),
                    split: None,
                    tier: None,
                });
                let entry = json!({"id": alias, "object": "model", "created": created, "owned_by": pool.name, "root": target});
                let alias = Listed::Alias {
                    pool: i,
                    target: target.clone(),
                };
                data.push((alias, entry));
            }
        }
        for split in versions {
            let version = |pool: usize, weight| Version {
                pool,
                name: pools[pool].name.clone(),
                served: pools[pool].models.first().cloned().unwrap_or_default(),
                weight,
            };
            let versions: Vec<Version> = split
                .split
                .iter()
                .map(|&(pool, weight)| version(pool, weight))
                .collect();
            let Some(first) = versions.first().cloned() else {
                continue;
            };
            routes.push(ModelRoute {
                pool: first.pool,
                model: split.model.clone(),
                rewrite_to: Some(first.served),
                adapter: None,
                split: Some(Arc::new(VersionSplit {
                    live: versions
                        .iter()
                        .map(|v| std::sync::atomic::AtomicU32::new(v.weight))
                        .collect(),
                    versions,
                    sticky_header: split.sticky_header.clone(),
                    pin_header: split.pin_header.clone(),
                    mirror: split.mirror.map(|(pool, share)| (version(pool, 0), share)),
                    rollout: split
                        .rollout
                        .clone()
                        .map(|plan| Arc::new(crate::rollout::RolloutControl::new(plan))),
                })),
                tier: None,
            });
            let entry = json!({"id": split.model, "object": "model", "created": created, "owned_by": "infergate"});
            data.push((Listed::Split, entry));
        }
        for tier in tiers {
            let members: Vec<(usize, String)> = tier
                .pools
                .iter()
                .map(|&p| (p, pools[p].models.first().cloned().unwrap_or_default()))
                .collect();
            let Some((first, served)) = members.first().cloned() else {
                continue;
            };
            routes.push(ModelRoute {
                pool: first,
                model: tier.model.clone(),
                rewrite_to: Some(served),
                adapter: None,
                split: None,
                tier: Some(Arc::new(TierRoute { members })),
            });
            let entry = json!({"id": tier.model, "object": "model", "created": created, "owned_by": "infergate"});
            data.push((Listed::Split, entry));
        }
        let by_name = routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.model.clone(), i))
            .collect();
        Self {
            routes,
            by_name,
            listed: data,
        }
    }

    /// `GET /v1/models`, given what each pool's replicas list (`listed(pool)`, None when none
    /// has said): a served name as its replicas list it (their entry: `max_model_len`, `root`,
    /// `parent`), left out when they list it not (no replica would answer it); an alias when its
    /// target is listed; a split name always. A pool whose replicas list nothing (none read yet,
    /// or servers without the endpoint) is listed from the config.
    pub fn listing(&self, listed: impl Fn(usize) -> Option<Arc<Vec<serde_json::Value>>>) -> Bytes {
        let find = |pool: usize, name: &str| -> Option<Option<serde_json::Value>> {
            let entries = listed(pool)?;
            Some(entries.iter().find(|e| e["id"] == name).cloned())
        };
        let data: Vec<serde_json::Value> = self
            .listed
            .iter()
            .filter_map(|(what, entry)| match what {
                Listed::Served { pool, name } => match find(*pool, name) {
                    None => Some(entry.clone()),
                    Some(from_replica) => from_replica,
                },
                Listed::Alias { pool, target } => match find(*pool, target) {
                    Some(None) => None,
                    _ => Some(entry.clone()),
                },
                Listed::Split => Some(entry.clone()),
            })
            .collect();
        Bytes::from(serde_json::to_vec(&json!({"object": "list", "data": data})).expect("JSON"))
    }

    /// The route of `model` and its position in [`Self::routes`].
    pub fn lookup(&self, model: &str) -> Option<(usize, &ModelRoute)> {
        let &i = self.by_name.get(model)?;
        Some((i, &self.routes[i]))
    }

    /// Every route, in config order.
    pub fn routes(&self) -> &[ModelRoute] {
        &self.routes
    }
}

/// SplitMix64's finaliser: keys that differ in one byte land far apart (FNV-1a's low bits
/// alone would not spread `user-1`, `user-2`, ... evenly over 100).
fn spread(h: u64) -> u64 {
    let mut z = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_names_aliases_and_adapters_resolve() {
        let mut config = crate::config::embedded_default();
        let mut second = config.pools[0].clone();
        second.name = "adapters".into();
        second.models = vec!["base".into(), "sql-lora".into()];
        second.aliases = [("sql".to_string(), "sql-lora".to_string())].into();
        second.routing.lora_adapters = vec!["sql-lora".into()];
        config.pools.push(second);
        let index = ModelIndex::new(&config.pools, &[], &[]);
        let first_model = config.pools[0].models[0].clone();
        assert_eq!(index.lookup(&first_model).unwrap().1.pool, 0);
        let (_, base) = index.lookup("base").unwrap();
        assert_eq!((base.pool, base.adapter), (1, None));
        let (_, alias) = index.lookup("sql").unwrap();
        assert_eq!(alias.pool, 1);
        assert_eq!(alias.rewrite_to.as_deref(), Some("sql-lora"));
        assert_eq!(alias.adapter, Some(crate::replica::adapter_id("sql-lora")));
        assert!(index.lookup("SQL").is_none(), "model names are exact");
        assert!(index.lookup("base").unwrap().1.split.is_none());
        let listed: serde_json::Value = serde_json::from_slice(&index.listing(|_| None)).unwrap();
        let ids: Vec<&str> = listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert!(
            ids.contains(&"sql") && ids.contains(&"base") && ids.contains(&first_model.as_str())
        );
    }

    fn split(weights: &[u32], sticky: bool) -> VersionSplit {
        VersionSplit {
            live: weights
                .iter()
                .map(|&w| std::sync::atomic::AtomicU32::new(w))
                .collect(),
            versions: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| Version {
                    pool: i,
                    name: format!("v{i}"),
                    served: format!("m{i}"),
                    weight,
                })
                .collect(),
            sticky_header: sticky.then(|| http::HeaderName::from_static("x-user")),
            pin_header: http::HeaderName::from_static("x-infergate-version"),
            mirror: None,
            rollout: None,
        }
    }

    #[test]
    fn requests_split_by_weight_stick_by_key_and_follow_a_pin() {
        let s = split(&[90, 10], true);
        let mut rng = crate::fleet_sim::workload::Rng::new(7);
        let mut counts = [0u32; 2];
        for _ in 0..10_000 {
            counts[s.choose(None, None, rng.next_u64()).unwrap().pool] += 1;
        }
        assert!((8_900..=9_100).contains(&counts[0]), "{counts:?}");
        // Keys: the same key, the same version, every time; across keys, about the weights.
        let mut by_key = [0u32; 2];
        for user in 0..2_000 {
            let key = format!("user-{user}");
            let first = s.choose(None, Some(key.as_bytes()), 1).unwrap().pool;
            for random in [2, 3, u64::MAX] {
                assert_eq!(
                    s.choose(None, Some(key.as_bytes()), random).unwrap().pool,
                    first
                );
            }
            by_key[first] += 1;
        }
        assert!((1_700..=1_900).contains(&by_key[0]), "{by_key:?}");
        assert_eq!(s.choose(Some("v1"), Some(b"user-1"), 0).unwrap().pool, 1);
        assert_eq!(s.choose(Some("nope"), None, 0), None);
        // Weight 0: pinned requests only.
        let only_first = split(&[100, 0], false);
        assert!((0..1000).all(|r| only_first.choose(None, None, r).unwrap().pool == 0));
        assert_eq!(only_first.choose(Some("v1"), None, 0).unwrap().pool, 1);
        // Moved at run time (a rollout): the new weights apply at once.
        only_first.set_weights(&[0, 100]);
        assert!((0..1000).all(|r| only_first.choose(None, None, r).unwrap().pool == 1));
    }
}
