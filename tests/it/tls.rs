//! TLS on both sides of the gateway, with a CA and certificates made at test time (rcgen): a
//! rustls client streams a chat completion through a TLS listener in HTTP/1.1 and HTTP/2, and
//! so does the official `openai` Python client trusting the test CA; a gateway reaches an
//! `https://` replica (a TLS front before a simulator) for requests and scrapes with the pool's
//! CA file, and not without it; a reload (SIGHUP) serves a new certificate and a broken one
//! keeps the previous serving; a connection that never says hello is closed within the header
//! timeout and counts against the connection cap meanwhile; every TLS file problem is listed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::support::*;

/// A CA made for one test, and the directory its files go to.
pub(crate) struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

/// A certificate issued by a [`TestCa`]: its PEM files and its DER, to recognise it.
pub(crate) struct Issued {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl TestCa {
    pub(crate) fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("infergate-tls-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "infergate test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), issuer.pem()).unwrap();
        Self { issuer, dir }
    }

    /// The CA's certificate (PEM), as clients are told to trust it.
    pub(crate) fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate for `names` (DNS names or IP addresses), written to
    /// `{stem}.pem` and `{stem}.key`.
    pub(crate) fn issue(&self, names: &[&str], stem: &str) -> Issued {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let issued = Issued {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
            der: cert.der().clone(),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }

    /// rustls client settings trusting this CA only, offering `alpn`.
    fn client(&self, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }

    /// Opens a TLS connection to `addr` as `localhost`, offering `alpn`.
    async fn connect(
        &self,
        addr: SocketAddr,
        alpn: &[u8],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(self.client(alpn))
            .connect(name, tcp)
            .await
    }

    /// The certificate a new connection to `addr` is shown.
    async fn served_certificate(&self, addr: SocketAddr) -> CertificateDer<'static> {
        let tls = self
            .connect(addr, b"http/1.1")
            .await
            .expect("TLS handshake");
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `listeners.tls` setting for `issued`.
fn listener_tls(issued: &Issued) -> String {
    format!("tls: {{cert: {:?}, key: {:?}}}", issued.cert, issued.key)
}

fn streamed_chat(max_tokens: u32) -> Value {
    json!({"model": "m", "stream": true, "max_tokens": max_tokens, "ignore_eos": true,
           "messages": [{"role": "user", "content": "hello there"}]})
}

/// Sends `body` as a chat completion over an open TLS connection, in HTTP/2 when that was
/// negotiated and HTTP/1.1 otherwise, and reads the whole answer.
async fn chat_over(
    tls: TlsStream<TcpStream>,
    body: &Value,
) -> (StatusCode, Vec<(Duration, Bytes)>) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let request = Request::post("https://localhost/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
        .unwrap();
    let started = Instant::now();
    let response = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut request = request;
        request
            .headers_mut()
            .insert("host", "localhost".parse().unwrap());
        sender.send_request(request).await.unwrap()
    };
    let status = response.status();
    let mut body = response.into_body();
    let mut chunks = Vec::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .expect("the answer goes on")
    {
        if let Ok(data) = frame.unwrap().into_data() {
            chunks.push((started.elapsed(), data));
        }
    }
    (status, chunks)
}

/// The text a stream's chunks carry, and the last `finish_reason`.
fn streamed_text(events: &[Value]) -> (String, Option<String>) {
    let mut text = String::new();
    let mut finish = None;
    for event in events {
        if let Some(choice) = event["choices"].get(0) {
            text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
            if let Some(reason) = choice["finish_reason"].as_str() {
                finish = Some(reason.to_string());
            }
        }
    }
    (text, finish)
}

#[tokio::test]
async fn a_rustls_client_streams_through_the_tls_listener_in_http1_and_http2() {
    let ca = TestCa::new("listener");
    let cert = ca.issue(&["localhost", "127.0.0.1"], "gateway");
    let replica = sim("llama-8b-h100").await;
    let gw = GatewayConfig::static_replicas(&[replica.addr])
        .listener(&listener_tls(&cert))
        .start()
        .await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let tls = ca.connect(gw.gateway_addr, alpn).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn), "negotiated");
        assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], cert.der);
        let (status, chunks) = chat_over(tls, &streamed_chat(6)).await;
        assert_eq!(status, 200);
        let events = sse_json(&chunks); // ends with [DONE]
        let (text, finish) = streamed_text(&events);
        assert_eq!(text.split_whitespace().count(), 6, "six tokens: {text:?}");
        assert_eq!(finish.as_deref(), Some("length"));
        assert!(chunks.len() > 1, "streamed in pieces, not at once");
    }
    assert_eq!(requests_finished(replica.addr).await, 2.0);
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(gw.gateway_addr).await.unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut seen)).await;
    assert!(
        !seen.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    gw.shutdown().await;
}

#[test]
fn the_openai_client_streams_over_tls_trusting_the_test_ca() {
    if !tool_available("python3", &["-c", "import openai"]) {
        return;
    }
    let ca = TestCa::new("openai");
    let cert = ca.issue(&["localhost", "127.0.0.1"], "gateway");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (replica, gw) = rt.block_on(async {
        let replica = sim("llama-8b-h100").await;
        let gw = GatewayConfig::static_replicas(&[replica.addr])
            .listener(&listener_tls(&cert))
            .start()
            .await;
        (replica, gw)
    });
    let got = openai_chat_stream_over_tls(gw.gateway_addr, &ca.ca_file(), "Name three rivers.", 9);
    // The same answer as the replica gives in the clear.
    let direct = openai_chat_stream(replica.addr, "Name three rivers.", 9, "None");
    assert_eq!(got, direct);
    let tokens = got["completion_tokens"].as_u64().unwrap();
    assert!((1..=9).contains(&tokens), "{got}");
    assert_eq!(
        got["content"].as_str().unwrap().split_whitespace().count() as u64,
        tokens,
        "{got}"
    );
    rt.block_on(gw.shutdown());
}

/// A TLS front before a plain replica at `backend` (as a TLS-terminating sidecar is): each
/// connection is decrypted and relayed. Returns its address and the handshakes it completed.
pub(crate) async fn tls_front(
    backend: SocketAddr,
    cert: &Issued,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let chain = infergate::tls::read_certs(&cert.cert).unwrap();
    let key = infergate::tls::read_key(&cert.key).unwrap();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(infergate::tls::server_config(chain, key).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = handshakes.clone();
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut client) = acceptor.accept(client).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::Relaxed);
                let mut replica = TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut replica).await;
            });
        }
    });
    (addr, handshakes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_replica_is_proxied_and_scraped_with_the_pools_ca() {
    let ca = TestCa::new("replica");
    // The certificate names the replica's service, not the address it is reached at.
    let cert = ca.issue(&["replica.internal"], "replica");
    let replica = sim("llama-8b-h100").await;
    let (front, handshakes) = tls_front(replica.addr, &cert).await;
    let url = format!("https://{front}");
    let gw = GatewayConfig::static_urls(&[&url])
        .pool(&format!(
            "upstream_tls: {{ca: {:?}, server_name: replica.internal}}\nmetrics: {{scrape_interval: 50ms}}",
            ca.ca_file()
        ))
        .start()
        .await;
    // Scraped over TLS: the replica's engine stats show.
    let s = poll_until(
        Duration::from_secs(5),
        async || pool_status(&gw).await,
        |s| replicas(s)[0]["engine"].is_object(),
    )
    .await;
    assert!(replicas(&s)[0]["engine"].is_object(), "{s}");
    let chat =
        json!({"model": "m", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]});
    let reply = post(
        &format!("http://{}/v1/chat/completions", gw.gateway_addr),
        chat.clone(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let events = stream_to_done(spawn_stream(
        &format!("http://{}/v1/chat/completions", gw.gateway_addr),
        streamed_chat(4),
    ))
    .await;
    assert_eq!(streamed_text(&events).1.as_deref(), Some("length"));
    assert_eq!(requests_finished(replica.addr).await, 2.0);
    assert!(
        handshakes.load(Ordering::Relaxed) >= 2,
        "requests and scrapes each over TLS"
    );
    gw.shutdown().await;

    // Without the CA the replica's certificate is not trusted: no scrape, no request reaches it.
    let untrusting = GatewayConfig::static_urls(&[&url])
        .pool("upstream_tls: {server_name: replica.internal}\nmetrics: {scrape_interval: 50ms}")
        .start()
        .await;
    let reply = post(
        &format!("http://{}/v1/chat/completions", untrusting.gateway_addr),
        chat,
    )
    .await;
    // 502 when the request's own handshake fails, 503 once failed scrapes have ejected it.
    assert!(
        matches!(reply.status.as_u16(), 502 | 503),
        "{}",
        reply.text()
    );
    let s = pool_status(&untrusting).await;
    assert!(replicas(&s)[0]["engine"].is_null(), "{s}");
    assert_eq!(requests_finished(replica.addr).await, 2.0);
    untrusting.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_new_certificate_and_a_broken_one_keeps_the_previous() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let ca = TestCa::new("reload");
    let first = ca.issue(&["localhost"], "first");
    let replica = sim("llama-8b-h100").await;
    // The config names one pair of files, replaced between reloads.
    let (cert, key) = (ca.dir.join("gateway.pem"), ca.dir.join("gateway.key"));
    let install = |issued: &Issued| {
        std::fs::copy(&issued.cert, &cert).unwrap();
        std::fs::copy(&issued.key, &key).unwrap();
    };
    install(&first);
    let file = ca.dir.join("gateway.yaml");
    let yaml = GatewayConfig::static_replicas(&[replica.addr])
        .listener(&format!("tls: {{cert: {cert:?}, key: {key:?}}}"))
        .yaml();
    std::fs::write(&file, yaml).unwrap();
    let (child, gateway, admin) = spawn_serve(&file);
    let pid = Pid::from_raw(child.0.id() as i32);
    assert_eq!(ca.served_certificate(gateway).await, first.der);

    let second = ca.issue(&["localhost"], "second");
    install(&second);
    kill(pid, Signal::SIGHUP).unwrap();
    let served = poll_until(
        Duration::from_secs(10),
        async || ca.served_certificate(gateway).await,
        |c| *c == second.der,
    )
    .await;
    assert!(served == second.der, "the new certificate is never served");
    // Once the previous config has stopped accepting, every new connection gets it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        assert!(ca.served_certificate(gateway).await == second.der);
    }
    let tls = ca.connect(gateway, b"http/1.1").await.unwrap();
    assert_eq!(chat_over(tls, &streamed_chat(3)).await.0, 200);

    // A certificate file that does not load: the reload is refused and the second goes on.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    let status = poll_until(
        Duration::from_secs(10),
        async || get(&format!("http://{admin}/admin/status")).await.json(),
        |s| s["config_reload"]["applied"] == false,
    )
    .await;
    let error = status["config_reload"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("listeners.tls.cert"), "{status}");
    for _ in 0..3 {
        assert!(ca.served_certificate(gateway).await == second.der);
    }
    let tls = ca.connect(gateway, b"h2").await.unwrap();
    assert_eq!(chat_over(tls, &streamed_chat(3)).await.0, 200);
    drop(child);
}

#[tokio::test]
async fn a_connection_that_never_says_hello_is_closed_within_the_header_timeout() {
    let ca = TestCa::new("hello");
    let cert = ca.issue(&["localhost"], "gateway");
    let replica = sim("llama-8b-h100").await;
    let gw = GatewayConfig::static_replicas(&[replica.addr])
        .listener(&listener_tls(&cert))
        .listener("header_timeout: 1s, max_connections: 2")
        .start()
        .await;
    let opened = Instant::now();
    let mut silent = [
        TcpStream::connect(gw.gateway_addr).await.unwrap(),
        TcpStream::connect(gw.gateway_addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Both count against the cap while they say nothing: a third is closed at once.
    let refused = ca.connect(gw.gateway_addr, b"http/1.1").await;
    assert!(refused.is_err(), "over the cap");
    for conn in &mut silent {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
    }
    let closed_after = opened.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
    // Room again: a client that says hello is served.
    let tls = ca.connect(gw.gateway_addr, b"http/1.1").await.unwrap();
    assert_eq!(chat_over(tls, &streamed_chat(2)).await.0, 200);
    gw.shutdown().await;
}

#[test]
fn every_tls_file_problem_is_listed() {
    let ca = TestCa::new("check");
    let one = ca.issue(&["localhost"], "one");
    let other = ca.issue(&["localhost"], "other");
    let missing = ca.dir.join("missing.pem");
    let not_pem = ca.dir.join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let config = |listener: &str, pool: &str, url: &str| {
        GatewayConfig::static_urls(&[url])
            .listener(listener)
            .pool(pool)
            .yaml()
    };
    let problems = |yaml: String| match infergate::config::parse(&yaml, "test") {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    };
    let listed = problems(config(
        &format!("tls: {{cert: {missing:?}, key: {not_pem:?}}}"),
        &format!("upstream_tls: {{ca: {not_pem:?}, server_name: 'not a name'}}"),
        "https://127.0.0.1:1",
    ));
    for expected in [
        "listeners.tls.cert: cannot read",
        "listeners.tls.key: ",
        "holds no PEM private key",
        "pools[0].upstream_tls.ca: ",
        "holds no PEM certificate",
        "pools[0].upstream_tls.server_name: `not a name` is not a DNS name or an IP address",
    ] {
        assert!(
            listed.contains(expected),
            "missing {expected:?} in:\n{listed}"
        );
    }
    // A key that is not the certificate's; a CA for replicas that are not https; h2c to them.
    let listed = problems(config(
        &format!("tls: {{cert: {:?}, key: {:?}}}", one.cert, other.key),
        &format!("upstream_tls: {{ca: {:?}}}", ca.ca_file()),
        "http://127.0.0.1:1",
    ));
    for expected in [
        "listeners.tls: the key does not belong to the certificate",
        "pools[0].upstream_tls: no replica of this pool is `https://`",
    ] {
        assert!(
            listed.contains(expected),
            "missing {expected:?} in:\n{listed}"
        );
    }
    let listed = problems(config(
        "drain_timeout: 1s",
        "upstream_protocol: h2c",
        "https://127.0.0.1:1",
    ));
    assert!(
        listed.contains("pools[0].upstream_protocol: h2c is HTTP/2 in the clear"),
        "{listed}"
    );
    // The same files in order load.
    let ok = config(
        &listener_tls(&one),
        &format!("upstream_tls: {{ca: {:?}}}", ca.ca_file()),
        "https://127.0.0.1:1",
    );
    let config = infergate::config::parse(&ok, "test").unwrap_or_else(|e| panic!("{e}"));
    assert!(config.listeners.tls.is_some());
    assert!(config.summary().contains("(TLS)"), "{}", config.summary());
}
