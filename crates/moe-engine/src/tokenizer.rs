//! The one tokenizer of moe, for every model it trains, fine-tunes, runs or serves: a byte-level
//! BPE trained on a corpus (`train`), or a tokenizer.json loaded with the `tokenizers` crate
//! (ours, a Hugging Face model's, or one rebuilt from a GGUF file's vocabulary by
//! moe-infer's `gguf_tokenizer`), with the model's special tokens (tokenizer_config.json) and its
//! chat template (chat_template.jinja, or the `chat_template` field of tokenizer_config.json;
//! rendered by `chat_template`). Every call into `tokenizers` is contained: a panic inside it on
//! hostile input becomes an error.

use crate::contain::contained;
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

/// The document separator our tokenizers add as a special token.
pub const EOS: &str = "<|endoftext|>";

/// A loaded tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The chat template (Jinja source), if the model has one.
    pub template: Option<String>,
    /// The beginning- and end-of-sequence tokens the model's config names.
    pub bos: Option<String>,
    pub eos: Option<String>,
    /// Where it came from, for messages.
    pub path: PathBuf,
}

/// A special token in tokenizer_config.json: a string or an AddedToken object.
fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

fn fail(path: &Path, what: impl std::fmt::Display, hint: &str) -> Error {
    Error::Tokenizer { what: format!("{}: {what}", path.display()), hint: hint.into() }
}

impl Tokenizer {
    /// Trains a byte-level BPE of `vocab_size` entries (special token included) on `texts`.
    pub fn train<'a>(texts: impl Iterator<Item = &'a str> + Send, vocab_size: usize) -> Result<Self> {
        let err = |e: Box<dyn std::error::Error + Send + Sync>| Error::Tokenizer {
            what: e.to_string(),
            hint: "check the corpus and the vocabulary size".into(),
        };
        let alphabet = ByteLevel::alphabet().into_iter().collect();
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(EOS, true)])
            .initial_alphabet(alphabet)
            .build();
        let mut tk = TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevelDecoder>::new()
            .with_model(BPE::default())
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_post_processor(Some(ByteLevel::new(false, true, true)))
            .with_decoder(Some(ByteLevelDecoder::default()))
            .build()
            .map_err(err)?;
        // Train on paragraphs: many short sequences parallelise well.
        let paragraphs = texts.flat_map(|t| t.split("\n\n"));
        tk.train(&mut trainer, paragraphs).map_err(err)?;
        let json = tk.to_string(false).map_err(err)?;
        let inner: tokenizers::Tokenizer = json.parse().map_err(err)?;
        Ok(Tokenizer { inner, template: None, bos: None, eos: None, path: PathBuf::from("(trained)") })
    }

    /// A tokenizer.json file, with the special tokens and chat template of the folder it lies in.
    pub fn load(path: &Path) -> Result<Self> {
        let hint = "the file must be a tokenizer.json written by moe or Hugging Face tokenizers";
        let loaded = contained(|| tokenizers::Tokenizer::from_file(path).map_err(|e| e.to_string()));
        let inner = loaded.and_then(|r| r).map_err(|e| fail(path, format!("cannot read ({e})"), hint))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let cfg_path = dir.join("tokenizer_config.json");
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| fail(p, e, "check the file's permissions"));
        let cfg: Value = if cfg_path.is_file() {
            serde_json::from_str(&read(&cfg_path)?)
                .map_err(|e| fail(&cfg_path, format!("not valid JSON: {e}"), "fix or delete the file"))?
        } else {
            Value::Null
        };
        let jinja = dir.join("chat_template.jinja");
        let template = if jinja.is_file() {
            Some(read(&jinja)?)
        } else {
            match cfg.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // a list of named templates: take "default"
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                    .map(str::to_string),
                _ => None,
            }
        };
        let (bos, eos) = (token_str(cfg.get("bos_token")), token_str(cfg.get("eos_token")));
        Ok(Tokenizer { inner, template, bos, eos, path: path.to_path_buf() })
    }

    /// The tokenizer of a model folder: its tokenizer.json (see [`Tokenizer::load`]).
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(fail(&path, "missing", "download tokenizer.json with the model"));
        }
        Self::load(&path)
    }

    /// A tokenizer.json held in memory (`path` names its source in messages).
    pub fn from_json(
        json: &str,
        template: Option<String>,
        bos: Option<String>,
        eos: Option<String>,
        path: &Path,
    ) -> Result<Self> {
        let built = contained(|| json.parse::<tokenizers::Tokenizer>().map_err(|e| e.to_string()));
        let inner = built.and_then(|r| r).map_err(|e| {
            fail(path, format!("its tokenizer cannot be built ({e})"), "pass the model's tokenizer.json instead")
        })?;
        Ok(Tokenizer { inner, template, bos, eos, path: path.to_path_buf() })
    }

    /// Writes tokenizer.json atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self
            .inner
            .to_string(false)
            .map_err(|e| Error::Tokenizer { what: e.to_string(), hint: "report this as a bug".into() })?;
        crate::checkpoint::write_atomic(path, json.as_bytes())
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    /// The document separator: ours, or the end-of-sequence token of a model's tokenizer
    /// (its config's, else Llama 2 and Mistral's `</s>`, Llama 3's `<|end_of_text|>` or Qwen's
    /// `<|im_end|>`).
    pub fn eos_id(&self) -> Option<u32> {
        let known = [EOS, "</s>", "<|end_of_text|>", "<|im_end|>"];
        self.eos.as_deref().and_then(|e| self.token_id(e)).or_else(|| known.iter().find_map(|t| self.token_id(t)))
    }

    /// Token ids of `text`, without the special tokens a post-processor adds.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encoding(text, false)?.get_ids().to_vec())
    }

    /// Token ids of `text` with the tokenizer's post-processor (BOS and the like), as
    /// transformers' `encode` does by default: a prompt for a pretrained model.
    pub fn encode_with_specials(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encoding(text, true)?.get_ids().to_vec())
    }

    /// Token ids and the byte offset where each token starts in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<usize>)> {
        let enc = self.encoding(text, false)?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().iter().map(|o| o.0).collect()))
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        contained(|| self.inner.decode(ids, true).map_err(|e| e.to_string()))
            .and_then(|r| r)
            .map_err(|e| fail(&self.path, e, "check the token ids"))
    }

    fn encoding(&self, text: &str, special: bool) -> Result<tokenizers::Encoding> {
        contained(|| self.inner.encode(text, special).map_err(|e| e.to_string()))
            .and_then(|r| r)
            .map_err(|e| fail(&self.path, e, "check the input text"))
    }
}
