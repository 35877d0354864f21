//! Text generation with the inference model: the model and its KV cache as a
//! `moe_engine::generate::Decoder`, run by the one generation loop (`moe_engine::generate`),
//! and the end-of-sequence ids a Hugging Face checkpoint names.

use crate::error::{Error, Result};
use crate::model::{Cache, Model};
use moe_engine::generate::{Decoder, GenStats, Sampling};
use moe_engine::tokenizer::Tokenizer;
use std::path::Path;

/// End-of-sequence ids: config.json, generation_config.json and the tokenizer's eos token.
pub fn eos_ids(dir: &Path, model: &Model, tok: &Tokenizer) -> Vec<u32> {
    let mut ids = model.spec.eos.clone();
    if let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            match v.get("eos_token_id") {
                Some(serde_json::Value::Number(n)) => ids.extend(n.as_u64().map(|x| x as u32)),
                Some(serde_json::Value::Array(a)) => ids.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32)),
                _ => {}
            }
        }
    }
    ids.extend(tok.eos.as_deref().and_then(|e| tok.token_id(e)));
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The inference model with a KV cache of its own, as a `Decoder`.
pub struct CacheDecoder<'a> {
    model: &'a Model,
    cache: Cache,
}

impl<'a> CacheDecoder<'a> {
    pub fn new(model: &'a Model) -> Self {
        CacheDecoder { model, cache: Cache::new(&model.spec) }
    }
}

impl Decoder for CacheDecoder<'_> {
    type Error = Error;
    fn context(&self) -> usize {
        self.model.spec.max_pos
    }
    fn cached(&self) -> usize {
        self.cache.len
    }
    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.model.forward(ids, &mut self.cache, false)
    }
}

/// Generates up to `max_new` tokens after `prompt` with `model` (`moe_engine::generate::generate`);
/// `eos` ends generation (pass none to always produce `max_new`). Returns the new ids.
pub fn generate(
    model: &Model,
    tok: &Tokenizer,
    prompt: &[u32],
    max_new: usize,
    s: &Sampling,
    eos: &[u32],
    emit: &mut dyn FnMut(&str),
) -> Result<(Vec<u32>, GenStats)> {
    moe_engine::generate::generate(&mut CacheDecoder::new(model), tok, prompt, max_new, s, eos, emit)
}
