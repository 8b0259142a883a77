//! What the replicas say they serve: every [`EVERY`] the pool's replicas' `/v1/models` are
//! read (all at once, each bounded by the scrape timeout and the page-size limit) and their
//! entries merged by id into [`PoolState::listed_models`], which `GET /v1/models` on the
//! gateway lists from. A round in which no replica answers a list changes nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinSet;

use super::{ReplicaClient, fetch};
use crate::pool::PoolState;

/// How often the lists are read: models change with a deployment or a LoRA load, not per
/// request.
pub const EVERY: Duration = Duration::from_secs(10);

/// Reads the replicas' lists every [`EVERY`] until the task is aborted (the first at once).
pub async fn poll(pool: &Arc<PoolState>, client: &ReplicaClient) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let timeout = pool.config.metrics.scrape_timeout;
        let mut reads = JoinSet::new();
        for replica in pool.snapshot().replicas.iter() {
            let uri = format!("{}://{}/v1/models", replica.scheme, replica.authority);
            let Ok(uri) = uri.parse() else { continue };
            let client = client.clone();
            reads.spawn(async move { tokio::time::timeout(timeout, fetch(&client, uri)).await });
        }
        let mut lists = Vec::new();
        while let Some(read) = reads.join_next().await {
            if let Ok(Ok(Ok(page))) = read
                && let Some(entries) = entries(&page)
            {
                lists.push(entries);
            }
        }
        if !lists.is_empty() {
            pool.listed_models.store(Some(Arc::new(merge(lists))));
        }
    }
}

/// The entries of an OpenAI model list (`{"data": [{"id": ...}, ...]}`); None for anything
/// else.
fn entries(page: &[u8]) -> Option<Vec<Value>> {
    let list: Value = serde_json::from_slice(page).ok()?;
    let data = list.get("data")?.as_array()?;
    Some(
        data.iter()
            .filter(|e| e.get("id").is_some_and(Value::is_string))
            .cloned()
            .collect(),
    )
}

/// One entry per id, the first replica's.
fn merge(lists: Vec<Vec<Value>>) -> Vec<Value> {
    let mut seen = HashSet::new();
    lists
        .into_iter()
        .flatten()
        .filter(|e| seen.insert(e["id"].as_str().unwrap_or_default().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_read_and_merged_by_id() {
        let a = br#"{"object": "list", "data": [{"id": "m", "max_model_len": 8192}, {"id": "lora-1", "parent": "m"}]}"#;
        let b = br#"{"object": "list", "data": [{"id": "m", "max_model_len": 4096}, {"id": "n"}, {"no": "id"}]}"#;
        let merged = merge(vec![entries(a).unwrap(), entries(b).unwrap()]);
        let ids: Vec<&str> = merged.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["m", "lora-1", "n"]);
        assert_eq!(
            merged[0]["max_model_len"], 8192,
            "the first replica's entry"
        );
        assert!(entries(b"<html>").is_none());
        assert!(entries(br#"{"data": "x"}"#).is_none());
    }
}
