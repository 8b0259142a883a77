//! Kubernetes discovery, the scale provider and leader election against the fake API server
//! in [`crate::fake_kube`], with real simulator replicas behind the fake endpoints: endpoints
//! appear, become ready and terminate; the API goes away and comes back (routing goes on,
//! `/readyz` says so, the watch relists after `410 Gone`); two gateways compete for the lease;
//! a scale-down drains before it lowers `replicas` and annotates the right pod; a hand edit is
//! kept; a 403 names the missing permission. The last test runs against a real cluster.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use infergate::app::{App, Options};
use infergate::kubernetes::KubeContext;
use serde_json::{Value, json};

use crate::fake_kube::{DEPLOYMENTS, FakeKube, LEASES, PODS, SLICES};
use crate::support::*;

/// An EndpointSlice of Service `sim` with one endpoint (pod `pod`) at `addr`. The first port
/// is a decoy, so only the named port `http` reaches the replica.
fn slice(pod: &str, addr: SocketAddr, ready: bool, terminating: bool) -> Value {
    json!({
        "metadata": {"name": format!("sim-{pod}"), "labels": {"kubernetes.io/service-name": "sim"}},
        "addressType": "IPv4",
        "ports": [{"name": "metrics", "port": 1, "protocol": "TCP"},
                  {"name": "http", "port": addr.port(), "protocol": "TCP"}],
        "endpoints": [{
            "addresses": [addr.ip().to_string()],
            "conditions": {"ready": ready && !terminating, "serving": ready, "terminating": terminating},
            "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"},
            "nodeName": "gpu-node-1",
        }],
    })
}

fn pod(name: &str, addr: SocketAddr, ready: bool) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"app": "sim"}},
        "spec": {"nodeName": "gpu-node-2", "containers": [{"name": "sim", "ports": [
            {"name": "metrics", "containerPort": 1}, {"name": "http", "containerPort": addr.port()}]}]},
        "status": {"phase": "Running", "podIP": addr.ip().to_string(),
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    })
}

/// A ready replica as the cluster shows it: its pod and its EndpointSlice.
fn add_replica(fake: &FakeKube, name: &str, addr: SocketAddr) {
    fake.apply(PODS, pod(name, addr, true));
    fake.apply(SLICES, slice(name, addr, true, false));
}

fn deployment(replicas: u32) -> Value {
    json!({"metadata": {"name": "sim"}, "spec": {"replicas": replicas}, "status": {"replicas": replicas}})
}

/// A gateway whose one pool `p` is discovered through the fake; `scaler` is the pool's scaler
/// section (YAML flow mapping) or empty.
async fn gateway(fake: &FakeKube, who: &str, discovery: &str, scaler: &str, lease: bool) -> App {
    gateway_in(fake, who, discovery, scaler, lease, None).await
}

/// [`gateway`] as one of several: its admin address, and the other gateways' (peers).
async fn gateway_in(
    fake: &FakeKube,
    who: &str,
    discovery: &str,
    scaler: &str,
    lease: bool,
    cluster: Option<(u16, &[u16])>,
) -> App {
    let scaler = if scaler.is_empty() {
        String::new()
    } else {
        format!(
            "scaler: {{enabled: true, interval: 100ms, scale_up_window: 500ms, scale_down_window: 500ms,
          scale_down_stabilization: 1s, drain_timeout: 20s,
          targets: {{concurrency: 4, kv_cache_usage: null, queue_wait: null}},
          provider: {{kubernetes: {{api_version: apps/v1, kind: Deployment, name: sim}}}}, {scaler}}}"
        )
    };
    let kube = KubeContext {
        client: fake.client(who),
        identity: who.into(),
    };
    let mut config = GatewayConfig::kubernetes(discovery)
        .listener("drain_timeout: 5s")
        .listener("worker_threads: 1")
        .top(&format!(
            "leader_election: {{enabled: {lease}, lease_name: infergate-leader, lease_duration: 2s}}"
        ))
        .pool("routing: {policy: least-inflight}")
        .pool(&scaler);
    if let Some((admin, peers)) = cluster {
        let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        config = config
            .admin_listen(SocketAddr::from(([127, 0, 0, 1], admin)))
            .top(&format!(
                "cluster: {{peers: [{}], peer_interval: 100ms}}",
                peers.join(", ")
            ));
    }
    config
        .start_with(Options {
            kube: Some(kube),
            ..Default::default()
        })
        .await
}

const BY_SERVICE: &str = "{service: sim, port: http}";

/// The replicas routing now, by address.
async fn routed(gw: &App) -> Vec<String> {
    let mut names: Vec<String> = replicas(&pool_status(gw).await)
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

async fn chat(gw: &App) -> Reply {
    post(
        &format!("http://{}/v1/chat/completions", gw.gateway_addr),
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_endpoint_slices_appear_become_ready_and_terminate() {
    let (a, b) = (sim("llama-8b-h100").await, sim("llama-8b-h100").await);
    let fake = FakeKube::start().await;
    fake.apply(SLICES, slice("sim-a", a.addr, true, false));
    // A slice of another Service is not ours.
    let mut other = slice("other", b.addr, true, false);
    other["metadata"] = json!({"name": "other", "labels": {"kubernetes.io/service-name": "other"}});
    fake.apply(SLICES, other);
    let gw = gateway(&fake, "gw", BY_SERVICE, "", false).await;
    assert_eq!(
        routed(&gw).await,
        [a.addr.to_string()],
        "the named port, ours only"
    );
    assert_eq!(chat(&gw).await.status, 200);

    fake.apply(SLICES, slice("sim-b", b.addr, false, false));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        routed(&gw).await.len(),
        1,
        "a not-ready endpoint takes no traffic"
    );
    fake.apply(SLICES, slice("sim-b", b.addr, true, false));
    let both = {
        let mut v = vec![a.addr.to_string(), b.addr.to_string()];
        v.sort();
        v
    };
    eventually(Duration::from_secs(5), "b joins", async || {
        routed(&gw).await == both
    })
    .await;

    // Terminating (still serving): out of routing at once, and every request still answered.
    fake.apply(SLICES, slice("sim-a", a.addr, true, true));
    eventually(Duration::from_secs(1), "a leaves", async || {
        routed(&gw).await == [b.addr.to_string()]
    })
    .await;
    for _ in 0..4 {
        assert_eq!(chat(&gw).await.status, 200);
    }
    fake.delete(SLICES, "sim-sim-b");
    eventually(Duration::from_secs(1), "b leaves", async || {
        routed(&gw).await.is_empty()
    })
    .await;
    gw.shutdown().await;
}

/// `scheme: https`: the endpoints (pod IPs) are spoken to over TLS, for requests and scrapes,
/// verified with the pool's CA against the Service's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_endpoints_with_scheme_https_are_reached_over_tls() {
    use crate::tls::{TestCa, tls_front};
    let replica = sim("llama-8b-h100").await;
    let ca = TestCa::new("kube");
    let (front, handshakes) = tls_front(replica.addr, &ca.issue(&["sim.default.svc"], "sim")).await;
    let fake = FakeKube::start().await;
    fake.apply(SLICES, slice("sim-a", front, true, false));
    let tls = format!(
        "upstream_tls: {{ca: {:?}, server_name: sim.default.svc}}\nmetrics: {{scrape_interval: 50ms}}",
        ca.ca_file()
    );
    let gw = GatewayConfig::kubernetes("{service: sim, port: http, scheme: https}")
        .pool(&tls)
        .start_with(Options {
            kube: Some(KubeContext {
                client: fake.client("gw"),
                identity: "gw".into(),
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(routed(&gw).await, [front.to_string()]);
    assert_eq!(chat(&gw).await.status, 200);
    assert_eq!(requests_finished(replica.addr).await, 1.0);
    eventually(Duration::from_secs(5), "scraped over TLS", async || {
        replicas(&pool_status(&gw).await)[0]["engine"].is_object()
    })
    .await;
    assert!(handshakes.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_pods_by_selector_route_on_the_named_container_port() {
    let (a, b) = (sim("llama-8b-h100").await, sim("llama-8b-h100").await);
    let fake = FakeKube::start().await;
    fake.apply(PODS, pod("sim-0", a.addr, true));
    fake.apply(PODS, pod("sim-1", b.addr, false));
    let mut stranger = pod("stranger", b.addr, true);
    stranger["metadata"]["labels"] = json!({"app": "else"});
    fake.apply(PODS, stranger);
    let gw = gateway(&fake, "gw", "{selector: {app: sim}, port: http}", "", false).await;
    assert_eq!(routed(&gw).await, [a.addr.to_string()]);
    fake.apply(PODS, pod("sim-1", b.addr, true));
    eventually(Duration::from_secs(5), "sim-1 ready", async || {
        routed(&gw).await.len() == 2
    })
    .await;
    // Deletion starts: the pod is terminating and leaves routing before it is gone.
    fake.edit(PODS, "sim-0", |p| {
        p["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into()
    });
    eventually(Duration::from_secs(1), "sim-0 leaves", async || {
        routed(&gw).await == [b.addr.to_string()]
    })
    .await;
    assert_eq!(chat(&gw).await.status, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_api_outage_keeps_routing_says_so_and_relists_after_gone() {
    let (a, b) = (sim("llama-8b-h100").await, sim("llama-8b-h100").await);
    let fake = FakeKube::start().await;
    fake.apply(SLICES, slice("sim-a", a.addr, true, false));
    fake.apply(SLICES, slice("sim-b", b.addr, true, false));
    fake.apply(DEPLOYMENTS, deployment(2));
    let gw = gateway(
        &fake,
        "gw",
        BY_SERVICE,
        "min_replicas: 2, max_replicas: 2",
        true,
    )
    .await;
    eventually(Duration::from_secs(5), "leads", async || {
        gateway_metric(&gw, "infergate_leader", &[]).await == Some(1.0)
    })
    .await;
    assert_eq!(routed(&gw).await.len(), 2);

    // Long enough for lease renewals (other objects) and bookmarks carrying their versions.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fake.set_up(false);
    let went_down = Instant::now();
    eventually(Duration::from_secs(5), "api down seen", async || {
        gateway_metric(&gw, "infergate_kubernetes_api_up", &[("pool", "p")]).await == Some(0.0)
    })
    .await;
    let ready = readyz(&gw).await;
    assert_eq!(ready.status, 200, "routing goes on: {}", ready.text());
    let detail = ready.json()["detail"]["p"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        detail.contains("Kubernetes API unreachable") && detail.contains("last known 2 replica"),
        "{detail}"
    );
    for _ in 0..4 {
        assert_eq!(
            chat(&gw).await.status,
            200,
            "served by the last known replicas"
        );
    }
    // The leader cannot renew: it stops acting within the lease duration (2 s).
    eventually(Duration::from_secs(3), "leadership lapses", async || {
        gateway_metric(&gw, "infergate_leader", &[]).await == Some(0.0)
    })
    .await;
    assert!(
        went_down.elapsed() < Duration::from_millis(2600),
        "within the lease duration"
    );
    let errors = gateway_metric(
        &gw,
        "infergate_kubernetes_watch_errors_total",
        &[("pool", "p")],
    )
    .await;
    assert!(errors.unwrap_or(0.0) >= 1.0, "{errors:?}");

    // Meanwhile sim-b goes away and the server forgets the history: the watch must relist.
    fake.delete(SLICES, "sim-sim-b");
    fake.compact();
    fake.set_up(true);
    eventually(Duration::from_secs(20), "relisted after 410", async || {
        routed(&gw).await == [a.addr.to_string()]
    })
    .await;
    eventually(Duration::from_secs(5), "api up", async || {
        gateway_metric(&gw, "infergate_kubernetes_api_up", &[("pool", "p")]).await == Some(1.0)
    })
    .await;
    let ready = readyz(&gw).await.json();
    assert_eq!(ready["detail"], json!({}), "{ready}");
    let slice_watches: Vec<_> = fake
        .watches()
        .into_iter()
        .filter(|w| w.collection == SLICES)
        .collect();
    assert!(
        slice_watches.iter().all(|w| w.bookmarks),
        "bookmarks asked for: {slice_watches:?}"
    );
    // Resumed from where the bookmarks had moved it (no slice changed before the outage, the
    // lease did), and was sent back to relist.
    let gone = slice_watches
        .iter()
        .find(|w| w.gone)
        .expect("a watch got 410 Gone");
    assert!(gone.from > slice_watches[0].from, "{slice_watches:?}");
    // And new objects arrive through the new watch.
    fake.apply(SLICES, slice("sim-b", b.addr, true, false));
    eventually(Duration::from_secs(5), "b back", async || {
        routed(&gw).await.len() == 2
    })
    .await;
    gw.shutdown().await;
}

/// The scale patches `client` sent, as the replica counts they asked for.
fn scale_patches(fake: &FakeKube, client: &str) -> Vec<u64> {
    fake.writes()
        .iter()
        .filter(|w| {
            w.client == client
                && w.method == "PATCH"
                && w.path.ends_with("/deployments/sim/scale")
                && w.status == 200
        })
        .map(|w| w.body["spec"]["replicas"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_two_gateways_only_the_lease_holder_scales_and_the_other_takes_over() {
    let a = sim("llama-8b-h100").await;
    let fake = FakeKube::start().await;
    fake.apply(SLICES, slice("sim-a", a.addr, true, false));
    fake.apply(DEPLOYMENTS, deployment(1));
    let scaler = "min_replicas: 2, max_replicas: 3";
    let gw_a = gateway(&fake, "gw-a", BY_SERVICE, scaler, true).await;
    let gw_b = gateway(&fake, "gw-b", BY_SERVICE, scaler, true).await;
    eventually(
        Duration::from_secs(5),
        "scaled to the minimum",
        async || fake.get(DEPLOYMENTS, "sim").unwrap()["spec"]["replicas"] == 2,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let holder = fake.get(LEASES, "infergate-leader").unwrap()["spec"]["holderIdentity"]
        .as_str()
        .unwrap()
        .to_string();
    let (leader, follower) = if holder == "gw-a" {
        (gw_a, gw_b)
    } else {
        (gw_b, gw_a)
    };
    let follower_name = if holder == "gw-a" { "gw-b" } else { "gw-a" };
    assert_eq!(
        scale_patches(&fake, &holder),
        [2],
        "one write, by the leader"
    );
    assert!(scale_patches(&fake, follower_name).is_empty());
    // Both route; the follower computes the same recommendation without acting on it.
    assert_eq!(routed(&follower).await, [a.addr.to_string()]);
    let scaler = &pool_status(&follower).await["scaler"];
    assert_eq!(
        (scaler["desired"].as_u64(), scaler["acting"].as_bool()),
        (Some(2), Some(false)),
        "{scaler}"
    );
    assert_eq!(pool_status(&leader).await["scaler"]["acting"], true);

    // The leader stops (handing the lease back); a hand edit lowers replicas; the follower,
    // now leader, restores the minimum.
    leader.shutdown().await;
    eventually(Duration::from_secs(3), "takeover", async || {
        fake.get(LEASES, "infergate-leader").unwrap()["spec"]["holderIdentity"] == follower_name
    })
    .await;
    fake.edit(DEPLOYMENTS, "sim", |d| d["spec"]["replicas"] = 1.into());
    eventually(Duration::from_secs(5), "the new leader acts", async || {
        scale_patches(&fake, follower_name) == [2]
    })
    .await;
    assert_eq!(
        fake.get(LEASES, "infergate-leader").unwrap()["spec"]["leaseTransitions"],
        1
    );
    follower.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_scale_down_annotates_the_victim_drains_it_then_lowers_replicas() {
    let (a, b) = (sim("llama-8b-h100").await, sim("llama-8b-h100").await);
    let fake = FakeKube::start().await;
    add_replica(&fake, "sim-a", a.addr);
    add_replica(&fake, "sim-b", b.addr);
    fake.apply(DEPLOYMENTS, deployment(2));
    let gw = gateway(
        &fake,
        "gw",
        BY_SERVICE,
        "min_replicas: 1, max_replicas: 2",
        false,
    )
    .await;
    // Two long streams, one per replica (least in flight): 2 in flight need 1 replica at 4 each.
    let url = format!("http://{}/v1/chat/completions", gw.gateway_addr);
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "tell a story"}],
                      "max_tokens": 500, "ignore_eos": true, "stream": true});
    let streams: Vec<_> = (0..2)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move { post_stream(&url, body).await })
        })
        .collect();
    let by_pod = |addr: SocketAddr| if addr == a.addr { "sim-a" } else { "sim-b" };
    eventually(
        Duration::from_secs(10),
        "one replica leaves routing",
        async || routed(&gw).await.len() == 1,
    )
    .await;
    let kept = routed(&gw).await[0].clone();
    let victim = if kept == a.addr.to_string() {
        b.addr
    } else {
        a.addr
    };
    let victim_pod = by_pod(victim);
    let cost = |pod: &str| {
        fake.get(PODS, pod).unwrap()["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"].clone()
    };
    assert_eq!(cost(victim_pod), "-2147483648", "the victim goes first");
    let kept_pod = if victim_pod == "sim-a" {
        "sim-b"
    } else {
        "sim-a"
    };
    assert!(cost(kept_pod).is_null(), "the other pod is left alone");
    // Still draining: replicas is not lowered while the victim's answer streams.
    assert_eq!(fake.get(DEPLOYMENTS, "sim").unwrap()["spec"]["replicas"], 2);
    assert!(
        !streams.iter().all(|s| s.is_finished()),
        "the streams outlast the decision"
    );
    // Every answer completes.
    for stream in streams {
        assert_eq!(stream_to_done(stream).await.len(), 500);
    }
    eventually(
        Duration::from_secs(5),
        "replicas lowered after the drain",
        async || fake.get(DEPLOYMENTS, "sim").unwrap()["spec"]["replicas"] == 1,
    )
    .await;
    let writes = fake.writes();
    let annotate_at = writes
        .iter()
        .position(|w| w.path.contains("/pods/"))
        .unwrap();
    let lower_at = writes
        .iter()
        .position(|w| w.path.ends_with("/scale"))
        .unwrap();
    assert!(
        annotate_at < lower_at,
        "annotated before replicas were lowered"
    );
    // The victim stays out of routing while its pod still exists.
    assert_eq!(routed(&gw).await, [kept]);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_hand_edit_of_replicas_is_the_new_current_value() {
    let (a, b, c) = (
        sim("llama-8b-h100").await,
        sim("llama-8b-h100").await,
        sim("llama-8b-h100").await,
    );
    let fake = FakeKube::start().await;
    add_replica(&fake, "sim-a", a.addr);
    fake.apply(DEPLOYMENTS, deployment(1));
    let gw = gateway(
        &fake,
        "gw",
        BY_SERVICE,
        "min_replicas: 1, max_replicas: 4",
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Someone scales to 3 by hand: the scaler counts the two pods to come as starting and
    // does not undo the edit while they start.
    fake.edit(DEPLOYMENTS, "sim", |d| d["spec"]["replicas"] = 3.into());
    eventually(Duration::from_secs(3), "edit seen", async || {
        pool_status(&gw).await["scaler"]["starting"] == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let scaler = &pool_status(&gw).await["scaler"];
    assert_eq!(scaler["desired"], 3, "{scaler}");
    assert_eq!(fake.get(DEPLOYMENTS, "sim").unwrap()["spec"]["replicas"], 3);
    assert!(
        scale_patches(&fake, "gw").is_empty(),
        "no write against the edit"
    );
    // The pods come up; with no load the scaler then steps down from 3, one at a time.
    add_replica(&fake, "sim-b", b.addr);
    add_replica(&fake, "sim-c", c.addr);
    eventually(
        Duration::from_secs(10),
        "scales down from the edited value",
        async || scale_patches(&fake, "gw").first() == Some(&2),
    )
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_conflicting_scale_write_is_retried_on_the_fresh_object() {
    let a = sim("llama-8b-h100").await;
    let fake = FakeKube::start().await;
    add_replica(&fake, "sim-a", a.addr);
    fake.apply(DEPLOYMENTS, deployment(1));
    // The scaler will raise 1 → 2; someone sets 3 just before its patch lands.
    fake.race_next_scale_patch(3);
    let gw = gateway(
        &fake,
        "gw",
        BY_SERVICE,
        "min_replicas: 2, max_replicas: 4",
        false,
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the patch meets the other write",
        async || fake.writes().iter().any(|w| w.status == 409),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Re-read: 3 already covers the 2 it wanted, so it writes nothing over the other writer.
    assert_eq!(fake.get(DEPLOYMENTS, "sim").unwrap()["spec"]["replicas"], 3);
    assert!(scale_patches(&fake, "gw").is_empty(), "{:?}", fake.writes());
    let scaler = &pool_status(&gw).await["scaler"];
    assert!(
        scaler["error"].is_null(),
        "a conflict is no error: {scaler}"
    );
    assert_eq!(
        scaler["starting"], 2,
        "the other writer's replicas count as coming: {scaler}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_forbidden_scale_names_the_missing_verb_and_resource() {
    let a = sim("llama-8b-h100").await;
    let fake = FakeKube::start().await;
    fake.apply(SLICES, slice("sim-a", a.addr, true, false));
    fake.apply(DEPLOYMENTS, deployment(1));
    fake.deny("patch", "deployments/scale");
    let gw = gateway(
        &fake,
        "gw",
        BY_SERVICE,
        "min_replicas: 2, max_replicas: 2",
        false,
    )
    .await;
    eventually(Duration::from_secs(5), "error reported", async || {
        !pool_status(&gw).await["scaler"]["error"].is_null()
    })
    .await;
    let error = pool_status(&gw).await["scaler"]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("forbidden")
            && error.contains("`patch` deployments.apps/scale in namespace `default`"),
        "{error}"
    );
    assert_eq!(fake.get(DEPLOYMENTS, "sim").unwrap()["spec"]["replicas"], 1);
    // Discovery without `list` on EndpointSlices says so in /readyz.
    let fake2 = FakeKube::start().await;
    fake2.deny("list", "endpointslices");
    let gw2 = gateway(&fake2, "gw2", BY_SERVICE, "", false).await;
    let ready = readyz(&gw2).await.json();
    let detail = ready["detail"]["p"].as_str().unwrap_or_default();
    assert!(
        detail.contains("may not `list` endpointslices.discovery.k8s.io"),
        "{ready}"
    );
    gw.shutdown().await;
    gw2.shutdown().await;
}

/// Against a real cluster: set `KUBECONFIG`, `INFERGATE_TEST_SERVICE` (a Service of OpenAI-
/// compatible replicas serving `INFERGATE_TEST_MODEL`, port `INFERGATE_TEST_PORT`, default
/// `http`) and `INFERGATE_TEST_DEPLOYMENT` (its Deployment), then
/// `cargo test --test it kube_real_cluster -- --ignored`. The gateway must reach the pod IPs
/// (run it in the cluster, or on a node). It scales the Deployment up by one and back down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster (KUBECONFIG)"]
async fn kube_real_cluster_discovers_routes_and_scales() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("set {name}"));
    assert!(std::env::var("KUBECONFIG").is_ok(), "set KUBECONFIG");
    let (service, deployment) = (
        var("INFERGATE_TEST_SERVICE"),
        var("INFERGATE_TEST_DEPLOYMENT"),
    );
    let model = var("INFERGATE_TEST_MODEL");
    let port = std::env::var("INFERGATE_TEST_PORT").unwrap_or_else(|_| "http".into());
    let kube = KubeContext::infer().await.unwrap();
    let scale_api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::default_namespaced(kube.client.clone());
    let before = scale_api
        .get_scale(&deployment)
        .await
        .unwrap()
        .spec
        .unwrap()
        .replicas
        .unwrap() as u32;
    let gw = GatewayConfig::kubernetes(&format!("{{service: {service}, port: {port}}}"))
        .top("leader_election: {enabled: true, lease_name: infergate-test-leader, lease_duration: 5s}")
        .models(&[&model])
        .pool(&format!(
            "scaler: {{enabled: true, interval: 500ms, min_replicas: {up}, max_replicas: {up},
          provider: {{kubernetes: {{api_version: apps/v1, kind: Deployment, name: {deployment}}}}}}}",
            up = before + 1
        ))
        .start_with(Options {
            kube: Some(kube),
            ..Default::default()
        })
        .await;
    assert!(
        !routed(&gw).await.is_empty(),
        "ready endpoints of {service} are routed"
    );
    let reply = post(
        &format!("http://{}/v1/chat/completions", gw.gateway_addr),
        json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    eventually(Duration::from_secs(30), "scaled up by one", async || {
        scale_api
            .get_scale(&deployment)
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas
            == Some(before as i32 + 1)
    })
    .await;
    gw.shutdown().await;
    let restore = json!({"spec": {"replicas": before}});
    scale_api
        .patch_scale(
            &deployment,
            &Default::default(),
            &kube::api::Patch::Merge(&restore),
        )
        .await
        .unwrap();
}

/// A holder that dies without handing the lease back: the other replica takes over once it
/// has seen the lease unrenewed for a whole lease duration, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_lease_is_taken_over_only_after_the_holder_stops_renewing() {
    use infergate::kubernetes::lease::{Elector, Leadership};
    let fake = FakeKube::start().await;
    let elect = |who: &str| {
        let leadership = std::sync::Arc::new(Leadership::new(
            who.into(),
            prometheus::IntGauge::new(format!("leader_{}", who.replace('-', "_")), "test").unwrap(),
        ));
        let elector = Elector::new(
            kube::Api::namespaced(fake.client(who), "default"),
            "infergate-leader".into(),
            "default".into(),
            Duration::from_secs(2),
        );
        (elector.spawn(leadership.clone()), leadership)
    };
    let (task_a, a) = elect("gw-a");
    eventually(Duration::from_secs(3), "a leads", async || a.is_leader()).await;
    // b tells a chat webhook when it takes over.
    let hook = crate::chatops::receiver(false).await;
    let webhook = infergate::config::Webhook {
        url: infergate::config::Secret(hook.url.clone()),
        format: infergate::config::WebhookFormat::Json,
        events: vec![infergate::config::EventKind::Leader],
        min_interval: Duration::from_millis(100),
    };
    let metrics = infergate::metrics::Metrics::new();
    let (notifier, _senders) = infergate::notify::Notifier::start(&[webhook], "gw-b", &metrics);
    let (task_b, b) = elect("gw-b");
    let _ = b.notifier.set(notifier);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(a.is_leader() && !b.is_leader(), "a renews, b waits");
    task_a.abort(); // a crashes: no release
    let crashed = Instant::now();
    eventually(Duration::from_secs(5), "b takes over", async || {
        b.is_leader()
    })
    .await;
    eventually(Duration::from_secs(5), "chat is told", async || {
        crate::chatops::messages(&hook).iter().any(|m| {
            m["events"][0]["kind"] == "leader"
                && m["events"][0]["text"] == "gw-b became the leader: it resizes pools"
        })
    })
    .await;
    assert!(
        crashed.elapsed() >= Duration::from_millis(1300),
        "not before the lease could have run out ({:?})",
        crashed.elapsed()
    );
    let lease = fake.get(LEASES, "infergate-leader").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "gw-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    task_b.abort();
}

/// Two gateways, `gw-a` and `gw-b`, in front of the fake's pool, each reading the other's page,
/// with leader election; returns (leader, follower, the leader's name) once one leads.
async fn two_gateways(fake: &FakeKube, scaler: &str) -> (App, App, String) {
    let (port_a, port_b) = (free_port(), free_port());
    let ports = [port_a, port_b];
    let a = Some((port_a, &ports[..]));
    let gw_a = gateway_in(fake, "gw-a", BY_SERVICE, scaler, true, a).await;
    let gw_b = gateway_in(
        fake,
        "gw-b",
        BY_SERVICE,
        scaler,
        true,
        Some((port_b, &ports)),
    )
    .await;
    eventually(Duration::from_secs(5), "a leader", async || {
        fake.get(LEASES, "infergate-leader")
            .is_some_and(|l| l["spec"]["holderIdentity"].is_string())
    })
    .await;
    let holder = fake.get(LEASES, "infergate-leader").unwrap()["spec"]["holderIdentity"]
        .as_str()
        .unwrap()
        .to_string();
    if holder == "gw-a" {
        (gw_a, gw_b, holder)
    } else {
        (gw_b, gw_a, holder)
    }
}

/// Two gateways in front of one pool, each reading the other: when the leader scales down, the
/// follower stops sending to the victim too (it reads the victim as draining on the leader's
/// page), and the leader lowers `replicas` only once the victim's own page shows nothing
/// running — so the follower's stream on the victim, which the leader cannot see in flight,
/// is not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_scale_down_with_two_gateways_drains_the_victim_on_both() {
    let (a, b) = (sim("llama-8b-h100").await, sim("llama-8b-h100").await);
    let fake = FakeKube::start().await;
    add_replica(&fake, "sim-a", a.addr);
    add_replica(&fake, "sim-b", b.addr);
    fake.apply(DEPLOYMENTS, deployment(2));
    let (leader, follower, _) = two_gateways(&fake, "min_replicas: 1, max_replicas: 2").await;
    // Two long streams through the follower only: one on each replica (least in flight).
    let url = format!("http://{}/v1/completions", follower.gateway_addr);
    let streams: Vec<_> = (0..2)
        .map(|_| spawn_stream(&url, streamed_completion("tell a story", 500)))
        .collect();
    let annotated = || {
        ["sim-a", "sim-b"].into_iter().find(|pod| {
            !fake.get(PODS, pod).unwrap()["metadata"]["annotations"]
                ["controller.kubernetes.io/pod-deletion-cost"]
                .is_null()
        })
    };
    eventually(
        Duration::from_secs(10),
        "the leader picks a victim",
        async || annotated().is_some(),
    )
    .await;
    let victim = if annotated() == Some("sim-a") {
        a.addr
    } else {
        b.addr
    };
    eventually(
        Duration::from_secs(3),
        "the follower stops sending to the victim",
        async || !routed(&follower).await.contains(&victim.to_string()),
    )
    .await;
    let leader_status = pool_status(&leader).await;
    assert_eq!(
        leader_status["scaler"]["inflight"], 2,
        "the leader counts the follower's streams: {leader_status}"
    );
    assert_eq!(
        fake.get(DEPLOYMENTS, "sim").unwrap()["spec"]["replicas"],
        2,
        "not lowered while the follower's answer streams from the victim"
    );
    assert!(!streams.iter().all(|s| s.is_finished()));
    for stream in streams {
        assert_eq!(
            stream_to_done(stream).await.len(),
            500,
            "every answer whole"
        );
    }
    eventually(
        Duration::from_secs(5),
        "replicas lowered once the victim is idle",
        async || fake.get(DEPLOYMENTS, "sim").unwrap()["spec"]["replicas"] == 1,
    )
    .await;
    leader.shutdown().await;
    follower.shutdown().await;
}

/// A pool at zero behind two gateways: a request held at the follower reaches the leader's
/// signal through the follower's page, the leader scales the pool up, and the held request is
/// answered once the replica is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_a_request_held_at_the_follower_scales_the_pool_from_zero() {
    let a = sim("llama-8b-h100").await;
    let fake = FakeKube::start().await;
    fake.apply(DEPLOYMENTS, deployment(0));
    let scaler = "min_replicas: 0, max_replicas: 2, scale_to_zero_after: 60s";
    let (leader, follower, holder) = two_gateways(&fake, scaler).await;
    let follower_name = if holder == "gw-a" { "gw-b" } else { "gw-a" };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.get(DEPLOYMENTS, "sim").unwrap()["spec"]["replicas"],
        0,
        "idle: zero"
    );
    let url = format!("http://{}/v1/completions", follower.gateway_addr);
    let held = spawn_post(&url, json!({"model": "m", "prompt": "hi", "max_tokens": 4}));
    eventually(
        Duration::from_secs(5),
        "the leader scales up for the follower's request",
        async || fake.get(DEPLOYMENTS, "sim").unwrap()["spec"]["replicas"] == 1,
    )
    .await;
    assert_eq!(scale_patches(&fake, &holder), [1], "written by the leader");
    assert!(scale_patches(&fake, follower_name).is_empty());
    assert!(!held.is_finished(), "held while the replica starts");
    add_replica(&fake, "sim-a", a.addr);
    let reply = held.await.unwrap();
    assert_eq!(reply.status, 200, "answered once the replica is ready");
    leader.shutdown().await;
    follower.shutdown().await;
}
