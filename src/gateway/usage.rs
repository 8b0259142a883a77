//! What is recorded of an answer when it ends: its tokens — read from the `usage` object the
//! replica puts at the end of an answer (the last event of a stream with
//! `stream_options.include_usage`, the end of a JSON answer), else estimated from the prompt
//! and what was streamed — counted per pool, model, version and key, charged to the key's
//! token budget, and the access-log line. Only the answer's last bytes are kept, so this costs a
//! bounded copy per chunk, never the answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use prometheus::IntCounter;

use super::auth::TokenBudget;
use crate::otel::RequestSpan;

/// Bytes of an answer's end kept to find its `usage` (a usage event with details is ~300).
const TAIL: usize = 2048;

/// An answer's prompt and completion tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
}

/// Records one answer when it ends.
pub struct AnswerRecord {
    /// The key's token budget, when it has one.
    pub budget: Option<Arc<TokenBudget>>,
    /// The gateway's estimate of the prompt, used when the answer carries no `usage`.
    pub prompt_estimate: u64,
    /// `infergate_tokens_total` for prompt and completion tokens, resolved for this request.
    pub counters: [IntCounter; 2],
    /// The access-log line's fields, when the log is on.
    pub access: Option<Box<Access>>,
    /// The request's span, when tracing is on.
    pub span: Option<RequestSpan>,
    tail: Vec<u8>,
}

/// What an access-log line says of a request besides its status and times.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub request_id: String,
    pub client: Option<SocketAddr>,
    pub method: String,
    pub path: String,
    pub model: String,
    pub pool: String,
    pub version: String,
    pub key: String,
    pub replica: String,
    /// The request's trace (32 hex digits), when tracing is on.
    pub trace_id: String,
}

impl AnswerRecord {
    pub fn new(
        budget: Option<Arc<TokenBudget>>,
        prompt_estimate: u64,
        counters: [IntCounter; 2],
        access: Option<Box<Access>>,
        span: Option<RequestSpan>,
    ) -> Self {
        Self {
            budget,
            prompt_estimate,
            counters,
            access,
            span,
            tail: Vec::new(),
        }
    }

    /// Names the replica that answers, for the access log.
    pub fn replica(mut self, name: &str) -> Self {
        if let Some(access) = &mut self.access {
            access.replica = name.to_string();
        }
        self
    }

    /// The request's span while it records (sampled).
    pub fn span(&mut self) -> Option<&mut RequestSpan> {
        self.span.as_mut().filter(|s| s.recording())
    }

    /// Keeps the last [`TAIL`] bytes of the answer so far.
    pub fn saw(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(TAIL)..];
        let over = (self.tail.len() + data.len()).saturating_sub(TAIL);
        self.tail.drain(..over);
        self.tail.extend_from_slice(data);
    }

    /// The answer ended at `now` (whole or not): counts and charges its tokens, logs it and
    /// ends its span.
    pub fn ended(mut self, now: Instant, answer: &Answer) {
        let (usage, reported) = self.usage(answer);
        self.counters[0].inc_by(usage.prompt);
        self.counters[1].inc_by(usage.completion);
        if let Some(budget) = &self.budget {
            budget.charge(now, usage.prompt + usage.completion);
        }
        if let Some(access) = &self.access {
            log_access(
                access,
                answer.status,
                answer.first_byte,
                answer.total,
                Some(usage),
            );
        }
        if let Some(mut span) = self.span.take() {
            // A stream's first chunk is its first token.
            let first = if answer.sse {
                "infergate.ttft_ms"
            } else {
                "infergate.first_byte_ms"
            };
            if let Some(at) = answer.first_byte {
                span.set(first, crate::otel::millis(at));
            }
            span.set("gen_ai.usage.input_tokens", usage.prompt as i64);
            span.set("gen_ai.usage.output_tokens", usage.completion as i64);
            span.set("infergate.usage_reported", reported);
            span.end(answer.status);
        }
    }

    /// The answer's tokens, and whether the replica reported them (else they are estimated).
    fn usage(&self, answer: &Answer) -> (Usage, bool) {
        match usage_in(&self.tail) {
            Some(usage) => (usage, true),
            None => (self.estimate(answer), false),
        }
    }

    /// The tokens of an answer without `usage`: the prompt's estimate, and a token per streamed
    /// chunk or one per ~4 bytes of a whole answer.
    fn estimate(&self, answer: &Answer) -> Usage {
        Usage {
            prompt: self.prompt_estimate,
            completion: if answer.sse {
                u64::from(answer.chunks)
            } else {
                u64::from(crate::openai::approx_tokens(answer.bytes as usize))
            },
        }
    }
}

/// How an answer went, for its record.
pub struct Answer {
    pub status: StatusCode,
    pub sse: bool,
    /// Body chunks and bytes passed on.
    pub chunks: u32,
    pub bytes: u64,
    /// From the request's arrival to its first body byte, and to its end.
    pub first_byte: Option<Duration>,
    pub total: Duration,
}

/// One access-log line (target `infergate::access`).
pub fn log_access(
    a: &Access,
    status: StatusCode,
    first_byte: Option<Duration>,
    total: Duration,
    usage: Option<Usage>,
) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    tracing::info!(
        target: "infergate::access",
        request_id = %a.request_id,
        client = %a.client.map_or(String::new(), |c| c.to_string()),
        method = %a.method,
        path = %a.path,
        model = %a.model,
        pool = %a.pool,
        version = %a.version,
        replica = %a.replica,
        key = %a.key,
        trace_id = %a.trace_id,
        status = status.as_u16(),
        first_byte_ms = first_byte.map(ms),
        duration_ms = ms(total),
        prompt_tokens = usage.map(|u| u.prompt),
        completion_tokens = usage.map(|u| u.completion),
        "request"
    );
}

/// The counts of the last `"usage"` object in `bytes`, if it has a prompt count: chat and
/// completions name them `prompt_tokens` and `completion_tokens`, the Responses API
/// `input_tokens` and `output_tokens`.
pub fn usage_in(bytes: &[u8]) -> Option<Usage> {
    let key = memchr::memmem::rfind(bytes, b"\"usage\"")?;
    // A quote escaped inside a string is text, not a key.
    if key > 0 && bytes[key - 1] == b'\\' {
        return None;
    }
    let object = &bytes[key + 7..];
    let (prompt, completion) = match count_after(object, b"\"prompt_tokens\"") {
        Some(prompt) => (prompt, count_after(object, b"\"completion_tokens\"")),
        None => (
            count_after(object, b"\"input_tokens\"")?,
            count_after(object, b"\"output_tokens\""),
        ),
    };
    let completion = completion.unwrap_or(0);
    Some(Usage { prompt, completion })
}

/// The integer value of the first `name` key in `bytes`.
fn count_after(bytes: &[u8], name: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(bytes, name)? + name.len();
    let rest = bytes[at..].trim_ascii_start().strip_prefix(b":")?;
    let rest = rest.trim_ascii_start();
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(prompt: u64, completion: u64) -> Option<Usage> {
        Some(Usage { prompt, completion })
    }

    #[test]
    fn usage_is_read_from_the_end_of_an_answer() {
        let unary = br#"{"id":"c","choices":[{"message":{"content":"hi \"usage\": {\"prompt_tokens\": 9}"}}],"usage":{"prompt_tokens": 12,"total_tokens":17,"completion_tokens" :5,"prompt_tokens_details":{"cached_tokens":4}},"kv_transfer_params":null}"#;
        assert_eq!(usage_in(unary), usage(12, 5));
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":20}}\n\n\
            data: [DONE]\n\n";
        assert_eq!(
            usage_in(stream),
            usage(100, 20),
            "the last usage, not a null one"
        );
        assert_eq!(
            usage_in(b"data: {\"usage\":null}\n\ndata: [DONE]\n\n"),
            None,
            "null usage: estimated"
        );
        assert_eq!(usage_in(b"{\"choices\":[]}"), None);
        // The Responses API's names.
        let response = br#"event: response.completed
data: {"type":"response.completed","response":{"usage":{"input_tokens":30,"input_tokens_details":{"cached_tokens":0},"output_tokens":9,"total_tokens":39}}}"#;
        assert_eq!(usage_in(response), usage(30, 9));
        // The last `"usage"` is inside a completion's text: not trusted.
        assert_eq!(usage_in(br#"{"text":"say \"usage\""}"#), None);
    }

    #[test]
    fn only_the_tail_is_kept_and_estimates_fill_in() {
        let counters = [
            IntCounter::new("p", "p").unwrap(),
            IntCounter::new("c", "c").unwrap(),
        ];
        let budget = Arc::new(TokenBudget::new(Instant::now(), 60));
        let mut record = AnswerRecord::new(Some(budget.clone()), 50, counters.clone(), None, None);
        record.saw(&[b'x'; 5000]);
        record.saw(b"\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}");
        assert_eq!(record.tail.len(), TAIL);
        let answer = |sse, chunks, bytes| Answer {
            status: StatusCode::OK,
            sse,
            chunks,
            bytes,
            first_byte: None,
            total: Duration::ZERO,
        };
        assert_eq!(
            record.usage(&answer(true, 40, 9000)),
            (
                Usage {
                    prompt: 7,
                    completion: 3
                },
                true
            )
        );
        record.ended(Instant::now(), &answer(true, 40, 9000));
        assert_eq!((counters[0].get(), counters[1].get()), (7, 3), "counted");
        let mut plain = AnswerRecord::new(None, 50, counters.clone(), None, None);
        plain.saw(b"data: {\"choices\":[]}\n\n");
        // No usage: 50 estimated prompt tokens, and one token an event or 4 bytes a token.
        assert_eq!(
            plain.usage(&answer(true, 40, 9000)),
            (
                Usage {
                    prompt: 50,
                    completion: 40
                },
                false
            )
        );
        assert_eq!(
            plain.usage(&answer(false, 1, 400)),
            (
                Usage {
                    prompt: 50,
                    completion: 100
                },
                false
            )
        );
    }
}
