//! Inline media in a prompt: images (and audio or video) sent as `data:` URLs — base64 — in a
//! chat message's parts. Their bytes are not text: a 100 KB image is not 25,000 prompt tokens
//! but a few hundred (a vision encoder's patches). The prompt-size estimate counts each as
//! [`MEDIA_TOKENS`] instead of its bytes.
//!
//! Found without another pass over the prompt: the one-pass scan notes the long string values
//! of the prompt members as it skips them ([`super::scan::Members::long_strings`]), and only
//! their first bytes are looked at here. Where the scan gave up and serde_json parsed the body,
//! [`long_strings`] finds the same strings in the prompt's JSON.

use std::ops::Range;

use super::bytes;

/// Prompt tokens an inline image is estimated at: a 336-pixel image's 576 patches (LLaVA-1.5).
/// Models differ (Qwen2-VL by resolution, up to thousands); this keeps the estimate within the
/// right order, where counting base64 as text was off by 10–100×.
pub const MEDIA_TOKENS: u32 = 576;

/// Shorter strings are left as text, `data:` or not (a prompt may mention one).
pub const MIN_MEDIA_BYTES: usize = 256;

/// Of `strings` (body offsets, between the quotes), those that are `data:` URLs: their bytes
/// and how many.
pub fn inline_media<'a, B: AsRef<[u8]>>(
    strings: impl IntoIterator<Item = &'a Range<usize>>,
    pieces: &[B],
) -> (usize, u32) {
    strings
        .into_iter()
        .filter(|s| bytes(pieces, s.start..s.start + 5).as_ref() == b"data:")
        .fold((0, 0), |(n, count), s| (n + s.len(), count + 1))
}

/// The string values (not keys) at least [`MIN_MEDIA_BYTES`] long in `json`, a well-formed JSON
/// value that starts at body offset `base`: what the scan notes, for bodies it left to
/// serde_json.
pub fn long_strings(json: &[u8], base: usize) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(open) = memchr::memchr(b'"', &json[i..]) {
        let start = i + open + 1;
        // The closing quote: the first one not escaped.
        let mut end = start;
        loop {
            let Some(k) = memchr::memchr2(b'"', b'\\', &json[end..]) else {
                return found; // not well-formed: nothing more to find
            };
            end += k;
            if json[end] == b'\\' {
                end += 2;
                continue;
            }
            break;
        }
        i = end + 1;
        let is_key = json[i..]
            .iter()
            .find(|c| !c.is_ascii_whitespace())
            .is_some_and(|&c| c == b':');
        if !is_key && end - start >= MIN_MEDIA_BYTES {
            found.push(base + start..base + end);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_with_image(base64_len: usize) -> String {
        let image = "A".repeat(base64_len);
        format!(
            r#"[{{"role": "user", "content": [{{"type": "text", "text": "What is in this image?"}}, {{"type": "image_url", "image_url": {{"url": "data:image/png;base64,{image}"}}}}]}}]"#
        )
    }

    #[test]
    fn finds_the_long_string_values_and_which_are_data_urls() {
        let prompt = chat_with_image(10_000);
        let url = "data:image/png;base64,".len() + 10_000;
        let strings = long_strings(prompt.as_bytes(), 0);
        assert_eq!(strings.len(), 1);
        assert_eq!(&prompt[strings[0].clone()][..22], "data:image/png;base64,");
        assert_eq!(inline_media(&strings, &[prompt.as_bytes()]), (url, 1));
        // The URL's first bytes cut between pieces.
        let (a, b) = prompt.as_bytes().split_at(strings[0].start + 2);
        assert_eq!(inline_media(&strings, &[a, b]), (url, 1));
        // Offsets are the body's.
        assert_eq!(
            long_strings(prompt.as_bytes(), 100)[0],
            strings[0].start + 100..strings[0].end + 100
        );
    }

    #[test]
    fn long_text_escapes_and_keys_are_not_media() {
        let text = format!(
            r#"["{}\"data:{}", {{"{}": 1}}]"#,
            "x".repeat(300),
            "y".repeat(300),
            "k".repeat(300)
        );
        let strings = long_strings(text.as_bytes(), 0);
        // One long value (the escaped quote is inside it); the long key is not a value.
        assert_eq!(strings.len(), 1, "{strings:?}");
        assert_eq!(inline_media(&strings, &[text.as_bytes()]), (0, 0));
        let short = r#"[{"role": "user", "content": "data:,hello"}]"#;
        assert!(long_strings(short.as_bytes(), 0).is_empty());
    }
}
