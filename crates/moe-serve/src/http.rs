//! The HTTP side: routes, API-key check, request bodies to engine requests, and the answers,
//! whole (JSON) or streamed (server-sent events, ending with `data: [DONE]`), in the shapes the
//! OpenAI API returns.

use crate::api::{parse, ApiError, ChatRequest, CompletionRequest, Gen, Prompt};
use crate::engine::{Engine, Event, Request as EngineRequest};
use crate::metrics::Metrics;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use moe_engine::tokenizer::Tokenizer;
use moe_infer::Model;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

/// What the handlers share.
pub struct App {
    pub model: Arc<Model>,
    pub tok: Arc<Tokenizer>,
    /// The model id clients name (GET /v1/models lists it).
    pub name: String,
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    /// Positions one sequence may use: the context size, or the KV cap if smaller.
    pub ctx: usize,
    pub max_queue: usize,
    pub api_key: Option<String>,
    pub next_id: AtomicU64,
}

pub fn router(app: Arc<App>, max_body: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint").into_response() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint").into_response()
        })
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(app)
}

/// With --api-key, every request must carry `Authorization: Bearer KEY`. Counts the answers
/// that are errors.
async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let ok = app.api_key.as_ref().is_none_or(|key| {
        given.and_then(|v| v.strip_prefix("Bearer ")).is_some_and(|k| same(k.as_bytes(), key.as_bytes()))
    });
    let r = if ok {
        next.run(req).await
    } else {
        let e = ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong API key: send `Authorization: Bearer KEY`");
        e.code("invalid_api_key").into_response()
    };
    if r.status().is_client_error() || r.status().is_server_error() {
        Metrics::add(&app.metrics.rejected, 1);
    }
    r
}

/// Compares without an early exit, so the time taken does not reveal the key.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": app.name, "object": "model", "created": now(), "owned_by": "moe"}]}))
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render(&app.model))
}

fn now() -> u64 {
    moe_engine::clock::unix_secs()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

async fn chat(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let r = async {
        let req: ChatRequest = parse(&body_bytes(body)?)?;
        app.check_model(&req.model)?;
        let mut msgs = Vec::with_capacity(req.messages.len());
        for m in &req.messages {
            msgs.push((m.role.clone(), m.text()?));
        }
        if msgs.is_empty() {
            return Err(ApiError::bad("messages is empty").param("messages"));
        }
        if app.tok.template.is_none() {
            return Err(ApiError::bad(format!(
                "model `{}` has no chat template; send a prompt to /v1/completions instead",
                app.name
            )));
        }
        let ids = app.tok.encode_chat(&msgs).map_err(|e| ApiError::bad(format!("the chat template failed: {e}")))?;
        app.run(Kind::Chat, ids, &req.params).await
    };
    app.answer(r.await)
}

async fn completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let r = async {
        let req: CompletionRequest = parse(&body_bytes(body)?)?;
        app.check_model(&req.model)?;
        let text = match req.prompt {
            Prompt::Ids(ids) => {
                if let Some(bad) = ids.iter().find(|&&i| i as usize >= app.model.spec.vocab) {
                    return Err(ApiError::bad(format!("token id {bad} is outside the vocabulary")).param("prompt"));
                }
                return app.run(Kind::Completion, ids, &req.params).await;
            }
            Prompt::Text(t) => t,
            Prompt::Texts(mut v) if v.len() == 1 => v.remove(0),
            Prompt::Texts(_) => return Err(ApiError::bad("send one prompt per request").param("prompt")),
        };
        let mut ids =
            app.tok.encode_with_specials(&text).map_err(|e| ApiError::bad(format!("tokenising failed: {e}")))?;
        if ids.is_empty() {
            ids.extend(app.model.spec.bos);
        }
        app.run(Kind::Completion, ids, &req.params).await
    };
    app.answer(r.await)
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError::new(e.status(), format!("cannot read the request body: {}", e.body_text())))
}

impl App {
    fn answer(&self, r: Result<Response, ApiError>) -> Response {
        r.unwrap_or_else(IntoResponse::into_response)
    }

    fn check_model(&self, name: &str) -> Result<(), ApiError> {
        if name == self.name {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("model `{name}` does not exist; this server runs `{}`", self.name),
        )
        .param("model")
        .code("model_not_found"))
    }

    /// Queues a generation and answers it, whole or streamed.
    async fn run(&self, kind: Kind, prompt: Vec<u32>, params: &crate::api::Params) -> Result<Response, ApiError> {
        let id = self.next_id.fetch_add(1, Relaxed);
        let gen = params.validate(prompt.len(), self.ctx, now() ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15))?;
        if self.metrics.queued.fetch_add(1, Relaxed) as usize >= self.max_queue {
            self.metrics.queued.fetch_sub(1, Relaxed);
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the queue is full; retry later"));
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let req = EngineRequest {
            prompt,
            max_tokens: gen.max_tokens,
            sampling: gen.sampling.clone(),
            stop: gen.stop.clone(),
            ignore_eos: gen.ignore_eos,
            events: tx,
        };
        if !self.engine.submit(req) {
            self.metrics.queued.fetch_sub(1, Relaxed);
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the scheduler has stopped"));
        }
        Metrics::add(&self.metrics.requests, 1);
        let head = Head {
            id: format!("{}-{id}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }),
            created: now(),
            model: self.name.clone(),
            kind,
        };
        if gen.stream {
            Ok(stream(head, rx, &gen).into_response())
        } else {
            whole(head, rx).await
        }
    }
}

/// The fields every answer of one request repeats.
struct Head {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

impl Head {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    fn body(&self, chunk: bool, choices: Value, usage: Option<Value>) -> Value {
        let mut v = json!({"id": self.id, "object": self.object(chunk), "created": self.created, "model": self.model, "choices": choices});
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    }

    /// One choice carrying `text`: a chat message or delta, or a completion's text.
    fn choice(&self, chunk: bool, text: Option<&str>, finish: Option<&str>) -> Value {
        match (self.kind, chunk) {
            (Kind::Chat, false) => {
                json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish})
            }
            (Kind::Chat, true) => {
                let delta = text.map_or(json!({}), |t| json!({"content": t}));
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            (Kind::Completion, _) => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        }
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// Waits for the whole generation.
async fn whole(head: Head, mut rx: UnboundedReceiver<Event>) -> Result<Response, ApiError> {
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Text(t) => text.push_str(&t),
            Event::Done { finish, prompt_tokens, completion_tokens } => {
                let choice = head.choice(false, Some(&text), Some(finish.as_str()));
                let body = head.body(false, json!([choice]), Some(usage(prompt_tokens, completion_tokens)));
                return Ok(Json(body).into_response());
            }
            Event::Failed(msg) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg)),
        }
    }
    Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the scheduler dropped the request"))
}

/// Streams the generation as server-sent events. A client that disconnects drops the stream,
/// and with it the receiver: the scheduler then frees the sequence.
fn stream(
    head: Head,
    rx: UnboundedReceiver<Event>,
    gen: &Gen,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let data = |v: Value| SseEvent::default().data(v.to_string());
    let mut first = VecDeque::new();
    if head.kind == Kind::Chat {
        let role = json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
        first.push_back(data(head.body(true, role, None)));
    }
    let include_usage = gen.include_usage;
    let state = (rx, first, head, false);
    Sse::new(futures_util::stream::unfold(state, move |(mut rx, mut pending, head, ended)| async move {
        loop {
            if let Some(ev) = pending.pop_front() {
                return Some((Ok(ev), (rx, pending, head, ended)));
            }
            if ended {
                return None;
            }
            let ev = rx.recv().await;
            let done = |pending: &mut VecDeque<SseEvent>| pending.push_back(SseEvent::default().data("[DONE]"));
            match ev {
                Some(Event::Text(t)) => {
                    pending.push_back(data(head.body(true, json!([head.choice(true, Some(&t), None)]), None)))
                }
                Some(Event::Done { finish, prompt_tokens, completion_tokens }) => {
                    let last = head.choice(true, None, Some(finish.as_str()));
                    pending.push_back(data(head.body(true, json!([last]), None)));
                    if include_usage {
                        pending.push_back(data(head.body(
                            true,
                            json!([]),
                            Some(usage(prompt_tokens, completion_tokens)),
                        )));
                    }
                    done(&mut pending);
                    return pending.pop_front().map(|e| (Ok(e), (rx, pending, head, true)));
                }
                Some(Event::Failed(msg)) => {
                    pending.push_back(data(
                        json!({"error": {"message": msg, "type": "server_error", "param": null, "code": null}}),
                    ));
                    done(&mut pending);
                    return pending.pop_front().map(|e| (Ok(e), (rx, pending, head, true)));
                }
                None => return None,
            }
        }
    }))
}
