//! moe serve: an OpenAI-compatible HTTP server over any model moe-infer runs (Hugging Face
//! directories and GGUF files). Requests are batched continuously by one scheduler thread
//! (`engine`), whose every step reads each weight matrix and each expert once for all the rows
//! routed to it; the KV caches live under a memory cap in fixed-size blocks (`kv`).
//!
//! - `api`: request bodies, validation and the OpenAI error object;
//! - `http`: routes (/v1/chat/completions, /v1/completions, /v1/models, /health, /metrics),
//!   API key, whole and streamed (SSE) answers;
//! - `engine`: the scheduler (text released through `moe_infer::text`);
//! - `metrics`: the Prometheus counters.

pub mod api;
pub mod engine;
pub mod http;
pub mod kv;
pub mod metrics;

use engine::{Engine, EngineConfig};
use http::App;
use metrics::Metrics;
use moe_engine::tokenizer::Tokenizer;
use moe_infer::{Cache, Model};
use std::future::Future;
use std::sync::Arc;

/// How the server runs.
pub struct ServeOptions {
    /// The model id clients name.
    pub name: String,
    /// Sequences generated at once.
    pub parallel: usize,
    /// Positions per sequence (prompt plus completion).
    pub ctx: usize,
    /// Prompt tokens prefilled per step.
    pub prefill_chunk: usize,
    /// KV-cache cap in bytes (None: `parallel` sequences of `ctx` positions).
    pub kv_bytes: Option<u64>,
    /// Requests that may wait for a slot before new ones get 503.
    pub max_queue: usize,
    pub api_key: Option<String>,
    /// Largest request body in bytes (413 above).
    pub max_body: usize,
}

/// Starts the scheduler and returns the HTTP routes; serve them with `serve`.
pub fn app(mut model: Model, tok: Tokenizer, eos: Vec<u32>, o: ServeOptions) -> Result<axum::Router, String> {
    if o.parallel == 0 || o.ctx < 2 || o.prefill_chunk == 0 {
        return Err("--parallel, --ctx-size (at least 2) and --prefill-chunk must be positive".into());
    }
    if model.load.is_none() && model.spec.moe.experts > 0 {
        model.count_expert_load();
    }
    let ctx = o.ctx.min(model.spec.max_pos);
    let per_token = Cache::bytes_per_token(&model.spec);
    let kv_bytes = o.kv_bytes.unwrap_or((o.parallel * ctx * per_token) as u64);
    let capacity = kv::KvPool::new(per_token, kv_bytes).capacity_tokens();
    if capacity < 2 {
        return Err(format!(
            "the KV-cache cap of {kv_bytes} bytes holds no block of {} positions ({} bytes each); raise --kv-memory",
            kv::BLOCK,
            per_token
        ));
    }
    let metrics = Arc::new(Metrics::default());
    let model = Arc::new(model);
    let tok = Arc::new(tok);
    let cfg = EngineConfig { parallel: o.parallel, ctx, prefill_chunk: o.prefill_chunk, kv_bytes };
    let engine = Engine::start(model.clone(), tok.clone(), eos, cfg, metrics.clone())
        .map_err(|e| format!("cannot start the scheduler thread: {e}"))?;
    let app = App {
        model,
        tok,
        name: o.name,
        engine,
        metrics,
        ctx: ctx.min(capacity),
        max_queue: o.max_queue,
        api_key: o.api_key,
        next_id: Default::default(),
    };
    Ok(http::router(Arc::new(app), o.max_body))
}

/// Serves `router` on `listener` until `shutdown` resolves; requests in flight finish first.
/// Streamed tokens leave at once (TCP_NODELAY: no Nagle delay on small SSE chunks).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
