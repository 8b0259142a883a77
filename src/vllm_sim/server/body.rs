//! The simulator's response bodies: a whole buffer, or an SSE stream fed by an answer's engine
//! events; and the helpers that build plain, JSON and OpenAI-style error responses.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use hyper::Response;
use hyper::body::{Body, Frame};
use serde_json::Value;

use super::answer::Answer;
use crate::openai;

/// Response body: a whole buffer, or an SSE stream fed by engine events.
pub(super) enum SimBody {
    Full(Option<Bytes>),
    Stream(Box<Answer>),
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            SimBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            SimBody::Stream(answer) => loop {
                if let Some(bytes) = answer.pending.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                if answer.crashing {
                    return Poll::Pending; // the process is about to exit
                }
                if answer.done {
                    return Poll::Ready(None);
                }
                match answer.events.poll_recv(cx) {
                    Poll::Ready(Some(event)) => answer.on_event(event),
                    // The engine went away mid-answer: end the stream.
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, SimBody::Full(None))
    }
}

pub(super) fn full(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<SimBody> {
    let mut response = Response::new(SimBody::Full(Some(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub(super) fn json_response(status: StatusCode, value: &Value) -> Response<SimBody> {
    full(
        status,
        "application/json",
        Bytes::from(serde_json::to_vec(value).expect("a JSON value serializes")),
    )
}

pub(super) fn error(status: StatusCode, message: &str) -> Response<SimBody> {
    let kind = match status {
        StatusCode::BAD_REQUEST => "BadRequestError",
        StatusCode::NOT_FOUND => "NotFoundError",
        StatusCode::PAYLOAD_TOO_LARGE => "RequestTooLargeError",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailableError",
        _ => "InternalServerError",
    };
    full(
        status,
        "application/json",
        Bytes::from(openai::error_body(message, kind, status.as_u16())),
    )
}
