//! Request classification, once per request: the `model`, whether it streams, an estimate of
//! prompt tokens and `max_tokens`, read from the JSON body without copying the prompt (it is
//! borrowed as raw JSON and only measured), plus the priority class from a header.

use std::borrow::Cow;

use http::HeaderMap;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::GatewayError;
use crate::config::Classification;
use crate::openai;
use crate::router::RequestFeatures;

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

/// What the gateway needs to know to route one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub model: String,
    pub features: RequestFeatures,
    /// Where the prompt's JSON (`messages`, `prompt` or `input`) lies in the body, for prefix
    /// hashing without a copy.
    pub prompt_span: Option<std::ops::Range<usize>>,
}

/// Reads the routing-relevant parts of a request.
pub fn classify(
    body: &[u8],
    headers: &HeaderMap,
    classes: &Classification,
) -> Result<Classified, GatewayError> {
    let probe: Probe =
        serde_json::from_slice(body).map_err(|e| GatewayError::MalformedJson(e.to_string()))?;
    let model = probe.model.ok_or(GatewayError::MissingModel)?.into_owned();
    let prompt_json = probe.messages.or(probe.prompt).or(probe.input);
    // The raw JSON of the prompt is within a few percent of its text for natural language.
    let prompt_tokens = prompt_json.map_or(0, |raw| openai::approx_tokens(raw.get().len()));
    // The raw value borrows from `body`: its offset is plain address arithmetic.
    let prompt_span = prompt_json.map(|raw| {
        let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
        start..start + raw.get().len()
    });
    let priority = classes.priority_of(
        headers
            .get(&classes.priority_header)
            .and_then(|v| v.to_str().ok()),
    );
    let session = headers
        .get(&classes.session_header)
        .map(|v| crate::openai::fnv1a(v.as_bytes()));
    let max_tokens = probe
        .max_completion_tokens
        .or(probe.max_tokens)
        .map(|v| u32::try_from(v).unwrap_or(u32::MAX));
    Ok(Classified {
        model,
        features: RequestFeatures {
            stream: probe.stream.unwrap_or(false),
            prompt_tokens,
            max_tokens,
            priority,
            session,
            // Both known once the pool is: the gateway sets them.
            prefix: Default::default(),
            adapter: None,
        },
        prompt_span,
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
    fn reads_model_stream_tokens_and_priority() {
        let body = br#"{"messages": [{"role": "user", "content": "hello world, how are you"}], "stream": true, "max_tokens": 50, "model": "m"}"#;
        let mut headers = HeaderMap::new();
        headers.insert("x-priority", "Critical".parse().unwrap());
        headers.insert("x-session-id", "abc".parse().unwrap());
        let c = classify(body, &headers, &classes()).unwrap();
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
            br#"{"model": "m", "prompt": "x"}"#,
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
            classify(b"{\"model\": ", &h, &classes()),
            Err(GatewayError::MalformedJson(_))
        ));
        assert!(matches!(
            classify(b"{\"prompt\": \"x\"}", &h, &classes()),
            Err(GatewayError::MissingModel)
        ));
        assert!(matches!(
            classify(b"[1, 2]", &h, &classes()),
            Err(GatewayError::MalformedJson(_))
        ));
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        let c = classify(br#"{"model": "a\/b"}"#, &HeaderMap::new(), &classes()).unwrap();
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
