//! Answer bodies. A proxied answer streams the replica's body chunk by chunk without buffering,
//! holds the replica's in-flight guard until the body ends or the client goes away, times
//! chunks for the metrics, enforces the idle-stream timeout, and turns a replica dying
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
use super::pools::PoolRuntime;
use crate::load::InflightGuard;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum GatewayBody {
    Full(Option<Bytes>),
    Proxied(Box<ProxiedBody>),
}

impl GatewayBody {
    pub fn full(bytes: Bytes) -> Self {
        Self::Full(Some(bytes))
    }
}

pub struct ProxiedBody {
    inner: Incoming,
    guard: Option<InflightGuard>,
    pool: Arc<PoolRuntime>,
    sse: bool,
    received: Instant,
    /// When the request went to the replica (for its first-byte latency).
    sent: Instant,
    last_chunk: Option<Instant>,
    /// Armed the first time the replica makes us wait (most small answers never do), then
    /// pushed back on every chunk.
    idle: Option<Pin<Box<Sleep>>>,
    idle_timeout: Duration,
    /// Set once the stream has ended (normally or not).
    ended: bool,
    /// Body bytes passed on, added to the shared counter once at the end (a shared atomic per
    /// chunk would bounce between cores).
    bytes_sent: u64,
}

impl ProxiedBody {
    pub fn new(
        inner: Incoming,
        guard: InflightGuard,
        pool: Arc<PoolRuntime>,
        sse: bool,
        received: Instant,
        sent: Instant,
    ) -> Self {
        let idle_timeout = pool.config.timeouts.idle_stream;
        Self {
            inner,
            guard: Some(guard),
            pool,
            sse,
            received,
            sent,
            last_chunk: None,
            idle: None,
            idle_timeout,
            ended: false,
            bytes_sent: 0,
        }
    }

    fn finish(&mut self) {
        self.ended = true;
        self.guard = None;
        self.pool
            .metrics
            .bytes_out
            .inc_by(std::mem::take(&mut self.bytes_sent));
        // That capacity can go to the next request waiting at the gateway.
        self.pool.admission.wake_one();
        self.pool
            .metrics
            .duration
            .observe(self.received.elapsed().as_secs_f64());
    }

    /// The replica broke off (error or idle timeout): count a failure, end the stream.
    fn broke(
        &mut self,
        error: GatewayError,
        cause: &str,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(guard) = &self.guard {
            let replica = guard.replica();
            tracing::warn!(pool = self.pool.name(), replica = %replica.name, cause, "answer broke off mid-stream");
            self.pool.record_failure(replica, Instant::now(), cause);
        }
        self.finish();
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
            self.pool.metrics.bytes_out.inc_by(self.bytes_sent);
            self.guard = None;
            self.pool.admission.wake_one();
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
                match Pin::new(&mut body.inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            let now = Instant::now();
                            let metrics = &body.pool.metrics;
                            body.bytes_sent += data.len() as u64;
                            if body.last_chunk.is_none()
                                && let Some(guard) = &mut body.guard
                            {
                                guard.first_byte(now - body.sent);
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
                            if let Some(idle) = body.idle.as_mut() {
                                idle.as_mut().reset((now + body.idle_timeout).into());
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        body.broke(GatewayError::UpstreamFailed, &e.to_string())
                    }
                    Poll::Ready(None) => {
                        if let Some(guard) = &body.guard {
                            guard.replica().record_success();
                        }
                        body.finish();
                        Poll::Ready(None)
                    }
                    Poll::Pending => match body
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(body.idle_timeout)))
                        .as_mut()
                        .poll(cx)
                    {
                        Poll::Ready(()) => {
                            body.broke(GatewayError::UpstreamTimeout, "idle stream timeout")
                        }
                        Poll::Pending => Poll::Pending,
                    },
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
            GatewayBody::Proxied(body) => body.inner.size_hint(),
        }
    }
}
