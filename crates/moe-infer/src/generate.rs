//! Text generation with a Hugging Face model: prefill the prompt, then one token per forward
//! through the KV cache; greedy or temperature/top-k/top-p sampling (moe-engine's sampler);
//! text streamed as soon as it decodes to whole characters (`text::TextStream`); stops at an end-of-sequence token.

use crate::error::Result;
use crate::model::{Cache, Model};
use crate::text::TextStream;
use crate::tokenizer::HfTokenizer;
use moe_engine::generate::{sample, GenStats, Sampling};
use moe_engine::rng::Rng;
use std::path::Path;
use std::time::Instant;

/// End-of-sequence ids: config.json, generation_config.json and the tokenizer's eos token.
pub fn eos_ids(dir: &Path, model: &Model, tok: &HfTokenizer) -> Vec<u32> {
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

/// Generates up to `max_new` tokens after `prompt`; `eos` ends generation (pass none to
/// always produce `max_new`). Returns the new ids.
pub fn generate(
    model: &Model,
    tok: &HfTokenizer,
    prompt: &[u32],
    max_new: usize,
    s: &Sampling,
    eos: &[u32],
    emit: &mut dyn FnMut(&str),
) -> Result<(Vec<u32>, GenStats)> {
    let mut cache = Cache::new(&model.spec);
    let mut rng = Rng::new(s.seed);
    let mut scratch = Vec::with_capacity(model.spec.vocab);
    let mut stats = GenStats { prompt_tokens: prompt.len(), ..Default::default() };
    let t0 = Instant::now();
    let mut logits = model.forward(prompt, &mut cache, false)?;
    stats.prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let (mut out, mut text) = (vec![], TextStream::new(vec![]));
    while out.len() < max_new {
        let next = sample(&logits, s, &mut rng, &mut scratch);
        out.push(next);
        stats.new_tokens += 1;
        let (piece, _) = text.push(tok, next)?;
        if !piece.is_empty() {
            emit(&piece);
        }
        if eos.contains(&next) || out.len() == max_new {
            break;
        }
        if cache.len >= model.spec.max_pos {
            stats.hit_context = true;
            break;
        }
        logits = model.forward(&[next], &mut cache, false)?;
    }
    stats.decode_s = t1.elapsed().as_secs_f64();
    Ok((out, stats))
}
