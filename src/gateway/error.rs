//! Every error a client can get from the gateway, and the one place that turns an error into
//! an OpenAI-style JSON response. Internal details (replica addresses, upstream error text) are
//! logged, never sent to the client.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::openai;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("malformed JSON in the request body: {0}")]
    MalformedJson(String),
    #[error("`model` is required")]
    MissingModel,
    #[error("The model `{0}` does not exist.")]
    UnknownModel(String),
    #[error("request body is larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error("could not read the request body")]
    BodyRead,
    #[error("the request body came too slowly")]
    BodyTimeout,
    #[error("a valid API key is required (Authorization: Bearer <key>)")]
    Unauthorized,
    #[error("this API key may not use the model `{0}`")]
    Forbidden(String),
    #[error("this API key may not pin a model version")]
    PinForbidden,
    #[error("the model has no version `{0}`")]
    UnknownVersion(String),
    #[error("this API key is over its request rate; retry in {0} s")]
    RateLimited(u64),
    #[error("this API key is over its tokens per minute; retry in {0} s")]
    OverTokenBudget(u64),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("no replica of the pool is available")]
    NoReplica,
    #[error("the model server could not be reached")]
    UpstreamUnreachable,
    #[error("the model server failed to answer")]
    UpstreamFailed,
    #[error("the model server did not answer in time")]
    UpstreamTimeout,
    #[error("the gateway stopped before the answer finished (its drain timeout); retry")]
    Drained,
    #[error("too many requests are waiting for this model; retry later")]
    QueueFull,
    #[error("no replica became available in time; retry later")]
    QueueTimeout,
    #[error("the model is saturated and this request's priority class is sheddable; retry later")]
    Shed,
}

/// Longest piece of client input an error message repeats (a model name, a path).
const ECHO_CHARS: usize = 128;

/// `text` as an error message may repeat it: at most [`ECHO_CHARS`] characters.
pub fn echo(text: &str) -> String {
    match text.char_indices().nth(ECHO_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_)
            | Self::MissingModel
            | Self::BodyRead
            | Self::UnknownVersion(_) => StatusCode::BAD_REQUEST,
            Self::UnknownModel(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::PinForbidden => StatusCode::FORBIDDEN,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NoReplica | Self::Drained => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamUnreachable | Self::UpstreamFailed => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::QueueFull
            | Self::QueueTimeout
            | Self::Shed
            | Self::RateLimited(_)
            | Self::OverTokenBudget(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn kind(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST
            | StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::REQUEST_TIMEOUT => "invalid_request_error",
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
            StatusCode::GATEWAY_TIMEOUT => "timeout",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_exceeded",
            _ => "upstream_error",
        }
    }

    /// The OpenAI-style body alone (also used for an error event inside a stream).
    pub fn body(&self) -> Vec<u8> {
        openai::error_body(&self.to_string(), self.kind(), self.status().as_u16())
    }

    /// The error as a response with any body type built from bytes (the gateway's
    /// [`super::body::GatewayBody`]).
    pub fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let mut response = Response::new(B::from(Bytes::from(self.body())));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let after = match self {
                Self::RateLimited(secs) | Self::OverTokenBudget(secs) => HeaderValue::from(secs),
                _ => HeaderValue::from_static("1"),
            };
            response.headers_mut().insert(header::RETRY_AFTER, after);
        }
        response
    }
}
