//! The one integration-test binary (every extra binary costs a full link of the dependency tree).

mod cluster;
mod config_files;
mod fake_kube;
mod fleet;
mod gateway;
mod hardening;
mod kube;
mod scaler;
mod signals;
mod sim;
mod support;
mod tls;
