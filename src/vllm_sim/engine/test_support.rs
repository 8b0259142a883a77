//! Fixtures shared by the engine's tests: requests with chained block hashes, and running an
//! engine until it is idle.

use super::{Engine, EngineRequest, Event, Finished, Step};

/// A request whose prompt blocks are those of every request with the same `prefix`.
pub fn request(id: u64, prompt_tokens: u32, output_tokens: u32, prefix: u64) -> EngineRequest {
    // Block hashes chained from a per-prefix seed: equal `prefix` = equal prompt.
    let blocks = prompt_tokens / 16;
    let block_hashes = (0..u64::from(blocks))
        .map(|b| prefix * 1_000_003 + b)
        .collect();
    EngineRequest {
        id,
        prompt_tokens,
        block_hashes,
        output_tokens,
        lora: None,
    }
}

/// Runs the engine until idle, returning every step.
pub fn run(engine: &mut Engine, mut now: f64) -> Vec<Step> {
    let mut steps = Vec::new();
    while let Some(step) = engine.step(now) {
        now = step.end;
        steps.push(step);
        assert!(steps.len() < 1_000_000, "engine does not finish");
    }
    steps
}

/// The requests that finished in `steps`, in order.
pub fn finished(steps: &[Step]) -> Vec<Finished> {
    steps
        .iter()
        .flat_map(|s| &s.events)
        .filter_map(|e| match e {
            Event::Finished(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}
