//! The one interface through which the control loop acts on a pool, shaped after the Kubernetes
//! `scale` subresource: report the capacity that is coming (starting) or leaving (draining),
//! and move the replica count towards a desired value, draining victims before they go.
//! Implemented by the local process fleet and the Kubernetes workload provider; the `static`
//! provider is the absence of one.

use futures::future::BoxFuture;

use super::policy::Observation;

/// Capacity that is not taking traffic: coming or leaving.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Supply {
    /// Replicas asked for that are not ready yet.
    pub starting: u32,
    /// Replicas out of routing, finishing their answers before they go.
    pub draining: u32,
}

/// What one call to [`Provider::scale`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    Up(u32),
    Down(u32),
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error(transparent)]
    Kubernetes(#[from] crate::kubernetes::KubeError),
    #[error("{0}")]
    Other(String),
}

pub trait Provider: Send + Sync {
    /// Reads what is starting and draining (every tick, leader or not).
    fn observe(&self) -> BoxFuture<'_, Supply>;

    /// Moves the pool towards `desired` replicas, `obs` being the latest observation. Returns at
    /// once; scale-down drains continue in the background.
    fn scale<'a>(
        &'a self,
        desired: u32,
        obs: &'a Observation,
    ) -> BoxFuture<'a, Result<Action, ProviderError>>;
}
