//! The per-pool scraper (its parsers: [`exposition`] for the replicas' own pages, [`gpu`] for
//! DCGM samples): polls every replica's `/metrics` over keep-alive connections at the
//! configured interval (all replicas concurrently, each bounded by the scrape timeout and the
//! page-size limit) and stores the parsed [`EngineStats`] on the replica. `https://` replicas
//! are read over TLS with the pool's `upstream_tls`, as requests to them are sent. A failed
//! scrape changes nothing but a failure count; stale stats age out on their own. With
//! `metrics.gpu`, GPU use comes from the same replica pages, or from a DCGM exporter polled on
//! its own interval by the same task (bounded the same way; a failed exporter scrape changes
//! nothing). The same task reads what the replicas serve ([`models`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::task::{JoinHandle, JoinSet};

pub mod exposition;
pub mod gpu;
pub mod models;

use crate::config::{GpuMetric, GpuMetrics};
use crate::pool::PoolState;
use crate::replica::EngineStats;
use exposition::MAX_PAGE_BYTES;

/// Scrapes the pool's replicas until aborted.
pub fn spawn(pool: Arc<PoolState>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client = replica_client(&pool.config);
        match pool.config.metrics.gpu.clone() {
            Some(GpuMetrics {
                url: Some(url),
                metric,
                scrape_interval,
                ..
            }) => {
                let exporter = scrape_exporter(&pool, &client, url, metric, scrape_interval);
                tokio::join!(
                    scrape_replicas(&pool, &client),
                    exporter,
                    models::poll(&pool, &client)
                );
            }
            _ => {
                tokio::join!(
                    scrape_replicas(&pool, &client),
                    models::poll(&pool, &client)
                );
            }
        }
    })
}

/// A client for plain `http://` pages (peer gateways).
pub(crate) type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A client for a pool's replica pages: `https://` ones with the pool's TLS settings.
pub(crate) type ReplicaClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The client a pool's replica pages are read with.
pub(crate) fn replica_client(pool: &crate::config::Pool) -> ReplicaClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(pool.upstream_tls.connector())
}

/// Polls the replicas' own pages until the task is aborted.
async fn scrape_replicas(pool: &Arc<PoolState>, client: &ReplicaClient) {
    let metrics = pool.config.metrics.clone();
    // The GPU metric is read from the replica pages when no exporter is configured.
    let gpu_on_page = metrics
        .gpu
        .as_ref()
        .filter(|g| g.url.is_none())
        .map(|g| g.metric);
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
                let marks = replica.load_marks();
                let result =
                    tokio::time::timeout(timeout, scrape(&client, &uri, format, gpu_on_page)).await;
                match result {
                    Ok(Ok((stats, gpu))) => {
                        let now = Instant::now();
                        replica.record_scrape_from(stats, now, marks);
                        if let Some(gpu) = gpu {
                            replica.record_gpu(gpu, now);
                        }
                    }
                    Ok(Err(ScrapeError::Unreachable(e))) => {
                        // Nothing listens there: the replica is gone, not just its metrics.
                        if replica.record_scrape_failure() >= eject_after {
                            let cause = format!("metrics unreachable ({e})");
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
        // KV capacities may be known now: the prefix index's budgets follow them.
        pool.refresh_prefix_budgets();
        // Fresh counts may show room for a request waiting at the gateway.
        pool.queue.wake();
    }
}

/// Polls a DCGM exporter every `interval` until the task is aborted, storing each replica's GPU
/// use by pod name. A failed scrape is logged once per run of failures and changes nothing: the
/// readings go stale on their own.
async fn scrape_exporter(
    pool: &PoolState,
    client: &ReplicaClient,
    url: http::Uri,
    metric: GpuMetric,
    interval: Duration,
) {
    let timeout = pool.config.metrics.scrape_timeout;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut failing, mut unmatched) = (false, false);
    loop {
        tick.tick().await;
        let body = tokio::time::timeout(timeout, fetch(client, url.clone()))
            .await
            .unwrap_or_else(|_| Err(ScrapeError::Bad(format!("no answer within {timeout:?}"))));
        let result = body.and_then(|body| {
            let page = std::str::from_utf8(&body)
                .map_err(|_| ScrapeError::Bad("metrics page is not UTF-8".into()))?;
            let samples = exposition::samples(page).map_err(|e| ScrapeError::Bad(e.to_string()))?;
            let by_pod = gpu::use_by_pod(metric, &samples);
            let snapshot = pool.snapshot();
            let matched = gpu::record_by_pod(&snapshot.replicas, &by_pod, Instant::now());
            Ok((matched, by_pod.len(), snapshot.replicas.len()))
        });
        match result {
            Ok((matched, pods, replicas)) => {
                if failing {
                    failing = false;
                    tracing::info!(pool = pool.name(), %url, "GPU exporter answers again");
                }
                // A page with pods but none of ours: most likely the replicas' pod names are
                // unknown (static endpoints without `pods`) or the labels differ. Said once.
                let none = matched == 0 && replicas > 0;
                if none && !unmatched {
                    tracing::warn!(pool = pool.name(), %url, pods, "no GPU sample on the exporter's page names a replica's pod (labels exported_pod, pod, Hostname)");
                }
                unmatched = none;
            }
            Err(ScrapeError::Unreachable(e) | ScrapeError::Bad(e)) if !failing => {
                failing = true;
                tracing::warn!(pool = pool.name(), %url, "GPU exporter scrape failed: {e}");
            }
            Err(_) => {}
        }
    }
}

/// What a client connects with: plain, or `https://` too.
pub(crate) trait Connector: Connect + Clone + Send + Sync + 'static {}

impl<C: Connect + Clone + Send + Sync + 'static> Connector for C {}

pub(crate) enum ScrapeError {
    /// No connection could be made.
    Unreachable(String),
    /// A connection, but no readable metrics page.
    Bad(String),
}

/// Reads a replica's page: its engine stats and, when asked, the GPU metric on it.
pub(crate) async fn scrape<C: Connector>(
    client: &Client<C, Empty<Bytes>>,
    uri: &str,
    format: crate::config::MetricsFormat,
    gpu_metric: Option<GpuMetric>,
) -> Result<(EngineStats, Option<f64>), ScrapeError> {
    let uri: http::Uri = uri
        .parse()
        .map_err(|e| ScrapeError::Bad(format!("bad URL: {e}")))?;
    let body = fetch(client, uri).await?;
    let page = std::str::from_utf8(&body)
        .map_err(|_| ScrapeError::Bad("metrics page is not UTF-8".into()))?;
    let samples = exposition::samples(page).map_err(|e| ScrapeError::Bad(e.to_string()))?;
    let stats =
        exposition::engine_stats(format, &samples).map_err(|e| ScrapeError::Bad(e.to_string()))?;
    let gpu = gpu_metric.and_then(|m| gpu::replica_page_use(m, &samples));
    Ok((stats, gpu))
}

/// GETs a metrics page, at most [`MAX_PAGE_BYTES`] of it.
pub(crate) async fn fetch<C: Connector>(
    client: &Client<C, Empty<Bytes>>,
    uri: http::Uri,
) -> Result<Bytes, ScrapeError> {
    fetch_with(client, uri, None).await
}

/// [`fetch`] with a bearer token (a peer gateway's admin listener may require one).
pub(crate) async fn fetch_with<C: Connector>(
    client: &Client<C, Empty<Bytes>>,
    uri: http::Uri,
    bearer: Option<&str>,
) -> Result<Bytes, ScrapeError> {
    let mut request = http::Request::get(uri);
    if let Some(token) = bearer {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::new())
        .map_err(|e| ScrapeError::Bad(e.to_string()))?;
    let response = client.request(request).await.map_err(|e| {
        if e.is_connect() {
            ScrapeError::Unreachable(e.to_string())
        } else {
            ScrapeError::Bad(e.to_string())
        }
    })?;
    if !response.status().is_success() {
        return Err(ScrapeError::Bad(format!("status {}", response.status())));
    }
    Ok(Limited::new(response.into_body(), MAX_PAGE_BYTES)
        .collect()
        .await
        .map_err(|e| ScrapeError::Bad(e.to_string()))?
        .to_bytes())
}
