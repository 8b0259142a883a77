//! KEDA's external scaler over gRPC, with a client generated from the same proto: the pool's
//! metric and its value (infergate's own recommendation, as `/admin/status` shows it, rising
//! with load), whether it is active (at once and as a stream), and a clear error for a pool
//! that does not exist.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use infergate::keda::external_scaler_client::ExternalScalerClient;
use infergate::keda::{GetMetricsRequest, ScaledObjectRef};

use crate::support::*;

type Grpc = ExternalScalerClient<
    Client<hyper_util::client::legacy::connect::HttpConnector, tonic::body::Body>,
>;

fn client(addr: std::net::SocketAddr) -> Grpc {
    let http2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    ExternalScalerClient::with_origin(http2, format!("http://{addr}").parse().unwrap())
}

/// A ScaledObject named `name`, with `pool` in its metadata if given.
fn object(name: &str, pool: Option<&str>) -> ScaledObjectRef {
    ScaledObjectRef {
        name: name.into(),
        namespace: "llm".into(),
        scaler_metadata: pool
            .map(|p| HashMap::from([("pool".to_string(), p.to_string())]))
            .unwrap_or_default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keda_reads_the_pools_recommendation_and_activity_over_grpc() {
    // A slow replica, a scaler that recommends without acting, 2 requests in flight per replica.
    let replica = sim("llama-8b-h100").await;
    let gw = GatewayConfig::static_replicas(&[replica.addr])
        .listener("keda: 127.0.0.1:0")
        .pool("scaler: {enabled: true, provider: static, min_replicas: 1, max_replicas: 8, interval: 200ms, scale_up_window: 1s, targets: {concurrency: 2}}")
        .start()
        .await;
    let mut keda = client(gw.keda_addr.expect("listeners.keda is served"));

    let spec = keda
        .get_metric_spec(object("chat-so", Some("p")))
        .await
        .unwrap();
    let specs = &spec.get_ref().metric_specs;
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].metric_name, "infergate-p");
    assert_eq!((specs[0].target_size, specs[0].target_size_float), (1, 1.0));

    // Without `pool`, the ScaledObject's name is the pool's.
    let active = keda.is_active(object("p", None)).await.unwrap();
    assert!(
        active.get_ref().result,
        "min_replicas 1: the pool wants a replica"
    );
    let mut stream = keda
        .stream_is_active(object("p", None))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the current answer at once")
        .unwrap()
        .unwrap();
    assert!(first.result);

    // Load: 12 slow streams on one replica, 2 wanted per replica — the recommendation rises,
    // and KEDA reads the same number the status page shows.
    let url = format!("http://{}/v1/chat/completions", gw.gateway_addr);
    let mut streams = Vec::new();
    for _ in 0..12 {
        let body = serde_json::json!({"model": "m", "stream": true, "max_tokens": 2000,
            "ignore_eos": true, "messages": [{"role": "user", "content": "hi"}]});
        let url = url.clone();
        streams.push(tokio::spawn(async move { post_stream(&url, body).await }));
    }
    let metrics = |keda: &mut Grpc| {
        let mut keda = keda.clone();
        async move {
            let request = GetMetricsRequest {
                scaled_object_ref: Some(object("so", Some("p"))),
                metric_name: "infergate-p".into(),
            };
            let reply = keda.get_metrics(request).await.unwrap().into_inner();
            assert_eq!(reply.metric_values[0].metric_name, "infergate-p");
            reply.metric_values[0].metric_value
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let wanted = metrics(&mut keda).await;
        let status = pool_status(&gw).await["scaler"]["desired"]
            .as_i64()
            .unwrap();
        if wanted > 1 && wanted == status {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "KEDA read {wanted}, the status shows {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for stream in streams {
        stream.abort();
    }

    // A pool that does not exist: NOT_FOUND naming the pools there are.
    let missing = keda.is_active(object("nope", None)).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert!(
        missing.message().contains("pools: p"),
        "{}",
        missing.message()
    );
    gw.shutdown().await;
}
