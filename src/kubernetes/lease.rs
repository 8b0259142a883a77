//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several gateway replicas
//! only one resizes pools (all of them route, and all keep computing recommendations).
//!
//! The rules are client-go's: the holder renews `spec.renewTime` every third of the lease
//! duration; another replica takes the lease over once it has seen the same lease record
//! (resourceVersion) unchanged for a whole lease duration on its own clock — clocks of different
//! nodes are never compared. Every write is a replace guarded by `resourceVersion`, so of two
//! replicas racing for a free lease exactly one wins (the other gets `409 Conflict`). A leader
//! counts itself as leading only until `lease duration` after it *sent* its last successful
//! renewal, so one that cannot reach the API server stops acting within the lease duration,
//! before anyone else may take over.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::task::JoinHandle;

use super::KubeError;

const RESOURCE: &str = "leases.coordination.k8s.io";

/// Whether this replica may act now; read by the scalers before every action.
pub struct Leadership {
    pub identity: String,
    leading_until: Mutex<Option<Instant>>,
    gauge: prometheus::IntGauge,
    /// Where a change of leader is told to chat (when notifications are configured).
    pub notifier: std::sync::OnceLock<crate::notify::Notifier>,
}

impl Leadership {
    pub fn new(identity: String, gauge: prometheus::IntGauge) -> Self {
        gauge.set(0);
        Self {
            identity,
            leading_until: Mutex::new(None),
            gauge,
            notifier: std::sync::OnceLock::new(),
        }
    }

    pub fn is_leader(&self) -> bool {
        let leading = self
            .leading_until
            .lock()
            .expect("not poisoned")
            .is_some_and(|until| Instant::now() < until);
        self.gauge.set(i64::from(leading));
        leading
    }

    fn lead_until(&self, until: Instant) {
        let mut leading = self.leading_until.lock().expect("not poisoned");
        if leading.is_none_or(|t| t <= Instant::now()) {
            tracing::info!(identity = %self.identity, "became the leader: this replica resizes pools");
            self.tell(format!(
                "{} became the leader: it resizes pools",
                self.identity
            ));
        }
        *leading = Some(until);
        self.gauge.set(1);
    }

    fn follow(&self) {
        let mut leading = self.leading_until.lock().expect("not poisoned");
        if leading.take().is_some_and(|t| t > Instant::now()) {
            tracing::warn!(identity = %self.identity, "lost the lease: this replica stops resizing pools");
            self.tell(format!(
                "{} lost the lease: it stops resizing pools",
                self.identity
            ));
        }
        self.gauge.set(0);
    }

    fn tell(&self, text: String) {
        if let Some(notifier) = self.notifier.get() {
            notifier.send(crate::notify::Event::new(
                crate::config::EventKind::Leader,
                None,
                text,
            ));
        }
    }
}

/// The Lease this replica competes for.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    namespace: String,
    duration: Duration,
}

/// What this replica last saw of the lease, to tell when the holder stopped renewing.
#[derive(Default)]
struct Observed {
    resource_version: Option<String>,
    since: Option<Instant>,
}

impl Elector {
    pub fn new(api: Api<Lease>, name: String, namespace: String, duration: Duration) -> Self {
        Self {
            api,
            name,
            namespace,
            duration: duration.max(Duration::from_secs(1)),
        }
    }

    /// Competes for the lease until aborted, renewing every third of the lease duration.
    pub fn spawn(self, leadership: std::sync::Arc<Leadership>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let period = self.duration / 3;
            let mut observed = Observed::default();
            let mut last_error = None;
            loop {
                let sent = Instant::now();
                let attempt = tokio::time::timeout(
                    period,
                    self.try_acquire_or_renew(&leadership.identity, &mut observed),
                )
                .await;
                match attempt {
                    Ok(Ok(true)) => {
                        leadership.lead_until(sent + self.duration);
                        last_error = None;
                    }
                    Ok(Ok(false)) => {
                        leadership.follow();
                        last_error = None;
                    }
                    // Leadership, if held, runs out on its own at `leading_until`.
                    Ok(Err(e)) => {
                        let message = e.to_string();
                        if last_error.as_ref() != Some(&message) {
                            tracing::warn!("leader election: {message}");
                            last_error = Some(message);
                        }
                    }
                    Err(_) => tracing::warn!(
                        "leader election: the API server did not answer within {period:?}"
                    ),
                }
                // Look often enough that the gauge turns to 0 when a lease runs out unrenewed.
                while Instant::now() < sent + period {
                    leadership.is_leader();
                    tokio::time::sleep(Duration::from_millis(100).min(period)).await;
                }
            }
        })
    }

    /// One round: Ok(true) when this replica holds the lease after it.
    async fn try_acquire_or_renew(
        &self,
        identity: &str,
        observed: &mut Observed,
    ) -> Result<bool, KubeError> {
        let now = MicroTime(Timestamp::now());
        let seconds = self.duration.as_secs().try_into().unwrap_or(i32::MAX);
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| KubeError::new(e, "get", RESOURCE, &self.namespace))?;
        let Some(lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(identity.to_string()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                // Another replica created it first.
                Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => Ok(false),
                Err(e) => Err(KubeError::new(e, "create", RESOURCE, &self.namespace)),
            };
        };
        if observed.resource_version != lease.metadata.resource_version {
            observed.resource_version = lease.metadata.resource_version.clone();
            observed.since = Some(Instant::now());
        }
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let held_for = spec
            .lease_duration_seconds
            .map_or(self.duration, |s| Duration::from_secs(s.max(0) as u64));
        let mine = holder.as_deref() == Some(identity);
        let expired = observed.since.is_some_and(|t| t.elapsed() > held_for);
        if !mine && holder.is_some() && !expired {
            return Ok(false);
        }
        let spec = LeaseSpec {
            holder_identity: Some(identity.to_string()),
            lease_duration_seconds: Some(seconds),
            acquire_time: if mine {
                spec.acquire_time
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!mine)),
            ..spec
        };
        let lease = Lease {
            metadata: lease.metadata,
            spec: Some(spec),
        };
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Someone else wrote it since we read it (renewed, or won the race).
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(KubeError::new(e, "update", RESOURCE, &self.namespace)),
        }
    }

    /// Gives the lease up at shutdown so another replica takes over at once instead of after
    /// a lease duration. Best effort: an error only delays the takeover.
    pub async fn release(&self, leadership: &Leadership) {
        if !leadership.is_leader() {
            return;
        }
        leadership.follow();
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_default();
        if spec.holder_identity.as_deref() != Some(leadership.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::debug!("could not release the lease: {e}");
        }
    }
}
