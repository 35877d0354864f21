//! The tokenizer embedded in a GGUF file, rebuilt from its tokenizer.ggml.* keys alone, gives
//! transformers' token ids, decoded text and chat rendering. Fixtures by
//! scripts/gguf_tokenizer_fixtures.py: a SentencePiece BPE (Llama-style, byte fallback) and a
//! byte-level BPE with Qwen2's pre-tokenizer, converted by llama.cpp's convert_hf_to_gguf.py.

use serde_json::Value;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf_tokenizer")
}

fn check(name: &str) {
    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir().join("reference.json")).unwrap()).unwrap();
    let tok =
        moe_infer::gguf_tokenizer::load(&dir().join(format!("{name}.gguf"))).unwrap_or_else(|e| panic!("{name}: {e}"));
    let want = &r[name];
    for (i, text) in r["tests"].as_array().unwrap().iter().enumerate() {
        let text = text.as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(want["ids"][i].clone()).unwrap();
        assert_eq!(tok.encode_with_specials(text).unwrap(), ids, "{name}: ids of {text:?}");
        assert_eq!(tok.decode(&ids).unwrap(), want["decoded"][i].as_str().unwrap(), "{name}: decoding {text:?}");
    }
    let chat: Vec<(String, String)> = r["chat"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap().into(), m["content"].as_str().unwrap().into()))
        .collect();
    assert_eq!(tok.render_chat(&chat, true).unwrap(), want["chat"].as_str().unwrap(), "{name}: chat template");
    let chat_ids: Vec<u32> = serde_json::from_value(want["chat_ids"].clone()).unwrap();
    assert_eq!(tok.encode_chat(&chat).unwrap(), chat_ids, "{name}: chat ids");
    assert_eq!(tok.eos.as_deref(), want["eos"].as_str(), "{name}: eos token");
}

#[test]
fn sentencepiece_llama_vocabulary() {
    check("llama");
}

#[test]
fn byte_level_bpe_with_qwen2_pre_tokenizer() {
    check("qwen2");
}

#[test]
fn a_gguf_without_a_vocabulary_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    // a GGUF header with no metadata and no tensors
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    let p = tmp.path().join("empty.gguf");
    std::fs::write(&p, b).unwrap();
    let e = moe_infer::gguf_tokenizer::load(&p).err().expect("no vocabulary").to_string();
    assert!(e.contains("no embedded tokenizer") && e.contains("--tokenizer"), "{e}");
}
