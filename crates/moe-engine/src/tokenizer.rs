//! Byte-level BPE tokenizers: trained on a corpus with the `tokenizers` crate, or loaded from a
//! `tokenizer.json` (ours or a Hugging Face model's). Encoding and decoding go through it.

use crate::contain::contained;
use crate::error::{Error, Result};
use std::path::Path;
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
        Ok(Tokenizer { inner })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let loaded = contained(|| tokenizers::Tokenizer::from_file(path).map_err(|e| e.to_string()));
        let inner = loaded.and_then(|r| r).map_err(|e| Error::Tokenizer {
            what: format!("cannot load {}: {e}", path.display()),
            hint: "the file must be a tokenizer.json written by moe or Hugging Face tokenizers".into(),
        })?;
        Ok(Tokenizer { inner })
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

    /// The document separator: ours, or the end-of-text token of a Hugging Face tokenizer
    /// (Llama 2 and Mistral's `</s>`, Llama 3's `<|end_of_text|>`, Qwen's `<|im_end|>`).
    pub fn eos_id(&self) -> Option<u32> {
        [EOS, "</s>", "<|end_of_text|>", "<|im_end|>"].iter().find_map(|t| self.inner.token_to_id(t))
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.encoding(text)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids and the byte offset where each token starts in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<usize>)> {
        let enc = self.encoding(text)?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().iter().map(|o| o.0).collect()))
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        contained(|| self.inner.decode(ids, false).map_err(|e| e.to_string()))
            .and_then(|r| r)
            .map_err(|e| Error::Tokenizer { what: e, hint: "check the token ids".into() })
    }

    fn encoding(&self, text: &str) -> Result<tokenizers::Encoding> {
        contained(|| self.inner.encode(text, false).map_err(|e| e.to_string()))
            .and_then(|r| r)
            .map_err(|e| Error::Tokenizer { what: e, hint: "check the input text".into() })
    }
}
