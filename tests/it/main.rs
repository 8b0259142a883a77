//! The one integration-test binary (every extra binary costs a full link of the dependency tree).

mod accounting;
mod chatops;
mod cluster;
mod config_files;
mod endpoints;
mod fake_kube;
mod fleet;
mod gateway;
mod hardening;
mod keda;
mod kube;
mod operations;
mod scaler;
mod signals;
mod sim;
mod status_page;
mod support;
mod tls;
mod tracing;
mod versions;
