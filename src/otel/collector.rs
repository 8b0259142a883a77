//! The exporter's HTTP client: posts a batch of spans to the collector on the gateway's Tokio
//! runtime (the SDK's batching thread has none) with hyper, `https://` verified with the
//! system's CA certificates. Each batch is counted by result; the log says when exports start
//! failing and when they work again, not once per batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_http::HttpError;

/// The most of a collector's answer read (it says how many spans it rejected, if any).
const ANSWER_LIMIT: usize = 64 * 1024;

#[derive(Debug)]
pub struct Collector {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    exports: prometheus::IntCounterVec,
    failing: AtomicBool,
}

impl Collector {
    pub fn new(
        runtime: tokio::runtime::Handle,
        timeout: Duration,
        exports: prometheus::IntCounterVec,
    ) -> Self {
        let tls = crate::tls::client_config(&[])
            .map(|config| crate::tls::UpstreamTls {
                config,
                server_name: None,
            })
            .unwrap_or_else(|_| crate::tls::UpstreamTls::unused());
        Self {
            client: Client::builder(TokioExecutor::new()).build(tls.connector()),
            runtime,
            timeout,
            exports,
            failing: AtomicBool::new(false),
        }
    }

    async fn post(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (client, timeout) = (self.client.clone(), self.timeout);
        let sent = self.runtime.spawn(async move {
            let answer = tokio::time::timeout(timeout, async {
                let response = client.request(request.map(Full::new)).await?;
                let (head, body) = response.into_parts();
                let body = Limited::new(body, ANSWER_LIMIT).collect().await?;
                Ok::<_, HttpError>(Response::from_parts(head, body.to_bytes()))
            });
            match answer.await {
                Ok(answer) => answer,
                Err(_) => Err(format!("no answer within {timeout:?}").into()),
            }
        });
        sent.await?
    }

    /// Counts a batch and logs a change between working and failing.
    fn record(&self, failure: Option<String>) {
        let result = if failure.is_some() { "failed" } else { "ok" };
        self.exports.with_label_values(&[result]).inc();
        let was_failing = self.failing.swap(failure.is_some(), Ordering::Relaxed);
        match failure {
            Some(error) if !was_failing => {
                tracing::warn!(%error, "trace export to the OTLP collector failed; spans are dropped until it works (infergate_trace_exports_total)")
            }
            None if was_failing => tracing::info!("trace export to the OTLP collector works again"),
            _ => {}
        }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Collector {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let result = self.post(request).await;
        let failure = match &result {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("status {}", response.status())),
            Err(e) => Some(e.to_string()),
        };
        self.record(failure);
        result
    }
}
