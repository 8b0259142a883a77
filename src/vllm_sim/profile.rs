//! Named engine profiles: the step-time constants, KV-cache size and limits of a model on a GPU.
//!
//! Step time is `t0 + prefill·prefill_tokens + decode·decode_seqs + context·Σcontext_tokens`.
//! Where the constants come from (orders of magnitude a vLLM deployment shows; see
//! `../shared/DESIGN.md` and the notes per profile):
//! - `llama-8b-h100`: Llama-3.1-8B, bf16, one H100-80GB. A lone decode step takes ~7–9 ms
//!   (memory-bound: 16 GB of weights at ~2.5 TB/s effective ≈ 6.5 ms, plus ~1 ms launch
//!   overhead); prefill runs at ~25–30k tokens/s (≈ 35 µs/token); each extra sequence in a
//!   decode batch adds ~0.06 ms and each cached context token ~2 ns of attention. KV cache:
//!   ~55 GB free after weights at 128 KiB/token (32 layers × 8 KV heads × 128 dims × 2 × 2 B)
//!   ≈ 420k tokens, i.e. ~26k blocks of 16.
//! - `llama-70b-4xh100`: Llama-3.1-70B, bf16, tensor-parallel 4 on H100s. ~140 GB of weights over
//!   four GPUs gives ~18–22 ms per decode step; prefill ~9–10k tokens/s (≈ 100 µs/token); KV at
//!   320 KiB/token across 4 GPUs with ~160 GB free ≈ 500k tokens ≈ 31k blocks.
//! - `llama-8b-l4`: Llama-3.1-8B, bf16, one L4-24GB (300 GB/s): ~55 ms per decode step, prefill
//!   ~2.5k tokens/s (≈ 400 µs/token), only ~5 GB free for KV ≈ 40k tokens ≈ 2.4k blocks, and a
//!   shorter context (8k) as such deployments set it.
//! - `e5-embedding`: an embedding model (e5-mistral-sized); answers `/v1/embeddings` only.

use serde::Serialize;

/// Step-time and capacity constants of one simulated model server.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    pub name: &'static str,
    /// Fixed cost of one engine step (seconds).
    pub t0: f64,
    /// Cost per prompt token computed in a step (seconds).
    pub prefill_per_token: f64,
    /// Cost per sequence decoding in a step (seconds).
    pub decode_per_seq: f64,
    /// Cost per token of context held by the decoding sequences (seconds).
    pub context_per_token: f64,
    /// KV-cache capacity in blocks of `block_size` tokens.
    pub kv_blocks: u32,
    /// Tokens per KV block.
    pub block_size: u32,
    /// Most sequences in one batch (vLLM `max_num_seqs`).
    pub max_num_seqs: u32,
    /// Most tokens computed in one step (vLLM `max_num_batched_tokens`, chunked prefill).
    pub max_num_batched_tokens: u32,
    /// Longest prompt plus answer (tokens).
    pub max_model_len: u32,
    /// Adapters resident at once (vLLM `max_loras`).
    pub max_loras: u32,
    /// Time to load one LoRA adapter (seconds).
    pub lora_load_time: f64,
    /// An embedding model: serves `/v1/embeddings`, not completions.
    pub embedding: bool,
    /// Dimensions of an embedding vector.
    pub embedding_dims: u32,
}

const BASE: Profile = Profile {
    name: "llama-8b-h100",
    t0: 0.0075,
    prefill_per_token: 35e-6,
    decode_per_seq: 60e-6,
    context_per_token: 2e-9,
    kv_blocks: 26_000,
    block_size: 16,
    max_num_seqs: 256,
    max_num_batched_tokens: 8192,
    max_model_len: 32_768,
    max_loras: 4,
    lora_load_time: 0.05,
    embedding: false,
    embedding_dims: 0,
};

pub const PROFILES: &[Profile] = &[
    BASE,
    Profile {
        name: "llama-70b-4xh100",
        t0: 0.019,
        prefill_per_token: 100e-6,
        decode_per_seq: 150e-6,
        context_per_token: 5e-9,
        kv_blocks: 31_000,
        ..BASE
    },
    Profile {
        name: "llama-8b-l4",
        t0: 0.055,
        prefill_per_token: 400e-6,
        decode_per_seq: 300e-6,
        context_per_token: 20e-9,
        kv_blocks: 2_400,
        max_num_seqs: 64,
        max_num_batched_tokens: 2048,
        max_model_len: 8192,
        ..BASE
    },
    Profile {
        name: "e5-embedding",
        t0: 0.004,
        prefill_per_token: 30e-6,
        decode_per_seq: 0.0,
        context_per_token: 0.0,
        max_model_len: 4096,
        embedding: true,
        embedding_dims: 1024,
        ..BASE
    },
];

/// Looks a profile up by name; the error lists the known ones.
pub fn profile(name: &str) -> Result<Profile, String> {
    PROFILES
        .iter()
        .find(|p| p.name == name)
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = PROFILES.iter().map(|p| p.name).collect();
            format!("unknown profile `{name}`; known: {}", names.join(", "))
        })
}

impl Profile {
    /// Duration of a step that computes `prefill_tokens` prompt tokens and decodes
    /// `decode_seqs` sequences holding `context_tokens` tokens of context in all.
    pub fn step_time(&self, prefill_tokens: u32, decode_seqs: u32, context_tokens: u64) -> f64 {
        self.t0
            + self.prefill_per_token * f64::from(prefill_tokens)
            + self.decode_per_seq * f64::from(decode_seqs)
            + self.context_per_token * context_tokens as f64
    }
}
