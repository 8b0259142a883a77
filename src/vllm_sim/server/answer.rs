//! An accepted request's answer: submitted to the engine (or, with `--instant`, answered at
//! once), then its engine events turned into one JSON body or a stream of SSE chunks; the
//! `--crash-after` and `--fail-rate` faults strike here.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use hyper::Response;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Shared;
use super::accept::{Accepted, Kind, accept};
use super::body::{SimBody, error, json_response};
use super::responses::{self, ResponseParts};
use crate::vllm_sim::driver::{self, Command};
use crate::vllm_sim::engine::{EngineRequest, Event, Finished};
use crate::vllm_sim::text::{Rng, token_text};

/// Checks the request, hands it to the engine and answers it: as a stream of SSE chunks when
/// it asked for one, else as one body once the engine finished it.
pub(super) async fn answer(shared: Arc<Shared>, body: &[u8], kind: Kind) -> Response<SimBody> {
    let mut accepted = match accept(&shared, body, kind) {
        Ok(a) => a,
        Err((status, message)) => return error(status, &message),
    };
    let id = accepted.id;
    if shared.opts.fail_rate > 0.0
        && Rng::new(shared.opts.seed ^ id.wrapping_mul(0x9E37)).next_f64() < shared.opts.fail_rate
    {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "simulated failure (--fail-rate)",
        );
    }
    let (tx, rx) = mpsc::unbounded_channel();
    if shared.opts.instant {
        instant_events(&accepted, &tx);
    } else {
        let request = EngineRequest {
            id,
            prompt_tokens: accepted.prompt_tokens,
            block_hashes: std::mem::take(&mut accepted.block_hashes),
            output_tokens: accepted.output_tokens,
            lora: shared
                .opts
                .loras
                .contains(&accepted.model)
                .then(|| accepted.model.clone()),
        };
        if shared.engine.send(Command::Submit(request, tx)).is_err() {
            return error(StatusCode::SERVICE_UNAVAILABLE, "engine stopped");
        }
    }
    let reply = Answer {
        shared: shared.clone(),
        accepted,
        events: rx,
        text: String::new(),
        sent_role: false,
        done: false,
        finished: false,
        pending: std::collections::VecDeque::new(),
        crashing: false,
        events_out: responses::Events::default(),
    };
    if reply.accepted.stream {
        let mut reply = reply;
        if reply.accepted.kind == Kind::Response {
            // vLLM opens a Responses stream at once, before the first token.
            let mut events = std::mem::take(&mut reply.events_out);
            let prelude = events.prelude(&reply.response_parts(None));
            reply.events_out = events;
            reply.pending.extend(prelude);
        }
        let mut response = Response::new(SimBody::Stream(Box::new(reply)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    } else {
        reply.collect().await
    }
}

/// `--instant`: every token at once, no engine.
fn instant_events(a: &Accepted, tx: &mpsc::UnboundedSender<Event>) {
    for index in 0..a.output_tokens {
        let _ = tx.send(Event::Token {
            id: a.id,
            index,
            gap: None,
        });
    }
    let _ = tx.send(Event::Finished(Finished {
        id: a.id,
        prompt_tokens: a.prompt_tokens,
        output_tokens: a.output_tokens,
        cached_tokens: 0,
        queue_time: 0.0,
        ttft: 0.0,
        e2e: 0.0,
    }));
}

/// How long a stream hit by `--crash-after` hangs before the process exits.
const CRASH_DELAY: Duration = Duration::from_millis(50);

/// The `--crash-after` fault: exit abruptly (status 70), as a replica that dies would.
fn crash(request: u64) -> ! {
    eprintln!("infergate sim: crashing on purpose (--crash-after {request})");
    std::process::exit(70);
}

/// One answer in progress: turns engine events into a JSON body or SSE chunks. Dropping it
/// before the end (client gone) aborts the request in the engine.
pub(super) struct Answer {
    shared: Arc<Shared>,
    accepted: Accepted,
    pub(super) events: mpsc::UnboundedReceiver<Event>,
    text: String,
    sent_role: bool,
    /// `[DONE]` was sent.
    pub(super) done: bool,
    /// The engine finished the request.
    finished: bool,
    pub(super) pending: std::collections::VecDeque<Bytes>,
    /// `--crash-after` struck: nothing more is sent, and the process exits shortly.
    pub(super) crashing: bool,
    /// A Responses stream's event numbering.
    events_out: responses::Events,
}

impl Drop for Answer {
    fn drop(&mut self) {
        if !self.finished && !self.shared.opts.instant {
            let _ = self.shared.engine.send(Command::Abort(self.accepted.id));
        }
    }
}

impl Answer {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.accepted.kind, chunk) {
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Chat, false) => "chat.completion",
            _ => "text_completion",
        }
    }

    fn id_text(&self) -> String {
        match self.accepted.kind {
            Kind::Chat => format!("chatcmpl-sim-{}", self.accepted.id),
            Kind::Completion => format!("cmpl-sim-{}", self.accepted.id),
            Kind::Embedding => format!("embd-sim-{}", self.accepted.id),
            Kind::Response => format!("resp_sim_{}", self.accepted.id),
        }
    }

    /// A Responses API answer as it stands (finished: with its usage).
    fn response_parts(&self, finished: Option<&Finished>) -> ResponseParts<'_> {
        ResponseParts {
            id: self.accepted.id,
            model: &self.accepted.model,
            created: driver::unix_now() as u64,
            text: &self.text,
            truncated: self.accepted.finish_reason == "length",
            usage: finished.map(|f| (f.prompt_tokens, f.cached_tokens, f.output_tokens)),
        }
    }

    fn usage(&self, f: &Finished) -> Value {
        let mut usage = json!({
            "prompt_tokens": f.prompt_tokens,
            "total_tokens": f.prompt_tokens + if self.accepted.kind == Kind::Embedding { 0 } else { f.output_tokens },
        });
        if self.accepted.kind != Kind::Embedding {
            usage["completion_tokens"] = json!(f.output_tokens);
            usage["prompt_tokens_details"] = json!({"cached_tokens": f.cached_tokens});
        }
        usage
    }

    fn record(&self, f: &Finished) {
        self.shared
            .metrics
            .observe_finished(f, self.accepted.finish_reason);
    }

    /// Whether `--crash-after` strikes this request at its token `index` (its second token:
    /// the client has a first one).
    fn crash_due(&self, index: u32) -> bool {
        self.shared.opts.crash_after == Some(self.accepted.id) && index >= 1
    }

    /// A stream stops where it is and the process exits a moment later, so the chunks already
    /// handed over reach the client first (exiting at once could beat their write when the
    /// engine delivers two tokens in a row).
    fn crash_mid_stream(&mut self) {
        self.crashing = true;
        let id = self.accepted.id;
        tokio::spawn(async move {
            tokio::time::sleep(CRASH_DELAY).await;
            crash(id);
        });
    }

    async fn collect(mut self) -> Response<SimBody> {
        while let Some(event) = self.events.recv().await {
            match event {
                Event::Token { index, .. } => {
                    if self.crash_due(index) {
                        crash(self.accepted.id); // nothing of a non-streamed answer went out
                    }
                    self.text
                        .push_str(token_text(self.accepted.content_seed, index));
                }
                Event::Preempted { .. } => {}
                Event::Finished(f) => {
                    self.finished = true;
                    self.record(&f);
                    let a = &self.accepted;
                    let created = driver::unix_now() as u64;
                    let body = match a.kind {
                        Kind::Embedding => {
                            let data: Vec<Value> = (0..a.inputs)
                                .map(|i| json!({"object": "embedding", "index": i, "embedding": embedding(a.id + i as u64, self.shared.opts.profile.embedding_dims)}))
                                .collect();
                            json!({"id": self.id_text(), "object": "list", "created": created, "model": a.model, "data": data, "usage": self.usage(&f)})
                        }
                        Kind::Chat => json!({
                            "id": self.id_text(), "object": self.object(false), "created": created, "model": a.model,
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text}, "logprobs": null, "finish_reason": a.finish_reason}],
                            "usage": self.usage(&f),
                        }),
                        Kind::Completion => json!({
                            "id": self.id_text(), "object": self.object(false), "created": created, "model": a.model,
                            "choices": [{"index": 0, "text": self.text, "logprobs": null, "finish_reason": a.finish_reason}],
                            "usage": self.usage(&f),
                        }),
                        Kind::Response => responses::object(&self.response_parts(Some(&f))),
                    };
                    return json_response(StatusCode::OK, &body);
                }
            }
        }
        error(StatusCode::SERVICE_UNAVAILABLE, "engine stopped")
    }

    fn chunk(&mut self, content: Option<&str>, finish: Option<&str>) -> Bytes {
        let created = driver::unix_now() as u64;
        let choice = match self.accepted.kind {
            Kind::Chat => {
                let mut delta = json!({});
                if !self.sent_role {
                    delta["role"] = json!("assistant");
                    self.sent_role = true;
                }
                if let Some(c) = content {
                    delta["content"] = json!(c);
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            _ => {
                json!({"index": 0, "text": content.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        };
        let value = json!({"id": self.id_text(), "object": self.object(true), "created": created, "model": self.accepted.model, "choices": [choice]});
        sse(&value)
    }

    /// Turns one engine event into the SSE bytes it produces.
    pub(super) fn on_event(&mut self, event: Event) {
        match event {
            Event::Token { index, .. } => {
                if self.crash_due(index) {
                    return self.crash_mid_stream();
                }
                let text = token_text(self.accepted.content_seed, index);
                if self.accepted.kind == Kind::Response {
                    self.text.push_str(text);
                    let bytes = self.events_out.delta(self.accepted.id, text);
                    self.pending.push_back(bytes);
                    return;
                }
                let last = index + 1 == self.accepted.output_tokens;
                let finish = last.then_some(self.accepted.finish_reason);
                let bytes = self.chunk(Some(text), finish);
                self.pending.push_back(bytes);
            }
            Event::Preempted { .. } => {}
            Event::Finished(f) if self.accepted.kind == Kind::Response => {
                self.finished = true;
                self.record(&f);
                let mut events = std::mem::take(&mut self.events_out);
                let closing = events.closing(&self.response_parts(Some(&f)));
                self.events_out = events;
                self.pending.extend(closing);
                self.done = true;
            }
            Event::Finished(f) => {
                self.finished = true;
                self.record(&f);
                if self.accepted.include_usage {
                    let created = driver::unix_now() as u64;
                    let value = json!({"id": self.id_text(), "object": self.object(true), "created": created, "model": self.accepted.model, "choices": [], "usage": self.usage(&f)});
                    self.pending.push_back(sse(&value));
                }
                self.pending
                    .push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                self.done = true;
            }
        }
    }
}

fn sse(value: &Value) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut out, value).expect("a JSON value serializes");
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// A deterministic unit-length vector.
fn embedding(seed: u64, dims: u32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let v: Vec<f32> = (0..dims).map(|_| rng.next_f64() as f32 - 0.5).collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.into_iter().map(|x| x / norm).collect()
}
