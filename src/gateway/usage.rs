//! The tokens an answer used, for a key's token budget: read from the `usage` object the
//! replica puts at the end of an answer (the last event of a stream with
//! `stream_options.include_usage`, the end of a JSON answer), else estimated from the prompt
//! and what was streamed. Only the answer's last bytes are kept, so metering costs a bounded
//! copy per chunk, never the answer.

use std::sync::Arc;
use std::time::Instant;

use super::auth::TokenBudget;

/// Bytes of an answer's end kept to find its `usage` (a usage event with details is ~300).
const TAIL: usize = 2048;

/// Meters one answer for one key's budget.
pub struct UsageMeter {
    budget: Arc<TokenBudget>,
    /// The gateway's estimate of the prompt, used when the answer carries no `usage`.
    prompt_estimate: u64,
    tail: Vec<u8>,
}

impl UsageMeter {
    pub fn new(budget: Arc<TokenBudget>, prompt_estimate: u64) -> Self {
        Self {
            budget,
            prompt_estimate,
            tail: Vec::new(),
        }
    }

    /// Keeps the last [`TAIL`] bytes of the answer so far.
    pub fn saw(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(TAIL)..];
        let over = (self.tail.len() + data.len()).saturating_sub(TAIL);
        self.tail.drain(..over);
        self.tail.extend_from_slice(data);
    }

    /// Charges the answer's tokens: its `usage` if it ended with one, else the prompt estimate
    /// plus `chunks` (a streamed answer sends about one token an event) or the body's bytes as
    /// text.
    pub fn charge(&self, now: Instant, sse: bool, chunks: u32, bytes: u64) {
        self.budget.charge(now, self.tokens(sse, chunks, bytes));
    }

    fn tokens(&self, sse: bool, chunks: u32, bytes: u64) -> u64 {
        usage_in(&self.tail).unwrap_or_else(|| {
            let completion = if sse {
                u64::from(chunks)
            } else {
                u64::from(crate::openai::approx_tokens(bytes as usize))
            };
            self.prompt_estimate + completion
        })
    }
}

/// Prompt + completion tokens of the last `"usage"` object in `bytes`, if it has both counts.
pub fn usage_in(bytes: &[u8]) -> Option<u64> {
    let key = memchr::memmem::rfind(bytes, b"\"usage\"")?;
    // A quote escaped inside a string is text, not a key.
    if key > 0 && bytes[key - 1] == b'\\' {
        return None;
    }
    let object = &bytes[key + 7..];
    let prompt = count_after(object, b"\"prompt_tokens\"")?;
    let completion = count_after(object, b"\"completion_tokens\"").unwrap_or(0);
    Some(prompt + completion)
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

    #[test]
    fn usage_is_read_from_the_end_of_an_answer() {
        let unary = br#"{"id":"c","choices":[{"message":{"content":"hi \"usage\": {\"prompt_tokens\": 9}"}}],"usage":{"prompt_tokens": 12,"total_tokens":17,"completion_tokens" :5,"prompt_tokens_details":{"cached_tokens":4}},"kv_transfer_params":null}"#;
        assert_eq!(usage_in(unary), Some(17));
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":20}}\n\n\
            data: [DONE]\n\n";
        assert_eq!(
            usage_in(stream),
            Some(120),
            "the last usage, not a null one"
        );
        assert_eq!(
            usage_in(b"data: {\"usage\":null}\n\ndata: [DONE]\n\n"),
            None,
            "null usage: estimated"
        );
        assert_eq!(usage_in(b"{\"choices\":[]}"), None);
        // The last `"usage"` is inside a completion's text: not trusted.
        assert_eq!(usage_in(br#"{"text":"say \"usage\""}"#), None);
    }

    #[test]
    fn only_the_tail_is_kept_and_estimates_fill_in() {
        let budget = Arc::new(TokenBudget::new(Instant::now(), 60));
        let mut meter = UsageMeter::new(budget.clone(), 50);
        meter.saw(&[b'x'; 5000]);
        meter.saw(b"\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}");
        assert_eq!(meter.tail.len(), TAIL);
        assert_eq!(meter.tokens(true, 40, 9000), 10, "the answer's own count");
        let mut plain = UsageMeter::new(budget, 50);
        plain.saw(b"data: {\"choices\":[]}\n\n");
        // No usage: 50 estimated prompt tokens, and one token an event or 4 bytes a token.
        assert_eq!(plain.tokens(true, 40, 9000), 90);
        assert_eq!(plain.tokens(false, 1, 400), 150);
    }
}
