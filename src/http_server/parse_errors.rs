//! OpenAI-style bodies for the answers hyper writes by itself. A request head hyper cannot
//! parse gets 400, 414 or 431 straight from hyper, with an empty body and no hook to change it.
//! This wrapper of a connection's stream recognises such a head as it is written — a 4xx whose
//! only headers are `content-length: 0`, `date` and `connection: close`, which no answer of the gateway has: its own
//! errors carry a JSON body, and a replica's answers keep their other headers — and writes it
//! with a JSON error body instead. hyper closes the connection after it, so the longer answer
//! is the last thing on the wire. Any other write passes through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream whose automatic hyper error answers get JSON bodies.
pub struct ParseErrorBodies<S> {
    inner: S,
    /// A rewritten answer being written: its bytes, how many are out, and the length of the
    /// original write to report once all are.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<S> ParseErrorBodies<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: None,
        }
    }
}

/// The answer to write instead of `head`, if `head` is one of hyper's automatic ones.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let rest = head.strip_prefix(b"HTTP/1.1 4")?;
    let (message, kind) = match rest.get(..2)? {
        b"00" => ("the request head is malformed", "invalid_request_error"),
        b"14" => ("the request URI is too long", "invalid_request_error"),
        b"31" => ("the request headers are too large", "request_too_large"),
        _ => return None,
    };
    let end = memchr::memmem::find(head, b"\r\n\r\n")?;
    if end + 4 != head.len() {
        return None;
    }
    let status_end = memchr::memmem::find(head, b"\r\n")?;
    let headers = &head[status_end + 2..end];
    let mut length_zero = false;
    for line in headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.eq_ignore_ascii_case(b"content-length: 0") {
            length_zero = true;
        } else if !(is_date(line) || line.eq_ignore_ascii_case(b"connection: close")) {
            return None;
        }
    }
    if !length_zero {
        return None;
    }
    let code: u16 = std::str::from_utf8(&head[9..12]).ok()?.parse().ok()?;
    let body = crate::openai::error_body(message, kind, code);
    let mut answer = head[..status_end + 2].to_vec();
    for line in headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if is_date(line) {
            answer.extend_from_slice(line);
            answer.extend_from_slice(b"\r\n");
        }
    }
    answer.extend_from_slice(
        format!(
            "connection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    answer.extend_from_slice(&body);
    Some(answer)
}

fn is_date(line: &[u8]) -> bool {
    line.get(..5)
        .is_some_and(|name| name.eq_ignore_ascii_case(b"date:"))
}

impl<S: AsyncWrite + Unpin> ParseErrorBodies<S> {
    /// Writes the pending rewritten answer to the end.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some((bytes, written, reported)) = &mut self.pending else {
            return Poll::Ready(Ok(0));
        };
        while *written < bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let reported = *reported;
        self.pending = None;
        Poll::Ready(Ok(reported))
    }

    /// Starts a rewritten answer for `head` if it is an automatic one.
    fn intercept(&mut self, head: &[u8]) -> bool {
        // The cheap check first: every answer passes here.
        if self.pending.is_some() || !head.starts_with(b"HTTP/1.1 4") {
            return self.pending.is_some();
        }
        match rewrite(head) {
            Some(answer) => {
                self.pending = Some((answer, 0, head.len()));
                true
            }
            None => false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ParseErrorBodies<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ParseErrorBodies<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.intercept(buf) {
            return this.poll_pending(cx);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // hyper writes an automatic answer's head as one slice and nothing after it.
        if let [head] = bufs
            && this.intercept(head)
        {
            return this.poll_pending(cx);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_own_answers_get_json_bodies_and_nothing_else_changes() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Fri, 04 Dec 2026 21:00:00 GMT\r\n\r\n";
        let answer = String::from_utf8(rewrite(head).unwrap()).unwrap();
        let (top, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(top.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(top.contains("date: Fri, 04 Dec 2026"), "{top}");
        assert!(
            top.contains(&format!("content-length: {}", body.len())),
            "{top}"
        );
        assert!(!top.contains("content-length: 0"), "{top}");
        assert_eq!(top.matches("connection: close").count(), 1, "{top}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], 431);
        assert_eq!(json["error"]["type"], "request_too_large");
        let bad = rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert!(String::from_utf8(bad).unwrap().contains("\"code\":400"));
        // Not hyper's: a body, other headers, another status, more bytes after the head.
        for other in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-request-id: 1\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK",
        ] {
            assert!(rewrite(other).is_none(), "{}", String::from_utf8_lossy(other));
        }
    }
}
