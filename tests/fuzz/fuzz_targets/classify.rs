//! Any bytes as a request body, cut into pieces as a socket may deliver them (the first byte
//! picks the cuts): the classifier answers Ok or Err (a 400 before anything goes upstream),
//! never panics, and answers exactly as serde_json alone does on the whole body; where its
//! one-pass scan answered without falling back to serde_json, that answer is serde_json's too.
//! An Ok's prompt span lies within the body, and its prefix blocks hash without panicking.
#![no_main]

use infergate::gateway::classify::{classify, reference, scan_only};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, body)) = data.split_first() else {
        return;
    };
    // Up to 7 cuts, `cuts % 64 + 1` bytes apart.
    let mut pieces = Vec::new();
    let mut rest = body;
    let step = usize::from(cuts % 64) + 1;
    for _ in 0..usize::from(cuts >> 5) {
        let (piece, tail) = rest.split_at(step.min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    pieces.push(rest);

    let config = infergate::config::embedded_default();
    let mut headers = http::HeaderMap::new();
    headers.insert("x-priority", http::HeaderValue::from_static("critical"));
    let classes = &config.classification;
    let whole = reference(body, &headers, classes);
    let got = classify(&pieces, &headers, classes);
    assert_eq!(format!("{got:?}"), format!("{whole:?}"));
    if let Some(fast) = scan_only(&pieces, &headers, classes) {
        assert_eq!(format!("{fast:?}"), format!("{whole:?}"));
    }
    if let Ok(classified) = got
        && let Some(span) = classified.prompt_span
    {
        assert!(span.start <= span.end && span.end <= body.len());
        let blocks = infergate::openai::chained_block_hashes(&body[span], 256, 512);
        assert!(blocks.len() <= 512);
    }
});
