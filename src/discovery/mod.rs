//! Which replicas exist: a static list from the config, local child processes, or Kubernetes
//! EndpointSlices / pods.

pub mod kubernetes;
pub mod local;
