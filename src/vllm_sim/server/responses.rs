//! The Responses API (`POST /v1/responses`) as vLLM serves it: one `response` object, or a
//! stream of typed events — `response.created`, `response.in_progress`, the output item and
//! content part opening, one `response.output_text.delta` per token, their closing events and
//! `response.completed` with the usage — each as `event: <type>` and `data: <json>`, and no
//! `[DONE]`. The prelude goes out as soon as the request is accepted, before any token: a
//! proxy that times the first byte of such a stream times the prelude, not the first token.

use bytes::Bytes;
use serde_json::{Value, json};

/// What a response object is built from.
pub(super) struct ResponseParts<'a> {
    pub(super) id: u64,
    pub(super) model: &'a str,
    pub(super) created: u64,
    pub(super) text: &'a str,
    /// Ended at its token limit (not at a natural end).
    pub(super) truncated: bool,
    /// Input, cached and output tokens, once finished.
    pub(super) usage: Option<(u32, u32, u32)>,
}

fn item_id(id: u64) -> String {
    format!("msg_sim_{id}")
}

/// The `response` object: `in_progress` with no output yet, or finished.
pub(super) fn object(p: &ResponseParts<'_>) -> Value {
    let finished = p.usage.is_some();
    let status = match (finished, p.truncated) {
        (false, _) => "in_progress",
        (true, false) => "completed",
        (true, true) => "incomplete",
    };
    let output = if finished {
        json!([message(p, "completed")])
    } else {
        json!([])
    };
    json!({
        "id": format!("resp_sim_{}", p.id), "object": "response", "created_at": p.created,
        "model": p.model, "status": status, "output": output,
        "incomplete_details": (finished && p.truncated).then(|| json!({"reason": "max_output_tokens"})),
        "error": null, "instructions": null, "metadata": {}, "parallel_tool_calls": true,
        "temperature": 1.0, "top_p": 1.0, "tool_choice": "auto", "tools": [],
        "text": {"format": {"type": "text"}},
        "usage": p.usage.map(|(input, cached, output)| json!({
            "input_tokens": input, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input + output,
        })),
    })
}

fn message(p: &ResponseParts<'_>, status: &str) -> Value {
    json!({"type": "message", "id": item_id(p.id), "status": status, "role": "assistant",
           "content": [part(p.text)]})
}

fn part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

/// A stream's events, numbered in order.
#[derive(Default)]
pub(super) struct Events {
    sequence: u64,
}

impl Events {
    fn event(&mut self, kind: &str, mut value: Value) -> Bytes {
        value["type"] = json!(kind);
        value["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        let mut out = format!("event: {kind}\ndata: ").into_bytes();
        serde_json::to_writer(&mut out, &value).expect("a JSON value serializes");
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    /// Created, in progress, the message item and its text part opened.
    pub(super) fn prelude(&mut self, p: &ResponseParts<'_>) -> Vec<Bytes> {
        let response = object(p);
        let item = json!({"type": "message", "id": item_id(p.id), "status": "in_progress",
                          "role": "assistant", "content": []});
        vec![
            self.event("response.created", json!({"response": response})),
            self.event("response.in_progress", json!({"response": response})),
            self.event(
                "response.output_item.added",
                json!({"output_index": 0, "item": item}),
            ),
            self.event(
                "response.content_part.added",
                json!({"item_id": item_id(p.id), "output_index": 0, "content_index": 0, "part": part("")}),
            ),
        ]
    }

    /// One token's text.
    pub(super) fn delta(&mut self, id: u64, text: &str) -> Bytes {
        self.event(
            "response.output_text.delta",
            json!({"item_id": item_id(id), "output_index": 0, "content_index": 0, "delta": text, "logprobs": []}),
        )
    }

    /// The text, part and item closed, and the finished response with its usage.
    pub(super) fn closing(&mut self, p: &ResponseParts<'_>) -> Vec<Bytes> {
        let done = |extra: Value| {
            let mut v = json!({"item_id": item_id(p.id), "output_index": 0, "content_index": 0});
            if let (Value::Object(v), Value::Object(extra)) = (&mut v, extra) {
                v.extend(extra);
            }
            v
        };
        vec![
            self.event(
                "response.output_text.done",
                done(json!({"text": p.text, "logprobs": []})),
            ),
            self.event(
                "response.content_part.done",
                done(json!({"part": part(p.text)})),
            ),
            self.event(
                "response.output_item.done",
                json!({"output_index": 0, "item": message(p, "completed")}),
            ),
            // vLLM ends with `response.completed` even when the response is `incomplete` (at
            // its token limit); the openai SDK's stream helper waits for it.
            self.event("response.completed", json!({"response": object(p)})),
        ]
    }
}
