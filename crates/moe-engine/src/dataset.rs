//! Tokenised corpus: tokenizer training and encoding cached on disk, a deterministic
//! train/validation split, and random training windows drawn reproducibly from a seed.

use crate::corpus::{self, Document, Source};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::rustdocs;
use crate::tokenizer::Tokenizer;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Tokens per split chunk; every `VAL_EVERY`-th chunk is held out for validation.
const CHUNK: usize = 4096;
const VAL_EVERY: usize = 20;
/// Bump when tokenisation or caching changes, so stale caches are not reused.
const CACHE_VERSION: u32 = 2;

/// A tokenised corpus split into training and validation token streams.
pub struct Dataset {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    pub tokenizer: Tokenizer,
    /// Where the tokenizer and tokens are cached.
    pub cache_dir: PathBuf,
    /// What the corpus holds (also in the cache's `corpus.json`).
    pub info: CorpusInfo,
}

/// Set on a token of the stream that is context but no training target (a prompt token of a
/// chat example): [`sample_batch`] gives it as input and IGNORE as target.
pub const NOT_TARGET: u32 = 1 << 31;

/// Encodes one document into the token stream (ids, flagged with [`NOT_TARGET`] where the model
/// reads but does not learn to predict them), with the corpus's tokenizer. A chat renderer of
/// JSONL conversations is one (`moe_engine::chat_data`).
#[derive(Clone)]
pub struct DocEncoder(pub Arc<EncodeFn>);

/// What a [`DocEncoder`] calls: (the corpus's tokenizer, a document's text) -> its stream.
pub type EncodeFn = dyn Fn(&Tokenizer, &str) -> Result<Vec<u32>> + Send + Sync;

impl std::fmt::Debug for DocEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("DocEncoder")
    }
}

/// The tokenizer of a corpus: one trained on it with this many tokens (moe's own models), or a
/// given tokenizer.json (a Hugging Face model's, to fine-tune or upcycle it), optionally with
/// an encoder of documents that `tag` names in the cache key.
#[derive(Clone)]
pub enum Vocab {
    Train(usize),
    Given(PathBuf),
    GivenWith { tokenizer: PathBuf, encoder: DocEncoder, tag: String },
}

impl From<usize> for Vocab {
    fn from(vocab_size: usize) -> Self {
        Vocab::Train(vocab_size)
    }
}

/// The tokenizer is trained on at most this much text (every n-th document of a larger corpus).
const TOKENIZER_SAMPLE_BYTES: usize = 32 << 20;

/// What a cache directory records about its corpus (`corpus.json`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CorpusInfo {
    pub source: String,
    pub documents: usize,
    /// Bytes of text after cleaning and deduplication.
    pub chars: usize,
    pub tokens: usize,
    /// What deduplication removed (the Rust documentation only).
    pub dedup: Option<rustdocs::DedupStats>,
}

/// FNV-1a's starting value.
pub(crate) const FNV_OFFSET: u64 = 0xcbf29ce484222325;

/// 64-bit FNV-1a of `bytes` continuing from `h` (start from `FNV_OFFSET`), for cache keys.
pub(crate) fn fnv(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The cache directory name for a corpus identified by `ident` bytes and a vocabulary size.
fn cache_key(ident: impl Iterator<Item = u8>, vocab: usize) -> String {
    let mut h = fnv(&CACHE_VERSION.to_le_bytes(), FNV_OFFSET);
    h = fnv(&(vocab as u64).to_le_bytes(), h);
    for b in ident {
        h = fnv(&[b], h);
    }
    format!("{h:016x}-v{vocab}")
}

/// Identifies documents by their names and texts.
fn docs_ident(docs: &[Document]) -> impl Iterator<Item = u8> + '_ {
    docs.iter().flat_map(|d| d.name.bytes().chain([0]).chain(d.text.bytes()))
}

impl Dataset {
    /// Loads the cached tokenizer and tokens of a corpus, or builds and caches them (progress
    /// bars while parsing and tokenising when `progress`). The Rust documentation is identified
    /// by its files' paths, sizes and times, so a cached corpus loads without parsing it.
    pub fn prepare(
        source: &Source,
        vocab: impl Into<Vocab>,
        cache_root: &Path,
        log: &dyn Fn(&str),
        progress: bool,
    ) -> Result<Self> {
        // A given tokenizer's file joins the cache key; its vocabulary size stands in the name.
        let (path, encoder, tag, trained_vocab) = match vocab.into() {
            Vocab::Train(v) => (None, None, String::new(), v),
            Vocab::Given(path) => (Some(path), None, String::new(), 0),
            Vocab::GivenWith { tokenizer, encoder, tag } => (Some(tokenizer), Some(encoder), tag, 0),
        };
        let (given, vocab_size, tk_ident) = match path {
            None => (None, trained_vocab, vec![]),
            Some(path) => {
                let tk = Tokenizer::load(&path)?;
                let mut bytes = std::fs::read(&path).map_err(Error::io(&path))?;
                bytes.extend(tag.bytes());
                let v = tk.vocab_size();
                (Some(tk), v, bytes)
            }
        };
        let (key, mut docs) = match source.parts() {
            Some(parts) => {
                let dir = rustdocs::docs_dir()?;
                let fp = rustdocs::fingerprint(&rustdocs::pages(&dir, parts)?)?;
                (cache_key(fp.into_iter().chain(tk_ident), vocab_size), None)
            }
            None => {
                let docs = corpus::load(source, false)?;
                (cache_key(docs_ident(&docs).chain(tk_ident), vocab_size), Some(docs))
            }
        };
        let dir = cache_root.join(key);
        let (tk_path, tok_path, info_path) =
            (dir.join("tokenizer.json"), dir.join("tokens.bin"), dir.join("corpus.json"));
        let cached = tk_path.is_file() && tok_path.is_file() && info_path.is_file();
        let (tokenizer, tokens, info) = if cached {
            log(&format!("using cached tokenizer and tokens in {}", dir.display()));
            let info: CorpusInfo = read_json(&info_path)?;
            (Tokenizer::load(&tk_path)?, read_tokens(&tok_path)?, info)
        } else {
            let (docs, dedup) = match docs.take() {
                Some(docs) => (docs, None),
                None => {
                    log(&format!("reading {} (once; cached afterwards)", source.describe()));
                    corpus::load_with_stats(source, progress)?
                }
            };
            if let Some(stats) = dedup {
                log(&format!(
                    "{} of {} pages kept, {:.1} MB of {:.1} MB of text after removing repeated blocks",
                    stats.pages_kept,
                    stats.pages,
                    stats.chars_after as f64 / 1e6,
                    stats.chars_before as f64 / 1e6
                ));
            }
            let chars: usize = docs.iter().map(|d| d.text.len()).sum();
            let tk = match given {
                Some(tk) => tk,
                None => {
                    let every = chars.div_ceil(TOKENIZER_SAMPLE_BYTES).max(1);
                    log(&format!(
                        "training a byte-level BPE tokenizer ({vocab_size} tokens) on {} of {} documents, {:.1} MB",
                        docs.len().div_ceil(every),
                        docs.len(),
                        chars as f64 / 1e6
                    ));
                    Tokenizer::train(docs.iter().step_by(every).map(|d| d.text.as_str()), vocab_size)?
                }
            };
            let tokens = encode_documents(&tk, &docs, progress, encoder.as_ref())?;
            let info =
                CorpusInfo { source: source.describe(), documents: docs.len(), chars, tokens: tokens.len(), dedup };
            std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
            tk.save(&tk_path)?;
            let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
            crate::checkpoint::write_atomic(&tok_path, &bytes)?;
            let json = serde_json::to_vec_pretty(&info).map_err(|e| Error::Corpus {
                what: format!("cannot encode corpus.json: {e}"),
                hint: "report this as a bug".into(),
            })?;
            crate::checkpoint::write_atomic(&info_path, &json)?;
            (tk, tokens, info)
        };
        log(&format!("corpus: {} documents, {:.2} M tokens", info.documents, tokens.len() as f64 / 1e6));
        let (train, val) = split(&tokens);
        Ok(Dataset { train, val, tokenizer, cache_dir: dir, info })
    }

    /// How many passes over the training tokens `tokens` training tokens make.
    pub fn epochs(&self, tokens: f64) -> f64 {
        tokens / self.train.len().max(1) as f64
    }

    /// "<what>: N M tokens, E epochs of the T M training tokens", with a warning when the run
    /// sees its data more than once.
    pub fn epochs_message(&self, what: &str, tokens: f64) -> String {
        let e = self.epochs(tokens);
        let mut msg = format!(
            "{what}: {:.2} M tokens, {e:.2} epochs of the {:.2} M training tokens",
            tokens / 1e6,
            self.train.len() as f64 / 1e6
        );
        if e > 1.0 {
            msg += "; WARNING: it repeats its data, so models are limited by data rather than capacity \
                    (the regime where extra expert parameters help least): use more --data or fewer tokens";
        }
        msg
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

    /// Every token id below the model's vocabulary (a given tokenizer may hold more tokens
    /// than the model's embedding, e.g. added ones).
    pub fn check_vocab(&self, model_vocab: usize) -> Result<()> {
        match self.train.iter().chain(&self.val).map(|&t| t & !NOT_TARGET).max() {
            Some(m) if m as usize >= model_vocab => Err(Error::Corpus {
                what: format!("the tokenizer produced token id {m}, beyond the model's vocabulary of {model_vocab}"),
                hint: "use the model's own tokenizer.json".into(),
            }),
            _ => Ok(()),
        }
    }

    /// Entropy (nats) of the unigram distribution of the training tokens: the loss of a model
    /// that ignores context.
    pub fn unigram_entropy(&self) -> f64 {
        let ids = || self.train.iter().map(|&t| (t & !NOT_TARGET) as usize);
        let v = self.tokenizer.vocab_size().max(ids().max().map_or(0, |m| m + 1));
        let mut counts = vec![0u64; v];
        ids().for_each(|t| counts[t] += 1);
        let n = self.train.len() as f64;
        counts.iter().filter(|&&c| c > 0).map(|&c| -(c as f64 / n) * (c as f64 / n).ln()).sum()
    }
}

/// Encodes documents in parallel (paragraph by paragraph), each followed by the EOS token.
fn encode_documents(
    tk: &Tokenizer,
    docs: &[Document],
    progress: bool,
    encoder: Option<&DocEncoder>,
) -> Result<Vec<u32>> {
    let total: usize = docs.iter().map(|d| d.text.len()).sum();
    let pb = if progress { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} tokenised {bytes_per_sec} [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let encoded: Result<Vec<Vec<u32>>> = docs
        .par_iter()
        .map(|d| {
            let mut ids = vec![];
            if let Some(enc) = encoder {
                ids = (enc.0)(tk, &d.text)?;
                pb.inc(d.text.len() as u64);
                return Ok(ids);
            }
            for p in d.text.split_inclusive("\n\n") {
                ids.extend(tk.encode(p)?);
            }
            ids.extend(tk.eos_id());
            pb.inc(d.text.len() as u64);
            Ok(ids)
        })
        .collect();
    pb.finish_and_clear();
    Ok(encoded?.concat())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Corpus {
        what: format!("{} is unreadable: {e}", path.display()),
        hint: "delete the cache directory to rebuild it".into(),
    })
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
    use moe_kernels::cross_entropy::IGNORE;
    for i in 0..b {
        let start = rng.below(stream.len() - t);
        for (xv, &s) in x[i * t..(i + 1) * t].iter_mut().zip(&stream[start..start + t]) {
            *xv = s & !NOT_TARGET;
        }
        for (yv, &s) in y[i * t..(i + 1) * t].iter_mut().zip(&stream[start + 1..start + t + 1]) {
            *yv = if s & NOT_TARGET != 0 { IGNORE } else { s };
        }
    }
}
