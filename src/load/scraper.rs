//! The per-pool scraper: polls every replica's `/metrics` over keep-alive connections at the
//! configured interval (all replicas concurrently, each bounded by the scrape timeout and the
//! page-size limit) and stores the parsed [`EngineStats`] on the replica. A failed scrape changes
//! nothing but a failure count; stale stats age out on their own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::{JoinHandle, JoinSet};

use super::exposition::{self, EngineStats, MAX_PAGE_BYTES};
use crate::gateway::pools::PoolRuntime;

/// Scrapes the pool's replicas until aborted.
pub fn spawn(pool: Arc<PoolRuntime>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let metrics = pool.config.metrics.clone();
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        let mut tick = tokio::time::interval(metrics.scrape_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let snapshot = pool.snapshot();
            let mut scrapes = JoinSet::new();
            for replica in snapshot.replicas.iter().cloned() {
                let client = client.clone();
                let uri = format!("{}://{}{}", replica.scheme, replica.authority, metrics.path);
                let (format, timeout) = (metrics.format, metrics.scrape_timeout);
                scrapes.spawn(async move {
                    let result = tokio::time::timeout(timeout, scrape(&client, &uri, format)).await;
                    match result {
                        Ok(Ok(stats)) => replica.record_scrape(stats, Instant::now()),
                        Ok(Err(e)) => {
                            let n = replica.record_scrape_failure();
                            if n == 3 {
                                tracing::warn!(replica = %replica.name, "metrics scrapes failing: {e}");
                            }
                        }
                        Err(_) => {
                            replica.record_scrape_failure();
                        }
                    }
                });
            }
            while scrapes.join_next().await.is_some() {}
        }
    })
}

async fn scrape(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    uri: &str,
    format: crate::config::MetricsFormat,
) -> Result<EngineStats, String> {
    let uri: http::Uri = uri.parse().map_err(|e| format!("bad URL: {e}"))?;
    let response = client.get(uri).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_PAGE_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let page = std::str::from_utf8(&body).map_err(|_| "metrics page is not UTF-8".to_string())?;
    exposition::parse(format, page).map_err(|e| e.to_string())
}
