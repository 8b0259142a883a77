//! Where a pool's replicas come from, besides a static list (added at start by
//! [`crate::app`]): [`local`] child processes — started and stopped by the local provider
//! ([`crate::scaler::local`]) — and Kubernetes EndpointSlices or pods ([`kubernetes`]), watched
//! into the pool's replica set.

pub mod kubernetes;
pub mod local;
