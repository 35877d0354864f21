//! Text generation, the one loop for every model moe runs: prefill the prompt in one forward,
//! then one token per forward through the model's KV cache (any [`Decoder`]: the training
//! model here, the inference model of moe-infer); temperature, top-k and top-p (nucleus)
//! sampling from a seeded generator; text streamed through a callback as soon as it decodes to
//! whole characters (`text::TextStream`); stops at an end-of-sequence token, after `max_new`
//! tokens or when the context is full.

use crate::error::{Error, Result};
use crate::model::{Acts, KvCache, Model};
use crate::rng::Rng;
use crate::text::TextStream;
use crate::tokenizer::Tokenizer;
use std::time::Instant;

/// A model that decodes: tokens appended to its KV cache, the next token's logits back.
pub trait Decoder {
    type Error: From<Error>;
    /// Positions the cache holds in all.
    fn context(&self) -> usize;
    /// Positions already in the cache.
    fn cached(&self) -> usize;
    /// Appends `ids` (at least one) to the cache; the logits [V] after the last of them.
    fn feed(&mut self, ids: &[u32]) -> std::result::Result<Vec<f32>, Self::Error>;
}

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

/// Generates up to `max_new` tokens after the `prompt` ids with `dec`, calling `emit` with each
/// new piece of text; a token of `eos` ends generation (pass none to always produce `max_new`).
/// Returns the new ids.
pub fn generate<D: Decoder>(
    dec: &mut D,
    tk: &Tokenizer,
    prompt: &[u32],
    max_new: usize,
    s: &Sampling,
    eos: &[u32],
    emit: &mut dyn FnMut(&str),
) -> std::result::Result<(Vec<u32>, GenStats), D::Error> {
    let mut rng = Rng::new(s.seed);
    let mut scratch = vec![];
    let mut stats = GenStats { prompt_tokens: prompt.len(), ..Default::default() };
    let t0 = Instant::now();
    let mut logits = dec.feed(prompt)?;
    stats.prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let (mut out, mut text) = (vec![], TextStream::new(vec![]).after(prompt.last().copied()));
    while out.len() < max_new {
        let next = sample(&logits, s, &mut rng, &mut scratch);
        out.push(next);
        stats.new_tokens += 1;
        let (piece, _) = text.push(tk, next)?;
        if !piece.is_empty() {
            emit(&piece);
        }
        if eos.contains(&next) || out.len() == max_new {
            break;
        }
        if dec.cached() >= dec.context() {
            stats.hit_context = true;
            break;
        }
        logits = dec.feed(&[next])?;
    }
    stats.decode_s = t1.elapsed().as_secs_f64();
    Ok((out, stats))
}

/// The training model with its KV cache, as a [`Decoder`]; with `comm`, `model` and `params`
/// are this rank's shard of an expert-parallel job whose ranks all decode the same tokens
/// (identical logits, same seed) while each holds only its experts.
pub struct ModelDecoder<'a> {
    model: &'a Model<f32>,
    params: &'a [f32],
    acts: Acts<f32>,
    cache: KvCache<f32>,
    pos: usize,
}

impl<'a> ModelDecoder<'a> {
    /// Room for prompts of up to `prompt_max` tokens.
    pub fn new(
        model: &'a Model<f32>,
        params: &'a [f32],
        prompt_max: usize,
        comm: Option<std::sync::Arc<dyn crate::dist::Comm>>,
    ) -> Self {
        let ctx = model.cfg.max_position_embeddings;
        let mut acts = Acts::new(&model.cfg, 1, prompt_max.clamp(1, ctx), ctx);
        if let Some(c) = comm {
            acts.attach_expert_parallel(&model.cfg, c, &model.shard);
        }
        ModelDecoder { model, params, acts, cache: KvCache::new(&model.cfg, 1, ctx), pos: 0 }
    }
}

impl Decoder for ModelDecoder<'_> {
    type Error = Error;
    fn context(&self) -> usize {
        self.cache.cap
    }
    fn cached(&self) -> usize {
        self.pos
    }
    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let v = self.model.cfg.vocab_size;
        if ids.is_empty() || ids.len() > self.acts.tq_max || self.pos + ids.len() > self.cache.cap {
            return Err(Error::Config {
                what: format!("{} tokens after {} do not fit the decoder's buffers", ids.len(), self.pos),
                hint: "report this as a bug".into(),
            });
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= v) {
            return Err(Error::Tokenizer {
                what: format!("token id {bad} is outside the model's vocabulary of {v}"),
                hint: "use the tokenizer saved with the checkpoint".into(),
            });
        }
        self.model.forward(self.params, &mut self.acts, &mut self.cache, ids, self.pos);
        self.pos += ids.len();
        let n = ids.len();
        Ok(self.acts.logits[(n - 1) * v..n * v].to_vec())
    }
}

/// Generates up to `max_new` tokens after the text `prompt` with a model of ours (see
/// [`ModelDecoder`] for `comm`), calling `emit` with each new piece of text; a prompt longer
/// than the context keeps its last tokens.
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
    let mut dec = ModelDecoder::new(model, params, ids.len(), comm);
    let eos: Vec<u32> = tk.eos_id().into_iter().collect();
    Ok(generate(&mut dec, tk, &ids, max_new, s, &eos, emit)?.1)
}
