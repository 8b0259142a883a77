//! OpenTelemetry traces (`tracing` in the config): a server span per request, continuing the
//! client's W3C trace context and passing the gateway's own on to the replica, exported in
//! batches to an OTLP/HTTP collector by the OpenTelemetry SDK ([`collector`] carries them).
//! Unsampled requests still get a span context (so the replica's logs share the trace id) but
//! record nothing: their cost is a header read, two ids and a header written.

mod collector;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use crate::config::Tracing;

/// The gateway's tracer: its spans go to the configured collector.
pub struct Tracer {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl Tracer {
    /// Builds the exporter and its batching thread. Export requests run on the calling Tokio
    /// runtime; `exports` counts the batches by result.
    pub fn start(config: &Tracing, exports: prometheus::IntCounterVec) -> anyhow::Result<Self> {
        let client = collector::Collector::new(
            tokio::runtime::Handle::current(),
            config.export_timeout,
            exports,
        );
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.endpoint.to_string())
            .with_timeout(config.export_timeout)
            .build()?;
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(config.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "infergate");
        Ok(Self {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// A server span for a request named `name` (`POST /v1/chat/completions`), child of the
    /// client's `traceparent` when it sent a valid one.
    pub fn span(&self, headers: &HeaderMap, name: &'static str) -> RequestSpan {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        let span = self
            .tracer
            .span_builder(Cow::Borrowed(name))
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        RequestSpan {
            recording: span.is_recording(),
            span,
        }
    }

    /// Sends the spans not yet exported and stops the exporter (waits up to `timeout`; blocks,
    /// so run it off the runtime's workers).
    pub fn shutdown(self: Arc<Self>, timeout: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(error = %e, "trace spans not all exported at shutdown");
        }
    }
}

/// One request's span. Attributes are set only when it records (sampled).
pub struct RequestSpan {
    span: opentelemetry_sdk::trace::Span,
    recording: bool,
}

impl RequestSpan {
    /// Sampled: its attributes and end are exported.
    pub fn recording(&self) -> bool {
        self.recording
    }

    /// The trace id as 32 hex digits (for the access log).
    pub fn trace_id(&self) -> String {
        self.span.span_context().trace_id().to_string()
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if self.recording {
            self.span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Puts this span's context (`traceparent`, and the client's `tracestate`) in the headers
    /// of the request to the replica, replacing the client's.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let context = Context::new().with_remote_span_context(self.span.span_context().clone());
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    }

    /// Ends the span with the answer's status (a 5xx marks it an error).
    pub fn end(mut self, status: StatusCode) {
        if self.recording {
            self.set("http.response.status_code", i64::from(status.as_u16()));
            if status.is_server_error() {
                self.span.set_status(Status::error(status.to_string()));
            }
        }
        self.span.end();
    }
}

/// Milliseconds as a span attribute.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
