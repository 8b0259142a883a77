//! Upstream connections, one set per pool and gateway worker. HTTP/1.1 pools keep their own
//! idle keep-alive connections per replica: a connection is lent to one request and given back
//! when its answer has been read to the end. hyper-util's pooled client did the same through a
//! map hashed twice per request and a task spawned per answer to put the connection back, which
//! cost more than the rest of the proxying in user space. h2c pools keep hyper-util's client,
//! whose one multiplexed connection per replica serves every request. `https://` replicas are
//! spoken to in HTTP/1.1 over TLS, verified as the pool's `upstream_tls` says.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::header;
use http::uri::Scheme;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;

use super::body::RequestBody;
use crate::config::{self, UpstreamProtocol, UpstreamTls};
use crate::replica::Replica;

/// Idle connections kept per replica and worker.
const MAX_IDLE: usize = 1024;
/// An idle connection older than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// One gateway worker's connections to one pool's replicas, used only from that worker's
/// thread (connection tasks run in its `LocalSet`).
pub enum UpstreamClient {
    Http1(Http1Pool),
    H2c(Box<Client<HttpConnector, RequestBody>>),
}

/// Why a request got no answer head.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection to the replica: nothing reached it.
    #[error("connect: {0}")]
    Connect(String),
    #[error(transparent)]
    Request(#[from] hyper::Error),
    #[error(transparent)]
    H2c(#[from] hyper_util::client::legacy::Error),
}

impl UpstreamError {
    /// Whether the request certainly did not reach the replica (safe to send elsewhere).
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Connect(_) => true,
            UpstreamError::Request(_) => false,
            UpstreamError::H2c(e) => e.is_connect(),
        }
    }
}

/// An HTTP/1.1 connection lent to one request, to give back once its answer is read.
pub struct Lent {
    sender: SendRequest<RequestBody>,
    replica: u64,
}

impl UpstreamClient {
    pub fn new(config: &config::Pool) -> Self {
        match config.upstream_protocol {
            UpstreamProtocol::H2c => {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(config.timeouts.connect));
                connector.set_nodelay(true);
                connector.enforce_http(true);
                let mut builder = Client::builder(crate::http_server::LocalExecutor);
                builder
                    .pool_idle_timeout(IDLE_TIMEOUT)
                    .pool_max_idle_per_host(MAX_IDLE)
                    .http2_only(true);
                UpstreamClient::H2c(Box::new(builder.build(connector)))
            }
            UpstreamProtocol::Http1 => UpstreamClient::Http1(Http1Pool {
                connect_timeout: config.timeouts.connect,
                tls: config.upstream_tls.clone(),
                idle: Mutex::default(),
            }),
        }
    }

    /// Sends `request` (absolute URI, no `Host`) to `replica`; the answer's head comes back,
    /// with the connection to give back when its body has been read (HTTP/1.1).
    pub async fn send(
        &self,
        replica: &Replica,
        request: Request<RequestBody>,
        now: Instant,
    ) -> Result<(Response<Incoming>, Option<Lent>), UpstreamError> {
        match self {
            UpstreamClient::Http1(pool) => {
                let (response, lent) = pool.send(replica, request, now).await?;
                Ok((response, Some(lent)))
            }
            UpstreamClient::H2c(client) => Ok((client.request(request).await?, None)),
        }
    }

    /// Takes back a connection whose answer was read to the end (at `now`).
    pub fn give_back(&self, lent: Lent, now: Instant) {
        if let UpstreamClient::Http1(pool) = self {
            pool.give_back(lent, now);
        }
    }
}

pub struct Http1Pool {
    /// For the TCP connection and, to an `https://` replica, the TLS handshake.
    connect_timeout: Duration,
    tls: UpstreamTls,
    /// Idle connections by replica id, oldest first.
    idle: Mutex<HashMap<u64, VecDeque<Idle>, BuildHasherDefault<IdHasher>>>,
}

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

impl Http1Pool {
    async fn send(
        &self,
        replica: &Replica,
        mut request: Request<RequestBody>,
        now: Instant,
    ) -> Result<(Response<Incoming>, Lent), UpstreamError> {
        origin_form(&mut request, replica);
        loop {
            let (mut sender, reused) = match self.take(replica.id, now) {
                Some(sender) => (sender, true),
                None => (self.connect(replica).await?, false),
            };
            if reused && sender.ready().await.is_err() {
                continue; // closed while idle: the next one
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let lent = Lent {
                        sender,
                        replica: replica.id,
                    };
                    return Ok((response, lent));
                }
                Err(mut e) => match e.take_message() {
                    // A reused connection closed before the request went out: nothing was
                    // sent, try again on another one (as hyper-util's client does).
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(UpstreamError::Request(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection to `replica` that is still open.
    fn take(&self, replica: u64, now: Instant) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&replica)?;
        while let Some(conn) = list.pop_back() {
            if !conn.sender.is_closed() && now.saturating_duration_since(conn.since) < IDLE_TIMEOUT
            {
                return Some(conn.sender);
            }
        }
        None
    }

    fn give_back(&self, lent: Lent, now: Instant) {
        if lent.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(lent.replica).or_default();
        while list.front().is_some_and(|c| {
            now.saturating_duration_since(c.since) >= IDLE_TIMEOUT || c.sender.is_closed()
        }) {
            list.pop_front();
        }
        if list.len() < MAX_IDLE {
            list.push_back(Idle {
                sender: lent.sender,
                since: now,
            });
        }
    }

    async fn connect(&self, replica: &Replica) -> Result<SendRequest<RequestBody>, UpstreamError> {
        let https = if replica.scheme == Scheme::HTTP {
            false
        } else if replica.scheme == Scheme::HTTPS {
            true
        } else {
            let scheme = &replica.scheme;
            return Err(UpstreamError::Connect(format!(
                "scheme {scheme} is not http(s)"
            )));
        };
        let host = replica.authority.host().trim_matches(['[', ']']);
        let default_port = if https { 443 } else { 80 };
        let port = replica.authority.port_u16().unwrap_or(default_port);
        let connect = async {
            let stream = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| UpstreamError::Connect(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            if !https {
                return handshake(stream).await;
            }
            let name = self.tls.server_name(host).map_err(UpstreamError::Connect)?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.config.clone())
                .connect(name, stream)
                .await
                .map_err(|e| UpstreamError::Connect(format!("TLS: {e}")))?;
            handshake(tls).await
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(connected) => connected,
            Err(_) => Err(UpstreamError::Connect("timed out".into())),
        }
    }
}

/// Starts HTTP/1.1 on a connected stream; its connection task runs on this worker.
async fn handshake<S>(stream: S) -> Result<SendRequest<RequestBody>, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
    tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// An HTTP/1.1 request names only the path; the replica goes in `Host`.
fn origin_form(request: &mut Request<RequestBody>, replica: &Replica) {
    let path = match request.uri().path_and_query() {
        Some(path) if path.as_str() != "/" => {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(path.clone());
            Uri::from_parts(parts).expect("a path is a valid URI")
        }
        _ => Uri::default(),
    };
    *request.uri_mut() = path;
    request
        .headers_mut()
        .insert(header::HOST, replica.host.clone());
}

/// Replica ids are hashes already.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    use bytes::Bytes;
    use http::HeaderValue;
    use http_body_util::{BodyExt, Full};

    /// A replica on 127.0.0.1:0 counting its connections; it closes a connection after
    /// answering a request that carries `x-close`.
    async fn replica(accepted: Rc<Cell<u32>>) -> Replica {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::task::spawn_local(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                accepted.set(accepted.get() + 1);
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                    if req.headers().contains_key("x-close") {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, std::convert::Infallible>(response)
                });
                tokio::task::spawn_local(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Replica::new(
            Scheme::HTTP,
            addr.to_string().parse().unwrap(),
            prometheus::IntGauge::new("test_pool_inflight", "test").unwrap(),
            Instant::now(),
        )
    }

    fn request(replica: &Replica, close: bool) -> Request<RequestBody> {
        let mut request = Request::post(format!("http://{}/v1/completions", replica.authority))
            .body(RequestBody::from(Bytes::from_static(b"{}")))
            .unwrap();
        if close {
            request
                .headers_mut()
                .insert("x-close", HeaderValue::from_static("1"));
        }
        request
    }

    #[tokio::test]
    async fn a_connection_serves_again_once_its_answer_is_read() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let accepted = Rc::new(Cell::new(0));
                let replica = replica(accepted.clone()).await;
                let mut config = crate::config::embedded_default().pools[0].clone();
                config.upstream_protocol = UpstreamProtocol::Http1;
                let client = UpstreamClient::new(&config);
                for close in [false, false, true, false] {
                    let (response, lent) = client
                        .send(&replica, request(&replica, close), Instant::now())
                        .await
                        .unwrap();
                    let body = response.into_body().collect().await.unwrap().to_bytes();
                    assert_eq!(body, "ok");
                    client.give_back(lent.unwrap(), Instant::now());
                }
                // Three on the first connection, which the replica then closed; one more.
                assert_eq!(accepted.get(), 2);
                // An answer given up half-way closes its connection instead.
                let (_response, lent) = client
                    .send(&replica, request(&replica, false), Instant::now())
                    .await
                    .unwrap();
                drop(lent);
                let (_, lent) = client
                    .send(&replica, request(&replica, false), Instant::now())
                    .await
                    .unwrap();
                assert!(lent.is_some());
                assert_eq!(accepted.get(), 3);
            })
            .await;
    }
}
