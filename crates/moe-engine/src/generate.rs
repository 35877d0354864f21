//! Text generation with a KV cache: prefill the prompt in one forward, then one token per
//! forward; temperature, top-k and top-p (nucleus) sampling from a seeded generator; text is
//! streamed through a callback as soon as it decodes to whole characters.

use crate::error::{Error, Result};
use crate::model::{Acts, KvCache, Model};
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use std::time::Instant;

/// Sampling settings. temperature 0 means greedy.
#[derive(Clone, Debug)]
pub struct Sampling {
    pub temperature: f64,
    /// 0 = no top-k cut.
    pub top_k: usize,
    /// 1.0 = no nucleus cut.
    pub top_p: f64,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 0.8, top_k: 40, top_p: 0.95, seed: 0 }
    }
}

/// Timing of one generation.
#[derive(Clone, Debug, Default)]
pub struct GenStats {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub prefill_s: f64,
    pub decode_s: f64,
    /// True when generation stopped at the model's context length.
    pub hit_context: bool,
}

/// Picks the next token from logits[V]; `scratch` holds V (index, prob) pairs.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut Rng, scratch: &mut Vec<(u32, f64)>) -> u32 {
    if s.temperature <= 0.0 {
        return argmax(logits);
    }
    scratch.clear();
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    scratch.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l as f64 - m) / s.temperature).exp())));
    scratch.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if s.top_k > 0 {
        scratch.truncate(s.top_k);
    }
    let total: f64 = scratch.iter().map(|p| p.1).sum();
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = scratch.len();
        for (i, p) in scratch.iter().enumerate() {
            acc += p.1 / total;
            if acc >= s.top_p {
                keep = i + 1;
                break;
            }
        }
        scratch.truncate(keep);
    }
    let total: f64 = scratch.iter().map(|p| p.1).sum();
    let mut u = rng.uniform() * total;
    for &(i, p) in scratch.iter() {
        if u < p {
            return i;
        }
        u -= p;
    }
    scratch.last().map_or(0, |p| p.0)
}

pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// Generates up to `max_new` tokens after `prompt`, calling `emit` with each new piece of text.
pub fn generate(
    model: &Model<f32>,
    params: &[f32],
    tk: &Tokenizer,
    prompt: &str,
    max_new: usize,
    s: &Sampling,
    emit: &mut dyn FnMut(&str),
) -> Result<GenStats> {
    generate_on(model, params, tk, prompt, max_new, s, emit, None)
}

/// As [`generate`]; with `comm`, `model` and `params` are this rank's shard of an
/// expert-parallel job whose ranks all run the same call: every rank decodes the same tokens
/// (identical logits, same seed) while each holds only its experts.
#[allow(clippy::too_many_arguments)]
pub fn generate_on(
    model: &Model<f32>,
    params: &[f32],
    tk: &Tokenizer,
    prompt: &str,
    max_new: usize,
    s: &Sampling,
    emit: &mut dyn FnMut(&str),
    comm: Option<std::sync::Arc<dyn crate::dist::Comm>>,
) -> Result<GenStats> {
    let ctx = model.cfg.max_position_embeddings;
    let mut ids = tk.encode(prompt)?;
    if ids.is_empty() {
        ids.extend(tk.eos_id());
    }
    if ids.is_empty() {
        return Err(Error::Tokenizer {
            what: "the prompt is empty and the tokenizer has no end-of-text token".into(),
            hint: "pass a non-empty --prompt".into(),
        });
    }
    if ids.len() >= ctx {
        ids.drain(..ids.len() + 1 - ctx); // keep the last ctx-1 tokens
    }
    let v = model.cfg.vocab_size;
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= v) {
        return Err(Error::Tokenizer {
            what: format!("token id {bad} is outside the model's vocabulary of {v}"),
            hint: "use the tokenizer saved with the checkpoint".into(),
        });
    }
    let mut acts = Acts::new(&model.cfg, 1, ids.len().max(1), ctx);
    if let Some(c) = comm {
        acts.attach_expert_parallel(&model.cfg, c, &model.shard);
    }
    let mut cache = KvCache::new(&model.cfg, 1, ctx);
    let mut rng = Rng::new(s.seed);
    let mut scratch = Vec::with_capacity(v);
    let mut stats = GenStats { prompt_tokens: ids.len(), ..Default::default() };
    let t0 = Instant::now();
    model.forward(params, &mut acts, &mut cache, &ids, 0);
    let n = ids.len();
    let mut next = sample(&acts.logits[(n - 1) * v..n * v], s, &mut rng, &mut scratch);
    stats.prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut out_ids: Vec<u32> = vec![];
    let mut printed = 0;
    let mut pos = n;
    loop {
        out_ids.push(next);
        stats.new_tokens += 1;
        let text = tk.decode(&out_ids)?;
        if !text.ends_with('\u{FFFD}') && text.len() > printed {
            emit(&text[printed..]);
            printed = text.len();
        }
        if stats.new_tokens >= max_new || Some(next) == tk.eos_id() {
            break;
        }
        if pos >= ctx {
            stats.hit_context = true;
            break;
        }
        model.forward(params, &mut acts, &mut cache, &[next], pos);
        pos += 1;
        next = sample(&acts.logits[..v], s, &mut rng, &mut scratch);
    }
    stats.decode_s = t1.elapsed().as_secs_f64();
    Ok(stats)
}
