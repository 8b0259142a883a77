//! Bodies. A request body ([`RequestBody`]) is kept as the frames it was read in and sent on
//! to the replica from them. A proxied answer streams the replica's body chunk by chunk without
//! buffering, holds the replica's in-flight guard until the body ends or the client goes away,
//! times chunks for the metrics, enforces the idle-stream timeout, and turns a replica dying
//! mid-stream into a clean SSE error event (or a closed connection for non-SSE answers).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Sleep;

use super::error::GatewayError;
use super::pools::GatewayPool;
use super::upstream::Lent;
use super::usage::{Answer, AnswerRecord};
use crate::replica::InflightGuard;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body as the client's connection read it: the frames hyper handed over, each a
/// slice of the buffer the socket was read into, in order. It is classified where it lies and
/// sent to the replica frame by frame (one vectored write), so a long prompt is never copied
/// in user space and a request in flight holds about its body's size. Cloning shares the
/// frames (a retry, a mirror).
#[derive(Debug, Clone, Default)]
pub struct RequestBody {
    frames: Vec<Bytes>,
    /// Frames already sent (as an HTTP body).
    sent: usize,
    /// Bytes not sent yet.
    left: u64,
}

impl RequestBody {
    pub fn new(frames: Vec<Bytes>) -> Self {
        let left = frames.iter().map(|f| f.len() as u64).sum();
        Self {
            frames,
            sent: 0,
            left,
        }
    }

    /// The body's bytes, in order.
    pub fn frames(&self) -> &[Bytes] {
        &self.frames
    }

    pub fn len(&self) -> usize {
        self.frames.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.iter().all(Bytes::is_empty)
    }
}

impl From<Bytes> for RequestBody {
    fn from(bytes: Bytes) -> Self {
        Self::new(vec![bytes])
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let body = self.get_mut();
        let Some(frame) = body.frames.get(body.sent).cloned() else {
            return Poll::Ready(None);
        };
        body.sent += 1;
        body.left -= frame.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

pub enum GatewayBody {
    Full(Option<Bytes>),
    Proxied(Box<ProxiedBody>),
}

impl From<Bytes> for GatewayBody {
    fn from(bytes: Bytes) -> Self {
        Self::full(bytes)
    }
}

impl GatewayBody {
    pub fn full(bytes: Bytes) -> Self {
        Self::Full(Some(bytes))
    }
}

pub struct ProxiedBody {
    inner: Incoming,
    /// Frames [`ProxiedBody::gather`] took from `inner` before the head went out, in order.
    early: [Option<Result<Frame<Bytes>, hyper::Error>>; 2],
    /// `inner` has ended (seen by `gather`); what is left is in `early`.
    inner_ended: bool,
    /// The worker and its connection the answer comes on (HTTP/1.1), given back to that
    /// worker's pool once the answer is read to the end; dropped (closing it) otherwise.
    connection: (usize, Option<Lent>),
    guard: Option<InflightGuard>,
    pool: Arc<GatewayPool>,
    /// The replica answered 5xx: a failure for outlier detection once the answer is read.
    server_error: bool,
    sse: bool,
    received: Instant,
    /// When the request went to the replica (for its first-byte latency).
    sent: Instant,
    last_chunk: Option<Instant>,
    /// The first chunk's time and the chunks so far (an SSE answer's mean gap, for the SLO).
    first_chunk: Option<Instant>,
    chunks: u32,
    /// Armed the first time the replica makes us wait (most small answers never do), then
    /// pushed back on every chunk.
    idle: Option<Pin<Box<Sleep>>>,
    idle_timeout: Duration,
    /// Armed with `idle`: ready once the drain timeout is about to cut open answers.
    cut: Option<Pin<Box<dyn Future<Output = ()>>>>,
    /// Set once the stream has ended (normally or not).
    ended: bool,
    /// Body bytes passed on, added to the shared counter once at the end (a shared atomic per
    /// chunk would bounce between cores).
    bytes_sent: u64,
    /// The answer's status (for its record).
    status: http::StatusCode,
    /// Set for a stream whose chunks are not all tokens (the Responses API's events): what a
    /// token's chunk contains.
    token_event: Option<&'static [u8]>,
    /// Its tokens, counted and charged to the key's budget when it ends, and its access-log line.
    record: Option<AnswerRecord>,
}

impl ProxiedBody {
    pub fn new(
        inner: Incoming,
        guard: InflightGuard,
        pool: Arc<GatewayPool>,
        connection: (usize, Option<Lent>),
        sse: bool,
        received: Instant,
        sent: Instant,
    ) -> Self {
        let idle_timeout = pool.config.timeouts.idle_stream;
        Self {
            inner,
            early: [None, None],
            inner_ended: false,
            connection,
            guard: Some(guard),
            pool,
            sse,
            server_error: false,
            received,
            sent,
            last_chunk: None,
            first_chunk: None,
            chunks: 0,
            idle: None,
            idle_timeout,
            cut: None,
            ended: false,
            bytes_sent: 0,
            status: http::StatusCode::OK,
            token_event: None,
            record: None,
        }
    }

    /// Times only the chunks that contain `marker` as tokens (a Responses API stream).
    pub fn tokens_marked(mut self, marker: Option<&'static [u8]>) -> Self {
        self.token_event = marker;
        self
    }

    /// Records the answer (`status`) when it ends.
    pub fn recorded(mut self, status: http::StatusCode, record: Option<AnswerRecord>) -> Self {
        self.status = status;
        self.record = record;
        self
    }

    /// Records the answer as it is at `now` (once).
    fn end_record(&mut self, now: Instant) {
        if let Some(record) = self.record.take() {
            let answer = Answer {
                status: self.status,
                sse: self.sse,
                chunks: self.chunks,
                bytes: self.bytes_sent,
                first_byte: self
                    .first_chunk
                    .map(|first| first.saturating_duration_since(self.received)),
                total: now.saturating_duration_since(self.received),
            };
            record.ended(now, &answer);
        }
    }

    /// Takes the frames of the answer that are already on their way (at most two) before the
    /// head is sent, waiting for one turn of the worker's task queue and never for the
    /// replica. A short answer then leaves in one write, its end included: the replica's
    /// connection hands the end of a chunked body over only after the previous frame was taken,
    /// which otherwise costs a second write (and a second TCP segment) per answer.
    pub async fn gather(&mut self) {
        let mut yielded = false;
        std::future::poll_fn(|cx| {
            while !self.inner_ended && self.early[1].is_none() {
                match Pin::new(&mut self.inner).poll_frame(cx) {
                    Poll::Ready(Some(frame)) => {
                        let failed = frame.is_err();
                        let slot = usize::from(self.early[0].is_some());
                        self.early[slot] = Some(frame);
                        if failed {
                            return Poll::Ready(());
                        }
                    }
                    Poll::Ready(None) => self.inner_ended = true,
                    Poll::Pending if yielded => return Poll::Ready(()),
                    Poll::Pending => {
                        // Let the replica's connection task run once, then look again.
                        yielded = true;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
            }
            Poll::Ready(())
        })
        .await;
    }

    /// The next frame of the answer: gathered ones first.
    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(frame) = self.early[0].take() {
            self.early.swap(0, 1);
            return Poll::Ready(Some(frame));
        }
        if self.inner_ended {
            return Poll::Ready(None);
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    /// Body bytes gathered but not passed on yet.
    fn early_len(&self) -> u64 {
        self.early
            .iter()
            .flatten()
            .filter_map(|f| f.as_ref().ok()?.data_ref())
            .map(|d| d.len() as u64)
            .sum()
    }

    /// The replica answered with a server error (5xx): counted as a failure once read.
    pub fn server_error(mut self, is: bool) -> Self {
        self.server_error = is;
        self
    }

    /// The answer was read to the end: the replica did well unless it answered 5xx; its
    /// connection can serve again.
    fn completed(&mut self, now: Instant) {
        if let Some(guard) = &self.guard {
            let replica = guard.replica();
            if self.server_error {
                self.pool
                    .record_failure(replica, now, "answered with a server error");
            } else {
                if replica.record_success() {
                    tracing::info!(pool = self.pool.name(), replica = %replica.name, "replica back in routing: its probe answered");
                    self.pool.notify(
                        crate::config::EventKind::Ejection,
                        format!(
                            "replica {} is back in routing: its probe answered",
                            replica.name
                        ),
                    );
                }
            }
        }
        let (worker, lent) = &mut self.connection;
        if let Some(lent) = lent.take() {
            self.pool.client(*worker).give_back(lent, now);
        }
        self.count_for_slo(!self.server_error, now);
        self.finish(now);
    }

    /// Counts a streamed answer that ended at `now` toward the pool's SLO: `whole` and in
    /// time, or missed.
    fn count_for_slo(&self, whole: bool, now: Instant) {
        let (Some(slo), true) = (&self.pool.slo, self.sse) else {
            return;
        };
        let met = whole
            && self.first_chunk.is_some_and(|first| {
                let gaps = self.chunks.saturating_sub(1).max(1);
                let itl = self
                    .last_chunk
                    .unwrap_or(first)
                    .saturating_duration_since(first)
                    / gaps;
                slo.meets(first.saturating_duration_since(self.received), itl)
            });
        slo.record(met, now);
    }

    fn finish(&mut self, now: Instant) {
        self.end_record(now);
        self.ended = true;
        self.guard = None;
        self.pool
            .metrics
            .bytes_out
            .inc_by(std::mem::take(&mut self.bytes_sent));
        // That capacity can go to the next request waiting at the gateway.
        self.pool.queue.wake();
        self.pool
            .metrics
            .duration
            .observe(now.saturating_duration_since(self.received).as_secs_f64());
    }

    /// The answer broke off (the replica's error or idle timeout, counted as its failure; or
    /// the gateway's drain timeout): end the stream.
    fn broke(
        &mut self,
        error: GatewayError,
        cause: &str,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let now = Instant::now();
        if let Some(guard) = &self.guard {
            let replica = guard.replica();
            tracing::warn!(pool = self.pool.name(), replica = %replica.name, cause, "answer broke off mid-stream");
            if !matches!(error, GatewayError::Drained) {
                self.pool.record_failure(replica, now, cause);
            }
        }
        self.count_for_slo(false, now);
        self.finish(now);
        if self.sse {
            let mut event = b"data: ".to_vec();
            event.extend_from_slice(&error.body());
            event.extend_from_slice(b"\n\n");
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
        } else {
            Poll::Ready(Some(Err(Box::new(error))))
        }
    }
}

impl Drop for ProxiedBody {
    fn drop(&mut self) {
        if !self.ended {
            // The client went away mid-answer: release the replica, then let a waiter in.
            self.end_record(Instant::now());
            self.pool.metrics.bytes_out.inc_by(self.bytes_sent);
            self.guard = None;
            self.pool.queue.wake();
        }
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            GatewayBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            GatewayBody::Proxied(body) => {
                if body.ended {
                    return Poll::Ready(None);
                }
                match body.poll_inner(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let now = Instant::now();
                        if let Some(data) = frame.data_ref() {
                            let metrics = &body.pool.metrics;
                            body.bytes_sent += data.len() as u64;
                            if let Some(record) = &mut body.record {
                                record.saw(data);
                            }
                            // A Responses stream opens with events that are not tokens
                            // (created, in progress, the item and part added): its first
                            // token, and the gaps, are its text deltas only.
                            let token = body
                                .token_event
                                .is_none_or(|marker| memchr::memmem::find(data, marker).is_some());
                            if token {
                                if body.last_chunk.is_none()
                                    && let Some(guard) = &mut body.guard
                                {
                                    guard.first_byte(now - body.sent);
                                    // Its prefill is done: a stream no longer counts as waiting
                                    // there, so a request held at the gateway may go now (the
                                    // fleet simulation re-checks after every engine step too).
                                    body.pool.queue.wake();
                                }
                                if body.sse {
                                    match body.last_chunk {
                                        None => metrics
                                            .stream_ttft
                                            .observe((now - body.received).as_secs_f64()),
                                        Some(last) => {
                                            metrics.inter_chunk.observe((now - last).as_secs_f64());
                                            if let Some(guard) = &body.guard {
                                                guard.chunk_gap(now - last);
                                            }
                                        }
                                    }
                                }
                                body.last_chunk = Some(now);
                                body.first_chunk.get_or_insert(now);
                                body.chunks += 1;
                            }
                            if let Some(idle) = body.idle.as_mut() {
                                idle.as_mut().reset((now + body.idle_timeout).into());
                            }
                        }
                        if body.inner_ended && body.early[0].is_none() {
                            // The last frame: end now, so that it goes out with the end.
                            body.completed(now);
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        body.broke(GatewayError::UpstreamFailed, &e.to_string())
                    }
                    Poll::Ready(None) => {
                        body.completed(Instant::now());
                        Poll::Ready(None)
                    }
                    Poll::Pending => {
                        let idle = body
                            .idle
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(body.idle_timeout)));
                        if idle.as_mut().poll(cx).is_ready() {
                            return body
                                .broke(GatewayError::UpstreamTimeout, "idle stream timeout");
                        }
                        let cut = body.cut.get_or_insert_with(|| {
                            let mut cut = body.pool.cut.clone();
                            Box::pin(async move {
                                let _ = cut.wait_for(|cut| *cut).await;
                            })
                        });
                        if cut.as_mut().poll(cx).is_ready() {
                            return body.broke(GatewayError::Drained, "cut by the drain timeout");
                        }
                        Poll::Pending
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Full(b) => b.is_none(),
            GatewayBody::Proxied(body) => body.ended,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            GatewayBody::Full(None) => SizeHint::with_exact(0),
            GatewayBody::Proxied(body) if body.ended => SizeHint::with_exact(0),
            GatewayBody::Proxied(body) => {
                let early = body.early_len();
                let inner = if body.inner_ended {
                    SizeHint::with_exact(0)
                } else {
                    body.inner.size_hint()
                };
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + early);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + early);
                }
                hint
            }
        }
    }
}
