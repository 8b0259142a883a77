//! Helpers shared by the integration tests: a small HTTP client over hyper-util, starting
//! simulators in-process or as child processes on 127.0.0.1:0, and external tools that CI
//! installs (a test that needs one skips where it is missing, except under CI=true).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request and reads the whole answer (bounded by 60 s).
pub async fn send(method: Method, url: &str, body: impl Into<Bytes>) -> Reply {
    send_with(method, url, &[], body).await
}

/// [`send`] with extra request headers.
pub async fn send_with(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut request = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into())).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(60), client().request(request))
        .await
        .expect("answer within 60 s")
        .expect("request succeeds");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body reads").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str) -> Reply {
    send(Method::GET, url, Bytes::new()).await
}

pub async fn post(url: &str, body: serde_json::Value) -> Reply {
    send(Method::POST, url, serde_json::to_vec(&body).unwrap()).await
}

/// Streams a POST and returns each body chunk with the time it arrived after the request.
pub async fn post_stream(
    url: &str,
    body: serde_json::Value,
) -> (StatusCode, Vec<(Duration, Bytes)>) {
    let request = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
        .unwrap();
    let start = Instant::now();
    let response = client().request(request).await.expect("request succeeds");
    let status = response.status();
    let mut body = response.into_body();
    let mut chunks = Vec::new();
    let deadline = start + Duration::from_secs(60);
    while let Some(frame) = tokio::time::timeout_at(deadline.into(), body.frame())
        .await
        .expect("stream ends within 60 s")
    {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    chunks.push((start.elapsed(), data));
                }
            }
            Err(_) => break, // the connection broke; callers check what they got
        }
    }
    (status, chunks)
}

/// The SSE `data:` payloads in a stream's chunks, in order.
pub fn sse_events(chunks: &[(Duration, Bytes)]) -> Vec<String> {
    let all: Vec<u8> = chunks.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    String::from_utf8(all)
        .unwrap()
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(String::from)
        .collect()
}

/// Whether an external tool is installed; under CI=true a missing tool fails the test.
pub fn tool_available(program: &str, probe: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "{program} is required under CI (.ci/run installs it)"
        );
        eprintln!("skipping: {program} is not installed (.ci/run installs it)");
    }
    ok
}

/// A child process killed when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `infergate sim` as a child process on a free port and returns it with its address,
/// read from the line it prints.
pub fn spawn_sim(args: &[&str]) -> (ChildGuard, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["sim", "--port", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("infergate sim starts");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (ChildGuard(child), addr)
}

/// Reads one sample's value from Prometheus text, by exact series name and label subset.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (metric_name, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric_name != name {
            return None;
        }
        labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())?
    })
}

/// Runs `promtool check metrics` on an exposition page: its exit code and what it said.
pub fn promtool_check_metrics(page: &[u8]) -> (Option<i32>, String) {
    use std::io::Write;
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    check.stdin.take().unwrap().write_all(page).unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), said)
}

/// Asserts an OpenAI-style error answer: the status, `error.message` containing `message`,
/// `error.code` equal to the status and a string `error.type`.
pub fn assert_openai_error(reply: &Reply, status: u16, message: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    let body = reply.json();
    let said = body["error"]["message"].as_str().unwrap_or_default();
    assert!(said.contains(message), "expected `{message}` in {body}");
    assert_eq!(body["error"]["code"], status, "{body}");
    assert!(body["error"]["type"].is_string(), "{body}");
}

/// Runs a Python script and returns what it printed; fails the test if the script fails.
pub fn run_python(script: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
