//! infergate: a load-aware inference gateway and autoscaler for LLM model servers.
//!
//! The request path reads top-down through the modules: [`config`] describes the fleet, the CLI
//! in [`cli`] wires the parts together.

pub mod admin;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod fleet;
pub mod gateway;
pub mod http_server;
pub mod kubernetes;
pub mod load;
pub mod loadgen;
pub mod openai;
pub mod router;
pub mod scaler;
pub mod sim;
pub mod telemetry;
