//! Tokenised corpus: tokenizer training and encoding cached on disk, a deterministic
//! train/validation split, and random training windows drawn reproducibly from a seed.

use crate::corpus::{self, Document, Source};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Tokens per split chunk; every `VAL_EVERY`-th chunk is held out for validation.
const CHUNK: usize = 4096;
const VAL_EVERY: usize = 20;
/// Bump when tokenisation or caching changes, so stale caches are not reused.
const CACHE_VERSION: u32 = 1;

/// A tokenised corpus split into training and validation token streams.
pub struct Dataset {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    pub tokenizer: Tokenizer,
    /// Where the tokenizer and tokens are cached.
    pub cache_dir: PathBuf,
    pub documents: usize,
    pub chars: usize,
}

/// 64-bit FNV-1a, for cache keys.
fn fnv(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn cache_key(docs: &[Document], vocab: usize) -> String {
    let mut h = 0xcbf29ce484222325;
    h = fnv(&CACHE_VERSION.to_le_bytes(), h);
    h = fnv(&(vocab as u64).to_le_bytes(), h);
    for d in docs {
        h = fnv(d.name.as_bytes(), h);
        h = fnv(&[0], h);
        h = fnv(d.text.as_bytes(), h);
    }
    format!("{h:016x}-v{vocab}")
}

impl Dataset {
    /// Loads the corpus, then the cached tokenizer and tokens for it, or builds and caches them.
    pub fn prepare(source: &Source, vocab_size: usize, cache_root: &Path, log: &dyn Fn(&str)) -> Result<Self> {
        let docs = corpus::load(source)?;
        let chars = docs.iter().map(|d| d.text.len()).sum();
        let dir = cache_root.join(cache_key(&docs, vocab_size));
        let (tk_path, tok_path) = (dir.join("tokenizer.json"), dir.join("tokens.bin"));
        let (tokenizer, tokens) = if tk_path.is_file() && tok_path.is_file() {
            log(&format!("using cached tokenizer and tokens in {}", dir.display()));
            (Tokenizer::load(&tk_path)?, read_tokens(&tok_path)?)
        } else {
            log(&format!(
                "training a byte-level BPE tokenizer ({vocab_size} tokens) on {} documents, {:.1} MB",
                docs.len(),
                chars as f64 / 1e6
            ));
            let tk = Tokenizer::train(docs.iter().map(|d| d.text.as_str()), vocab_size)?;
            log("tokenising the corpus");
            let tokens = encode_documents(&tk, &docs)?;
            std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
            tk.save(&tk_path)?;
            let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
            crate::checkpoint::write_atomic(&tok_path, &bytes)?;
            (tk, tokens)
        };
        let (train, val) = split(&tokens);
        Ok(Dataset { train, val, tokenizer, cache_dir: dir, documents: docs.len(), chars })
    }

    /// Fails unless both splits hold at least one window of `t + 1` tokens.
    pub fn check_context(&self, t: usize) -> Result<()> {
        if self.val.len() < t + 1 || self.train.len() < t + 1 {
            return Err(Error::Corpus {
                what: format!(
                    "the corpus has {} training and {} validation tokens, fewer than one window of {} tokens",
                    self.train.len(),
                    self.val.len(),
                    t + 1
                ),
                hint: format!("use a larger corpus (at least ~{} tokens) or a shorter context", (t + 1) * VAL_EVERY),
            });
        }
        Ok(())
    }

    /// Entropy (nats) of the unigram distribution of the training tokens: the loss of a model
    /// that ignores context.
    pub fn unigram_entropy(&self) -> f64 {
        let v = self.tokenizer.vocab_size().max(self.train.iter().max().map_or(0, |&m| m as usize + 1));
        let mut counts = vec![0u64; v];
        self.train.iter().for_each(|&t| counts[t as usize] += 1);
        let n = self.train.len() as f64;
        counts.iter().filter(|&&c| c > 0).map(|&c| -(c as f64 / n) * (c as f64 / n).ln()).sum()
    }
}

fn encode_documents(tk: &Tokenizer, docs: &[Document]) -> Result<Vec<u32>> {
    let eos = tk.eos_id();
    let mut out = vec![];
    for d in docs {
        let paras: Vec<String> = d.text.split_inclusive("\n\n").map(str::to_string).collect();
        let encoded: Result<Vec<Vec<u32>>> = paras.par_iter().map(|p| tk.encode(p)).collect();
        encoded?.into_iter().for_each(|e| out.extend(e));
        out.extend(eos);
    }
    Ok(out)
}

fn read_tokens(path: &Path) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    if bytes.len() % 4 != 0 {
        return Err(Error::Corpus {
            what: format!("{} is truncated", path.display()),
            hint: "delete the cache directory to rebuild it".into(),
        });
    }
    Ok(bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// Every VAL_EVERY-th chunk of CHUNK tokens goes to validation (starting with chunk
/// VAL_EVERY/2, so even a small corpus has one), the rest to training.
fn split(tokens: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let (mut train, mut val) = (vec![], vec![]);
    let chunks: Vec<&[u32]> = tokens.chunks(CHUNK).collect();
    if chunks.len() < 2 {
        // Tiny corpus: hold out the last tenth.
        let cut = tokens.len() - tokens.len() / 10;
        return (tokens[..cut].to_vec(), tokens[cut..].to_vec());
    }
    let pick = (VAL_EVERY / 2).min(chunks.len() - 1);
    for (i, c) in chunks.iter().enumerate() {
        if i % VAL_EVERY == pick {
            val.extend_from_slice(c);
        } else {
            train.extend_from_slice(c);
        }
    }
    (train, val)
}

/// Fills x[B*T] with random windows of `stream` and y[B*T] with the next tokens.
pub fn sample_batch(stream: &[u32], rng: &mut Rng, b: usize, t: usize, x: &mut [u32], y: &mut [u32]) {
    for i in 0..b {
        let start = rng.below(stream.len() - t);
        x[i * t..(i + 1) * t].copy_from_slice(&stream[start..start + t]);
        y[i * t..(i + 1) * t].copy_from_slice(&stream[start + 1..start + t + 1]);
    }
}
