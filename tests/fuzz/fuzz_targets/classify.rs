//! Any bytes as a request body: the classifier answers Ok or Err (a 400 before anything goes
//! upstream), never panics; an Ok's prompt span lies within the body, and the prefix blocks of
//! that span hash without panicking.
#![no_main]

use infergate::gateway::classify::classify;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let config = infergate::config::embedded_default();
    let mut headers = http::HeaderMap::new();
    headers.insert("x-priority", http::HeaderValue::from_static("critical"));
    if let Ok(classified) = classify(data, &headers, &config.classification) {
        if let Some(span) = classified.prompt_span {
            assert!(span.start <= span.end && span.end <= data.len());
            let blocks = infergate::openai::chained_block_hashes(&data[span], 256, 512);
            assert!(blocks.len() <= 512);
        }
    }
});
