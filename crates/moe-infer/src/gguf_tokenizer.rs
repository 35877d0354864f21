//! The tokenizer embedded in a GGUF file (the tokenizer.ggml.* keys llama.cpp's converter
//! writes), rebuilt as the Hugging Face tokenizer.json transformers would use, so that a lone
//! .gguf tokenizes as transformers does:
//! - "gpt2": byte-level BPE from tokens and merges, with the pre-tokenizer split named by
//!   tokenizer.ggml.pre (GPT-2's, Llama 3's or Qwen2's regex);
//! - "llama": SentencePiece BPE (Llama, Mistral, Mixtral): the merges are recovered from the
//!   vocabulary the way transformers converts a SentencePiece model (every split of a piece into
//!   two pieces, ordered by the merged piece's id), with byte fallback and the "▁" prefix.
//!
//! Control tokens (type 3) become special added tokens, user-defined ones (type 4) added
//! tokens; BOS is prepended when tokenizer.ggml.add_bos_token says so.

use crate::error::{io, Error, Result};
use crate::gguf::Gguf;
use moe_engine::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::collections::HashMap;

/// GGUF token types (llama.cpp's llama_token_type).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// Llama 3's split (GPT-2's is tokenizers' ByteLevel with use_regex); Qwen2's differs only in taking digits one at a time.
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The embedded tokenizer of `g`: tokenizer.json, chat template, BOS and EOS strings. None
/// when the file carries no vocabulary.
pub struct Embedded {
    pub json: Value,
    pub template: Option<String>,
    pub bos: Option<String>,
    pub eos: Option<String>,
}

fn bad(g: &Gguf, msg: String) -> Error {
    Error::Tokenizer { path: g.path.clone(), msg }
}

/// The tokenizer embedded in the GGUF file at `path`.
pub fn load(path: &std::path::Path) -> Result<Tokenizer> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    // SAFETY: a read-only map, read while the file is open (as the model loader does).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io(path))?;
    let g = Gguf::parse(&map, path)?;
    let e = embedded(&g)?.ok_or_else(|| Error::Tokenizer {
        path: path.to_path_buf(),
        msg: "has no embedded tokenizer (no tokenizer.ggml.model); put the model's tokenizer.json next to it or pass --tokenizer DIR".into(),
    })?;
    Ok(Tokenizer::from_json(&e.json.to_string(), e.template, e.bos, e.eos, path)?)
}

pub fn embedded(g: &Gguf) -> Result<Option<Embedded>> {
    let Some(model) = g.str("tokenizer.ggml.model") else { return Ok(None) };
    let tokens: Vec<&str> = match g.kv.get("tokenizer.ggml.tokens").and_then(Value::as_array) {
        Some(a) => a.iter().map(|t| t.as_str().unwrap_or("")).collect(),
        None => return Err(bad(g, "tokenizer.ggml.tokens is missing".into())),
    };
    let types: Vec<i64> =
        g.kv.get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
            .map_or_else(|| vec![1; tokens.len()], |a| a.iter().map(|t| t.as_i64().unwrap_or(1)).collect());
    let flag = |k: &str, default: bool| g.kv.get(k).and_then(Value::as_bool).unwrap_or(default);
    let id_key = |k: &str| g.usize(k).filter(|&i| i < tokens.len());
    let (bos, eos) = (id_key("tokenizer.ggml.bos_token_id"), id_key("tokenizer.ggml.eos_token_id"));
    let vocab: serde_json::Map<String, Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.to_string(), json!(i))).collect();
    let added: Vec<Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &ty))| ty == CONTROL || ty == USER_DEFINED)
        .map(|(i, (t, &ty))| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": ty == CONTROL})
        })
        .collect();
    let (model_json, pre, decoder, add_bos) = match model {
        "gpt2" => {
            let merges: Vec<&str> = g
                .kv
                .get("tokenizer.ggml.merges")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let pre = g.str("tokenizer.ggml.pre").unwrap_or("default");
            let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": regex});
            let pre_tok = match pre {
                "default" | "gpt2" | "gpt-2" | "olmo" | "mpt" | "starcoder" | "refact" => byte_level(true),
                "llama-bpe" | "llama3" | "smaug-bpe" => split_then_bytes(LLAMA3),
                "qwen2" => split_then_bytes(QWEN2),
                other => {
                    return Err(bad(
                        g,
                        format!(
                            "its pre-tokenizer `{other}` is not one moe knows (gpt2, llama-bpe, qwen2); \
                             put the model's tokenizer.json next to the file or pass --tokenizer DIR"
                        ),
                    ))
                }
            };
            let bpe = json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges});
            (bpe, pre_tok, json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}), flag("tokenizer.ggml.add_bos_token", false))
        }
        "llama" => {
            let merges = spm_merges(&tokens);
            let prefix = flag("tokenizer.ggml.add_space_prefix", true);
            let bpe = json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab, "merges": merges});
            let pre = json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": if prefix { "first" } else { "never" }, "split": false});
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if prefix {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            (bpe, pre, json!({"type": "Sequence", "decoders": decoders}), flag("tokenizer.ggml.add_bos_token", true))
        }
        other => {
            return Err(bad(
                g,
                format!("its tokenizer model `{other}` is not supported (gpt2 and llama are); pass --tokenizer DIR with the model's tokenizer.json"),
            ))
        }
    };
    let mut single = vec![];
    let mut special = serde_json::Map::new();
    if let (true, Some(b)) = (add_bos, bos) {
        single.push(json!({"SpecialToken": {"id": tokens[b], "type_id": 0}}));
        special.insert(tokens[b].into(), json!({"id": tokens[b], "ids": [b], "tokens": [tokens[b]]}));
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    let post = json!({"type": "TemplateProcessing", "single": single, "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}], "special_tokens": special});
    let json = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": pre, "post_processor": post, "decoder": decoder, "model": model_json});
    Ok(Some(Embedded {
        json,
        template: g.str("tokenizer.chat_template").map(str::to_string),
        bos: bos.map(|b| tokens[b].to_string()),
        eos: eos.map(|e| tokens[e].to_string()),
    }))
}

/// A regex split (isolated pieces) then byte-level mapping without GPT-2's own regex.
fn split_then_bytes(regex: &str) -> Value {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]})
}

/// The BPE merges of a SentencePiece vocabulary as transformers derives them: every split of
/// a piece into two pieces of the vocabulary, ordered by the merged piece's id, then by the
/// lengths (in characters) of the left and right parts, then by their ids.
fn spm_merges(tokens: &[&str]) -> Vec<[String; 2]> {
    let id: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut merges = vec![];
    for (m, piece) in tokens.iter().enumerate() {
        let mut local: Vec<(usize, usize, usize, usize, &str, &str)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = piece.split_at(at);
                Some((m, l.chars().count(), r.chars().count(), *id.get(l)?, l, r)).filter(|_| id.contains_key(r))
            })
            .collect();
        local.sort_by_key(|x| (x.3, id[x.5]));
        merges.extend(local);
    }
    // stable: ties keep the (left id, right id) order
    merges.sort_by_key(|x| (x.0, x.1, x.2));
    merges.into_iter().map(|x| [x.4.to_string(), x.5.to_string()]).collect()
}
