//! The model-server simulator (`infergate sim`): a vLLM-compatible replica whose answers are
//! timed by an engine model of continuous batching, so tests, demos and benchmarks run without
//! GPUs. [`engine`] is the pure model, [`profile`] its constants.

pub mod engine;
pub mod profile;
