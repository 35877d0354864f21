//! Any bytes as a request body to `moe serve` (the tiny Qwen3-MoE fixture, context 64): the
//! input's first byte picks the endpoint (chat or text completions, streamed or not as the body
//! says), the rest is the body. Every answer is a 200 whose body is whole (a JSON completion, or
//! server-sent events ending with `data: [DONE]`) or a 4xx carrying an OpenAI error object;
//! never a panic, a 5xx or a stream that does not end.

use axum::body::{to_bytes, Body};
use axum::http::{header, Method, Request};
use moe_infer::generate::eos_ids;
use moe_engine::tokenizer::Tokenizer;
use moe_infer::Model;
use moe_serve::ServeOptions;
use std::path::PathBuf;
use std::sync::OnceLock;
use tower::ServiceExt;

const PATHS: [&str; 2] = ["/v1/chat/completions", "/v1/completions"];

struct Server {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
}

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/moe-infer/tests/fixtures/qwen3_moe");
        let model = Model::load(&dir).expect("the qwen3_moe fixture loads");
        let tok = Tokenizer::open(&dir).expect("its tokenizer loads");
        let eos = eos_ids(&dir, &model, &tok);
        let o = ServeOptions {
            name: "tiny".into(),
            parallel: 4,
            ctx: 64,
            prefill_chunk: 16,
            kv_bytes: None,
            max_queue: 16,
            api_key: None,
            max_body: 1 << 16,
        };
        let router = moe_serve::app(model, tok, eos, o).expect("the server starts");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        Server { rt, router }
    })
}

/// One input: an error or a value, never a panic.
pub fn run(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else { return };
    let s = server();
    let path = PATHS[pick as usize % PATHS.len()];
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a request");
    let (status, bytes) = s.rt.block_on(async {
        let r = s.router.clone().oneshot(req).await.expect("the router is infallible");
        let status = r.status();
        (status, to_bytes(r.into_body(), usize::MAX).await.expect("the body is whole"))
    });
    let text = String::from_utf8_lossy(&bytes);
    match status.as_u16() {
        200 if text.starts_with("data: ") => {
            assert!(text.trim_end().ends_with("data: [DONE]"), "{path}: a stream that does not end: {text:.300}")
        }
        200 => {
            let v: serde_json::Value = serde_json::from_slice(&bytes).expect("a 200 body is JSON");
            assert!(v["choices"][0]["finish_reason"].is_string(), "{path}: {text:.300}");
        }
        400..=499 => {
            let v: serde_json::Value = serde_json::from_slice(&bytes).expect("an error body is JSON");
            assert!(v["error"]["message"].is_string(), "{path}: {text:.300}");
        }
        s => panic!("{path}: status {s}: {text:.300}"),
    }
}
