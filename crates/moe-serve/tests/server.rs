//! `moe serve` over loopback HTTP: start, whole and streamed answers, many concurrent streams
//! (each equal to the same prompt generated alone), bad requests, API key, a client that
//! disconnects, a full queue, and shutdown. The model is a tiny random Qwen3-MoE checkpoint
//! (moe-infer's fixtures). Every loop here is bounded.

mod common;

use common::*;
use moe_engine::tokenizer::Tokenizer;
use moe_infer::generate::{eos_ids, generate};
use moe_infer::Model;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What greedy generation of `prompt` gives alone, through moe-infer's one-sequence path: the
/// new ids decoded after the prompt's last token (so a leading space stays, as in a completion).
fn greedy_alone(prompt: &[u32], max_new: usize) -> String {
    let (model, tok) = (Model::load(&fixture()).unwrap(), Tokenizer::open(&fixture()).unwrap());
    let eos = eos_ids(&fixture(), &model, &tok);
    let s = moe_engine::generate::Sampling { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 };
    let (ids, _) = generate(&model, &tok, prompt, max_new, &s, &eos, &mut |_| {}).unwrap();
    let last = &prompt[prompt.len() - 1..];
    let ids: Vec<u32> = last.iter().copied().chain(ids.into_iter().filter(|i| !eos.contains(i))).collect();
    let (with, before) = (tok.decode(&ids).unwrap(), tok.decode(last).unwrap());
    with.strip_prefix(before.as_str()).expect("decoding extends the prompt's last token").to_string()
}

#[test]
fn answers_whole_and_streamed_like_generation_alone() {
    let srv = Server::start(options());
    let a = srv.addr;
    assert_eq!(request(a, "GET", "/health", "").status, 200);
    let models = request(a, "GET", "/v1/models", "").json();
    assert_eq!(models["data"][0]["id"], NAME);

    let tok = Tokenizer::open(&fixture()).unwrap();
    let msgs = [("user".to_string(), "hello there".to_string())];
    let want = greedy_alone(&tok.encode_chat(&msgs).unwrap(), 12);
    let r = post(
        a,
        "/v1/chat/completions",
        json!({"model": NAME, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 12, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let prompt_tokens = tok.encode_chat(&msgs).unwrap().len();
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": 12, "total_tokens": prompt_tokens + 12})
    );

    // the same, streamed, with usage at the end
    let body = json!({"model": NAME, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 12, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
    let r = post(a, "/v1/chat/completions", body);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/event-stream"));
    let ev = r.events();
    assert_eq!(ev[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = ev.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, want);
    let n = ev.len();
    assert_eq!(ev[n - 2]["choices"][0]["finish_reason"], "length");
    assert_eq!(ev[n - 1]["usage"]["completion_tokens"], 12);

    // completions: a stop string cuts the text before it
    let prompt = tok.encode_with_specials("The cat").unwrap();
    let full = greedy_alone(&prompt, 10);
    let r = post(a, "/v1/completions", json!({"model": NAME, "prompt": "The cat", "max_tokens": 10, "temperature": 0}))
        .json();
    assert_eq!(r["choices"][0]["text"], full.as_str());
    let cut = full.char_indices().nth(full.chars().count() / 2).map_or(0, |(i, _)| i);
    let stop: String = full[cut..].chars().take(2).collect();
    let r = post(
        a,
        "/v1/completions",
        json!({"model": NAME, "prompt": "The cat", "max_tokens": 10, "temperature": 0, "stop": [stop]}),
    )
    .json();
    assert_eq!(r["choices"][0]["text"], &full[..full.find(&stop).unwrap()], "stop {stop:?} in {full:?}");
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
}

#[test]
fn concurrent_streams_are_batched_and_each_equals_its_generation_alone() {
    let srv = Server::start(options());
    let a = srv.addr;
    let tok = Tokenizer::open(&fixture()).unwrap();
    let prompts: Vec<String> = (0..12).map(|i| format!("prompt number {i} {}", "word ".repeat(i % 4))).collect();
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let body = json!({"model": NAME, "prompt": p, "max_tokens": 16, "temperature": 0, "stream": true});
            std::thread::spawn(move || post(a, "/v1/completions", body))
        })
        .collect();
    for (p, h) in prompts.iter().zip(handles) {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200);
        let text: String = r.events().iter().filter_map(|e| e["choices"][0]["text"].as_str()).collect();
        assert_eq!(text, greedy_alone(&tok.encode_with_specials(p).unwrap(), 16), "prompt {p:?}");
    }
    assert!(metric(a, "moe_batch_sequences_peak") > 1.0, "no step ran more than one sequence");
    assert_eq!(metric(a, "moe_requests_total"), 12.0);
    assert!(metric(a, "moe_completion_tokens_total") >= 12.0);
    let m = request(a, "GET", "/metrics", "").body;
    assert!(m.contains("moe_expert_tokens_total{layer=\"0\",expert=\"0\"}"), "per-layer expert load");
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let mut o = options();
    o.max_body = 4096;
    let srv = Server::start(o);
    let a = srv.addr;
    let chat = |extra: Value| {
        let mut b = json!({"model": NAME, "messages": [{"role": "user", "content": "hi"}]});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    let long = "word ".repeat(200);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/v1/chat/completions", "{not json".into(), 400, "not valid JSON"),
        ("/v1/chat/completions", json!({"model": NAME, "messages": "hi"}).to_string(), 400, "does not match"),
        ("/v1/chat/completions", chat(json!({"max_tokens": "ten"})).to_string(), 400, "does not match"),
        ("/v1/chat/completions", chat(json!({"max_tokens": -1})).to_string(), 400, "at least 1"),
        ("/v1/chat/completions", chat(json!({"max_tokens": 1u64 << 40})).to_string(), 400, "maximum context length"),
        ("/v1/chat/completions", chat(json!({"temperature": -1})).to_string(), 400, "temperature"),
        ("/v1/chat/completions", chat(json!({"model": "gpt-4"})).to_string(), 404, "does not exist"),
        ("/v1/chat/completions", json!({"model": NAME, "messages": []}).to_string(), 400, "empty"),
        ("/v1/completions", json!({"model": NAME, "prompt": long}).to_string(), 400, "maximum context length"),
        (
            "/v1/completions",
            json!({"model": NAME, "prompt": [1, 2, 999999]}).to_string(),
            400,
            "outside the vocabulary",
        ),
        ("/v1/completions", json!({"model": NAME, "prompt": "x".repeat(5000)}).to_string(), 413, "request body"),
        ("/v1/nothing", "{}".into(), 404, "no such endpoint"),
    ];
    for (path, body, status, what) in cases {
        let r = request(a, "POST", path, &body);
        assert_eq!(r.status, status, "{path} {body:.80}: {}", r.body);
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(what), "{path} {body:.80}: {msg}");
    }
    assert_eq!(request(a, "GET", "/v1/chat/completions", "").status, 405);
    let r = post(a, "/v1/chat/completions", chat(json!({"max_tokens": 3})));
    assert_eq!(r.status, 200, "still serving: {}", r.body);
    assert_eq!(metric(a, "moe_requests_rejected_total"), 13.0, "every 4xx counted");
}

#[test]
fn an_api_key_is_required_when_set() {
    let mut o = options();
    o.api_key = Some("s3cret".into());
    let srv = Server::start(o);
    let body = json!({"model": NAME, "prompt": "a", "max_tokens": 2}).to_string();
    for auth in [None, Some("Bearer wrong"), Some("s3cret")] {
        let h: Vec<(&str, &str)> = auth.map(|v| ("authorization", v)).into_iter().collect();
        let r = read_answer(send(srv.addr, "POST", "/v1/completions", &h, body.as_bytes()));
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    }
    let r =
        read_answer(send(srv.addr, "POST", "/v1/completions", &[("authorization", "Bearer s3cret")], body.as_bytes()));
    assert_eq!(r.status, 200);
    let r = read_answer(send(srv.addr, "GET", "/metrics", &[], b""));
    assert_eq!(r.status, 401, "every route needs the key");
}

#[test]
fn a_client_that_leaves_frees_its_sequence_and_a_full_queue_answers_503() {
    // the fixture with a long context (rope needs no tables), so that A runs for seconds
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixture()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    let cfg = tmp.path().join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    c["max_position_embeddings"] = json!(100_000);
    std::fs::write(&cfg, c.to_string()).unwrap();
    let mut o = options();
    (o.parallel, o.max_queue, o.ctx) = (1, 1, 20_000);
    let mut srv = Server::start_on(tmp.path(), o);
    let a = srv.addr;
    // A: a long stream, read until its first piece of text, so it holds the only slot
    let body =
        json!({"model": NAME, "prompt": "a", "max_tokens": 19_000, "ignore_eos": true, "stream": true}).to_string();
    let s = send(a, "POST", "/v1/completions", &[], body.as_bytes());
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let t0 = Instant::now();
    while !line.contains("text_completion") {
        assert!(t0.elapsed() < Duration::from_secs(30));
        line.clear();
        r.read_line(&mut line).unwrap();
    }
    // B waits in the queue; C finds it full
    let b =
        std::thread::spawn(move || post(a, "/v1/completions", json!({"model": NAME, "prompt": "b", "max_tokens": 4})));
    wait_for("B queued", || metric(a, "moe_queue_length") == 1.0);
    let c = post(a, "/v1/completions", json!({"model": NAME, "prompt": "c", "max_tokens": 4}));
    assert_eq!(c.status, 503, "{}", c.body);
    assert_eq!(c.header("retry-after"), Some("1"));
    // A leaves: its sequence is dropped and B runs
    drop(r);
    let b = b.join().unwrap();
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(metric(a, "moe_requests_cancelled_total"), 1.0);
    wait_for("all done", || metric(a, "moe_running_sequences") == 0.0 && metric(a, "moe_kv_cache_used_bytes") == 0.0);
    srv.shutdown().unwrap();
    assert!(TcpStream::connect(a).is_err(), "the port is closed after shutdown");
}

#[test]
fn a_lone_gguf_file_is_served_with_its_embedded_tokenizer() {
    let gguf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../moe-infer/tests/fixtures/gguf/mixtral-f32.gguf");
    let srv = Server::start_on(&gguf, options());
    let body =
        json!({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "ignore_eos": true});
    let r = post(srv.addr, "/v1/chat/completions", body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["usage"]["completion_tokens"], 4);
}
