//! What the simulator and the gateway agree on about OpenAI-compatible requests: the error body,
//! how a prompt is read out of a request, and the tokenizer approximation (4 bytes per token)
//! behind token counts and prefix-block hashes.

use serde_json::Value;

/// Bytes of text per token: a deterministic stand-in for a real tokenizer (English text under
/// Llama-3's tokenizer averages about 4 bytes per token).
pub const BYTES_PER_TOKEN: usize = 4;

/// FNV-1a, 64-bit: a stable hash of bytes (the same on every platform and run).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Seconds since the Unix epoch (the `created` field of OpenAI objects).
pub fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An OpenAI-style error body: `{"error": {"message", "type", "param", "code"}}`.
pub fn error_body(message: &str, kind: &str, code: u16) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    }))
    .expect("a JSON value serializes")
}

/// Estimated tokens in `bytes` bytes of text (at least 1 for non-empty text).
pub fn approx_tokens(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(BYTES_PER_TOKEN)).unwrap_or(u32::MAX)
}

/// The prompt of a request body as one string: `prompt` for completions and embeddings
/// (`input`), or for chat the messages' roles and contents in order, each `role\ncontent\n`.
/// Token-id prompts are rendered as their numbers. None when the body has no prompt.
pub fn prompt_text(body: &Value) -> Option<String> {
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        let mut text = String::new();
        for message in messages {
            text.push_str(message.get("role").and_then(Value::as_str).unwrap_or(""));
            text.push('\n');
            push_content(&mut text, message.get("content").unwrap_or(&Value::Null));
            text.push('\n');
        }
        return Some(text);
    }
    let prompt = body.get("prompt").or_else(|| body.get("input"))?;
    let mut text = String::new();
    push_content(&mut text, prompt);
    Some(text)
}

/// The prompt of a Responses API request as one string: its `instructions`, then its `input`
/// (a string, or items each `role\ncontent\n` as for chat). None without an `input`.
pub fn responses_prompt_text(body: &Value) -> Option<String> {
    let input = body.get("input")?;
    let mut text = String::new();
    if let Some(instructions) = body.get("instructions").and_then(Value::as_str) {
        text.push_str(instructions);
        text.push('\n');
    }
    match input {
        Value::Array(items) => {
            for item in items {
                text.push_str(item.get("role").and_then(Value::as_str).unwrap_or(""));
                text.push('\n');
                push_content(&mut text, item.get("content").unwrap_or(&Value::Null));
                text.push('\n');
            }
        }
        other => push_content(&mut text, other),
    }
    Some(text)
}

fn push_content(text: &mut String, content: &Value) {
    match content {
        Value::String(s) => text.push_str(s),
        Value::Array(parts) => {
            for part in parts {
                match part {
                    Value::Object(_) => {
                        if let Some(t) = part.get("text").and_then(Value::as_str) {
                            text.push_str(t);
                        }
                    }
                    Value::Number(n) => {
                        text.push_str(&n.to_string());
                        text.push(' ');
                    }
                    other => push_content(text, other),
                }
            }
        }
        _ => {}
    }
}

/// The value of the form field `name` in a `multipart/form-data` body (the audio endpoints'
/// `model`, `stream`), found without copying: the parts are scanned in place and a file part's
/// bytes are skipped over. None when the content type is not multipart or the field is absent.
pub fn form_field<'a>(body: &'a [u8], content_type: &str, name: &str) -> Option<&'a [u8]> {
    let boundary = content_type
        .split(';')
        .skip(1)
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim_matches('"'))?;
    if !content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        return None;
    }
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let wanted = format!("name=\"{name}\"");
    let mut rest = body;
    while let Some(at) = memchr::memmem::find(rest, delimiter) {
        rest = &rest[at + delimiter.len()..];
        let (head_end, value_start) = match memchr::memmem::find(rest, b"\r\n\r\n") {
            Some(i) => (i, i + 4),
            None => return None,
        };
        let head = &rest[..head_end];
        let next = memchr::memmem::find(&rest[value_start..], delimiter)?;
        // The value ends before the CRLF that precedes the next delimiter.
        let value = &rest[value_start..value_start + next];
        let value = value.strip_suffix(b"\r\n").unwrap_or(value);
        let disposition = head.split(|&b| b == b'\n').find(|line| {
            line.len() > 20 && line[..20].eq_ignore_ascii_case(b"content-disposition:")
        });
        if disposition.is_some_and(|line| memchr::memmem::find(line, wanted.as_bytes()).is_some()) {
            return Some(value);
        }
        rest = &rest[value_start + next..];
    }
    None
}

/// Hashes of each full block of `block_tokens` tokens of `text`, chained so that equal hashes
/// mean equal prefixes.
pub fn block_hashes(text: &[u8], block_tokens: usize) -> Vec<u64> {
    chained_block_hashes(text, block_tokens * BYTES_PER_TOKEN, usize::MAX)
}

/// Hashes of the first `max_blocks` full blocks of `block_bytes` bytes, each chained over the
/// ones before it.
pub fn chained_block_hashes(text: &[u8], block_bytes: usize, max_blocks: usize) -> Vec<u64> {
    chained_block_hashes_of([text], block_bytes, max_blocks)
}

/// [`chained_block_hashes`] of the text made of `pieces` in order (a request body as it was
/// read), hashing each byte where it lies: only a block cut between two pieces is copied.
///
/// Each block is hashed with XXH3 (64-bit), seeded with the previous block's hash, not with
/// SipHash: XXH3 is several times faster, and its output is specified, so every gateway of a
/// deployment (which exchange these hashes) and every platform computes the same. SipHash's
/// resistance to chosen collisions is not needed here — and `DefaultHasher::new()`, used
/// before, had fixed keys, so it gave none either. What a client could do with collisions is
/// bounded by the prefix index ([`crate::router::prefix`]): a hash picks one set of 8 places
/// in a table of fixed size, so colliding blocks cannot grow memory or make a lookup probe
/// more than that set, and each replica counts only its budget of recent blocks as held; the
/// worst a client can do is evict entries from the sets its blocks fall in, or make its own
/// request look like another's prefix, which only misroutes its own request — sending many
/// distinct prompts evicts as much with no collisions at all.
pub fn chained_block_hashes_of<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
    block_bytes: usize,
    max_blocks: usize,
) -> Vec<u64> {
    let block_bytes = block_bytes.max(1);
    let mut hashes = Vec::new();
    let mut previous = 0u64;
    let mut hash = |block: &[u8], hashes: &mut Vec<u64>| {
        previous = twox_hash::XxHash3_64::oneshot_with_seed(previous, block);
        hashes.push(previous);
    };
    // The start of a block cut at a piece's end.
    let mut cut: Vec<u8> = Vec::new();
    for mut piece in pieces {
        if hashes.len() >= max_blocks {
            break;
        }
        if !cut.is_empty() {
            let take = (block_bytes - cut.len()).min(piece.len());
            cut.extend_from_slice(&piece[..take]);
            piece = &piece[take..];
            if cut.len() < block_bytes {
                continue;
            }
            hash(&cut, &mut hashes);
            cut.clear();
        }
        let mut blocks = piece.chunks_exact(block_bytes);
        for block in blocks.by_ref().take(max_blocks - hashes.len()) {
            hash(block, &mut hashes);
        }
        if hashes.len() < max_blocks {
            cut.extend_from_slice(blocks.remainder());
        }
    }
    hashes.truncate(max_blocks);
    hashes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn form_fields_are_read_from_multipart_bodies() {
        let body =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
Content-Type: audio/wav\r\n\r\nRIFF\x00\x01name=\"model\"\r\n--XyZ\r\n\
Content-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ\r\n\
content-disposition: form-data; name=\"stream\"\r\n\r\ntrue\r\n--XyZ--\r\n";
        let ct = "multipart/form-data; boundary=XyZ";
        assert_eq!(
            form_field(body, ct, "model"),
            Some(&b"whisper-1"[..]),
            "not the file's bytes"
        );
        assert_eq!(form_field(body, ct, "stream"), Some(&b"true"[..]));
        assert_eq!(form_field(body, ct, "language"), None);
        assert_eq!(form_field(body, "application/json", "model"), None);
        assert_eq!(
            form_field(body, "multipart/form-data; boundary=\"XyZ\"", "model"),
            Some(&b"whisper-1"[..])
        );
        assert_eq!(
            form_field(
                b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"",
                ct,
                "model"
            ),
            None,
            "cut short"
        );
    }

    #[test]
    fn chat_prompts_concatenate_roles_and_contents() {
        let body = json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]}
        ]});
        assert_eq!(
            prompt_text(&body).unwrap(),
            "system\nBe brief.\nuser\nHi!\n"
        );
    }

    #[test]
    fn completion_prompts_and_inputs() {
        assert_eq!(prompt_text(&json!({"prompt": "abc"})).unwrap(), "abc");
        assert_eq!(prompt_text(&json!({"prompt": ["a", "b"]})).unwrap(), "ab");
        assert_eq!(prompt_text(&json!({"input": "x"})).unwrap(), "x");
        assert_eq!(prompt_text(&json!({"prompt": [1, 2]})).unwrap(), "1 2 ");
        assert_eq!(prompt_text(&json!({"model": "m"})), None);
    }

    #[test]
    fn block_hashes_identify_prefixes() {
        let a = "x".repeat(64 * 3 + 10);
        let mut b = "x".repeat(64 * 2);
        b.push_str(&"y".repeat(64));
        let (ha, hb) = (
            block_hashes(a.as_bytes(), 16),
            block_hashes(b.as_bytes(), 16),
        );
        assert_eq!(ha.len(), 3, "partial blocks are not hashed");
        assert_eq!(ha[..2], hb[..2]);
        assert_ne!(ha[2], hb[2]);
        // Same block content after a different prefix hashes differently (chained).
        let c = format!("{}{}", "z".repeat(64), "x".repeat(64));
        assert_ne!(block_hashes(c.as_bytes(), 16)[1], ha[1]);
        assert_eq!(approx_tokens(9), 3);
    }

    #[test]
    fn block_hashes_do_not_depend_on_where_the_text_was_cut() {
        let text: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = chained_block_hashes(&text, 64, 12);
        assert_eq!(whole.len(), 12);
        assert_eq!(chained_block_hashes(&text, 64, 100).len(), 15);
        for cuts in [
            vec![1],
            vec![63, 64, 65],
            vec![100, 101, 500],
            (1..999).collect(),
        ] {
            let mut pieces = Vec::new();
            let mut start = 0;
            for end in cuts.into_iter().chain([text.len()]) {
                pieces.push(&text[start..end]);
                start = end;
            }
            assert_eq!(
                chained_block_hashes_of(pieces.iter().copied(), 64, 12),
                whole
            );
        }
        // The hash is XXH3's, seeded with the previous block's: the same on every gateway.
        assert_eq!(
            chained_block_hashes(b"abcd", 4, 1),
            vec![twox_hash::XxHash3_64::oneshot_with_seed(0, b"abcd")]
        );
    }
}
