//! infergate: a load-aware inference gateway and autoscaler for LLM model servers.
//!
//! The request path reads top-down through the modules: [`config`] describes the fleet, the CLI
//! in [`cli`] wires the parts together.

pub mod cli;
pub mod config;
pub mod http_server;
pub mod openai;
pub mod sim;
pub mod telemetry;
