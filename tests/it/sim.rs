//! The simulator over real HTTP on 127.0.0.1:0: OpenAI answers, streaming timed by the engine
//! model, vLLM metrics, errors, start-up delay, graceful shutdown, and real clients (the
//! official `openai` Python package, `promtool`).

use std::time::Duration;

use infergate::loadgen::LoadArgs;
use infergate::vllm_sim::profile::profile;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn chat_completion_has_content_usage_and_finish_reason() {
    let sim = sim("llama-8b-h100").await;
    let base = format!("http://{}", sim.addr);
    let reply = post(
        &format!("{base}/v1/chat/completions"),
        json!({"model": "m", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 7, "ignore_eos": true}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(
        content.split_whitespace().count(),
        7,
        "one word per token: {content}"
    );
    // "user\nSay hello in five words.\n" is 30 bytes: 8 tokens at 4 bytes per token.
    assert_eq!(body["usage"]["prompt_tokens"], 8);
    assert_eq!(body["usage"]["completion_tokens"], 7);
    assert_eq!(body["usage"]["total_tokens"], 15);

    let completion = post(
        &format!("{base}/v1/completions"),
        json!({"model": "m", "prompt": "abc", "max_tokens": 2}),
    )
    .await;
    assert_eq!(completion.json()["object"], "text_completion");
    let models = get(&format!("{base}/v1/models")).await.json();
    assert_eq!(models["data"][0]["id"], "m");
    sim.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn tokens_stream_at_engine_step_times() {
    // The L4 profile's decode step is ~55 ms: five tokens cannot arrive in under ~0.2 s.
    let sim = sim("llama-8b-l4").await;
    let url = format!("http://{}/v1/chat/completions", sim.addr);
    let (status, chunks) = post_stream(
        &url,
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "ignore_eos": true,
               "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(status, 200);
    let parsed = sse_json(&chunks);
    assert_eq!(parsed.len(), 6, "five token chunks and one usage chunk");
    assert_eq!(parsed[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(parsed[4]["choices"][0]["finish_reason"], "length");
    assert!(parsed[3]["choices"][0]["finish_reason"].is_null());
    assert_eq!(parsed[5]["choices"].as_array().unwrap().len(), 0);
    assert_eq!(parsed[5]["usage"]["completion_tokens"], 5);
    // Chunks arrive one engine step apart, not all at once.
    let p = profile("llama-8b-l4").unwrap();
    let first = chunks.first().unwrap().0;
    let last = chunks.last().unwrap().0;
    assert!(
        first.as_secs_f64() >= p.t0 * 0.9,
        "first token after the prefill step: {first:?}"
    );
    assert!(
        (last - first).as_secs_f64() >= 4.0 * p.t0 * 0.9,
        "four decode steps: {:?}",
        last - first
    );
    assert!(
        chunks.len() >= 5,
        "token chunks are flushed separately: {}",
        chunks.len()
    );
    sim.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn errors_are_openai_style_with_vllm_status_codes() {
    let mut opts = sim_options("llama-8b-l4");
    opts.max_body_bytes = 1 << 20;
    let sim = start_sim(opts).await;
    let base = format!("http://{}", sim.addr);
    let chat = format!("{base}/v1/chat/completions");
    let cases = [
        (send(http::Method::POST, &chat, "{\"model\": \"m\", ").await, 400, "malformed JSON"),
        (post(&chat, json!({"messages": []})).await, 400, "`model` is required"),
        (post(&chat, json!({"model": "other", "messages": []})).await, 404, "does not exist"),
        (post(&chat, json!({"model": "m", "messages": [], "stream_options": {"include_usage": true}})).await, 400, "stream=True"),
        (post(&chat, json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(40_000)}]})).await, 400, "maximum context length is 8192"),
        (post(&format!("{base}/v1/embeddings"), json!({"model": "m", "input": "x"})).await, 400, "does not support embeddings"),
        (send(http::Method::POST, &chat, vec![b' '; 2 << 20]).await, 413, "too large"),
        (get(&format!("{base}/v2/nothing")).await, 404, "no route"),
    ];
    for (reply, status, message) in cases {
        assert_openai_error(&reply, status, message);
    }
    sim.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn metrics_report_the_engine_queue_exactly() {
    let mut opts = sim_options("llama-8b-l4");
    opts.profile.max_num_seqs = 2;
    let sim = start_sim(opts).await;
    let base = format!("http://{}", sim.addr);
    // Five long answers; two fit in the batch, three wait.
    let streams: Vec<_> = (0..5)
        .map(|_| {
            spawn_stream(
                &format!("{base}/v1/completions"),
                streamed_completion("go", 2000),
            )
        })
        .collect();
    let page = async || metrics_page(sim.addr).await;
    // Requests wait until the engine's next step admits them, so a page can show them all
    // waiting and none running for a moment: wait for the settled state.
    let last = poll_until(Duration::from_secs(5), page, |text| {
        metric(text, "vllm:num_requests_waiting", &[]) == Some(3.0)
            && metric(text, "vllm:num_requests_running", &[]) == Some(2.0)
    })
    .await;
    let labels = [("model_name", "m"), ("engine", "0")];
    assert_eq!(
        metric(&last, "vllm:num_requests_running", &labels),
        Some(2.0),
        "{last}"
    );
    assert_eq!(
        metric(&last, "vllm:num_requests_waiting", &labels),
        Some(3.0),
        "{last}"
    );
    // Only the two running hold KV blocks, each at most its prompt and 2000 tokens: 126 blocks
    // of 16 tokens, of 2400.
    let kv = metric(&last, "vllm:kv_cache_usage_perc", &labels).unwrap();
    assert!(kv > 0.0 && kv <= 2.0 * 126.0 / 2400.0, "{kv}: {last}");
    assert_eq!(
        metric(
            &last,
            "vllm:cache_config_info",
            &[("num_gpu_blocks", "2400"), ("block_size", "16")]
        ),
        Some(1.0)
    );
    // Clients going away free the engine: running and waiting return to zero.
    for s in &streams {
        s.abort();
    }
    let last = poll_until(Duration::from_secs(5), page, |text| {
        metric(text, "vllm:num_requests_running", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(
        metric(&last, "vllm:num_requests_running", &[]),
        Some(0.0),
        "{last}"
    );
    assert_eq!(
        metric(&last, "vllm:num_requests_waiting", &[]),
        Some(0.0),
        "{last}"
    );
    assert_eq!(
        metric(&last, "vllm:kv_cache_usage_perc", &[]),
        Some(0.0),
        "{last}"
    );
    sim.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn health_is_503_until_the_model_has_loaded() {
    let mut opts = sim_options("llama-8b-h100");
    opts.startup_delay = Duration::from_millis(300);
    let sim = start_sim(opts).await;
    let base = format!("http://{}", sim.addr);
    assert_eq!(get(&format!("{base}/health")).await.status, 503);
    assert_eq!(
        post(
            &format!("{base}/v1/completions"),
            json!({"model": "m", "prompt": "x"})
        )
        .await
        .status,
        503
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get(&format!("{base}/health")).await.status, 200);
    sim.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn embeddings_profile_answers_unit_vectors() {
    let sim = sim("e5-embedding").await;
    let reply = post(
        &format!("http://{}/v1/embeddings", sim.addr),
        json!({"model": "m", "input": ["a b c", "d"]}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let v: Vec<f64> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(v.len(), 1024);
    let norm: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "{norm}");
    sim.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn sglang_metric_names_on_request() {
    let mut opts = sim_options("llama-8b-h100");
    opts.metrics_flavor = infergate::vllm_sim::metrics::MetricsFlavor::Sglang;
    let sim = start_sim(opts).await;
    let text = metrics_page(sim.addr).await;
    // Nothing was asked of it: nothing queued, nothing running, no KV cache in use.
    for name in [
        "sglang:num_queue_reqs",
        "sglang:num_running_reqs",
        "sglang:token_usage",
    ] {
        assert_eq!(
            metric(&text, name, &[("model_name", "m")]),
            Some(0.0),
            "{name}: {text}"
        );
    }
    assert!(metric(&text, "vllm:num_requests_waiting", &[]).is_none());
    sim.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn sigterm_finishes_running_answers_before_exit() {
    let (mut child, addr) = spawn_sim(&["--model", "m", "--profile", "llama-8b-l4"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let stream = spawn_stream(
            &format!("http://{addr}/v1/completions"),
            streamed_completion("x", 20),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        send_signal(child.0.id(), "TERM");
        let events = stream_to_done(stream).await;
        assert_eq!(events.len(), 20, "the answer ran to its end");
    });
    let exit = child.0.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn promtool_accepts_the_metrics_page() {
    if !tool_available("promtool", &["--version"]) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let text = rt.block_on(async {
        let mut opts = sim_options("llama-8b-h100");
        opts.loras = vec!["adapter-a".into()];
        let sim = start_sim(opts).await;
        let base = format!("http://{}", sim.addr);
        post(
            &format!("{base}/v1/completions"),
            json!({"model": "adapter-a", "prompt": "x", "max_tokens": 3}),
        )
        .await;
        let text = metrics_page(sim.addr).await;
        sim.shutdown(Duration::from_secs(1)).await;
        text
    });
    let (code, said) = promtool_check_metrics(text.as_bytes());
    // Exit 3 means lint findings only (1 would be a parse error). vLLM's real names contain
    // ':' and the DCGM exporter's real label is `modelName`; promtool's lint flags both, and
    // nothing else may be flagged.
    assert!(matches!(code, Some(0 | 3)), "promtool: {said}");
    for line in said.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.ends_with("metric names should not contain ':'")
                || line.contains("'snake_case' not 'camelCase'"),
            "promtool: {line}"
        );
    }
    assert!(text.contains("vllm:lora_requests_info"));
}

#[test]
fn official_openai_client_streams_a_chat_completion() {
    if !tool_available("python3", &["-c", "import openai"]) {
        return;
    }
    let (_child, addr) = spawn_sim(&["--model", "m", "--speed", "10"]);
    let got = openai_chat_stream(addr, "Hello!", 6, r#"{"ignore_eos": True}"#);
    let words = got["content"].as_str().unwrap().split_whitespace().count();
    // "user\nHello!\n" is 12 bytes = 3 tokens.
    assert_eq!(
        (
            words,
            &got["finish_reason"],
            &got["completion_tokens"],
            &got["prompt_tokens"]
        ),
        (6, &json!("length"), &json!(6), &json!(3)),
        "{got}"
    );
}

#[tokio::test]
async fn load_generator_counts_answers_and_failures() {
    let good = sim("llama-8b-h100").await;
    let mut failing = sim_options("llama-8b-h100");
    failing.fail_rate = 1.0;
    let bad = start_sim(failing).await;
    for (addr, stream, ok, failed) in [
        (good.addr, true, 20, 0),
        (good.addr, false, 20, 0),
        (bad.addr, true, 0, 20),
    ] {
        let args = LoadArgs {
            stream,
            ..load_args(addr)
        };
        let report = infergate::loadgen::run(args, |_, _| {}).await.unwrap();
        assert_eq!(
            (report.ok, report.failed),
            (ok, failed),
            "{}",
            report.render()
        );
        assert_eq!(report.output_tokens, ok * 5);
        assert_eq!(report.ttft.len() as u64, ok);
    }
    good.shutdown(Duration::from_secs(1)).await;
    bad.shutdown(Duration::from_secs(1)).await;
}

/// `--crash-after N`: the process dies in the middle of streaming its Nth request, as a replica
/// that crashes mid-answer does; the client sees the stream break without `[DONE]`.
#[test]
fn crash_after_kills_the_process_mid_stream() {
    let (mut child, addr) = spawn_sim(&["--model", "m", "--crash-after", "2", "--speed", "10"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = format!("http://{addr}/v1/completions");
        let body = streamed_completion("x", 10);
        let (_, first) = post_stream(&url, body.clone()).await;
        assert_eq!(
            sse_events(&first).last().map(String::as_str),
            Some("[DONE]"),
            "request 1 completes"
        );
        let (_, second) = post_stream(&url, body).await;
        let events = sse_events(&second);
        // It dies at the second token: the client has the first one and nothing more.
        assert_eq!(
            events.len(),
            1,
            "the second stream started, and broke off: {events:?}"
        );
        let first: serde_json::Value = serde_json::from_str(&events[0]).expect("a token chunk");
        assert_eq!(first["object"], "text_completion", "{first}");
    });
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(70), "{status:?}");
}
