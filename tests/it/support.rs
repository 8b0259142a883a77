//! Helpers shared by the integration tests: a small HTTP client over hyper-util, starting
//! simulators in-process or as child processes on 127.0.0.1:0, the gateway's YAML config, the
//! pages tests read (`/admin/status`, `/metrics`), polling until something holds, and external
//! tools that CI installs (a test that needs one skips where it is missing, except under
//! CI=true).

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
use infergate::app::{self, App, Options};
use infergate::http_server::Server;
use infergate::loadgen::LoadArgs;
use infergate::vllm_sim::profile::profile;
use infergate::vllm_sim::{self, SimOptions};
use serde_json::Value;
use tokio::task::JoinHandle;

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

/// A streamed completion of `prompt` for model `m` that runs to `max_tokens` (`ignore_eos`).
pub fn streamed_completion(prompt: &str, max_tokens: u32) -> Value {
    serde_json::json!({"model": "m", "prompt": prompt, "max_tokens": max_tokens,
                       "ignore_eos": true, "stream": true})
}

/// [`post_stream`] in a task of its own, for answers that run while the test goes on.
pub fn spawn_stream(url: &str, body: Value) -> JoinHandle<(StatusCode, Vec<(Duration, Bytes)>)> {
    let url = url.to_string();
    tokio::spawn(async move { post_stream(&url, body).await })
}

/// [`post`] in a task of its own.
pub fn spawn_post(url: &str, body: Value) -> JoinHandle<Reply> {
    let url = url.to_string();
    tokio::spawn(async move { post(&url, body).await })
}

/// Sends `n` completions to `addr` one after the other, waiting `gap` before each; every one
/// must be answered 200. `body(i)` is the `i`th request.
pub async fn completions_in_turn(
    addr: SocketAddr,
    n: usize,
    gap: Duration,
    body: impl Fn(usize) -> Value,
) {
    let url = format!("http://{addr}/v1/completions");
    for i in 0..n {
        tokio::time::sleep(gap).await;
        let reply = post(&url, body(i)).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
    }
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

/// A simulated replica's options: `profile_name`'s engine, serving model `m`.
pub fn sim_options(profile_name: &str) -> SimOptions {
    let mut opts = SimOptions::new(profile(profile_name).unwrap());
    opts.models = vec!["m".into()];
    opts
}

/// Starts a simulated replica in-process on 127.0.0.1:0.
pub async fn start_sim(opts: SimOptions) -> Server {
    vllm_sim::start(opts).await.unwrap()
}

/// A simulated replica of `profile_name` serving model `m`, in-process on 127.0.0.1:0.
pub async fn sim(profile_name: &str) -> Server {
    start_sim(sim_options(profile_name)).await
}

/// The load generator's arguments against `addr` (model `m`): 20 streamed requests, 4 at a
/// time, 32 prompt and 5 answer tokens, within 30 s. Tests change what they need with
/// `LoadArgs { requests: 80, ..load_args(addr) }`.
pub fn load_args(addr: SocketAddr) -> LoadArgs {
    LoadArgs {
        url: format!("http://{addr}"),
        model: "m".into(),
        requests: 20,
        concurrency: 4,
        duration: Duration::from_secs(30),
        prompt_tokens: 32,
        max_tokens: 5,
        stream: true,
    }
}

/// The YAML of a gateway with one pool `p` (model `m` unless told otherwise), listening on
/// 127.0.0.1:0: each test adds the settings it is about.
///
/// ```ignore
/// GatewayConfig::static_replicas(&[a.addr])
///     .listener("drain_timeout: 5s")
///     .pool("metrics: {scrape_interval: 50ms}")
///     .start()
///     .await
/// ```
pub struct GatewayConfig {
    gateway_listen: String,
    admin_listen: String,
    listeners: Vec<String>,
    top: Vec<String>,
    models: Vec<String>,
    discovery: String,
    pool: Vec<String>,
}

impl GatewayConfig {
    fn with_discovery(discovery: String) -> Self {
        Self {
            gateway_listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            listeners: Vec::new(),
            top: Vec::new(),
            models: vec!["m".into()],
            discovery,
            pool: Vec::new(),
        }
    }

    /// Static discovery of the replicas at `endpoints`.
    pub fn static_replicas(endpoints: &[SocketAddr]) -> Self {
        let list: Vec<String> = endpoints
            .iter()
            .map(|a| format!("\"http://{a}\""))
            .collect();
        Self::with_discovery(format!("{{static: {{endpoints: [{}]}}}}", list.join(", ")))
    }

    /// Static discovery of the replicas at `urls` (`https://` ones, say).
    pub fn static_urls(urls: &[&str]) -> Self {
        let list: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
        Self::with_discovery(format!("{{static: {{endpoints: [{}]}}}}", list.join(", ")))
    }

    /// Static discovery of replicas (address, pod name): the pod names match GPU readings.
    pub fn static_pods(replicas: &[(SocketAddr, &str)]) -> Self {
        let endpoints: Vec<String> = replicas
            .iter()
            .map(|(a, _)| format!("\"http://{a}\""))
            .collect();
        let pods: Vec<String> = replicas
            .iter()
            .map(|(a, pod)| format!("\"http://{a}\": {pod}"))
            .collect();
        Self::with_discovery(format!(
            "{{static: {{endpoints: [{}], pods: {{{}}}}}}}",
            endpoints.join(", "),
            pods.join(", ")
        ))
    }

    /// Local discovery: `replicas` child processes `infergate sim --port 0 --model m` with
    /// `sim_args` more, each given 20 s to start.
    pub fn local(replicas: u32, sim_args: &[&str]) -> Self {
        let mut command = vec![env!("CARGO_BIN_EXE_infergate"), "sim", "--port", "0"];
        command.extend(["--model", "m"]);
        command.extend(sim_args);
        let command: Vec<String> = command.iter().map(|a| format!("\"{a}\"")).collect();
        Self::with_discovery(format!(
            "{{local: {{replicas: {replicas}, command: [{}], startup_timeout: 20s}}}}",
            command.join(", ")
        ))
    }

    /// Kubernetes discovery, `discovery` its YAML flow mapping (e.g. `{service: sim, port: http}`).
    pub fn kubernetes(discovery: &str) -> Self {
        Self::with_discovery(format!("{{kubernetes: {discovery}}}"))
    }

    /// The gateway's listen address instead of 127.0.0.1:0.
    pub fn gateway_listen(mut self, addr: SocketAddr) -> Self {
        self.gateway_listen = addr.to_string();
        self
    }

    /// The admin listener's address instead of 127.0.0.1:0 (peers must know it beforehand).
    pub fn admin_listen(mut self, addr: SocketAddr) -> Self {
        self.admin_listen = addr.to_string();
        self
    }

    /// One more `listeners` setting, e.g. `drain_timeout: 5s`.
    pub fn listener(mut self, setting: &str) -> Self {
        self.listeners.push(setting.into());
        self
    }

    /// One more top-level section, e.g. `leader_election: {enabled: true}`.
    pub fn top(mut self, section: &str) -> Self {
        self.top.push(section.into());
        self
    }

    /// The models the pool serves, instead of `[m]`.
    pub fn models(mut self, models: &[&str]) -> Self {
        self.models = models.iter().map(|m| m.to_string()).collect();
        self
    }

    /// One more pool setting, written as at the pool's own level (e.g. `routing: {policy:
    /// round-robin}`); lines after the first are indented with it.
    pub fn pool(mut self, setting: &str) -> Self {
        self.pool.push(setting.trim_end().into());
        self
    }

    pub fn yaml(&self) -> String {
        let mut listeners = vec![
            format!("gateway: {}", self.gateway_listen),
            format!("admin: {}", self.admin_listen),
        ];
        listeners.extend(self.listeners.iter().cloned());
        let mut yaml = format!("listeners: {{{}}}\n", listeners.join(", "));
        for section in &self.top {
            yaml.push_str(section);
            yaml.push('\n');
        }
        yaml.push_str(&format!(
            "pools:\n  - name: p\n    models: [{}]\n    discovery: {}\n",
            self.models.join(", "),
            self.discovery
        ));
        for setting in &self.pool {
            for line in setting.lines() {
                yaml.push_str("    ");
                yaml.push_str(line);
                yaml.push('\n');
            }
        }
        yaml
    }

    /// The parsed config; a YAML the parser refuses fails the test, showing both.
    pub fn config(&self) -> infergate::config::Config {
        let yaml = self.yaml();
        infergate::config::parse(&yaml, "test").unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    pub async fn start(&self) -> App {
        app::start(self.config()).await.unwrap()
    }

    pub async fn start_with(&self, options: Options) -> App {
        app::start_with(self.config(), options).await.unwrap()
    }
}

/// A free port on 127.0.0.1 (bound, read, released: for addresses a test must know before
/// the server that takes them starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The whole `/admin/status` document.
pub async fn admin_status(gw: &App) -> Value {
    get(&format!("http://{}/admin/status", gw.admin_addr))
        .await
        .json()
}

/// `/admin/status` of the (first) pool.
pub async fn pool_status(gw: &App) -> Value {
    admin_status(gw).await["pools"][0].clone()
}

/// The replicas in a pool's `/admin/status`.
pub fn replicas(pool: &Value) -> &[Value] {
    pool["replicas"]
        .as_array()
        .unwrap_or_else(|| panic!("no replicas in {pool}"))
}

/// One sample of the gateway's own metrics page (see [`metric`]).
pub async fn gateway_metric(gw: &App, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metric(&metrics_page(gw.admin_addr).await, name, labels)
}

/// The gateway's `/readyz` answer.
pub async fn readyz(gw: &App) -> Reply {
    get(&format!("http://{}/readyz", gw.admin_addr)).await
}

/// The Prometheus page at `http://{addr}/metrics`: a replica's, or the gateway's admin one.
pub async fn metrics_page(addr: SocketAddr) -> String {
    get(&format!("http://{addr}/metrics")).await.text()
}

/// Requests the replica at `addr` has answered in full, whatever ended them (its
/// `vllm:request_success_total`, every `finished_reason` summed).
pub async fn requests_finished(addr: SocketAddr) -> f64 {
    metric_sum(&metrics_page(addr).await, "vllm:request_success_total", &[])
}

/// Requests the replica at `addr` has answered up to their `max_tokens` (its
/// `vllm:request_success_total{finished_reason="length"}`): not the ones that stopped early.
pub async fn requests_finished_at_max_tokens(addr: SocketAddr) -> f64 {
    metric(
        &metrics_page(addr).await,
        "vllm:request_success_total",
        &[("finished_reason", "length")],
    )
    .unwrap_or(0.0)
}

/// Polls `probe` (at once, then every 20 ms) until `done` holds of what it returned or
/// `within` has passed, and returns the last reading: the caller asserts on it, so a failure
/// shows what was seen.
pub async fn poll_until<T>(
    within: Duration,
    mut probe: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let seen = probe().await;
        if done(&seen) || Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` (at once, then every 20 ms) until it holds; fails the test, naming `what`,
/// if it does not within `within`.
pub async fn eventually(within: Duration, what: &str, check: impl AsyncFnMut() -> bool) {
    let held = poll_until(within, check, |held| *held).await;
    assert!(held, "not within {within:?}: {what}");
}

/// The JSON payloads of a stream's SSE events, in order; the stream must end with `[DONE]`.
pub fn sse_json(chunks: &[(Duration, Bytes)]) -> Vec<Value> {
    let events = sse_events(chunks);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("not JSON ({err}): {e}")))
        .collect()
}

/// Awaits a stream started with [`spawn_stream`]: it must be answered 200 and run to `[DONE]`.
/// Returns its JSON events.
pub async fn stream_to_done(
    stream: JoinHandle<(StatusCode, Vec<(Duration, Bytes)>)>,
) -> Vec<Value> {
    let (status, chunks) = stream.await.expect("the stream's task ends");
    assert_eq!(status, 200);
    sse_json(&chunks)
}

/// Sends `signal` (`TERM`, `KILL`, ...) to the process `pid`.
pub fn send_signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill -{signal} {pid}: {sent}");
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

/// An API key's SHA-256 in hex, as `auth.keys[].sha256` takes it (the gateway's own digest).
pub fn key_sha256(key: &str) -> String {
    infergate::gateway::auth::digest(key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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

/// The sum of every sample of `name` whose labels include `labels` (all series of a counter
/// with `&[]`).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, rest) = series.split_once('{').unwrap_or((series, ""));
            let wanted = metric_name == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok())?
        })
        .sum()
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

/// What the official `openai` Python client gets streaming a chat completion of `content` from
/// `addr` (`max_tokens`, usage included, `extra_body` as a Python dict literal): a JSON object
/// with `content`, `finish_reason`, `completion_tokens` and `prompt_tokens`.
pub fn openai_chat_stream(
    addr: SocketAddr,
    content: &str,
    max_tokens: u32,
    extra_body: &str,
) -> Value {
    let client = format!(r#"openai.OpenAI(base_url="http://{addr}/v1", api_key="unused")"#);
    openai_chat_stream_with(&client, content, max_tokens, extra_body)
}

/// [`openai_chat_stream`] over TLS from `https://{addr}`, trusting the CA certificates in
/// `ca_file` (PEM) and no other.
pub fn openai_chat_stream_over_tls(
    addr: SocketAddr,
    ca_file: &std::path::Path,
    content: &str,
    max_tokens: u32,
) -> Value {
    let client = format!(
        r#"openai.OpenAI(base_url="https://{addr}/v1", api_key="unused",
    http_client=openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile={ca_file:?})))"#
    );
    openai_chat_stream_with(&client, content, max_tokens, "None")
}

/// The stream of [`openai_chat_stream`] through `client`, a Python expression.
fn openai_chat_stream_with(
    client: &str,
    content: &str,
    max_tokens: u32,
    extra_body: &str,
) -> Value {
    let script = format!(
        r#"
import json, openai, ssl
client = {client}
stream = client.chat.completions.create(model="m", messages=[{{"role": "user", "content": {content:?}}}],
    max_tokens={max_tokens}, stream=True, stream_options={{"include_usage": True}}, extra_body={extra_body})
content, finish, usage = "", None, None
for chunk in stream:
    if chunk.choices:
        content += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage
print(json.dumps({{"content": content, "finish_reason": finish,
                  "completion_tokens": usage.completion_tokens, "prompt_tokens": usage.prompt_tokens}}))
"#
    );
    let out = run_python(&script);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// `infergate serve -c FILE` as a child process, with its gateway and admin addresses (read
/// from its log).
pub fn spawn_serve(
    file: &std::path::Path,
) -> (ChildGuard, std::net::SocketAddr, std::net::SocketAddr) {
    let (child, gateway, admin, _log) = spawn_serve_logged(file);
    (child, gateway, admin)
}

/// [`spawn_serve`], keeping its log lines from then on.
pub fn spawn_serve_logged(
    file: &std::path::Path,
) -> (
    ChildGuard,
    std::net::SocketAddr,
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["serve", "--config"])
        .arg(file)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("infergate serve starts");
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (mut gateway, mut admin) = (None, None);
    let mut lines = stderr.lines();
    while gateway.is_none() || admin.is_none() {
        let line = lines.next().expect("serve logs its addresses").unwrap();
        let addr = || {
            line.split("://") // http, or https for a TLS listener
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        if line.contains("gateway listening") {
            gateway = addr();
        } else if line.contains("admin listening") {
            admin = addr();
        }
    }
    // Keep draining its log so that it never blocks on a full pipe.
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            kept.lock().unwrap().push(line);
        }
    });
    (ChildGuard(child), gateway.unwrap(), admin.unwrap(), log)
}
