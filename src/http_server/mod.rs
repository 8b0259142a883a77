//! The one HTTP server loop every listener uses (gateway, admin, simulator): accept on a bound
//! TCP listener, serve HTTP/1.1 and h2c on each connection with hyper-util, and on shutdown stop
//! accepting and let open connections finish, up to a drain timeout.
//!
//! Every server runs on threads of its own, each a single-threaded runtime accepting from the
//! same listener (one thread for the admin API or a simulator, one per core for the gateway): a
//! request and the upstream connection it uses then live on one thread, with no cross-thread
//! wake-ups (the cost that dominates a proxy's profile on a small machine). A worker takes a
//! new connection only while no other has fewer open (`Balance`).
//!
//! Slow and greedy clients are bounded ([`Limits`]): a request's headers must arrive within
//! `header_timeout` (hyper's timer), a body within [`BodyTimeouts`], and a listener holds at
//! most `max_connections` open — one more is answered 503 and closed at once, so that a flood
//! of idle connections cannot use up the process's file descriptors (and take the admin
//! listener down with the gateway).
//!
//! A listener given TLS settings serves the same over TLS: each accepted connection counts
//! against the cap from the start and must finish its handshake within `header_timeout`, so
//! that a client that connects and never says hello is closed like a slow one. One over the
//! cap is closed without an answer (which would need a handshake first).
//!
//! A request head hyper cannot parse gets hyper's own 400, 414 or 431, with an OpenAI-style
//! JSON body like every other error ([`parse_errors`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Notify, oneshot, watch};

mod parse_errors;
use parse_errors::ParseErrorBodies;

/// A running server: its bound address and the way to stop it.
pub struct Server {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    /// Accept loops still accepting, and a wake-up each time one stops.
    accepting: Arc<(AtomicUsize, tokio::sync::Notify)>,
    /// One per accept loop; resolves when that loop has drained.
    done: Vec<oneshot::Receiver<()>>,
}

impl Server {
    /// Stops accepting new connections and returns once no accept loop takes one any more
    /// (at most a second; open connections go on): on a reload, every connection made after
    /// this goes to the next server. [`Self::shutdown`] then drains.
    pub async fn stop_accepting(&self) {
        let _ = self.stop.send(true);
        let (left, stopped) = &*self.accepting;
        let all = async {
            loop {
                let next = stopped.notified();
                if left.load(Ordering::Acquire) == 0 {
                    return;
                }
                next.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), all).await;
    }

    /// Stops accepting, waits for open connections to finish (at most `drain`), then returns.
    pub async fn shutdown(self, drain: Duration) {
        let _ = self.stop.send(true);
        let all = async {
            for done in self.done {
                let _ = done.await;
            }
        };
        let _ = tokio::time::timeout(drain + Duration::from_millis(200), all).await;
    }
}

/// Binds `addr` (port 0 picks a free port) and returns one handle to the listening socket per
/// worker. Call inside a runtime; the handles go to [`serve`].
pub fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = bind_one(addr)?;
    let mut listeners = Vec::new();
    for _ in 1..workers.max(1) {
        listeners.push(first.try_clone()?);
    }
    listeners.push(first);
    Ok(listeners)
}

/// One listening socket. `SO_REUSEADDR` lets a restarted gateway bind while old connections
/// linger in TIME_WAIT; no `SO_REUSEPORT`, so a second process on the same address fails with
/// "address in use" instead of silently taking half the connections.
fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // `listen` registers with the current runtime; the worker re-registers on its own.
    socket.listen(4096)?.into_std()
}

/// The most a connection's read buffer grows to (hyper's default is 400 KiB). A long request
/// body is kept as the slices of these buffers it was read into
/// ([`read_body_frames`]), so this is also the most a body in flight holds beyond its own
/// size, and each connection keeps its last buffer while idle. With 1 MiB prompts on 64
/// connections the gateway's peak RSS was 150 MiB at 400 KiB, 133 at 256, 109 at 128 and 102
/// at 64, for about 3 % more CPU per request (more, smaller reads). It also bounds a request's
/// header section (nginx's default is 32 KiB).
const READ_BUFFER: usize = 64 * 1024;

/// What one listener allows its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's headers must arrive in full within this.
    pub header_timeout: Duration,
    /// Connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
}

impl Limits {
    /// For a listener that only tools and probes use (admin, a simulator).
    pub const SMALL: Limits = Limits {
        header_timeout: Duration::from_secs(10),
        max_connections: 1024,
    };
}

/// Raises the soft open-file limit to the hard one (as Go's runtime does at start), and returns
/// the limit now in force (None where it cannot be read).
pub fn raise_open_file_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// The gateway listener's default connection cap for an open-file limit of `files`: half of it
/// less 256, so that each client connection can have an upstream one and the admin listener,
/// scrapes and replicas keep descriptors.
pub fn default_max_connections(files: Option<u64>) -> usize {
    match files {
        Some(files) => (files.saturating_sub(256) / 2).max(16) as usize,
        None => 4096,
    }
}

/// Serves on one thread per listener, each a single-threaded runtime, named `{name}-{worker}`
/// (so `top -H` and `perf` tell the gateway's workers from its admin API or a simulator).
/// `make_handler(worker)` builds each thread's handler on that thread, so per-thread state
/// (such as upstream connection pools) stays on it.
pub fn serve<M, H, F, B>(
    name: &str,
    listeners: Vec<std::net::TcpListener>,
    drain: Duration,
    limits: Limits,
    make_handler: M,
) -> std::io::Result<Server>
where
    M: Fn(usize) -> H + Send + Sync + 'static,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + 'static,
    F: Future<Output = Response<B>> + 'static,
    B: Body<Data = bytes::Bytes> + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_tls(name, listeners, drain, limits, None, make_handler)
}

/// [`serve`] over TLS with `tls` (plain without).
pub fn serve_tls<M, H, F, B>(
    name: &str,
    listeners: Vec<std::net::TcpListener>,
    drain: Duration,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    make_handler: M,
) -> std::io::Result<Server>
where
    M: Fn(usize) -> H + Send + Sync + 'static,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + 'static,
    F: Future<Output = Response<B>> + 'static,
    B: Body<Data = bytes::Bytes> + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let addr = listeners[0].local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let make_handler = Arc::new(make_handler);
    let balance = Balance::new(listeners.len());
    let accepting = Arc::new((
        AtomicUsize::new(listeners.len()),
        tokio::sync::Notify::new(),
    ));
    let mut done = Vec::new();
    for (worker, listener) in listeners.into_iter().enumerate() {
        let (done_tx, done_rx) = oneshot::channel();
        done.push(done_rx);
        let (stopped, make_handler) = (stopped.clone(), make_handler.clone());
        let (balance, accepting) = (balance.clone(), accepting.clone());
        let tls = tls.clone().map(tokio_rustls::TlsAcceptor::from);
        std::thread::Builder::new()
            .name(format!("{name}-{worker}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a worker runtime starts");
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    let listener =
                        TcpListener::from_std(listener).expect("a bound listener converts");
                    let handler = make_handler(worker);
                    let accept = Accept {
                        listener,
                        drain,
                        limits,
                        tls,
                        balance,
                        worker,
                        accepting,
                    };
                    accept.run(handler, stopped).await;
                });
                let _ = done_tx.send(());
            })?;
    }
    Ok(Server {
        addr,
        stop,
        accepting,
        done,
    })
}

/// Open connections per worker. Clients such as load generators and connection-pooling SDKs
/// open all their connections at once; left to race for them, the worker that woke first took
/// up to 70 % (measured under wrk), and the requests on its connections waited behind twice
/// the other's work. A worker with more open than another leaves the next connection to it,
/// and waits (no polling) until a connection opens or closes somewhere.
#[derive(Clone)]
struct Balance(Arc<BalanceState>);

struct BalanceState {
    open: Box<[AtomicUsize]>,
    changed: Notify,
}

impl Balance {
    fn new(workers: usize) -> Self {
        Self(Arc::new(BalanceState {
            open: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            changed: Notify::new(),
        }))
    }

    /// Whether `worker` may take the next connection: none has fewer open.
    fn may_accept(&self, worker: usize) -> bool {
        let open = &self.0.open;
        let mine = open[worker].load(Ordering::Relaxed);
        open.iter().all(|n| n.load(Ordering::Relaxed) >= mine)
    }

    /// Connections open over all workers.
    fn total(&self) -> usize {
        self.0.open.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// Counts a connection on `worker` until the returned guard drops.
    fn open(&self, worker: usize) -> OpenConnection {
        self.0.open[worker].fetch_add(1, Ordering::Relaxed);
        self.0.changed.notify_waiters();
        OpenConnection {
            balance: self.clone(),
            worker,
        }
    }
}

struct OpenConnection {
    balance: Balance,
    worker: usize,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let state = &self.balance.0;
        state.open[self.worker].fetch_sub(1, Ordering::Relaxed);
        state.changed.notify_waiters();
    }
}

/// One worker's accept loop and what it enforces.
struct Accept {
    listener: TcpListener,
    drain: Duration,
    limits: Limits,
    /// Set: every connection starts with a TLS handshake.
    tls: Option<tokio_rustls::TlsAcceptor>,
    balance: Balance,
    worker: usize,
    /// Told when this loop stops accepting ([`Server::stop_accepting`]).
    accepting: Arc<(AtomicUsize, tokio::sync::Notify)>,
}

/// What a connection over the cap gets before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: 108\r\n\r\n{\"error\": {\"message\": \"too many open connections; retry later\", \"type\": \"service_unavailable\", \"code\": 503}}";

impl Accept {
    /// Accepts until stopped, then drains. Connections are `spawn_local`ed on the worker's own
    /// thread, so handlers and bodies need not be `Send`.
    async fn run<H, F, B>(self, handler: H, mut stopped: watch::Receiver<bool>)
    where
        H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + 'static,
        F: Future<Output = Response<B>> + 'static,
        B: Body<Data = bytes::Bytes> + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Self {
            listener,
            drain,
            limits,
            tls,
            balance,
            worker,
            accepting,
        } = self;
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(LocalExecutor);
        builder
            .http1()
            .timer(TokioTimer::new())
            .max_buf_size(READ_BUFFER)
            .header_read_timeout(limits.header_timeout);
        builder.http2().timer(TokioTimer::new());
        // Shared with the tasks that finish TLS handshakes before serving.
        let builder = std::rc::Rc::new(builder);
        let mut over_cap = false;
        // Set once this server stops; read per answer on this thread only (no atomics).
        let stopping = std::rc::Rc::new(std::cell::Cell::new(false));
        loop {
            // Registered before the check, so a change between the two is not missed.
            let changed = balance.0.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !balance.may_accept(worker) {
                tokio::select! {
                    _ = changed => continue,
                    _ = stopped.changed() => break,
                }
            }
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, peer)) = accepted else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    if balance.total() >= limits.max_connections {
                        if !over_cap {
                            tracing::warn!(max_connections = limits.max_connections, "connection cap reached: refusing new connections");
                        }
                        over_cap = true;
                        // Over TLS an answer would need the handshake the cap is there to
                        // save: the connection is just closed.
                        if tls.is_none() {
                            tokio::task::spawn_local(refuse(stream));
                        }
                        continue;
                    }
                    over_cap = false;
                    let _ = stream.set_nodelay(true);
                    let handler = handler.clone();
                    let stopping = stopping.clone();
                    let service = service_fn(move |req| {
                        let response = handler(req, peer);
                        let stopping = stopping.clone();
                        async move {
                            let mut response = response.await;
                            if stopping.get() {
                                // Stopping: this answer is the connection's last, so that its
                                // client opens a new one (to the next server, on a reload)
                                // instead of racing the close of an idle keep-alive.
                                response.headers_mut().insert(
                                    http::header::CONNECTION,
                                    http::HeaderValue::from_static("close"),
                                );
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let open = balance.open(worker);
                    let Some(tls) = &tls else {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(ParseErrorBodies::new(stream)), service);
                        let conn = graceful.watch(conn.into_owned());
                        tokio::task::spawn_local(async move {
                            let _ = conn.await;
                            drop(open);
                        });
                        continue;
                    };
                    // Watched from now on: a stop waits for the handshake too (bounded).
                    let watcher = graceful.watcher();
                    let (tls, builder) = (tls.clone(), builder.clone());
                    let handshake_timeout = limits.header_timeout;
                    tokio::task::spawn_local(async move {
                        let accepted = tokio::time::timeout(handshake_timeout, tls.accept(stream)).await;
                        if let Ok(Ok(stream)) = accepted {
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(ParseErrorBodies::new(stream)), service);
                            let _ = watcher.watch(conn.into_owned()).await;
                        }
                        drop(open);
                    });
                }
                _ = stopped.changed() => break,
            }
        }
        drop(listener);
        let (left, stopped_accepting) = &*accepting;
        left.fetch_sub(1, Ordering::AcqRel);
        stopped_accepting.notify_waiters();
        stopping.set(true);
        // Clients that send on their keep-alive connections now get an answer marked as the
        // last; a moment later the idle ones are closed.
        let grace = tokio::time::Instant::now() + KEEPALIVE_GRACE.min(drain);
        while balance.0.open[worker].load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < grace
        {
            let changed = balance.0.changed.notified();
            let _ = tokio::time::timeout_at(grace, changed).await;
        }
        let _ = tokio::time::timeout(drain, graceful.shutdown()).await;
    }
}

/// How long a stopping server lets keep-alive connections carry one more request (answered
/// with `connection: close`) before it closes the idle ones.
const KEEPALIVE_GRACE: Duration = Duration::from_millis(500);

/// Answers a connection over the cap with 503 and closes it (bounded: a client that does not
/// read is dropped after a second).
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(OVER_CAPACITY).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Runs hyper's background futures (h2 streams, upstream connections) on the worker's own
/// thread, in its `LocalSet`: a task woken from there goes on the set's own queue, while a
/// `tokio::spawn`ed one wakes the worker through its event loop (a syscall each time). Only for
/// futures started on a worker thread.
#[derive(Clone, Copy)]
pub struct LocalExecutor;

impl<F> hyper::rt::Executor<F> for LocalExecutor
where
    F: Future + 'static,
{
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

/// Why a request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the limit.
    TooLarge,
    /// The client broke off or sent malformed framing.
    Unreadable,
    /// The client paused longer than the idle timeout, or took longer than the total one.
    TimedOut,
}

/// How long a client may take over a request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeouts {
    /// Longest pause between two pieces.
    pub idle: Duration,
    /// Longest time for the whole body.
    pub total: Duration,
}

impl BodyTimeouts {
    /// For tools and tests: a minute for the whole, ten seconds between pieces.
    pub const DEFAULT: BodyTimeouts = BodyTimeouts {
        idle: Duration::from_secs(10),
        total: Duration::from_secs(60),
    };
}

/// Reads a request body of at most `limit` bytes within `timeouts`, in one buffer: the frame
/// itself when the body came in one, else the frames copied once into a buffer of their total
/// size. Over the limit, see [`read_body_frames`].
pub async fn read_body(
    body: Incoming,
    limit: usize,
    timeouts: BodyTimeouts,
) -> Result<bytes::Bytes, BodyError> {
    let mut frames = read_body_frames(body, limit, timeouts, |_| {}).await?;
    if frames.len() <= 1 {
        return Ok(frames.pop().unwrap_or_default());
    }
    let mut whole = bytes::BytesMut::with_capacity(frames.iter().map(|f| f.len()).sum());
    frames.iter().for_each(|f| whole.extend_from_slice(f));
    Ok(whole.freeze())
}

/// Reads a request body of at most `limit` bytes within `timeouts` as the frames hyper handed
/// over — slices of the buffers it read the socket into, so the bytes are never copied — and
/// shows each to `each` as it arrives, while it is still in cache. Over the limit, the rest is
/// read and dropped (up to a bound and a few seconds) before the caller answers 413, so the
/// client, still sending, gets that answer instead of a reset connection.
pub async fn read_body_frames(
    mut body: Incoming,
    limit: usize,
    timeouts: BodyTimeouts,
    mut each: impl FnMut(&[u8]),
) -> Result<Vec<bytes::Bytes>, BodyError> {
    use futures::FutureExt;
    use http_body_util::BodyExt;
    let mut frames = Vec::new();
    let mut read = 0usize;
    // Timers only once the client makes us wait: most bodies arrive with their headers, and
    // arming two timers per request showed in the instruction count.
    let mut total: Option<tokio::time::Instant> = None;
    loop {
        let next = match body.frame().now_or_never() {
            Some(next) => next,
            None => {
                let total =
                    *total.get_or_insert_with(|| tokio::time::Instant::now() + timeouts.total);
                let idle = tokio::time::Instant::now() + timeouts.idle;
                match tokio::time::timeout_at(idle.min(total), body.frame()).await {
                    Ok(next) => next,
                    Err(_) => return Err(BodyError::TimedOut),
                }
            }
        };
        let Some(frame) = next else { break };
        let Ok(frame) = frame else {
            return Err(BodyError::Unreadable);
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if read + data.len() > limit {
            drain(body, limit).await;
            return Err(BodyError::TooLarge);
        }
        if data.is_empty() {
            continue;
        }
        read += data.len();
        each(&data);
        frames.push(data);
    }
    Ok(frames)
}

async fn drain(mut body: Incoming, limit: usize) {
    use http_body_util::BodyExt;
    let bound = limit.saturating_mul(2).max(64 << 20);
    let mut seen = 0usize;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > bound {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_ahead_leaves_new_connections_to_the_others() {
        let balance = Balance::new(3);
        assert!((0..3).all(|w| balance.may_accept(w)), "all level");
        let first = balance.open(0);
        assert!(!balance.may_accept(0));
        assert!(balance.may_accept(1) && balance.may_accept(2));
        let second = balance.open(1);
        assert!(!balance.may_accept(1) && balance.may_accept(2));
        drop(first);
        assert!(balance.may_accept(0) && balance.may_accept(2) && !balance.may_accept(1));
        drop(second);
        assert!(
            (0..3).all(|w| balance.may_accept(w)),
            "closed connections count no more"
        );
    }
}
