//! Which replicas exist: a static list from the config, or local child processes.

pub mod local;
