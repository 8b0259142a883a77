//! Which pool serves which model name: every served name and alias of every pool, with the
//! name an alias is rewritten to and the LoRA adapter a served name is. One lookup for the
//! gateway and the fleet simulation alike.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::json;

use crate::config;

/// How a model name resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRoute {
    /// Index of the pool in the config.
    pub pool: usize,
    /// The name as the request gives it.
    pub model: String,
    /// For an alias, the served name the request is rewritten to.
    pub rewrite_to: Option<String>,
    /// The LoRA adapter the served name is (`routing.lora_adapters`), if it is one.
    pub adapter: Option<u64>,
}

/// Every model name of every pool.
pub struct ModelIndex {
    /// Routes in config order (served names, then aliases, pool by pool).
    routes: Vec<ModelRoute>,
    by_name: HashMap<String, usize>,
    /// `GET /v1/models`, rendered once.
    pub models_json: Bytes,
}

impl ModelIndex {
    pub fn new(pools: &[config::Pool]) -> Self {
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
                });
                data.push(json!({"id": model, "object": "model", "created": created, "owned_by": pool.name}));
            }
            for (alias, target) in &pool.aliases {
                routes.push(ModelRoute {
                    pool: i,
                    model: alias.clone(),
                    rewrite_to: Some(target.clone()),
                    adapter: adapter(target),
                });
                data.push(json!({"id": alias, "object": "model", "created": created, "owned_by": pool.name, "root": target}));
            }
        }
        let by_name = routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.model.clone(), i))
            .collect();
        let models_json = Bytes::from(
            serde_json::to_vec(&json!({"object": "list", "data": data})).expect("JSON"),
        );
        Self {
            routes,
            by_name,
            models_json,
        }
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
        let index = ModelIndex::new(&config.pools);
        let first_model = config.pools[0].models[0].clone();
        assert_eq!(index.lookup(&first_model).unwrap().1.pool, 0);
        let (_, base) = index.lookup("base").unwrap();
        assert_eq!((base.pool, base.adapter), (1, None));
        let (_, alias) = index.lookup("sql").unwrap();
        assert_eq!(alias.pool, 1);
        assert_eq!(alias.rewrite_to.as_deref(), Some("sql-lora"));
        assert_eq!(alias.adapter, Some(crate::replica::adapter_id("sql-lora")));
        assert!(index.lookup("SQL").is_none(), "model names are exact");
        let listed: serde_json::Value = serde_json::from_slice(&index.models_json).unwrap();
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
}
