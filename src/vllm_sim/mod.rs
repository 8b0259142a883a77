//! The model-server simulator (`infergate sim`): a vLLM-compatible replica whose answers are
//! timed by an engine model of continuous batching, so tests, demos and benchmarks run without
//! GPUs. [`engine`] is the pure model, [`profile`] its constants; [`SimArgs`] are the command's
//! flags.

mod args;
mod driver;
pub mod engine;
pub mod metrics;
pub mod profile;
pub mod server;
pub mod text;

pub use args::SimArgs;
pub(crate) use args::sim_options;
pub use server::{SimOptions, start};
