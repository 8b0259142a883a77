//! Several gateways in front of the same replicas: each reads the others' own load (held and
//! in-flight requests) from their `/metrics`, so every scaler sees the cluster's signal; a peer
//! that goes away is reported and the signal falls back to what is still known.

use std::time::{Duration, Instant};

use infergate::app::{self, App};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

async fn gateway(admin: u16, peers: &[u16], replica: std::net::SocketAddr) -> App {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    GatewayConfig::static_replicas(&[replica])
        .admin_listen(std::net::SocketAddr::from(([127, 0, 0, 1], admin)))
        .listener("drain_timeout: 1s")
        .top(&format!(
            "cluster: {{peers: [{}], peer_interval: 100ms, peer_stale_after: 1s}}",
            peers.join(", ")
        ))
        .pool(SUMMING_SCALER)
        .start()
        .await
}

/// A scaler that only recommends, one replica per request in flight.
const SUMMING_SCALER: &str =
    "scaler: {enabled: true, provider: static, interval: 100ms, min_replicas: 1,
          max_replicas: 8, targets: {concurrency: 1}}";

/// Opens a stream through `gw` and leaves it running (the answer is long and slow).
async fn open_stream(gw: &App) -> TcpStream {
    let body = r#"{"model":"m","stream":true,"max_tokens":2000,"ignore_eos":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut conn = TcpStream::connect(gw.gateway_addr).await.unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    conn
}

async fn scaler(gw: &App) -> serde_json::Value {
    let status = get(&format!("http://{}/admin/status", gw.admin_addr))
        .await
        .json();
    status["pools"][0]["scaler"].clone()
}

/// Polls `gw`'s status until `ok` holds for it (or fails after 10 s, showing the last one).
async fn until(gw: &App, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = get(&format!("http://{}/admin/status", gw.admin_addr))
            .await
            .json();
        if ok(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: last status {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_gateway_scales_on_the_sum_of_all_and_on_what_it_still_knows() {
    let mut opts = sim_options("llama-8b-h100");
    opts.speed = 0.01; // a decode step of ~1 s: streams stay open
    let replica = start_sim(opts).await;
    let (port_a, port_b) = (free_port(), free_port());
    // Both list both admin addresses, as a Service's endpoints would: each skips itself.
    let a = gateway(port_a, &[port_a, port_b], replica.addr).await;
    let b = gateway(port_b, &[port_a, port_b], replica.addr).await;

    let mut through_a = Vec::new();
    for _ in 0..3 {
        through_a.push(open_stream(&a).await);
    }
    let mut through_b = Vec::new();
    for _ in 0..2 {
        through_b.push(open_stream(&b).await);
    }
    let five = |s: &serde_json::Value| s["pools"][0]["scaler"]["inflight"] == 5;
    let seen_by_a = until(&a, "a sees 3 + 2 in flight", five).await;
    let seen_by_b = until(&b, "b sees 2 + 3 in flight", five).await;
    for (name, status) in [("a", &seen_by_a), ("b", &seen_by_b)] {
        assert_eq!(
            status["pools"][0]["inflight"],
            if name == "a" { 3 } else { 2 }
        );
        let peers = status["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 1, "{name} lists itself as no peer: {peers:?}");
        assert_eq!(peers[0]["up"], true);
    }
    // One replica per request in flight (target concurrency 1): the same on both.
    let desired = |s: &serde_json::Value| s["pools"][0]["scaler"]["desired"] == 5;
    until(&a, "a recommends 5", desired).await;
    until(&b, "b recommends 5", desired).await;
    // Each publishes its own count for the other.
    let page = get(&format!("http://{}/metrics", b.admin_addr))
        .await
        .text();
    assert_eq!(
        metric(&page, "infergate_pool_inflight", &[("pool", "p")]),
        Some(2.0)
    );

    // b goes away: a says so at once and keeps b's last reading while it is fresh, then falls
    // back to its own load — what it knows, not zero.
    drop(through_b);
    b.shutdown().await;
    let down = until(&a, "a reports b down", |s| s["peers"][0]["up"] == false).await;
    assert!(down["peers"][0]["error"].is_string(), "{down}");
    let own = until(&a, "a falls back to its own load", |s| {
        s["pools"][0]["scaler"]["peers_unknown"] == 1
    })
    .await;
    assert_eq!(own["pools"][0]["scaler"]["inflight"], 3, "{own}");
    assert_eq!(scaler(&a).await["inflight"], 3);
    let page = get(&format!("http://{}/metrics", a.admin_addr))
        .await
        .text();
    let peer_b = format!("127.0.0.1:{port_b}");
    assert_eq!(
        metric(&page, "infergate_peer_up", &[("peer", &peer_b)]),
        Some(0.0)
    );
    drop(through_a);
    a.shutdown().await;
}

/// The same with two `infergate serve` processes, as deployed: each reads the other's page
/// and scales on the sum.
#[tokio::test]
async fn two_serve_processes_scale_on_the_sum_of_both() {
    let mut opts = sim_options("llama-8b-h100");
    opts.speed = 0.01;
    let replica = start_sim(opts).await;
    let (port_a, port_b) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("infergate-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |admin: u16| {
        let path = dir.join(format!("gateway-{admin}.yaml"));
        let yaml = format!(
            "listeners: {{gateway: 127.0.0.1:0, admin: 127.0.0.1:{admin}, drain_timeout: 1s}}
cluster: {{peers: [\"127.0.0.1:{port_a}\", \"127.0.0.1:{port_b}\"], peer_interval: 100ms}}
pools:
  - name: p
    models: [m]
    discovery: {{static: {{endpoints: [\"http://{}\"]}}}}
    scaler: {{enabled: true, provider: static, interval: 100ms, min_replicas: 1, max_replicas: 8,
              targets: {{concurrency: 1}}}}
",
            replica.addr
        );
        std::fs::write(&path, yaml).unwrap();
        path
    };
    let (a, gateway_a, admin_a) = spawn_serve(&file(port_a));
    let (b, gateway_b, admin_b) = spawn_serve(&file(port_b));
    let body = r#"{"model":"m","stream":true,"max_tokens":2000,"ignore_eos":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let open = |gateway: std::net::SocketAddr| async move {
        let mut conn = TcpStream::connect(gateway).await.unwrap();
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(request.as_bytes()).await.unwrap();
        conn
    };
    let _streams = [
        open(gateway_a).await,
        open(gateway_a).await,
        open(gateway_b).await,
    ];
    for admin in [admin_a, admin_b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = get(&format!("http://{admin}/admin/status")).await.json();
            let scaler = &status["pools"][0]["scaler"];
            if scaler["inflight"] == 3 && scaler["desired"] == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "{admin}: {status}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// With an admin token, `/metrics` and `/admin/*` need it (probes do not), and the gateways
/// read each other with it.
#[tokio::test]
async fn an_admin_token_guards_the_admin_listener_and_peers_use_it() {
    let mut opts = sim_options("llama-8b-h100");
    opts.speed = 0.01;
    let replica = start_sim(opts).await;
    let (port_a, port_b) = (free_port(), free_port());
    let with_token = |admin: u16| {
        let config = GatewayConfig::static_replicas(&[replica.addr])
            .admin_listen(std::net::SocketAddr::from(([127, 0, 0, 1], admin)))
            .top(&format!(
                "cluster: {{peers: [\"127.0.0.1:{port_a}\", \"127.0.0.1:{port_b}\"], peer_interval: 100ms}}"
            ))
            .pool("scaler: {enabled: true, provider: static, interval: 100ms, targets: {concurrency: 1}}");
        async move {
            config
                .start_with(app::Options {
                    admin_token: Some("s3cret".into()),
                    ..Default::default()
                })
                .await
        }
    };
    let a = with_token(port_a).await;
    let b = with_token(port_b).await;
    let admin = a.admin_addr;
    assert_eq!(get(&format!("http://{admin}/metrics")).await.status, 401);
    assert_eq!(
        get(&format!("http://{admin}/admin/status")).await.status,
        401
    );
    assert_eq!(get(&format!("http://{admin}/healthz")).await.status, 200);
    assert_eq!(get(&format!("http://{admin}/readyz")).await.status, 200);
    let bearer = [("authorization", "Bearer s3cret")];
    let page = send_with(
        http::Method::GET,
        &format!("http://{admin}/metrics"),
        &bearer,
        "",
    )
    .await;
    assert_eq!(page.status, 200);
    let wrong = [("authorization", "Bearer nope")];
    let reply = send_with(
        http::Method::GET,
        &format!("http://{admin}/metrics"),
        &wrong,
        "",
    )
    .await;
    assert_eq!(reply.status, 401);
    // A stream through b shows in a's signal: a read b's page with the token.
    let stream = open_stream(&b).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = send_with(
            http::Method::GET,
            &format!("http://{admin}/admin/status"),
            &bearer,
            "",
        )
        .await
        .json();
        if status["pools"][0]["scaler"]["inflight"] == 1 {
            assert_eq!(status["peers"][0]["up"], true, "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stream);
    a.shutdown().await;
    b.shutdown().await;
}

/// A gateway in front of `replicas` (in that order) with the other as its peer, routing by
/// predicted TTFT and exchanging routing state every 50 ms (the default).
async fn routing_peer(admin: u16, peer: u16, replicas: &[std::net::SocketAddr]) -> App {
    GatewayConfig::static_replicas(replicas)
        .admin_listen(std::net::SocketAddr::from(([127, 0, 0, 1], admin)))
        .top(&format!(
            "cluster: {{peers: [\"127.0.0.1:{peer}\"], peer_stale_after: 1s}}"
        ))
        .pool("routing: {policy: predicted-ttft}")
        .start()
        .await
}

/// Requests each simulated replica has answered.
async fn answered(replicas: &[&infergate::http_server::Server]) -> Vec<f64> {
    let mut counts = Vec::new();
    for r in replicas {
        let page = get(&format!("http://{}/metrics", r.addr)).await.text();
        counts.push(metric_sum(&page, "vllm:request_success_total", &[]));
    }
    counts
}

#[tokio::test]
async fn gateways_route_on_each_others_requests_in_flight_and_prefix_placements() {
    let mut slow = sim_options("llama-8b-h100");
    slow.speed = 0.01; // a decode step of ~1 s: streams stay open
    let (r1, r2) = (start_sim(slow.clone()).await, start_sim(slow).await);
    let (port_a, port_b) = (free_port(), free_port());
    // The two list the replicas in opposite orders: with nothing else to go by, each would
    // send the same prompt to a different one (ties go to the first listed).
    let a = routing_peer(port_a, port_b, &[r1.addr, r2.addr]).await;
    let b = routing_peer(port_b, port_a, &[r2.addr, r1.addr]).await;

    // A stream through a: b's status shows it on that replica as the peers' in flight.
    let stream = open_stream(&a).await;
    let seen = until(&b, "b sees a's stream", |s| {
        s["pools"][0]["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["peers_inflight"] == 1)
    })
    .await;
    let replicas = seen["pools"][0]["replicas"].as_array().unwrap();
    assert!(replicas.iter().all(|r| r["inflight"] == 0), "{seen}");
    assert_eq!(
        replicas
            .iter()
            .map(|r| r["peers_inflight"].as_u64().unwrap())
            .sum::<u64>(),
        1
    );
    drop(stream);
    until(&b, "the stream ended: nothing in flight from a", |s| {
        s["pools"][0]["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["peers_inflight"] == 0)
    })
    .await;

    // A long prompt through a, then the same prompt through b three times: b sends it where
    // a did, the replica whose cache holds it, though b lists the other one first.
    let before = answered(&[&r1, &r2]).await;
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(200);
    let request = serde_json::json!({
        "model": "m", "max_tokens": 1,
        "messages": [{"role": "user", "content": prompt}],
    });
    let url = |gw: &App| format!("http://{}/v1/chat/completions", gw.gateway_addr);
    assert_eq!(post(&url(&a), request.clone()).await.status, 200);
    let after_a = answered(&[&r1, &r2]).await;
    let chosen = (0..2).find(|&i| after_a[i] > before[i]).unwrap();
    let page = || async {
        get(&format!("http://{}/metrics", b.admin_addr))
            .await
            .text()
    };
    let peer_a = format!("127.0.0.1:{port_a}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_sum(
        &page().await,
        "infergate_peer_placements_total",
        &[("peer", &peer_a)],
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "b never read a's placement");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        assert_eq!(post(&url(&b), request.clone()).await.status, 200);
    }
    let after_b = answered(&[&r1, &r2]).await;
    assert_eq!(
        after_b[chosen] - after_a[chosen],
        3.0,
        "{after_a:?} -> {after_b:?}"
    );
    assert_eq!(after_b[1 - chosen], after_a[1 - chosen]);
    a.shutdown().await;
    b.shutdown().await;
}
