//! infergate: a load-aware inference gateway and autoscaler for LLM model servers.
//!
//! The request path reads top-down through the modules: [`config`] describes the fleet, the CLI
//! in [`cli`] wires the parts together.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod fleet_sim;
pub mod gateway;
pub mod http_server;
pub mod kubernetes;
pub mod loadgen;
pub mod metrics;
pub mod openai;
pub mod pool;
pub mod replica;
pub mod router;
pub mod scaler;
pub mod scrape;
pub mod telemetry;
pub mod vllm_sim;
