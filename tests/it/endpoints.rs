//! vLLM's other endpoints through the gateway, routed by model: the Responses API (whole and
//! streamed, timed by its text deltas), embeddings, audio transcriptions (a multipart form),
//! rerank, score, tokenize and detokenize — with the official `openai` SDK where it has them.

use serde_json::json;

use crate::support::*;

/// A gateway started on a whole YAML file (several pools).
async fn start_yaml(yaml: &str) -> infergate::app::App {
    let config = infergate::config::parse(yaml, "test").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    infergate::app::start(config).await.unwrap()
}

/// The Responses API, embeddings and a transcription with the `openai` SDK through the
/// gateway; the stream's first token is timed at its first text delta, not its prelude.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_reaches_responses_embeddings_and_transcriptions_through_the_gateway() {
    let mut chat = sim_options("llama-8b-h100");
    // A slow prefill: the prelude comes at once, the first delta ~0.3 s later.
    chat.speed = 0.05;
    let replica = start_sim(chat).await;
    let mut embed = sim_options("e5-embedding");
    embed.models = vec!["embed".into()];
    let embedder = start_sim(embed).await;
    let mut whisper = sim_options("llama-8b-h100");
    whisper.models = vec!["whisper-large".into()];
    let transcriber = start_sim(whisper).await;
    let pool = |name: &str, model: &str, addr: std::net::SocketAddr, extra: &str| {
        format!(
            "  - name: {name}\n    models: [{model}]\n{extra}    discovery: {{static: {{endpoints: [\"http://{addr}\"]}}}}\n"
        )
    };
    let gw = start_yaml(&format!(
        "listeners: {{gateway: 127.0.0.1:0, admin: 127.0.0.1:0}}\npools:\n{}{}{}",
        pool("chat", "m", replica.addr, ""),
        pool("embed", "embed", embedder.addr, ""),
        pool(
            "audio",
            "whisper-large",
            transcriber.addr,
            "    aliases: {whisper-1: whisper-large}\n"
        ),
    ))
    .await;
    let script = format!(
        r#"
import io, json, math, struct, wave, openai
client = openai.OpenAI(base_url="http://{gw}/v1", api_key="none", max_retries=0)
out = {{}}
r = client.responses.create(model="m", input="Say hello.", max_output_tokens=5)
out["text"] = r.output_text
out["usage"] = [r.usage.input_tokens, r.usage.output_tokens]
deltas, kinds = "", []
with client.responses.stream(model="m", input=[{{"role": "user", "content": "Say hello."}}], max_output_tokens=6) as s:
    for event in s:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas += event.delta
    final = s.get_final_response()
out["streamed"] = deltas
out["final"] = final.output_text
out["kinds"] = sorted(set(kinds))
e = client.embeddings.create(model="embed", input=["a", "b"])
out["embeddings"] = len(e.data)
buf = io.BytesIO()
with wave.open(buf, "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000)
    w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 8))) for i in range(32000)))
buf.seek(0)
t = client.audio.transcriptions.create(model="whisper-1", file=("hello.wav", buf, "audio/wav"))
out["transcript"] = t.text
print(json.dumps(out))
"#,
        gw = gw.gateway_addr
    );
    let out: serde_json::Value =
        serde_json::from_str(run_python(&script).trim()).expect("the script prints JSON");
    assert_eq!(out["usage"][1], 5, "{out}");
    assert!(!out["text"].as_str().unwrap().is_empty(), "{out}");
    assert_eq!(out["streamed"], out["final"], "{out}");
    assert!(!out["streamed"].as_str().unwrap().is_empty());
    let kinds: Vec<&str> = out["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    for kind in ["response.created", "response.output_text.delta"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    assert_eq!(out["embeddings"], 2);
    assert!(!out["transcript"].as_str().unwrap().is_empty(), "{out}");

    // The gateway timed the Responses stream's first token at its first delta: the slow
    // prefill shows in the TTFT histogram (no stream's first token under 100 ms), though the
    // prelude came at once.
    let page = get(&format!("http://{}/metrics", gw.admin_addr))
        .await
        .text();
    let fast = metric(
        &page,
        "infergate_stream_first_chunk_seconds_bucket",
        &[("pool", "chat"), ("le", "0.1")],
    );
    let all = metric(
        &page,
        "infergate_stream_first_chunk_seconds_count",
        &[("pool", "chat")],
    );
    assert_eq!(all, Some(1.0), "one stream: {page}");
    assert_eq!(fast, Some(0.0), "{page}");
    // Each kind of answer counted under its pool and model.
    for (pool, model) in [("chat", "m"), ("embed", "embed"), ("audio", "whisper-1")] {
        let ok = metric(
            &page,
            "infergate_requests_total",
            &[("pool", pool), ("model", model), ("status", "200")],
        );
        assert!(ok.is_some_and(|n| n >= 1.0), "{pool} {model}: {page}");
    }
    gw.shutdown().await;
}

/// Rerank, score, tokenize and detokenize go to a replica of the body's model and come back
/// as the replica answered; a body without a model is the client's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_score_and_tokenizer_endpoints_are_routed_by_model() {
    let mut other = sim_options("llama-8b-h100");
    other.models = vec!["other".into()];
    let other = start_sim(other).await;
    let mut ranker = sim_options("llama-8b-h100");
    ranker.models = vec!["ranker".into()];
    let ranker = start_sim(ranker).await;
    let gw = start_yaml(&format!(
        "listeners: {{gateway: 127.0.0.1:0, admin: 127.0.0.1:0}}
pools:
  - name: other
    models: [other]
    discovery: {{static: {{endpoints: [\"http://{}\"]}}}}
  - name: rank
    models: [ranker]
    discovery: {{static: {{endpoints: [\"http://{}\"]}}}}
",
        other.addr, ranker.addr
    ))
    .await;
    let base = format!("http://{}", gw.gateway_addr);
    for path in ["/rerank", "/v1/rerank", "/v2/rerank"] {
        let reply = post(
            &format!("{base}{path}"),
            json!({"model": "ranker", "query": "rivers", "documents": ["the Nile", "a cat", "the Danube"], "top_n": 2}),
        )
        .await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        let results = reply.json()["results"].as_array().unwrap().clone();
        assert_eq!(results.len(), 2, "{path}");
        assert!(results[0]["relevance_score"].as_f64() >= results[1]["relevance_score"].as_f64());
    }
    let score = post(
        &format!("{base}/v1/score"),
        json!({"model": "ranker", "text_1": "rivers", "text_2": ["the Nile", "a cat"]}),
    )
    .await;
    assert_eq!(score.status, 200, "{}", score.text());
    assert_eq!(score.json()["data"].as_array().unwrap().len(), 2);
    let tokens = post(
        &format!("{base}/tokenize"),
        json!({"model": "other", "prompt": "sixteen bytes!!!"}),
    )
    .await;
    assert_eq!(tokens.status, 200, "{}", tokens.text());
    assert_eq!(tokens.json()["count"], 4);
    let ids = tokens.json()["tokens"].clone();
    let text = post(
        &format!("{base}/detokenize"),
        json!({"model": "other", "tokens": ids}),
    )
    .await;
    assert_eq!(text.status, 200);
    assert!(text.json()["prompt"].is_string());
    let page = get(&format!("http://{}/metrics", gw.admin_addr))
        .await
        .text();
    let ok = |pool, model| {
        metric(
            &page,
            "infergate_requests_total",
            &[("pool", pool), ("model", model), ("status", "200")],
        )
    };
    assert_eq!(ok("rank", "ranker"), Some(4.0), "{page}");
    assert_eq!(ok("other", "other"), Some(2.0), "{page}");
    let missing = post(&format!("{base}/tokenize"), json!({"prompt": "hi"})).await;
    assert_openai_error(&missing, 400, "`model` is required");
    gw.shutdown().await;
}

/// `/v1/models` lists what the replicas serve: a served name with the replica's own entry, an
/// alias of it, not a configured name no replica serves (nor its alias); a pool whose replica
/// has no model list is listed from the config.
#[tokio::test]
async fn the_model_list_is_what_the_replicas_serve_with_aliases() {
    let mut opts = sim_options("llama-8b-h100");
    opts.models = vec!["m".into(), "m-extra".into()];
    opts.profile.max_model_len = 12345;
    let replica = start_sim(opts).await;
    // A server with no model list: it answers 404 to everything.
    let foreign = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let foreign_addr = foreign.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = foreign.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {
                    let answer = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
                    if conn.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gw = start_yaml(&format!(
        "listeners: {{gateway: 127.0.0.1:0, admin: 127.0.0.1:0}}
pools:
  - name: a
    models: [m, retired]
    aliases: {{short: m, old: retired}}
    discovery: {{static: {{endpoints: [\"http://{}\"]}}}}
  - name: b
    models: [elsewhere]
    discovery: {{static: {{endpoints: [\"http://{}\"]}}}}
",
        replica.addr, foreign_addr
    ))
    .await;
    let url = format!("http://{}/v1/models", gw.gateway_addr);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let list = loop {
        let list = get(&url).await.json();
        if list["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["max_model_len"].is_number())
        {
            break list;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica's list was never read: {list}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m", "short", "elsewhere"], "{list}");
    assert_eq!(
        list["data"][0]["max_model_len"], 12345,
        "the replica's own entry"
    );
    assert_eq!(list["data"][1]["root"], "m");
    gw.shutdown().await;
}
