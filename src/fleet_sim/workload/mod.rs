//! Workloads for the fleet simulation and the load generator: real traces (`trace`:
//! infergate's JSONL, Mooncake, Azure LLM inference CSV) and seeded generators (`generate`:
//! Poisson, bursty gamma, ramp, diurnal, inference-perf-style shared prefix), with time
//! scaling, rate scaling and windows (`shape`). This file holds what a workload is made of
//! and [`load`], which reads or generates one and shapes it.
//!
//! Traces carry no prompt text, so a prompt is described by the *content* of its 16-token
//! blocks: runs of block ids ([`Segment`]). Equal ids in equal order mean equal text, so the
//! prefix index and the engines' prefix caches see exactly the sharing the trace describes.
//! [`Request::block_hashes`] turns them into the chained hashes the router and the engine use;
//! [`Request::prompt_text`] turns them into deterministic text (64 bytes per block) for real
//! requests, which hash the same way in the gateway and in the simulator.

mod generate;
mod random;
mod shape;
mod trace;

use std::hash::{Hash, Hasher};
use std::path::PathBuf;

pub use generate::{Generator, GeneratorKind, generate};
pub use random::{Rng, mix};
pub use shape::{Shaping, shape};
pub use trace::{TraceFormat, detect_format};

/// Tokens per prompt block (vLLM's KV block size, and the gateway's prefix block).
pub const BLOCK_TOKENS: u32 = 16;

/// One request of a workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Seconds from the start of the workload.
    pub arrival: f64,
    /// Model name; None sends it to the first pool.
    pub model: Option<String>,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    /// What the prompt's full blocks contain, in order.
    pub segments: Vec<Segment>,
    pub session: Option<String>,
    pub priority: Option<String>,
}

/// `blocks` consecutive prompt blocks whose content is derived from `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub id: u64,
    pub blocks: u32,
}

impl Request {
    /// Which of `gateways` the `index`th request of a workload goes to: a client's keep-alive
    /// connection stays on one gateway, so by its session, else in turn. (The fleet
    /// simulation's and `loadgen`'s rule alike.)
    pub fn gateway(&self, index: usize, gateways: usize) -> usize {
        match &self.session {
            Some(session) => crate::openai::fnv1a(session.as_bytes()) as usize % gateways.max(1),
            None => index % gateways.max(1),
        }
    }

    /// The content id of each full prompt block.
    fn block_ids(&self) -> impl Iterator<Item = u64> + '_ {
        let full = (self.prompt_tokens / BLOCK_TOKENS) as usize;
        self.segments
            .iter()
            .flat_map(|s| (0..s.blocks).map(move |j| mix(s.id, u64::from(j))))
            .take(full)
    }

    /// Chained hashes of the prompt's full blocks: equal hashes mean equal prefixes.
    pub fn block_hashes(&self) -> Vec<u64> {
        let mut previous = 0u64;
        self.block_ids()
            .map(|id| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                previous.hash(&mut h);
                id.hash(&mut h);
                previous = h.finish();
                previous
            })
            .collect()
    }

    /// A prompt of `prompt_tokens` tokens (4 bytes each) whose 64-byte blocks follow the
    /// segments: lowercase words derived from each block's id, so equal ids give equal text.
    pub fn prompt_text(&self) -> String {
        let bytes = self.prompt_tokens as usize * 4;
        let mut text = String::with_capacity(bytes + 64);
        for id in self.block_ids() {
            block_text(id, &mut text);
        }
        let mut tail = mix(self.arrival.to_bits(), u64::from(self.prompt_tokens));
        while text.len() < bytes {
            block_text(tail, &mut text);
            tail = mix(tail, 1);
        }
        text.truncate(bytes);
        text
    }
}

/// 64 bytes of text for one block: 16 four-letter "words" (3 letters and a space).
fn block_text(id: u64, out: &mut String) {
    let mut x = id;
    for _ in 0..16 {
        x = mix(x, 0x5bd1);
        for k in 0..3 {
            out.push((b'a' + ((x >> (8 * k)) % 26) as u8) as char);
        }
        out.push(' ');
    }
}

/// Where requests come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Trace { path: PathBuf, format: TraceFormat },
    Generator(Generator),
}

/// Reads or generates the workload, shaped and sorted by arrival.
pub fn load(source: &Source, shaping: &Shaping) -> anyhow::Result<Vec<Request>> {
    let raw = match source {
        Source::Trace { path, format } => trace::read_trace(path, *format)?,
        Source::Generator(g) => generate(g),
    };
    Ok(shape(raw, shaping))
}
