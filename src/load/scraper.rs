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
                let eject_after = pool.config.retries.eject_after_failures;
                let pool = pool.clone();
                scrapes.spawn(async move {
                    let result = tokio::time::timeout(timeout, scrape(&client, &uri, format)).await;
                    match result {
                        Ok(Ok(stats)) => {
                            if replica.is_ejected(Instant::now()) {
                                tracing::info!(pool = pool.name(), replica = %replica.name, "replica answers again: back in routing");
                            }
                            replica.record_scrape(stats, Instant::now());
                        }
                        Ok(Err(ScrapeError::Unreachable(e))) => {
                            // Nothing listens there: the replica is gone, not just its metrics.
                            if replica.record_scrape_failure() >= eject_after {
                                let cause = format!("metrics unreachable ({e}); back when it answers");
                                pool.eject(&replica, Instant::now(), &cause);
                            }
                        }
                        Ok(Err(ScrapeError::Bad(e))) => {
                            // Metrics unreadable but the replica up: its stats go stale and it is
                            // routed on the gateway's own counts; a scrape outage never stops traffic.
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

enum ScrapeError {
    /// No connection could be made.
    Unreachable(String),
    /// A connection, but no readable metrics page.
    Bad(String),
}

async fn scrape(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    uri: &str,
    format: crate::config::MetricsFormat,
) -> Result<EngineStats, ScrapeError> {
    let uri: http::Uri = uri
        .parse()
        .map_err(|e| ScrapeError::Bad(format!("bad URL: {e}")))?;
    let response = client.get(uri).await.map_err(|e| {
        if e.is_connect() {
            ScrapeError::Unreachable(e.to_string())
        } else {
            ScrapeError::Bad(e.to_string())
        }
    })?;
    if !response.status().is_success() {
        return Err(ScrapeError::Bad(format!("status {}", response.status())));
    }
    let body = Limited::new(response.into_body(), MAX_PAGE_BYTES)
        .collect()
        .await
        .map_err(|e| ScrapeError::Bad(e.to_string()))?
        .to_bytes();
    let page = std::str::from_utf8(&body)
        .map_err(|_| ScrapeError::Bad("metrics page is not UTF-8".into()))?;
    exposition::parse(format, page).map_err(|e| ScrapeError::Bad(e.to_string()))
}
