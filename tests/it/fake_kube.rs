//! A fake Kubernetes API server on 127.0.0.1:0 that follows the real API's semantics for what
//! infergate uses: list and watch (`resourceVersion`, `allowWatchBookmarks`, `timeoutSeconds`,
//! label selectors, `410 Gone` as an ERROR event for a compacted resourceVersion), get, create
//! (`409 AlreadyExists`), replace and merge-patch guarded by `metadata.resourceVersion`
//! (`409 Conflict`), the `scale` subresource of workloads, and `403 Forbidden` for denied
//! verbs. Tests change objects directly (playing the controllers), take the server down (every
//! connection is dropped and new ones are cut) and bring it back, and read the log of writes.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

pub const PODS: &str = "/v1/pods";
pub const SLICES: &str = "discovery.k8s.io/v1/endpointslices";
pub const DEPLOYMENTS: &str = "apps/v1/deployments";
pub const LEASES: &str = "coordination.k8s.io/v1/leases";
pub const NS: &str = "default";

type Body = BoxBody<Bytes, std::convert::Infallible>;

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    collection: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

/// One write the fake answered.
#[derive(Clone, Debug)]
pub struct Write {
    /// The `x-test-client` header of the client that sent it.
    pub client: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub body: Value,
}

/// One watch the fake was asked for.
#[derive(Clone, Debug)]
pub struct WatchRequest {
    pub collection: String,
    /// The resourceVersion it resumed from.
    pub from: u64,
    pub bookmarks: bool,
    /// Answered with `410 Gone`.
    pub gone: bool,
}

#[derive(Default)]
struct Store {
    watches: Vec<WatchRequest>,
    /// A writer that beats the next scale patch: the replicas it sets first.
    scale_race: Option<u64>,
    rv: u64,
    /// Watches from an older resourceVersion get `410 Gone`.
    compacted: u64,
    objects: BTreeMap<(String, String, String), Value>,
    history: Vec<Event>,
    denied: HashSet<(String, String)>,
    writes: Vec<Write>,
}

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<Event>,
    up: AtomicBool,
    /// Bumped when the server goes down: every open connection and watch ends.
    outages: watch::Sender<u64>,
}

pub struct FakeKube {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.outages.send_modify(|n| *n += 1);
    }
}

fn kind_of(collection: &str) -> &'static str {
    match collection.rsplit('/').next().unwrap_or_default() {
        "pods" => "Pod",
        "endpointslices" => "EndpointSlice",
        "deployments" => "Deployment",
        "statefulsets" => "StatefulSet",
        "leases" => "Lease",
        _ => "Unknown",
    }
}

fn api_version_of(collection: &str) -> String {
    let (gv, _) = collection.rsplit_once('/').unwrap();
    gv.trim_start_matches('/').to_string()
}

fn status(code: u16, reason: &str, message: String) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    json_response(StatusCode::from_u16(code).unwrap(), &body)
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = code;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn labels_match(object: &Value, selector: &[(String, String)]) -> bool {
    selector
        .iter()
        .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v))
}

/// Where a request points: collection (`group/version/resource`, group empty for the core
/// API), namespace, name and subresource.
struct Target {
    collection: String,
    namespace: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group_version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => (format!("/{version}"), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    match rest {
        ["namespaces", ns, resource, more @ ..] => Some(Target {
            collection: format!("{group_version}/{resource}"),
            namespace: ns.to_string(),
            name: more.first().map(|s| s.to_string()),
            sub: more.get(1).map(|s| s.to_string()),
        }),
        _ => None,
    }
}

impl FakeKube {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 100,
                ..Default::default()
            }),
            events: broadcast::channel(4096).0,
            up: AtomicBool::new(true),
            outages: watch::channel(0).0,
        });
        let accept = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if !accept.up.load(Ordering::SeqCst) {
                    drop(stream); // unreachable: the connection is cut at once
                    continue;
                }
                let shared = accept.clone();
                let mut outage = accept.outages.subscribe();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(shared, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = outage.changed() => {}
                    }
                });
            }
        });
        Self { addr, shared, task }
    }

    /// A client of this server whose writes are logged under `name`.
    pub fn client(&self, name: &str) -> kube::Client {
        let mut config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        config.default_namespace = NS.into();
        config
            .headers
            .push(("x-test-client".parse().unwrap(), name.parse().unwrap()));
        kube::Client::try_from(config).unwrap()
    }

    /// Creates or replaces an object (ADDED or MODIFIED event), as a controller would.
    pub fn apply(&self, collection: &str, mut object: Value) {
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let mut store = self.shared.store.lock().unwrap();
        let key = (collection.to_string(), NS.to_string(), name);
        let kind = if store.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        object["metadata"]["namespace"] = NS.into();
        self.commit(&mut store, key, object, kind);
    }

    /// Removes an object (DELETED event).
    pub fn delete(&self, collection: &str, name: &str) {
        let mut store = self.shared.store.lock().unwrap();
        let key = (collection.to_string(), NS.to_string(), name.to_string());
        let Some(mut object) = store.objects.remove(&key) else {
            return;
        };
        store.rv += 1;
        object["metadata"]["resourceVersion"] = store.rv.to_string().into();
        let event = Event {
            rv: store.rv,
            collection: key.0,
            namespace: key.1,
            kind: "DELETED",
            object,
        };
        publish(&self.shared, &mut store, event);
    }

    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        let store = self.shared.store.lock().unwrap();
        store
            .objects
            .get(&(collection.to_string(), NS.to_string(), name.to_string()))
            .cloned()
    }

    /// Changes an object in place, as a hand edit would (MODIFIED event).
    pub fn edit(&self, collection: &str, name: &str, change: impl FnOnce(&mut Value)) {
        let mut object = self.get(collection, name).expect("object exists");
        change(&mut object);
        self.apply(collection, object);
    }

    fn commit(
        &self,
        store: &mut Store,
        key: (String, String, String),
        mut object: Value,
        kind: &'static str,
    ) {
        commit(&self.shared, store, key, &mut object, kind);
    }

    /// Takes the server down (open connections and watches cut, new ones refused) or back up.
    pub fn set_up(&self, up: bool) {
        self.shared.up.store(up, Ordering::SeqCst);
        if !up {
            self.shared.outages.send_modify(|n| *n += 1);
        }
    }

    /// Forgets history: watches resuming from an older resourceVersion get `410 Gone`.
    pub fn compact(&self) {
        let mut store = self.shared.store.lock().unwrap();
        store.compacted = store.rv;
        store.history.clear();
    }

    /// Another writer sets `replicas` between the next scale read and patch (the patch then
    /// meets a changed resourceVersion).
    pub fn race_next_scale_patch(&self, replicas: u64) {
        self.shared.store.lock().unwrap().scale_race = Some(replicas);
    }

    /// RBAC: answer `verb` on `resource` (e.g. `patch`, `deployments/scale`) with 403.
    pub fn deny(&self, verb: &str, resource: &str) {
        let mut store = self.shared.store.lock().unwrap();
        store.denied.insert((verb.into(), resource.into()));
    }

    /// The watches asked for so far.
    pub fn watches(&self) -> Vec<WatchRequest> {
        self.shared.store.lock().unwrap().watches.clone()
    }

    /// The writes answered so far.
    pub fn writes(&self) -> Vec<Write> {
        self.shared.store.lock().unwrap().writes.clone()
    }
}

fn commit(
    shared: &Shared,
    store: &mut Store,
    key: (String, String, String),
    object: &mut Value,
    kind: &'static str,
) {
    store.rv += 1;
    object["metadata"]["resourceVersion"] = store.rv.to_string().into();
    object["apiVersion"] = api_version_of(&key.0).into();
    object["kind"] = kind_of(&key.0).into();
    store.objects.insert(key.clone(), object.clone());
    let event = Event {
        rv: store.rv,
        collection: key.0,
        namespace: key.1,
        kind,
        object: object.clone(),
    };
    publish(shared, store, event);
}

/// Keeps `event` in the history (for watches resuming from an older resourceVersion) and sends
/// it to the open watches.
fn publish(shared: &Shared, store: &mut Store, event: Event) {
    store.history.push(event.clone());
    let _ = shared.events.send(event);
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.replace("%3D", "=")
                    .replace("%2C", ",")
                    .replace("%2F", "/"),
            )
        })
        .collect()
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let Some(target) = parse_path(req.uri().path()) else {
        return status(404, "NotFound", format!("no route {}", req.uri().path()));
    };
    let query = query(&req);
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match (req.method(), &target.name) {
        (&Method::GET, None) if watching => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        _ => return status(405, "MethodNotAllowed", "method not allowed".into()),
    };
    let (group_version, resource) = target.collection.rsplit_once('/').unwrap();
    let group = group_version
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let resource_path = match &target.sub {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_string(),
    };
    let client = req
        .headers()
        .get("x-test-client")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let denied = shared
        .store
        .lock()
        .unwrap()
        .denied
        .contains(&(verb.to_string(), resource_path.clone()));
    if denied {
        let name = target.name.clone().unwrap_or_default();
        return status(
            403,
            "Forbidden",
            format!(
                "{resource}.{group} \"{name}\" is forbidden: User \"system:serviceaccount:{NS}:infergate\" cannot {verb} resource \"{resource_path}\" in API group \"{group}\" in the namespace \"{}\"",
                target.namespace
            ),
        );
    }
    if verb == "watch" {
        return start_watch(shared, target, &query);
    }
    if verb == "list" {
        let selector = selector(&query);
        let store = shared.store.lock().unwrap();
        let items: Vec<Value> = store
            .objects
            .iter()
            .filter(|((c, ns, _), o)| {
                *c == target.collection && *ns == target.namespace && labels_match(o, &selector)
            })
            .map(|(_, o)| o.clone())
            .collect();
        let list = json!({"apiVersion": api_version_of(&target.collection),
            "kind": format!("{}List", kind_of(&target.collection)),
            "metadata": {"resourceVersion": store.rv.to_string()}, "items": items});
        return json_response(StatusCode::OK, &list);
    }
    let body: Value = if matches!(verb, "create" | "update" | "patch") {
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let response = write_or_get(&shared, &target, verb, &body);
    if verb != "get" {
        shared.store.lock().unwrap().writes.push(Write {
            client,
            method,
            path,
            status: response.status().as_u16(),
            body,
        });
    }
    response
}

fn scale_of(object: &Value) -> Value {
    json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": object["metadata"]["name"], "namespace": object["metadata"]["namespace"],
                     "resourceVersion": object["metadata"]["resourceVersion"]},
        "spec": {"replicas": object["spec"]["replicas"]},
        "status": {"replicas": object["status"]["replicas"].as_i64().unwrap_or(0), "selector": ""}})
}

fn write_or_get(shared: &Shared, target: &Target, verb: &str, body: &Value) -> Response<Body> {
    let mut store = shared.store.lock().unwrap();
    let kind = kind_of(&target.collection);
    if verb == "create" {
        let name = body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = (
            target.collection.clone(),
            target.namespace.clone(),
            name.clone(),
        );
        if store.objects.contains_key(&key) {
            return status(
                409,
                "AlreadyExists",
                format!("{kind} \"{name}\" already exists"),
            );
        }
        let mut object = body.clone();
        object["metadata"]["namespace"] = target.namespace.clone().into();
        commit(shared, &mut store, key, &mut object, "ADDED");
        return json_response(StatusCode::CREATED, &object);
    }
    let name = target.name.clone().unwrap();
    let key = (
        target.collection.clone(),
        target.namespace.clone(),
        name.clone(),
    );
    let Some(current) = store.objects.get(&key).cloned() else {
        return status(404, "NotFound", format!("{kind} \"{name}\" not found"));
    };
    let scale = target.sub.as_deref() == Some("scale");
    if verb == "get" {
        return json_response(
            StatusCode::OK,
            &if scale { scale_of(&current) } else { current },
        );
    }
    let mut current = current;
    if scale && let Some(replicas) = store.scale_race.take() {
        current["spec"]["replicas"] = replicas.into();
        commit(shared, &mut store, key.clone(), &mut current, "MODIFIED");
    }
    // Optimistic concurrency: a resourceVersion in the body must be the current one.
    if let Some(expected) = body["metadata"]["resourceVersion"].as_str()
        && Some(expected) != current["metadata"]["resourceVersion"].as_str()
    {
        return status(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                target.collection.rsplit('/').next().unwrap()
            ),
        );
    }
    let mut object = current.clone();
    match (verb, scale) {
        ("patch", true) => {
            object["spec"]["replicas"] = body["spec"]["replicas"].clone();
        }
        ("patch", false) => {
            let mut patch = body.clone();
            patch["metadata"]
                .as_object_mut()
                .map(|m| m.remove("resourceVersion"));
            merge(&mut object, &patch);
        }
        ("update", _) => {
            object = body.clone();
            object["metadata"]["namespace"] = target.namespace.clone().into();
        }
        _ => unreachable!("verbs handled above"),
    }
    commit(shared, &mut store, key, &mut object, "MODIFIED");
    json_response(
        StatusCode::OK,
        &if scale { scale_of(&object) } else { object },
    )
}

fn selector(query: &BTreeMap<String, String>) -> Vec<(String, String)> {
    query
        .get("labelSelector")
        .map(|s| {
            s.split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn line(value: &Value) -> Bytes {
    Bytes::from(format!("{value}\n"))
}

fn start_watch(
    shared: Arc<Shared>,
    target: Target,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let selector = selector(query);
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = Duration::from_secs(
        query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290),
    );
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    // Subscribed before the backlog is read, so no event falls between the two.
    let mut live = shared.events.subscribe();
    let mut outage = shared.outages.subscribe();
    let (backlog, mut seen, gone) = {
        let mut store = shared.store.lock().unwrap();
        let gone = from < store.compacted;
        store.watches.push(WatchRequest {
            collection: target.collection.clone(),
            from,
            bookmarks,
            gone,
        });
        let backlog: Vec<Event> = store
            .history
            .iter()
            .filter(|e| e.rv > from)
            .cloned()
            .collect();
        (backlog, store.rv, gone.then_some(store.compacted))
    };
    let kind = kind_of(&target.collection);
    let api_version = api_version_of(&target.collection);
    let matches = move |e: &Event| {
        e.collection == target.collection
            && e.namespace == target.namespace
            && labels_match(&e.object, &selector)
    };
    tokio::spawn(async move {
        if let Some(oldest) = gone {
            let error = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": format!("too old resource version: {from} ({oldest})"),
                "reason": "Expired", "code": 410}});
            let _ = tx.send(line(&error)).await;
            return;
        }
        for e in backlog.iter().filter(|e| matches(e)) {
            let _ = tx
                .send(line(&json!({"type": e.kind, "object": e.object})))
                .await;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut bookmark = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                event = live.recv() => match event {
                    Ok(e) => {
                        if e.rv <= seen { continue; }
                        seen = e.rv;
                        if matches(&e) && tx.send(line(&json!({"type": e.kind, "object": e.object}))).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                _ = bookmark.tick(), if bookmarks => {
                    let mark = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version,
                        "metadata": {"resourceVersion": seen.to_string()}}});
                    if tx.send(line(&mark)).await.is_err() { return; }
                }
                _ = outage.changed() => return,
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(Frame::data(chunk)), rx))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}
