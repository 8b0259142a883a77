//! The Kubernetes provider: resizes any workload that exposes the `scale` subresource
//! (Deployment, StatefulSet, LeaderWorkerSet, …) by patching `spec.replicas`, read fresh on
//! every tick so that a count changed by hand is the new current value.
//!
//! Scale-down never cuts an answer: the victims (not-ready pods first, then the fewest in
//! flight; the highest ordinals for a StatefulSet, which always removes those) get the
//! annotation `controller.kubernetes.io/pod-deletion-cost` at its minimum so the ReplicaSet
//! removes exactly them, leave routing — here, and on every peer gateway, which reads them as
//! draining from this gateway's `/metrics` — finish their in-flight answers, this gateway's and
//! then (by the victims' own pages: nothing running or waiting) everyone's, bounded by the drain
//! timeout, and only then is `replicas` lowered. Every write carries the `resourceVersion` it
//! was computed from; a `409 Conflict` is retried on the fresh object.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;

use super::policy::Observation;
use super::provider::{Action, Provider, ProviderError, Supply};
use crate::config::ScaleTarget;
use crate::discovery::kubernetes::{Member, Members};
use crate::kubernetes::lease::Leadership;
use crate::kubernetes::{KubeContext, KubeError};
use crate::pool::PoolState;
use crate::replica::Replica;

/// The annotation ReplicaSets read to choose which pods to remove first (lowest first).
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Longest wait for the scale read of one tick; the last value read stands in after it.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Writes retried after a `409 Conflict` before giving up for this tick.
const CONFLICT_RETRIES: u32 = 5;
/// How long a drained victim stays out of routing after `replicas` was lowered, in case its pod
/// is not the one removed (another writer raised `replicas` meanwhile).
const EXCLUSION_GRACE: Duration = Duration::from_secs(60);

pub struct KubeScaler {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Arc<PoolState>,
    members: Arc<Members>,
    workload: Api<DynamicObject>,
    pods: Api<Pod>,
    target: ScaleTarget,
    /// `deployments.apps/scale`, for messages.
    resource: String,
    namespace: String,
    drain_timeout: Duration,
    leadership: Option<Arc<Leadership>>,
    /// `spec.replicas` as last read.
    spec: Mutex<Option<u32>>,
    /// Victims draining now (still counted in `spec.replicas`).
    draining: AtomicU32,
}

impl KubeScaler {
    pub fn new(
        pool: Arc<PoolState>,
        members: Arc<Members>,
        context: &KubeContext,
        target: ScaleTarget,
        leadership: Option<Arc<Leadership>>,
    ) -> Self {
        let namespace = context.namespace(target.namespace.as_ref());
        let (group, version) = target
            .api_version
            .split_once('/')
            .unwrap_or(("", &target.api_version));
        let gvk = GroupVersionKind::gvk(group, version, &target.kind);
        let resource = ApiResource::from_gvk(&gvk);
        let described = if group.is_empty() {
            format!("{}/scale", resource.plural)
        } else {
            format!("{}.{group}/scale", resource.plural)
        };
        let drain_timeout = pool.config.scaler.drain_timeout;
        Self {
            inner: Arc::new(Inner {
                workload: Api::namespaced_with(context.client.clone(), &namespace, &resource),
                pods: Api::namespaced(context.client.clone(), &namespace),
                pool,
                members,
                target,
                resource: described,
                namespace,
                drain_timeout,
                leadership,
                spec: Mutex::new(None),
                draining: AtomicU32::new(0),
            }),
        }
    }
}

impl Provider for KubeScaler {
    /// Starting = pods that exist but are not ready, or, when more, the replicas asked for in
    /// `spec.replicas` beyond those ready and draining (pods not created yet).
    fn observe(&self) -> BoxFuture<'_, Supply> {
        Box::pin(async move {
            let inner = &self.inner;
            // Bounded: an API server that does not answer must not stall the control loop.
            match tokio::time::timeout(OBSERVE_TIMEOUT, inner.read_replicas()).await {
                Ok(Ok((spec, _))) => *inner.spec.lock().expect("not poisoned") = Some(spec),
                Ok(Err(e)) => {
                    tracing::debug!(pool = inner.pool.name(), "cannot read the scale: {e}")
                }
                Err(_) => tracing::debug!(pool = inner.pool.name(), "reading the scale timed out"),
            }
            let spec = *inner.spec.lock().expect("not poisoned");
            let draining = inner.draining.load(Ordering::Relaxed);
            let ready = inner.pool.ready_count(Instant::now());
            let unborn = spec.map_or(0, |s| s.saturating_sub(draining + ready));
            Supply {
                starting: inner.members.starting().max(unborn),
                draining,
            }
        })
    }

    fn scale<'a>(
        &'a self,
        desired: u32,
        obs: &'a Observation,
    ) -> BoxFuture<'a, Result<Action, ProviderError>> {
        Box::pin(async move {
            let inner = &self.inner;
            // An exclusion may have run out.
            inner.members.reconcile();
            let capacity = obs.ready + obs.starting;
            let draining = inner.draining.load(Ordering::Relaxed);
            if desired > capacity {
                // Victims still draining are in `spec.replicas` until their drain ends.
                let target = desired + draining;
                let changed = inner
                    .patch_replicas(|current| (current < target).then_some(target))
                    .await?;
                return Ok(changed.map_or(Action::None, |(from, to)| {
                    tracing::info!(
                        pool = inner.pool.name(),
                        from,
                        to,
                        "scaled {} up",
                        inner.target.name
                    );
                    Action::Up(to - from)
                }));
            }
            if desired >= capacity || draining > 0 {
                return Ok(Action::None);
            }
            let surplus = capacity - desired;
            let spec = inner.spec.lock().expect("not poisoned").unwrap_or(capacity);
            let members: Vec<Member> = inner
                .members
                .list()
                .into_iter()
                .filter(|m| !m.terminating && m.pod.is_some())
                .collect();
            // Replicas asked for whose pods do not exist yet go first: they need no victim.
            let unborn = spec.saturating_sub(members.len() as u32).min(surplus);
            let victims = inner.choose_victims(members, surplus - unborn);
            for victim in &victims {
                inner.annotate(victim).await?;
            }
            // Held before they leave the snapshot, to watch their in-flight answers end.
            let routed: Vec<Arc<Replica>> = inner
                .pool
                .snapshot()
                .replicas
                .iter()
                .filter(|r| {
                    victims
                        .iter()
                        .any(|v| v.authority.as_ref() == Some(&r.authority))
                })
                .cloned()
                .collect();
            let until = Instant::now() + inner.drain_timeout + EXCLUSION_GRACE;
            for victim in &victims {
                if let Some(authority) = &victim.authority {
                    inner.members.exclude(authority, until);
                }
            }
            let count = unborn + victims.len() as u32;
            if count == 0 {
                return Ok(Action::None);
            }
            inner.mark_draining(&victims, true);
            inner.draining.fetch_add(count, Ordering::Relaxed);
            let task = inner.clone();
            tokio::spawn(async move { task.drain_then_lower(victims, routed, count).await });
            Ok(Action::Down(count))
        })
    }
}

impl Inner {
    /// `spec.replicas` and the scale's resourceVersion.
    async fn read_replicas(&self) -> Result<(u32, Option<String>), KubeError> {
        let scale = self
            .workload
            .get_scale(&self.target.name)
            .await
            .map_err(|e| KubeError::new(e, "get", &self.resource, &self.namespace))?;
        let replicas = scale.spec.and_then(|s| s.replicas).unwrap_or(0);
        Ok((replicas.max(0) as u32, scale.metadata.resource_version))
    }

    /// Sets `spec.replicas` to `change(current)` (nothing when it says None), guarded by the
    /// resourceVersion it read; on a conflict it reads again and recomputes. Returns
    /// `(from, to)` when it wrote.
    async fn patch_replicas(
        &self,
        change: impl Fn(u32) -> Option<u32>,
    ) -> Result<Option<(u32, u32)>, KubeError> {
        let mut attempt = 0;
        loop {
            let (current, version) = self.read_replicas().await?;
            *self.spec.lock().expect("not poisoned") = Some(current);
            let Some(wanted) = change(current) else {
                return Ok(None);
            };
            let patch = json!({
                "metadata": {"resourceVersion": version},
                "spec": {"replicas": wanted},
            });
            let written = self
                .workload
                .patch_scale(
                    &self.target.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await;
            match written {
                Ok(_) => {
                    *self.spec.lock().expect("not poisoned") = Some(wanted);
                    return Ok(Some((current, wanted)));
                }
                Err(e) => {
                    let e = KubeError::new(e, "patch", &self.resource, &self.namespace);
                    attempt += 1;
                    if !e.is_conflict() || attempt > CONFLICT_RETRIES {
                        return Err(e);
                    }
                    tracing::debug!(
                        pool = self.pool.name(),
                        "scale changed meanwhile; retrying on the fresh object"
                    );
                }
            }
        }
    }

    /// `n` victims, in the order of [`victims`], by this gateway's in-flight counts.
    fn choose_victims(&self, members: Vec<Member>, n: u32) -> Vec<Member> {
        let snapshot = self.pool.snapshot();
        victims(
            members,
            n,
            self.target.kind == "StatefulSet",
            |m: &Member| {
                snapshot
                    .replicas
                    .iter()
                    .find(|r| Some(&r.authority) == m.authority.as_ref())
                    .map_or(0, |r| r.inflight())
            },
        )
    }

    /// Marks a victim so the ReplicaSet removes it before any other pod.
    async fn annotate(&self, victim: &Member) -> Result<(), KubeError> {
        let pod = victim.pod.as_deref().expect("victims have a pod");
        let patch = json!({"metadata": {"annotations": {DELETION_COST: i32::MIN.to_string()}}});
        self.pods
            .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| KubeError::new(e, "patch", "pods", &self.namespace))?;
        Ok(())
    }

    /// Waits for the victims' in-flight answers (bounded), then lowers `replicas` by `count`.
    /// A replica that lost the lease meanwhile calls the drain off instead.
    async fn drain_then_lower(
        self: Arc<Self>,
        victims: Vec<Member>,
        routed: Vec<Arc<Replica>>,
        count: u32,
    ) {
        let deadline = Instant::now() + self.drain_timeout;
        while routed.iter().any(|r| r.inflight() > 0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let inflight_left: u64 = routed.iter().map(|r| r.inflight()).sum();
        // Other gateways may still have answers streaming from the victims: their own pages
        // say when nothing runs or waits there any more.
        let busy_left = self.wait_until_idle(&victims, deadline).await;
        let leading = self.leadership.as_ref().is_none_or(|l| l.is_leader());
        let result = if leading {
            self.patch_replicas(|current| Some(current.saturating_sub(count)))
                .await
                .map_err(|e| e.to_string())
        } else {
            Err("this replica lost the leader lease".to_string())
        };
        match result {
            Ok(changed) => {
                let pods: Vec<&str> = victims.iter().filter_map(|v| v.pod.as_deref()).collect();
                tracing::info!(pool = self.pool.name(), ?pods, inflight_left, busy_left, replicas = ?changed.map(|c| c.1), "drained; lowered {}", self.target.name);
            }
            Err(e) => {
                tracing::warn!(
                    pool = self.pool.name(),
                    "scale-down called off, victims route again: {e}"
                );
                for authority in victims.iter().filter_map(|v| v.authority.as_ref()) {
                    self.members.include(authority);
                }
            }
        }
        self.mark_draining(&victims, false);
        self.draining.fetch_sub(count, Ordering::Relaxed);
    }

    /// Publishes (or withdraws) the victims as draining, for the peer gateways.
    fn mark_draining(&self, victims: &[Member], on: bool) {
        let names: Vec<String> = victims
            .iter()
            .filter_map(|v| v.authority.as_ref().map(|a| a.to_string()))
            .collect();
        let mut marked: Vec<String> = self.pool.draining.load().as_ref().clone();
        marked.retain(|m| !names.contains(m));
        if on {
            marked.extend(names);
        }
        self.pool.draining.store(Arc::new(marked));
    }

    /// Waits (until `deadline`) for the victims' own pages to show nothing running or waiting;
    /// returns what was still there. A page that cannot be read counts as idle (the replica is
    /// gone or its metrics are, and the deadline bounds the wait either way).
    async fn wait_until_idle(&self, victims: &[Member], deadline: Instant) -> f64 {
        let metrics = &self.pool.config.metrics;
        let client = crate::scrape::replica_client(&self.pool.config);
        let scheme = self.members.scheme();
        loop {
            let mut busy = 0.0;
            for authority in victims.iter().filter_map(|v| v.authority.as_ref()) {
                let uri = format!("{scheme}://{authority}{}", metrics.path);
                let page = crate::scrape::scrape(&client, &uri, metrics.format, None);
                if let Ok(Ok((stats, _))) = tokio::time::timeout(metrics.scrape_timeout, page).await
                {
                    busy += stats.running + stats.waiting;
                }
            }
            if busy == 0.0 || Instant::now() >= deadline {
                return busy;
            }
            tokio::time::sleep(metrics.scrape_interval.max(Duration::from_millis(50))).await;
        }
    }
}

/// The `n` pods to remove: not ready first (a ReplicaSet removes those before any ready pod
/// whatever their deletion cost), then the fewest in flight. A StatefulSet always removes its
/// highest ordinals, so those are the ones to drain.
pub fn victims(
    mut members: Vec<Member>,
    n: u32,
    stateful_set: bool,
    inflight: impl Fn(&Member) -> u64,
) -> Vec<Member> {
    if stateful_set {
        let ordinal = |m: &Member| {
            m.pod
                .as_deref()
                .and_then(|p| p.rsplit_once('-'))
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        members.sort_by_key(|m| std::cmp::Reverse(ordinal(m)));
    } else {
        members.sort_by_key(|m| (m.ready, inflight(m)));
    }
    members.truncate(n as usize);
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(pod: &str, ready: bool) -> Member {
        Member {
            authority: None,
            pod: Some(pod.into()),
            node: None,
            ready,
            terminating: false,
        }
    }

    fn pods(members: &[Member]) -> Vec<&str> {
        members.iter().map(|m| m.pod.as_deref().unwrap()).collect()
    }

    #[test]
    fn victims_are_not_ready_pods_first_then_the_least_busy() {
        let all = vec![
            member("busy", true),
            member("idle", true),
            member("loading", false),
            member("some", true),
        ];
        let load = |m: &Member| match m.pod.as_deref() {
            Some("busy") => 9,
            Some("some") => 2,
            _ => 0,
        };
        assert_eq!(pods(&victims(all.clone(), 1, false, load)), ["loading"]);
        assert_eq!(
            pods(&victims(all.clone(), 3, false, load)),
            ["loading", "idle", "some"]
        );
        assert_eq!(victims(all, 0, false, load), []);
    }

    #[test]
    fn stateful_set_victims_are_the_highest_ordinals() {
        let all = vec![
            member("vllm-2", true),
            member("vllm-10", true),
            member("vllm-0", false),
        ];
        assert_eq!(pods(&victims(all, 2, true, |_| 0)), ["vllm-10", "vllm-2"]);
    }
}
