//! What the simulator accepts: a request body checked the way vLLM checks it, and the answer's
//! length decided (the same prompt gets the same answer, whichever replica serves it).

use std::sync::atomic::Ordering;

use http::StatusCode;
use serde_json::Value;

use super::Shared;
use crate::openai::{self, fnv1a};
use crate::vllm_sim::text::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Completion,
    Chat,
    Embedding,
    /// The Responses API.
    Response,
}

/// What an accepted request turned into, before the engine runs it.
pub(super) struct Accepted {
    pub(super) id: u64,
    pub(super) kind: Kind,
    pub(super) model: String,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    pub(super) prompt_tokens: u32,
    pub(super) output_tokens: u32,
    pub(super) finish_reason: &'static str,
    pub(super) inputs: usize,
    /// Seeds the answer's text and length: the same prompt gets the same answer (as with
    /// greedy decoding), whichever replica serves it.
    pub(super) content_seed: u64,
    /// Prefix-cache identity of the prompt's full blocks.
    pub(super) block_hashes: Vec<u64>,
}

/// Checks a request body the way vLLM does and decides the answer's length.
pub(super) fn accept(
    shared: &Shared,
    body: &[u8],
    kind: Kind,
) -> Result<Accepted, (StatusCode, String)> {
    let bad = |msg: &str| (StatusCode::BAD_REQUEST, msg.to_string());
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(&format!("malformed JSON: {e}")))?;
    let Some(model) = value.get("model").and_then(Value::as_str) else {
        return Err(bad("`model` is required"));
    };
    let opts = &shared.opts;
    if !opts.models.iter().chain(&opts.loras).any(|m| m == model) {
        return Err((
            StatusCode::NOT_FOUND,
            format!("The model `{model}` does not exist."),
        ));
    }
    if (kind == Kind::Embedding) != opts.profile.embedding {
        return Err(bad(if opts.profile.embedding {
            "this model only supports embeddings"
        } else {
            "this model does not support embeddings"
        }));
    }
    let stream = value
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if value.get("stream_options").is_some_and(|v| !v.is_null()) && !stream {
        return Err(bad(
            "Stream options can only be defined when `stream=True`.",
        ));
    }
    let include_usage = value
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let text = match kind {
        Kind::Response => openai::responses_prompt_text(&value),
        _ => openai::prompt_text(&value),
    };
    let Some(text) = text else {
        return Err(bad(match kind {
            Kind::Chat => "`messages` is required",
            Kind::Completion => "`prompt` is required",
            Kind::Embedding | Kind::Response => "`input` is required",
        }));
    };
    let inputs = match value.get("input") {
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items.len().max(1),
        _ => 1,
    };
    let prompt_tokens = openai::approx_tokens(text.len()).max(1);
    let max_len = opts.profile.max_model_len;
    if prompt_tokens >= max_len {
        return Err(bad(&format!(
            "This model's maximum context length is {max_len} tokens. However, your request has {prompt_tokens} input tokens."
        )));
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let content_seed = opts.seed ^ fnv1a(text.as_bytes()) ^ fnv1a(model.as_bytes());
    let max_tokens = value
        .get("max_completion_tokens")
        .or_else(|| value.get("max_tokens"))
        .or_else(|| value.get("max_output_tokens"))
        .and_then(Value::as_u64)
        .map(|v| v.min(u64::from(u32::MAX)) as u32);
    let ignore_eos = value
        .get("ignore_eos")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let room = max_len - prompt_tokens;
    let (output_tokens, finish_reason) = if kind == Kind::Embedding {
        (1, "stop")
    } else {
        let natural = Rng::new(content_seed).answer_length(opts.mean_output_tokens);
        let limit = max_tokens.unwrap_or(room).min(room).max(1);
        if ignore_eos || natural >= limit {
            (limit, "length")
        } else {
            (natural, "stop")
        }
    };
    let kv_tokens = u64::from(opts.profile.kv_blocks) * u64::from(opts.profile.block_size);
    if u64::from(prompt_tokens + output_tokens) > kv_tokens {
        return Err(bad(&format!(
            "prompt and answer ({} tokens) exceed the KV cache ({kv_tokens} tokens)",
            prompt_tokens + output_tokens
        )));
    }
    Ok(Accepted {
        id,
        kind,
        model: model.to_string(),
        stream,
        include_usage,
        prompt_tokens,
        output_tokens,
        finish_reason,
        inputs,
        content_seed,
        block_hashes: openai::block_hashes(text.as_bytes(), opts.profile.block_size as usize),
    })
}
