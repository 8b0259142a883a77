//! The endpoints vLLM serves without generating: rerank (`/rerank`, `/v1/rerank`,
//! `/v2/rerank`), score (`/score`, `/v1/score`), `/tokenize`, `/detokenize`, and audio
//! transcription (`/v1/audio/transcriptions`, a multipart form). Answered at once, in vLLM's
//! shapes, with deterministic numbers and text; the model is checked as for generation.

use http::StatusCode;
use hyper::Response;
use serde_json::{Value, json};

use super::Shared;
use super::body::{SimBody, error, json_response};
use crate::openai::{self, fnv1a};
use crate::vllm_sim::driver;
use crate::vllm_sim::text::{Rng, token_text};

/// Which engine-free endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Rerank,
    Score,
    Tokenize,
    Detokenize,
    Transcription,
}

/// Answers one request of `endpoint` (`content_type`: the request's, for the multipart form).
pub(super) fn answer(
    shared: &Shared,
    endpoint: Endpoint,
    body: &[u8],
    content_type: &str,
) -> Response<SimBody> {
    match reply(shared, endpoint, body, content_type) {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err((status, message)) => error(status, &message),
    }
}

type Refusal = (StatusCode, String);

fn reply(
    shared: &Shared,
    endpoint: Endpoint,
    body: &[u8],
    content_type: &str,
) -> Result<Value, Refusal> {
    let bad = |m: &str| (StatusCode::BAD_REQUEST, m.to_string());
    if endpoint == Endpoint::Transcription {
        let model = openai::form_field(body, content_type, "model")
            .ok_or_else(|| bad("`model` is required (a multipart form field)"))?;
        check_model(shared, &String::from_utf8_lossy(model))?;
        let file = openai::form_field(body, content_type, "file")
            .ok_or_else(|| bad("`file` is required"))?;
        // About one word per 4 KB of audio, at least one.
        let seed = fnv1a(file);
        let words = (file.len() / 4096).max(1) as u32;
        let text: String = (0..words).map(|i| token_text(seed, i)).collect();
        return Ok(json!({"text": text.trim(), "usage": {"type": "duration", "seconds": words}}));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(&format!("malformed JSON: {e}")))?;
    let model = value.get("model").and_then(Value::as_str);
    if let Some(model) = model {
        check_model(shared, model)?;
    } else if matches!(endpoint, Endpoint::Rerank | Endpoint::Score) {
        return Err(bad("`model` is required"));
    }
    let model = model.unwrap_or(&shared.opts.models[0]).to_string();
    let id = shared
        .next_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let score = |a: &str, b: &str| {
        Rng::new(fnv1a(a.as_bytes()) ^ fnv1a(b.as_bytes()).rotate_left(1)).next_f64()
    };
    let tokens = |s: &str| u64::from(openai::approx_tokens(s.len()));
    match endpoint {
        Endpoint::Rerank => {
            let query = value
                .get("query")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("`query` is required"))?;
            let documents =
                strings(value.get("documents")).ok_or_else(|| bad("`documents` is required"))?;
            let mut results: Vec<Value> = documents
                .iter()
                .enumerate()
                .map(|(i, d)| json!({"index": i, "document": {"text": d}, "relevance_score": score(query, d)}))
                .collect();
            results.sort_by(|a, b| {
                b["relevance_score"]
                    .as_f64()
                    .partial_cmp(&a["relevance_score"].as_f64())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            if let Some(n) = value.get("top_n").and_then(Value::as_u64) {
                results.truncate(n as usize);
            }
            let total = tokens(query) * documents.len() as u64
                + documents.iter().map(|d| tokens(d)).sum::<u64>();
            Ok(
                json!({"id": format!("rerank-sim-{id}"), "model": model, "usage": {"total_tokens": total}, "results": results}),
            )
        }
        Endpoint::Score => {
            let first = strings(value.get("text_1")).ok_or_else(|| bad("`text_1` is required"))?;
            let second = strings(value.get("text_2")).ok_or_else(|| bad("`text_2` is required"))?;
            // One against many, or pairwise.
            let pairs: Vec<(&str, &str)> = if first.len() == 1 {
                second.iter().map(|b| (first[0], *b)).collect()
            } else {
                first.iter().copied().zip(second.iter().copied()).collect()
            };
            let data: Vec<Value> = pairs
                .iter()
                .enumerate()
                .map(|(i, (a, b))| json!({"index": i, "object": "score", "score": score(a, b)}))
                .collect();
            let total: u64 = pairs.iter().map(|(a, b)| tokens(a) + tokens(b)).sum();
            Ok(
                json!({"id": format!("score-sim-{id}"), "object": "list", "created": driver::unix_now() as u64,
                      "model": model, "data": data, "usage": {"prompt_tokens": total, "total_tokens": total}}),
            )
        }
        Endpoint::Tokenize => {
            let text = openai::prompt_text(&value)
                .ok_or_else(|| bad("`prompt` or `messages` is required"))?;
            let ids: Vec<u64> = text
                .as_bytes()
                .chunks(openai::BYTES_PER_TOKEN)
                .map(|c| fnv1a(c) % 128_000)
                .collect();
            Ok(
                json!({"count": ids.len(), "max_model_len": shared.opts.profile.max_model_len, "tokens": ids}),
            )
        }
        Endpoint::Detokenize => {
            let ids = value
                .get("tokens")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("`tokens` is required"))?;
            let text: String = ids
                .iter()
                .filter_map(Value::as_u64)
                .map(|t| token_text(t, 0))
                .collect();
            Ok(json!({"prompt": text}))
        }
        Endpoint::Transcription => unreachable!("answered above"),
    }
}

fn check_model(shared: &Shared, model: &str) -> Result<(), Refusal> {
    let opts = &shared.opts;
    if opts.models.iter().chain(&opts.loras).any(|m| m == model) {
        Ok(())
    } else {
        Err((
            StatusCode::NOT_FOUND,
            format!("The model `{model}` does not exist."),
        ))
    }
}

/// A string or a list of strings.
fn strings(value: Option<&Value>) -> Option<Vec<&str>> {
    match value? {
        Value::String(s) => Some(vec![s.as_str()]),
        Value::Array(items) => items.iter().map(Value::as_str).collect(),
        _ => None,
    }
}
