//! OpenTelemetry: the gateway's request spans reach an OTLP/HTTP collector on 127.0.0.1 with
//! their attributes, continue the client's trace, and the replica gets the gateway's trace
//! context; unsampled requests still carry a trace to the replica; a collector that is down
//! costs no request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use tokio::net::TcpListener;

use crate::support::*;

/// What a [`recorder`] server was sent: each request's path, headers and body.
type Seen = Arc<Mutex<Vec<(String, HeaderMap, Bytes)>>>;

/// A server on 127.0.0.1 that keeps every request and answers each with `answer` (JSON).
async fn recorder(answer: &'static str) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let kept = kept.clone();
                    async move {
                        let (head, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let path = head.uri.path().to_string();
                        kept.lock().unwrap().push((path, head.headers, body));
                        let mut response = hyper::Response::new(Full::new(Bytes::from(answer)));
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(conn), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A replica's whole chat answer, with its usage.
const ANSWER: &str = r#"{"id":"c1","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;

/// The spans the collector was sent, with their resource's `service.name`.
fn exported(collector: &Seen) -> Vec<(String, Span)> {
    let mut spans = Vec::new();
    for (path, headers, body) in collector.lock().unwrap().iter() {
        assert_eq!(path, "/v1/traces");
        assert_eq!(headers["content-type"], "application/x-protobuf");
        let request = ExportTraceServiceRequest::decode(body.as_ref()).expect("OTLP protobuf");
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
    }
    spans
}

fn text(value: &AnyValue) -> Option<String> {
    match value {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        AnyValue::DoubleValue(d) => Some(d.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A span's attribute as text.
fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `traceparent` the replica got with the request whose id is `request_id`.
fn sent_traceparent(replica: &Seen, request_id: &str) -> String {
    let seen = replica.lock().unwrap();
    let (_, headers, _) = seen
        .iter()
        .find(|(_, h, _)| h.get("x-request-id").is_some_and(|id| id == request_id))
        .unwrap_or_else(|| panic!("the replica got request {request_id}"));
    headers
        .get("traceparent")
        .unwrap_or_else(|| panic!("a traceparent with {request_id}"))
        .to_str()
        .unwrap()
        .to_string()
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// With `sample_ratio: 0` only the clients' sampled requests are traced: their spans continue
/// the client's trace, carry the request's pool, replica, model, tokens, prediction and status,
/// and the replica is sent the gateway's span as parent; unsampled requests pass a trace on
/// without exporting anything; a refused request's span has its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_clients_trace_and_reach_the_collector() {
    let (collector, exports) = recorder("").await;
    let (replica, sent) = recorder(ANSWER).await;
    let gw = GatewayConfig::static_replicas(&[replica])
        .top(&format!(
            "tracing: {{otlp_endpoint: \"http://{collector}\", sample_ratio: 0, service_name: gw-test}}"
        ))
        .start()
        .await;
    let url = format!("http://{}/v1/chat/completions", gw.gateway_addr);
    let body = serde_json::to_vec(&json!({"model": "m", "max_tokens": 4,
        "messages": [{"role": "user", "content": "trace me"}]}))
    .unwrap();
    let sampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let unsampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00");
    for (id, traceparent) in [
        ("sampled", Some(sampled.as_str())),
        ("unsampled", Some(unsampled.as_str())),
        ("none", None),
    ] {
        let mut headers = vec![("x-request-id", id)];
        headers.extend(traceparent.map(|t| ("traceparent", t)));
        let reply = send_with(http::Method::POST, &url, &headers, body.clone()).await;
        assert_eq!(reply.status, 200, "{id}: {}", reply.text());
    }
    let unknown = serde_json::to_vec(&json!({"model": "nope", "messages": []})).unwrap();
    let refused = [
        ("x-request-id", "refused"),
        ("traceparent", sampled.as_str()),
    ];
    let reply = send_with(http::Method::POST, &url, &refused, unknown).await;
    assert_eq!(reply.status, 404);

    // The replica is always sent a trace context: the client's trace, the gateway's span.
    let to_replica = sent_traceparent(&sent, "sampled");
    let parts: Vec<&str> = to_replica.split('-').collect();
    assert_eq!(parts.len(), 4, "{to_replica}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", CLIENT_TRACE, "01"));
    assert_ne!(
        parts[2], CLIENT_SPAN,
        "the gateway's own span is the parent"
    );
    let gateway_span = parts[2].to_string();
    let not_sampled = sent_traceparent(&sent, "unsampled");
    assert!(
        not_sampled.starts_with(&format!("00-{CLIENT_TRACE}-")) && not_sampled.ends_with("-00"),
        "{not_sampled}"
    );
    let fresh = sent_traceparent(&sent, "none");
    assert!(
        fresh.ends_with("-00") && !fresh.contains(CLIENT_TRACE),
        "a new, unsampled trace: {fresh}"
    );

    // Shutdown sends the last batch.
    let metrics = gw.state.metrics.clone();
    gw.shutdown().await;
    let spans = exported(&exports);
    assert_eq!(spans.len(), 2, "the two sampled requests: {spans:#?}");
    assert!(spans.iter().all(|(service, _)| service == "gw-test"));
    let (_, ok) = spans
        .iter()
        .find(|(_, s)| attribute(s, "infergate.request_id").as_deref() == Some("sampled"))
        .expect("the sampled request's span");
    assert_eq!(ok.name, "POST /v1/chat/completions");
    assert_eq!(ok.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(hex(&ok.trace_id), CLIENT_TRACE);
    assert_eq!(hex(&ok.parent_span_id), CLIENT_SPAN);
    assert_eq!(hex(&ok.span_id), gateway_span);
    assert!(ok.end_time_unix_nano > ok.start_time_unix_nano);
    for (key, value) in [
        ("http.request.method", "POST".to_string()),
        ("url.path", "/v1/chat/completions".to_string()),
        ("http.response.status_code", "200".to_string()),
        ("gen_ai.request.model", "m".to_string()),
        ("infergate.pool", "p".to_string()),
        ("infergate.replica", replica.to_string()),
        ("infergate.policy", "predicted-ttft".to_string()),
        ("infergate.retries", "0".to_string()),
        ("gen_ai.usage.input_tokens", "5".to_string()),
        ("gen_ai.usage.output_tokens", "1".to_string()),
        ("infergate.usage_reported", "true".to_string()),
    ] {
        assert_eq!(attribute(ok, key), Some(value), "{key} in {ok:#?}");
    }
    for key in [
        "infergate.predicted_ttft_ms",
        "infergate.queue_wait_ms",
        "infergate.first_byte_ms",
    ] {
        let ms: f64 = attribute(ok, key)
            .unwrap_or_else(|| panic!("{key} in {ok:#?}"))
            .parse()
            .unwrap();
        assert!((0.0..10_000.0).contains(&ms), "{key} = {ms}");
    }
    let (_, not_found) = spans
        .iter()
        .find(|(_, s)| attribute(s, "infergate.request_id").as_deref() == Some("refused"))
        .expect("the refused request's span");
    assert_eq!(
        attribute(not_found, "http.response.status_code").as_deref(),
        Some("404")
    );
    assert_eq!(hex(&not_found.trace_id), CLIENT_TRACE);
    let ok_batches = metrics.trace_exports.with_label_values(&["ok"]).get();
    assert!(ok_batches >= 1, "{ok_batches}");
}

/// A collector that is down: requests are answered as ever, the failed batches are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_no_request() {
    let (replica, _sent) = recorder(ANSWER).await;
    let gw = GatewayConfig::static_replicas(&[replica])
        .top(&format!(
            "tracing: {{otlp_endpoint: \"http://127.0.0.1:{}\", export_timeout: 1s}}",
            free_port()
        ))
        .start()
        .await;
    let url = format!("http://{}/v1/chat/completions", gw.gateway_addr);
    for _ in 0..3 {
        let reply = post(&url, json!({"model": "m", "messages": []})).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let metrics = gw.state.metrics.clone();
    tokio::time::timeout(Duration::from_secs(20), gw.shutdown())
        .await
        .expect("shutdown does not wait on the collector beyond its timeouts");
    assert!(metrics.trace_exports.with_label_values(&["failed"]).get() >= 1);
    assert_eq!(metrics.trace_exports.with_label_values(&["ok"]).get(), 0);
}
