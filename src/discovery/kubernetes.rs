//! Replicas from Kubernetes: a kube-runtime watcher over a Service's EndpointSlices (label
//! `kubernetes.io/service-name`) or over the pods matching a label selector. Ready and serving
//! endpoints take traffic; terminating ones leave routing at the event that says so; pods that
//! exist but are not ready count as starting for the scaler. The watcher relists on `410 Gone`
//! and restarts with back-off; while the API server is unreachable the last known replicas keep
//! routing and [`ApiHealth`] says so.
//!
//! [`Members`] is the one place that turns the watched objects into the pool's routing set; the
//! scale provider asks it to hold victims out of routing while they drain.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use http::uri::{Authority, Scheme};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher::watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use crate::config::{KubernetesDiscovery, KubernetesSource, PortRef};
use crate::kubernetes::{ApiHealth, KubeContext, KubeError};
use crate::pool::PoolState;
use crate::replica::Placement;

/// One endpoint (one pod) of the pool as the API server last described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `ip:port`; None while the pod has no IP or no matching port yet.
    pub authority: Option<Authority>,
    pub pod: Option<String>,
    pub node: Option<String>,
    /// Ready and serving.
    pub ready: bool,
    /// Being deleted.
    pub terminating: bool,
}

impl Member {
    fn routable(&self) -> bool {
        self.ready && !self.terminating && self.authority.is_some()
    }

    /// Exists, is not leaving, and is not ready yet: capacity that is coming.
    pub fn starting(&self) -> bool {
        !self.terminating && !self.routable()
    }
}

/// A pool's endpoints and which of them route. Written by the discovery task (the endpoints) and
/// the scale provider (exclusions of draining victims); every change goes through
/// [`Members::reconcile`], the only code that adds or removes the pool's replicas.
pub struct Members {
    pool: Arc<PoolState>,
    state: Mutex<State>,
    /// Whether a first list has arrived.
    listed: AtomicBool,
}

#[derive(Default)]
struct State {
    members: Vec<Member>,
    /// Victims held out of routing until the given time (or until their pod goes).
    excluded: HashMap<Authority, Instant>,
    routed: HashSet<Authority>,
}

impl Members {
    pub fn new(pool: Arc<PoolState>) -> Arc<Self> {
        Arc::new(Self {
            pool,
            state: Mutex::new(State::default()),
            listed: AtomicBool::new(false),
        })
    }

    /// Waits up to `timeout` for the first list; false if it did not come.
    pub async fn wait_listed(&self, timeout: std::time::Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.listed.load(Ordering::Relaxed) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// Replaces the endpoints with what the API server said last.
    pub fn set(&self, members: Vec<Member>) {
        let mut state = self.state.lock().expect("not poisoned");
        state.members = members;
        self.reconcile_locked(&mut state);
        self.listed.store(true, Ordering::Relaxed);
    }

    /// The current endpoints (terminating ones included).
    pub fn list(&self) -> Vec<Member> {
        self.state.lock().expect("not poisoned").members.clone()
    }

    /// Pods that exist but are not ready yet.
    pub fn starting(&self) -> u32 {
        let state = self.state.lock().expect("not poisoned");
        state.members.iter().filter(|m| m.starting()).count() as u32
    }

    /// Holds `authority` out of routing until `until` or until its pod leaves; in-flight answers
    /// to it finish normally.
    pub fn exclude(&self, authority: &Authority, until: Instant) {
        let mut state = self.state.lock().expect("not poisoned");
        state.excluded.insert(authority.clone(), until);
        self.reconcile_locked(&mut state);
    }

    /// Lets an excluded endpoint route again (a drain that was called off).
    pub fn include(&self, authority: &Authority) {
        let mut state = self.state.lock().expect("not poisoned");
        state.excluded.remove(authority);
        self.reconcile_locked(&mut state);
    }

    /// How the pool's replicas are spoken to (`discovery.kubernetes.scheme`).
    pub fn scheme(&self) -> Scheme {
        match &self.pool.config.discovery {
            crate::config::Discovery::Kubernetes(k) => k.scheme.clone(),
            _ => Scheme::HTTP,
        }
    }

    /// Re-applies the rules (an exclusion may have expired).
    pub fn reconcile(&self) {
        let mut state = self.state.lock().expect("not poisoned");
        self.reconcile_locked(&mut state);
    }

    fn reconcile_locked(&self, state: &mut State) {
        let now = Instant::now();
        let present: HashSet<Authority> = state
            .members
            .iter()
            .filter(|m| !m.terminating)
            .filter_map(|m| m.authority.clone())
            .collect();
        state
            .excluded
            .retain(|a, until| *until > now && present.contains(a));
        let mut wanted: HashMap<Authority, Placement> = HashMap::new();
        for m in state.members.iter().filter(|m| m.routable()) {
            let authority = m.authority.clone().expect("routable has an address");
            if !state.excluded.contains_key(&authority) {
                let placement = Placement {
                    pod: m.pod.clone(),
                    node: m.node.clone(),
                };
                wanted.insert(authority, placement);
            }
        }
        for gone in state.routed.iter().filter(|a| !wanted.contains_key(*a)) {
            self.pool.remove_replica(gone);
            tracing::info!(pool = self.pool.name(), replica = %gone, "replica left routing");
        }
        for (authority, placement) in &wanted {
            if !state.routed.contains(authority) {
                tracing::info!(pool = self.pool.name(), replica = %authority, pod = ?placement.pod, "replica joined routing");
                self.pool
                    .add_placed_replica(self.scheme(), authority.clone(), placement.clone());
            }
        }
        state.routed = wanted.into_keys().collect();
    }
}

/// Where watched endpoints go: a pool's replica set ([`Members`]) or the peer gateways.
pub trait EndpointSink: Send + Sync + 'static {
    /// Replaces the endpoints with what the API server said last.
    fn set(&self, members: Vec<Member>);
    /// How many it uses now (for the outage log line).
    fn known(&self) -> usize;
}

impl EndpointSink for Members {
    fn set(&self, members: Vec<Member>) {
        Members::set(self, members);
    }

    fn known(&self) -> usize {
        self.pool.snapshot().replicas.len()
    }
}

/// Watches the endpoints of a Service (its EndpointSlices) until aborted; `port` picks the
/// slice port by number or name. `what` names the watch in logs.
pub fn watch_service(
    context: &KubeContext,
    namespace: String,
    service: &str,
    port: Option<PortRef>,
    sink: Arc<dyn EndpointSink>,
    health: Arc<ApiHealth>,
    what: String,
) -> JoinHandle<()> {
    let api: Api<EndpointSlice> = Api::namespaced(context.client.clone(), &namespace);
    let watch = watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
    tokio::spawn(run(
        api,
        watch,
        move |slice: &EndpointSlice| slice_members(slice, port.as_ref()),
        Watched {
            what,
            resource: "endpointslices.discovery.k8s.io",
            namespace,
            sink,
            health,
        },
    ))
}

/// Watches the pool's endpoints until aborted.
pub fn spawn(
    config: &KubernetesDiscovery,
    context: &KubeContext,
    members: Arc<Members>,
    health: Arc<ApiHealth>,
) -> JoinHandle<()> {
    let namespace = context.namespace(config.namespace.as_ref());
    let port = config.port.clone();
    let client = context.client.clone();
    let pool = members.pool.name().to_string();
    match &config.source {
        KubernetesSource::Service(service) => {
            watch_service(context, namespace, service, port, members, health, pool)
        }
        KubernetesSource::Selector(selector) => {
            let api: Api<Pod> = Api::namespaced(client, &namespace);
            let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let watch = watcher::Config::default().labels(&labels.join(","));
            tokio::spawn(run(
                api,
                watch,
                move |pod: &Pod| pod_member(pod, port.as_ref()).into_iter().collect(),
                Watched {
                    what: pool,
                    resource: "pods",
                    namespace,
                    sink: members,
                    health,
                },
            ))
        }
    }
}

struct Watched {
    /// The pool's name, or what else is watched.
    what: String,
    resource: &'static str,
    namespace: String,
    sink: Arc<dyn EndpointSink>,
    health: Arc<ApiHealth>,
}

/// Follows one watcher: objects by name, each turned into its endpoints; a relist replaces the
/// whole set at once (objects deleted while the watch was down disappear).
async fn run<K>(
    api: Api<K>,
    watch: watcher::Config,
    to_members: impl Fn(&K) -> Vec<Member> + Send + 'static,
    w: Watched,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut stream = std::pin::pin!(watcher(api, watch).default_backoff());
    let mut objects: HashMap<String, Vec<Member>> = HashMap::new();
    let mut relisting: Option<HashMap<String, Vec<Member>>> = None;
    let publish = |objects: &HashMap<String, Vec<Member>>| {
        w.sink.set(objects.values().flatten().cloned().collect());
    };
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                failed(&w, e);
                continue;
            }
        };
        match event {
            // Emitted before the list is even sent: proves nothing about the API server.
            Event::Init => relisting = Some(HashMap::new()),
            Event::InitApply(object) => {
                w.health.reachable();
                relisting
                    .get_or_insert_default()
                    .insert(object.name_any(), to_members(&object));
            }
            Event::InitDone => {
                w.health.reachable();
                objects = relisting.take().unwrap_or_default();
                publish(&objects);
            }
            Event::Apply(object) => {
                w.health.reachable();
                objects.insert(object.name_any(), to_members(&object));
                publish(&objects);
            }
            Event::Delete(object) => {
                w.health.reachable();
                objects.remove(&object.name_any());
                publish(&objects);
            }
        }
    }
}

/// Records a failed list or watch; the replicas stay as they were.
fn failed(w: &Watched, error: watcher::Error) {
    let (verb, source) = match error {
        // The resourceVersion is too old: the watcher relists at once. Not an outage.
        watcher::Error::WatchError(status) if status.code == 410 => {
            tracing::debug!(pool = %w.what, "watch expired (410 Gone); relisting");
            return;
        }
        watcher::Error::InitialListFailed(e) => ("list", e),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => ("watch", e),
        other => {
            let message = other.to_string();
            tracing::warn!(pool = %w.what, "watch of {} failed: {message}", w.resource);
            w.health.failed(message);
            return;
        }
    };
    let error = KubeError::new(source, verb, w.resource, &w.namespace);
    let message = error.to_string();
    let replicas = w.sink.known();
    if w.health.outage().is_none_or(|(_, last)| last != message) {
        tracing::warn!(pool = %w.what, replicas, "Kubernetes API unreachable, routing on the last known replicas: {message}");
    }
    w.health.failed(message);
}

/// `ip:port`, with brackets for IPv6.
fn authority(ip: &str, port: u16) -> Option<Authority> {
    let text = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    Authority::try_from(text).ok()
}

/// The endpoints of one EndpointSlice. `port` picks the slice port by number or by its (Service
/// port) name; without it the slice's first port.
pub fn slice_members(slice: &EndpointSlice, port: Option<&PortRef>) -> Vec<Member> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let number = match port {
        Some(PortRef::Number(n)) => Some(i32::from(*n)),
        Some(PortRef::Name(name)) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| p.port),
        None => ports.first().and_then(|p| p.port),
    }
    .and_then(|p| u16::try_from(p).ok());
    if number.is_none() && !slice.endpoints.is_empty() {
        tracing::warn!(slice = %slice.name_any(), port = ?port, "EndpointSlice has no such port; its endpoints cannot take traffic");
    }
    slice
        .endpoints
        .iter()
        .map(|e| {
            let conditions = e.conditions.clone().unwrap_or_default();
            // Unset conditions mean ready and serving, per the EndpointSlice API.
            let ready = conditions.ready.unwrap_or(true) && conditions.serving.unwrap_or(true);
            let pod = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            Member {
                authority: number.and_then(|n| e.addresses.first().and_then(|ip| authority(ip, n))),
                pod,
                node: e.node_name.clone(),
                ready,
                terminating: conditions.terminating.unwrap_or(false),
            }
        })
        .collect()
}

/// One pod as an endpoint; None once it has finished (Succeeded or Failed). `port` picks a
/// container port by number or name; without it the first container port.
pub fn pod_member(pod: &Pod, port: Option<&PortRef>) -> Option<Member> {
    let status = pod.status.clone().unwrap_or_default();
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ready = status
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let spec = pod.spec.clone().unwrap_or_default();
    let container_ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.clone().unwrap_or_default());
    let number = match port {
        Some(PortRef::Number(n)) => Some(i32::from(*n)),
        Some(PortRef::Name(name)) => container_ports
            .clone()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
        None => container_ports.clone().next().map(|p| p.container_port),
    }
    .and_then(|p| u16::try_from(p).ok());
    Some(Member {
        authority: status
            .pod_ip
            .as_deref()
            .zip(number)
            .and_then(|(ip, n)| authority(ip, n)),
        pod: Some(pod.name_any()),
        node: spec.node_name,
        ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(json: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn slice_endpoints_route_only_when_ready_serving_and_not_terminating() {
        let s = slice(serde_json::json!({
            "metadata": {"name": "svc-abc"},
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 9100}, {"name": "http", "port": 8000}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true, "serving": true},
                 "targetRef": {"kind": "Pod", "name": "vllm-1"}, "nodeName": "gpu-a"},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": false}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.0.0.4"]},
            ]
        }));
        let members = slice_members(&s, Some(&PortRef::Name("http".into())));
        let routable: Vec<String> = members
            .iter()
            .filter(|m| m.routable())
            .map(|m| m.authority.as_ref().unwrap().to_string())
            .collect();
        assert_eq!(routable, ["10.0.0.1:8000", "10.0.0.4:8000"]);
        assert_eq!(members[0].pod.as_deref(), Some("vllm-1"));
        assert_eq!(members[0].node.as_deref(), Some("gpu-a"));
        assert!(members[1].starting() && !members[2].starting());
        let first = slice_members(&s, None);
        assert_eq!(
            first[0].authority.as_ref().unwrap().as_str(),
            "10.0.0.1:9100"
        );
        assert!(
            slice_members(&s, Some(&PortRef::Name("grpc".into())))
                .iter()
                .all(|m| !m.routable())
        );
    }

    #[test]
    fn pods_resolve_named_container_ports_and_ipv6() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "vllm-0"},
            "spec": {"nodeName": "n1", "containers": [{"name": "vllm", "ports": [
                {"name": "metrics", "containerPort": 9100}, {"name": "http", "containerPort": 8000}]}]},
            "status": {"podIP": "fd00::5", "phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let m = pod_member(&pod, Some(&PortRef::Name("http".into()))).unwrap();
        assert_eq!(m.authority.unwrap().as_str(), "[fd00::5]:8000");
        assert!(m.ready && !m.terminating);
        assert_eq!(m.node.as_deref(), Some("n1"));
        let mut pending = pod.clone();
        pending.status = None;
        let m = pod_member(&pending, None).unwrap();
        assert!(m.authority.is_none() && m.starting());
    }
}
