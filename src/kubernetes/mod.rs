//! What the Kubernetes parts (discovery, the scale provider, leader election) share: the API
//! client (kubeconfig or in-cluster), the identity of this gateway replica, each pool's view of
//! whether the API server answers (for `/readyz` and the metrics), and one error type that turns
//! an RBAC refusal into a message naming the missing verb and resource.

pub mod lease;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The API client and who this gateway replica is.
#[derive(Clone)]
pub struct KubeContext {
    pub client: kube::Client,
    /// This gateway replica's name as Lease holder (its pod name).
    pub identity: String,
}

impl KubeContext {
    /// The client from `KUBECONFIG` / `~/.kube/config`, else the in-cluster service account;
    /// the identity from `POD_NAME` (set through the downward API), else `HOSTNAME` (the pod
    /// name inside a pod).
    pub async fn infer() -> Result<Self, KubeError> {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| KubeError::Config(e.to_string()))?;
        let identity = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| format!("infergate-{}", std::process::id()));
        Ok(Self { client, identity })
    }

    /// `configured`, else the client's default namespace (the pod's own one in a cluster, the
    /// kubeconfig context's otherwise).
    pub fn namespace(&self, configured: Option<&String>) -> String {
        configured
            .cloned()
            .unwrap_or_else(|| self.client.default_namespace().to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "forbidden: the gateway's service account may not `{verb}` {resource} in namespace `{namespace}`; grant it in the Role bound to the gateway (API server said: {message})"
    )]
    Forbidden {
        verb: &'static str,
        resource: String,
        namespace: String,
        message: String,
    },
    #[error("cannot {verb} {resource} in namespace `{namespace}`: {source}")]
    Api {
        verb: &'static str,
        resource: String,
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("no Kubernetes client configuration (neither a kubeconfig nor in-cluster): {0}")]
    Config(String),
}

impl KubeError {
    /// Names what was attempted, so a 403 says which permission is missing.
    pub fn new(
        source: kube::Error,
        verb: &'static str,
        resource: impl Into<String>,
        namespace: &str,
    ) -> Self {
        let resource = resource.into();
        let namespace = namespace.to_string();
        match &source {
            kube::Error::Api(status) if status.is_forbidden() => Self::Forbidden {
                verb,
                resource,
                namespace,
                message: status.message.clone(),
            },
            _ => Self::Api {
                verb,
                resource,
                namespace,
                source,
            },
        }
    }

    /// A `409 Conflict`: the object changed since it was read.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Api { source: kube::Error::Api(s), .. } if s.is_conflict())
    }
}

/// Whether a pool's watch on the API server works, written by its discovery task.
pub struct ApiHealth {
    up: AtomicBool,
    /// Since when and why the API server is unreachable.
    down: Mutex<Option<(Instant, String)>>,
    up_gauge: prometheus::IntGauge,
    errors: prometheus::IntCounter,
}

impl ApiHealth {
    pub fn new(up_gauge: prometheus::IntGauge, errors: prometheus::IntCounter) -> Self {
        // Unknown until the first list answers; counted as up so that a gateway that starts
        // before its first list does not report an outage it has not seen.
        up_gauge.set(1);
        Self {
            up: AtomicBool::new(true),
            down: Mutex::new(None),
            up_gauge,
            errors,
        }
    }

    /// The API server answered.
    pub fn reachable(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.up_gauge.set(1);
            *self.down.lock().expect("not poisoned") = None;
        }
    }

    /// A list or watch failed; `error` says how.
    pub fn failed(&self, error: String) {
        self.errors.inc();
        self.up.store(false, Ordering::Relaxed);
        self.up_gauge.set(0);
        let mut down = self.down.lock().expect("not poisoned");
        let since = down.as_ref().map_or_else(Instant::now, |(at, _)| *at);
        *down = Some((since, error));
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Since when and why the API server has been unreachable, if it is.
    pub fn outage(&self) -> Option<(Instant, String)> {
        self.down.lock().expect("not poisoned").clone()
    }
}
