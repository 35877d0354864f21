//! The OpenAI API's request bodies and errors: parsing (unknown fields are ignored, known ones
//! of the wrong type are refused), validation against the model (context length, sampling
//! ranges), and the error object every 4xx/5xx carries.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use moe_engine::generate::Sampling;
use serde::Deserialize;
use serde_json::json;

/// An OpenAI-style error: {"error": {"message", "type", "param", "code"}}.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), param: None, code: None }
    }

    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn param(mut self, p: &'static str) -> Self {
        self.param = Some(p);
        self
    }

    pub fn code(mut self, c: &'static str) -> Self {
        self.code = Some(c);
        self
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            429 | 503 => "server_overloaded",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.code}});
        let mut r = (self.status, axum::Json(body)).into_response();
        if matches!(self.status.as_u16(), 429 | 503) {
            r.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        r
    }
}

/// A chat message; content is a string or a list of parts whose text parts are joined.
#[derive(Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl Message {
    pub fn text(&self) -> Result<String, ApiError> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(t)) => Ok(t.clone()),
            Some(Content::Parts(parts)) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => Ok(t.as_str()),
                    (k, _) => Err(ApiError::bad(format!("content part of type `{k}` is not supported; send text"))
                        .param("messages")),
                })
                .collect(),
        }
    }
}

#[derive(Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub params: Params,
}

/// A completion prompt: a string, a one-element list of strings, or token ids.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
}

#[derive(Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    #[serde(flatten)]
    pub params: Params,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The generation parameters both endpoints share.
#[derive(Deserialize, Default)]
pub struct Params {
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    /// Not OpenAI's: generate max_tokens past end-of-sequence tokens (vLLM and llama-server
    /// accept it too; load tests use it for fixed output lengths).
    #[serde(default)]
    pub ignore_eos: bool,
    pub stream_options: Option<StreamOptions>,
}

/// Validated generation settings.
pub struct Gen {
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
}

/// Parses a JSON body into `T`, naming what is wrong.
pub fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() { "is not valid JSON" } else { "does not match the API" };
        ApiError::bad(format!("the request body {what}: {e}"))
    })
}

impl Params {
    /// Checks the parameters for a prompt of `prompt` tokens on a context of `ctx` positions.
    pub fn validate(&self, prompt: usize, ctx: usize, seed: u64) -> Result<Gen, ApiError> {
        if let Some(n) = self.n.filter(|&n| n != 1) {
            return Err(ApiError::bad(format!("n = {n}: one choice per request is supported; send n = 1")).param("n"));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::bad(format!("temperature {temperature} is outside [0, 2]")).param("temperature"));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::bad(format!("top_p {top_p} is outside (0, 1]")).param("top_p"));
        }
        let top_k = self.top_k.unwrap_or(0);
        if top_k < 0 {
            return Err(ApiError::bad(format!("top_k {top_k} is negative (0 turns it off)")).param("top_k"));
        }
        let stop = match &self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 4 || stop.iter().any(String::is_empty) {
            return Err(ApiError::bad("stop takes up to 4 non-empty strings").param("stop"));
        }
        if prompt == 0 {
            return Err(ApiError::bad("the prompt is empty").param("prompt"));
        }
        if prompt >= ctx {
            return Err(ApiError::bad(format!(
                "This model's maximum context length is {ctx} tokens, and the prompt has {prompt}; shorten it"
            ))
            .code("context_length_exceeded"));
        }
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None => ctx - prompt,
            Some(m) if m < 1 => {
                return Err(ApiError::bad(format!("max_tokens {m} must be at least 1")).param("max_tokens"))
            }
            Some(m) if m as u64 > (ctx - prompt) as u64 => {
                return Err(ApiError::bad(format!(
                    "This model's maximum context length is {ctx} tokens. However, you requested {} tokens ({prompt} in the prompt, {m} in the completion); lower max_tokens",
                    prompt as u64 + m as u64
                ))
                .param("max_tokens")
                .code("context_length_exceeded"))
            }
            Some(m) => m as usize,
        };
        Ok(Gen {
            max_tokens,
            sampling: Sampling {
                temperature,
                top_k: top_k as usize,
                top_p,
                seed: self.seed.map_or(seed, |s| s as u64),
            },
            stop,
            stream: self.stream,
            ignore_eos: self.ignore_eos,
            include_usage: self.stream_options.as_ref().is_some_and(|o| o.include_usage),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: serde_json::Value) -> Params {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn limits_are_checked() {
        let ok = params(json!({"max_tokens": 5, "stop": "x", "temperature": 0}));
        let g = ok.validate(10, 20, 0).unwrap();
        assert_eq!((g.max_tokens, g.stop.len(), g.sampling.temperature), (5, 1, 0.0));
        assert_eq!(params(json!({})).validate(10, 20, 0).unwrap().max_tokens, 10, "default: the rest of the context");
        for (body, what) in [
            (json!({"max_tokens": 0}), "at least 1"),
            (json!({"max_tokens": -3}), "at least 1"),
            (json!({"max_tokens": 11}), "maximum context length"),
            (json!({"max_tokens": i64::MAX}), "maximum context length"),
            (json!({"temperature": 3.0}), "temperature"),
            (json!({"top_p": 0.0}), "top_p"),
            (json!({"top_k": -1}), "top_k"),
            (json!({"n": 2}), "n = 2"),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), "up to 4"),
        ] {
            let e = params(body.clone()).validate(10, 20, 0).err().unwrap_or_else(|| panic!("{body} accepted"));
            assert!(e.message.contains(what), "{body}: {}", e.message);
        }
        assert!(params(json!({})).validate(20, 20, 0).is_err(), "a prompt that fills the context");
        assert!(parse::<Params>(br#"{"max_tokens": "ten"}"#).is_err(), "a field of the wrong type");
        assert!(parse::<Params>(br#"{"unknown": [1, 2]}"#).is_ok(), "unknown fields are ignored");
    }
}
