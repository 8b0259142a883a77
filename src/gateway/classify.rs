//! Request classification, once per request: the `model`, whether it streams, an estimate of
//! prompt tokens and `max_tokens`, read from the JSON body without copying the prompt (only
//! where it lies is kept, and measured), plus the priority class from a header.
//!
//! The body is read by [`scan`] in one pass as it arrives, piece by piece; the few small
//! members it finds are decoded by serde_json. A body the scan does not handle — malformed, or
//! unusual (see [`scan`]) — is parsed whole by serde_json ([`reference`]), so malformed JSON
//! gets serde_json's message (with line and column) and a 400 before anything goes upstream.

use std::borrow::Cow;
use std::ops::Range;

use http::HeaderMap;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::error::GatewayError;
use crate::config::Classification;
use crate::openai;
use crate::router::RequestFeatures;

pub mod media;
pub mod scan;

pub use scan::Scanner;

/// What the gateway needs to know to route one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub model: String,
    pub features: RequestFeatures,
    /// Where the prompt's JSON (`messages`, `prompt` or `input`) lies in the body, for prefix
    /// hashing without a copy.
    pub prompt_span: Option<Range<usize>>,
}

/// The members read from a body, by either parser.
struct Read {
    model: Option<String>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    prompt_span: Option<Range<usize>>,
    /// Inline media in the prompt: their bytes, and how many ([`media::inline_media`]).
    media: (usize, u32),
}

/// Reads the routing-relevant parts of a request whose body is `pieces`, in order.
pub fn classify<B: AsRef<[u8]>>(
    pieces: &[B],
    headers: &HeaderMap,
    classes: &Classification,
) -> Result<Classified, GatewayError> {
    let mut scanner = Scanner::new();
    for piece in pieces {
        scanner.feed(piece.as_ref());
    }
    classify_scanned(scanner, pieces, headers, classes)
}

/// [`classify`] for a body that `scanner` was fed as it was read.
pub fn classify_scanned<B: AsRef<[u8]>>(
    scanner: Scanner,
    pieces: &[B],
    headers: &HeaderMap,
    classes: &Classification,
) -> Result<Classified, GatewayError> {
    let read = match scanner.finish().ok().and_then(|m| decode(&m, pieces)) {
        Some(read) => read,
        None => {
            let whole = contiguous(pieces);
            parse(&whole)?
        }
    };
    features(read, headers, classes)
}

/// Whether a request's body is a multipart form (the audio endpoints) rather than JSON.
pub fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
}

/// A multipart form (the audio endpoints): `model` and `stream` read from its fields. Audio
/// has no prompt text to estimate.
pub fn classify_form<B: AsRef<[u8]>>(
    pieces: &[B],
    headers: &HeaderMap,
    classes: &Classification,
) -> Result<Classified, GatewayError> {
    let whole = contiguous(pieces);
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let field = |name| {
        openai::form_field(&whole, content_type, name)
            .map(|v| String::from_utf8_lossy(v).trim().to_string())
    };
    let read = Read {
        model: field("model"),
        stream: field("stream").map(|s| s.eq_ignore_ascii_case("true")),
        max_tokens: None,
        max_completion_tokens: None,
        prompt_span: None,
        media: (0, 0),
    };
    features(read, headers, classes)
}

/// A multipart form with its `model` field's value replaced (an alias resolved).
pub fn rewrite_form_model(body: &[u8], content_type: &str, model: &str) -> Option<Vec<u8>> {
    let value = openai::form_field(body, content_type, "model")?;
    let start = value.as_ptr() as usize - body.as_ptr() as usize;
    let mut out = Vec::with_capacity(body.len() + model.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(model.as_bytes());
    out.extend_from_slice(&body[start + value.len()..]);
    Some(out)
}

/// What the scan alone gives, without the full parser to fall back on: None where the scan
/// gave up. For the fuzz target, which checks that it agrees with [`reference`].
pub fn scan_only<B: AsRef<[u8]>>(
    pieces: &[B],
    headers: &HeaderMap,
    classes: &Classification,
) -> Option<Result<Classified, GatewayError>> {
    let mut scanner = Scanner::new();
    for piece in pieces {
        scanner.feed(piece.as_ref());
    }
    let read = decode(&scanner.finish().ok()?, pieces)?;
    Some(features(read, headers, classes))
}

/// Classification by serde_json alone, the parser the scan falls back to.
pub fn reference(
    body: &[u8],
    headers: &HeaderMap,
    classes: &Classification,
) -> Result<Classified, GatewayError> {
    features(parse(body)?, headers, classes)
}

fn features(
    read: Read,
    headers: &HeaderMap,
    classes: &Classification,
) -> Result<Classified, GatewayError> {
    let model = read.model.ok_or(GatewayError::MissingModel)?;
    // The raw JSON of the prompt is within a few percent of its text for natural language;
    // inline images count as a vision encoder's tokens, not as their base64.
    let prompt_tokens = read.prompt_span.as_ref().map_or(0, |span| {
        let (media_bytes, media) = read.media;
        openai::approx_tokens(span.len() - media_bytes)
            .saturating_add(media.saturating_mul(media::MEDIA_TOKENS))
    });
    let priority = classes.priority_of(
        headers
            .get(&classes.priority_header)
            .and_then(|v| v.to_str().ok()),
    );
    let session = headers
        .get(&classes.session_header)
        .map(|v| crate::openai::fnv1a(v.as_bytes()));
    let max_tokens = read
        .max_completion_tokens
        .or(read.max_tokens)
        .map(|v| u32::try_from(v).unwrap_or(u32::MAX));
    Ok(Classified {
        model,
        features: RequestFeatures {
            stream: read.stream.unwrap_or(false),
            prompt_tokens,
            max_tokens,
            priority,
            session,
            // Both known once the pool is: the gateway sets them.
            prefix: Default::default(),
            adapter: None,
        },
        prompt_span: read.prompt_span,
    })
}

/// The members the scan found, decoded as serde_json decodes them in [`parse`]; None when one
/// has another type (serde_json then gives the message).
fn decode<B: AsRef<[u8]>>(members: &scan::Members, pieces: &[B]) -> Option<Read> {
    use scan::Field;
    fn value<T: DeserializeOwned, B: AsRef<[u8]>>(
        span: Option<Range<usize>>,
        pieces: &[B],
    ) -> Option<Option<T>> {
        match span {
            None => Some(None),
            Some(span) => serde_json::from_slice(&bytes(pieces, span)).ok(),
        }
    }
    // `null` is no prompt, as serde_json reads an absent `Option` (a prompt is looked at only
    // when it is 4 bytes long: it may be megabytes, and in several pieces).
    let prompt = |field| {
        members
            .get(field)
            .filter(|span| span.len() != 4 || bytes(pieces, span.clone()).as_ref() != b"null")
    };
    let prompt_span = prompt(Field::Messages)
        .or_else(|| prompt(Field::Prompt))
        .or_else(|| prompt(Field::Input));
    let in_prompt = members.long_strings().iter().filter(|s| {
        prompt_span
            .as_ref()
            .is_some_and(|p| p.start <= s.start && s.end <= p.end)
    });
    Some(Read {
        model: value(members.get(Field::Model), pieces)?,
        stream: value(members.get(Field::Stream), pieces)?,
        max_tokens: value(members.get(Field::MaxTokens), pieces)?,
        max_completion_tokens: value(members.get(Field::MaxCompletionTokens), pieces)?,
        media: media::inline_media(in_prompt, pieces),
        prompt_span,
    })
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    #[serde(borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
}

/// The members by serde_json, parsing the whole body.
fn parse(body: &[u8]) -> Result<Read, GatewayError> {
    let probe: Probe =
        serde_json::from_slice(body).map_err(|e| GatewayError::MalformedJson(e.to_string()))?;
    let prompt_json = probe.messages.or(probe.prompt).or(probe.input);
    // The raw value borrows from `body`: its offset is plain address arithmetic.
    let prompt_span = prompt_json.map(|raw| {
        let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
        start..start + raw.get().len()
    });
    let media = prompt_span.as_ref().map_or((0, 0), |span| {
        let strings = media::long_strings(&body[span.clone()], span.start);
        media::inline_media(&strings, &[body])
    });
    Ok(Read {
        model: probe.model.map(Cow::into_owned),
        stream: probe.stream,
        max_tokens: probe.max_tokens,
        max_completion_tokens: probe.max_completion_tokens,
        prompt_span,
        media,
    })
}

/// The body's bytes in one slice: borrowed when it came in one piece.
pub fn contiguous<B: AsRef<[u8]>>(pieces: &[B]) -> Cow<'_, [u8]> {
    match pieces {
        [] => Cow::Borrowed(&[]),
        [one] => Cow::Borrowed(one.as_ref()),
        _ => Cow::Owned(pieces.iter().flat_map(|p| p.as_ref()).copied().collect()),
    }
}

/// The bytes at `span` of the body made of `pieces`: borrowed when within one piece.
pub fn bytes<B: AsRef<[u8]>>(pieces: &[B], span: Range<usize>) -> Cow<'_, [u8]> {
    let mut parts = slices(pieces, span);
    match (parts.next(), parts.next()) {
        (None, _) => Cow::Borrowed(&[]),
        (Some(one), None) => Cow::Borrowed(one),
        (Some(first), Some(second)) => {
            let mut all = first.to_vec();
            all.extend_from_slice(second);
            parts.for_each(|p| all.extend_from_slice(p));
            Cow::Owned(all)
        }
    }
}

/// The slices of `pieces` that make up `span` of the body, in order.
pub fn slices<B: AsRef<[u8]>>(pieces: &[B], span: Range<usize>) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    pieces.iter().filter_map(move |piece| {
        let piece = piece.as_ref();
        let (from, to) = (start, start + piece.len());
        start = to;
        let (a, b) = (span.start.max(from), span.end.min(to));
        (a < b).then(|| &piece[a - from..b - from])
    })
}

/// The body with its top-level `model` replaced (for aliases). Rare, so a full re-encode is
/// acceptable; all other fields are kept as they were.
pub fn rewrite_model(body: &[u8], model: &str) -> Result<Vec<u8>, GatewayError> {
    let mut fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| GatewayError::MalformedJson(e.to_string()))?;
    fields.insert("model".into(), serde_json::Value::String(model.to_string()));
    Ok(serde_json::to_vec(&fields).expect("a JSON map serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Classification {
        crate::config::embedded_default().classification
    }

    #[test]
    fn an_inline_image_counts_as_a_vision_encoders_tokens_not_its_base64() {
        let text = "Describe this picture in detail, please.";
        let plain = format!(
            r#"{{"model": "m", "messages": [{{"role": "user", "content": [{{"type": "text", "text": "{text}"}}]}}]}}"#
        );
        let image = format!(
            r#"{{"type": "image_url", "image_url": {{"url": "data:image/jpeg;base64,{}"}}}}"#,
            "/9j/".repeat(25_000)
        );
        let with_image = plain.replace("}]}]}", &format!("}}, {image}]}}]}}"));
        let headers = HeaderMap::new();
        let a = classify(&[plain.as_bytes()], &headers, &classes()).unwrap();
        // 100 KB of base64 in 4 KB pieces, as a socket gives them; and the serde_json path.
        let pieces: Vec<&[u8]> = with_image.as_bytes().chunks(4096).collect();
        let b = classify(&pieces, &headers, &classes()).unwrap();
        let c = reference(with_image.as_bytes(), &headers, &classes()).unwrap();
        let (with, without) = (b.features.prompt_tokens, a.features.prompt_tokens);
        // The image's own part (type, key names) is a few dozen bytes of text beside it.
        assert!(
            (with - without).abs_diff(media::MEDIA_TOKENS) < 30,
            "{without} -> {with} (was ~25,000)"
        );
        assert_eq!(c.features.prompt_tokens, with);
        // A body the one-pass scan leaves to serde_json (an escaped key): the same estimate.
        let escaped = with_image.replace(r#""model""#, r#""mod\u0065l""#);
        assert!(scan_only(&[escaped.as_bytes()], &headers, &classes()).is_none());
        let d = classify(&[escaped.as_bytes()], &headers, &classes()).unwrap();
        assert_eq!(d.features.prompt_tokens, with);
    }

    #[test]
    fn forms_give_their_model_and_stream_fields_and_take_a_new_model() {
        let body = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF....\r\n--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--b\r\nContent-Disposition: form-data; name=\"stream\"\r\n\r\ntrue\r\n--b--\r\n";
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            "multipart/form-data; boundary=b".parse().unwrap(),
        );
        assert!(is_form(&headers));
        // Split anywhere: the form is read whole.
        let c = classify_form(&[&body[..30], &body[30..]], &headers, &classes()).unwrap();
        assert_eq!(c.model, "whisper");
        assert!(c.features.stream);
        assert_eq!(c.features.prompt_tokens, 0);
        let renamed =
            rewrite_form_model(body, "multipart/form-data; boundary=b", "whisper-large").unwrap();
        let again = classify_form(&[&renamed], &headers, &classes()).unwrap();
        assert_eq!(again.model, "whisper-large");
        assert_eq!(renamed.len(), body.len() + 6, "nothing else changed");
        let no_model =
            b"--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nx\r\n--b--\r\n";
        assert!(matches!(
            classify_form(&[no_model], &headers, &classes()),
            Err(GatewayError::MissingModel)
        ));
    }

    #[test]
    fn reads_model_stream_tokens_and_priority() {
        let body = br#"{"messages": [{"role": "user", "content": "hello world, how are you"}], "stream": true, "max_tokens": 50, "model": "m"}"#;
        let mut headers = HeaderMap::new();
        headers.insert("x-priority", "Critical".parse().unwrap());
        headers.insert("x-session-id", "abc".parse().unwrap());
        let c = classify(&[body], &headers, &classes()).unwrap();
        assert_eq!(c.model, "m");
        assert!(c.features.stream);
        assert_eq!(c.features.max_tokens, Some(50));
        assert_eq!(c.features.priority, 0);
        assert_eq!(c.features.session, Some(crate::openai::fnv1a(b"abc")));
        let span = c.prompt_span.clone().unwrap();
        assert!(
            std::str::from_utf8(&body[span])
                .unwrap()
                .starts_with("[{\"role\": \"user\"")
        );
        assert!(
            (10..20).contains(&c.features.prompt_tokens),
            "{}",
            c.features.prompt_tokens
        );
        let plain = classify(
            &[br#"{"model": "m", "prompt": "x"}"#],
            &HeaderMap::new(),
            &classes(),
        )
        .unwrap();
        assert_eq!(plain.features.priority, 1, "the default class");
        assert!(!plain.features.stream);
    }

    #[test]
    fn bad_bodies_are_rejected() {
        let h = HeaderMap::new();
        assert!(matches!(
            classify(&[b"{\"model\": "], &h, &classes()),
            Err(GatewayError::MalformedJson(_))
        ));
        assert!(matches!(
            classify(&[b"{\"prompt\": \"x\"}"], &h, &classes()),
            Err(GatewayError::MissingModel)
        ));
        assert!(matches!(
            classify(&[b"[1, 2]"], &h, &classes()),
            Err(GatewayError::MalformedJson(_))
        ));
    }

    #[test]
    fn malformed_json_keeps_serde_json_s_message() {
        let h = HeaderMap::new();
        let e = classify(&[&b"{\"model\": "[..]], &h, &classes()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed JSON in the request body: EOF while parsing a value at line 1 column 10"
        );
        let e = classify(
            &[&b"{\"model\": \"m\",\n \"stream\": yes}"[..]],
            &h,
            &classes(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed JSON in the request body: expected value at line 2 column 12"
        );
        let e = classify(
            &[&b"{\"model\": \"m\", \"stream\": \"yes\"}"[..]],
            &h,
            &classes(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("invalid type: string \"yes\", expected a boolean"),
            "{e}"
        );
    }

    /// Bodies the scan reads itself, and bodies it leaves to serde_json.
    const BODIES: &[&str] = &[
        r#"{"model": "m", "prompt": "x"}"#,
        r#"{"messages": [{"role": "user", "content": "a \"b\" \n \u00e9 é"}], "stream": true, "max_tokens": 5, "model": "m"}"#,
        r#" { "model" : "m" , "stream" : null , "max_tokens" : null, "input": ["a", 1, {"b": [true, false, null]}] } "#,
        r#"{"model": null, "prompt": "x"}"#,
        r#"{"prompt": null, "input": "i", "model": "m", "max_completion_tokens": 7, "max_tokens": 9}"#,
        r#"{"model": "a\/b", "max_tokens": 18446744073709551615}"#,
        r#"{"model": "m", "max_tokens": 18446744073709551616}"#,
        r#"{"model": "m", "max_tokens": -1}"#,
        r#"{"model": "m", "max_tokens": 5.0}"#,
        r#"{"model": 5}"#,
        r#"{"model": "m", "stream": "yes"}"#,
        r#"{"model": "m", "model": "n"}"#,
        r#"{"mod\u0065l": "m"}"#,
        r#"["m", true, 5, 5, "p", null, null]"#,
        r#"{"model": "\ud800"}"#,
        r#"{"model": "m", "x": "\ud800"}"#,
        r#"{"model": "m"} x"#,
        r#"{"model": "m", "prompt": [1, 2,]}"#,
        r#"{"model": "m", "prompt": 01}"#,
        "",
        "{",
    ];

    #[test]
    fn the_scan_agrees_with_serde_json_whatever_the_pieces() {
        let h = HeaderMap::new();
        for body in BODIES {
            let body = body.as_bytes();
            let whole = format!("{:?}", reference(body, &h, &classes()));
            for cut in 0..=body.len() {
                let pieces = [&body[..cut], &body[cut..]];
                let got = format!("{:?}", classify(&pieces, &h, &classes()));
                assert_eq!(got, whole, "{} cut at {cut}", String::from_utf8_lossy(body));
                if let Some(fast) = scan_only(&pieces, &h, &classes()) {
                    assert_eq!(format!("{fast:?}"), whole);
                }
            }
        }
        // Invalid UTF-8 outside the prompt: serde_json does not look, the scan gives up.
        let body = b"{\"model\": \"m\", \"x\": \"\xff\"}";
        assert!(reference(body, &h, &classes()).is_ok());
        assert!(classify(&[body], &h, &classes()).is_ok());
        assert!(scan_only(&[body], &h, &classes()).is_none());
        // In the prompt it does.
        let body = b"{\"model\": \"m\", \"prompt\": \"\xff\"}";
        assert!(classify(&[body], &h, &classes()).is_err());
    }

    #[test]
    fn the_scan_reads_ordinary_requests_itself() {
        let h = HeaderMap::new();
        for body in &BODIES[..6] {
            assert!(
                scan_only(&[body.as_bytes()], &h, &classes()).is_some(),
                "{body}"
            );
        }
    }

    #[test]
    fn spans_are_read_across_pieces() {
        let pieces: [&[u8]; 3] = [b"abc", b"", b"defg"];
        assert_eq!(&*bytes(&pieces, 1..5), b"bcde");
        assert_eq!(&*bytes(&pieces, 3..6), b"def");
        assert!(matches!(bytes(&pieces, 3..6), Cow::Borrowed(_)));
        assert_eq!(&*contiguous(&pieces), b"abcdefg");
        assert_eq!(slices(&pieces, 0..7).count(), 2);
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        let c = classify(&[br#"{"model": "a\/b"}"#], &HeaderMap::new(), &classes()).unwrap();
        assert_eq!(c.model, "a/b");
    }

    #[test]
    fn alias_rewrite_keeps_other_fields() {
        let out = rewrite_model(br#"{"model": "alias", "prompt": "p", "n": 2}"#, "real").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model": "real", "prompt": "p", "n": 2})
        );
    }
}
