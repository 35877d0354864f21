//! A llama.cpp GGUF model read as the Hugging Face checkpoint it was converted from: its
//! metadata becomes a config.json value for `Spec::parse`, and each tensor gets the name and
//! row-major shape the Hugging Face loader asks for (the stacked `ffn_{gate,up,down}_exps`
//! tensors as 3-D expert tensors), its data left in place in the memory map (F32, F16, BF16,
//! Q8_0, Q4_0 and the k-quants Q4_K, Q5_K, Q6_K; other ggml types are refused by name). Architectures: Mixtral (llama.cpp's
//! `llama` with `expert_count`), Qwen2-MoE, Qwen3-MoE and OLMoE.
//!
//! llama.cpp's converter permutes the query and key rows of `llama` models so that its RoPE
//! rotates adjacent pairs (2i, 2i+1) where transformers rotates (i, i + d/2); such a model is
//! run with interleaved RoPE, which gives the same attention scores.

use crate::error::{io, Error, Result};
use crate::gguf::{GgmlType, Gguf};
use crate::store::{Entry, TensorStore};
use crate::weight::Bytes;
use memmap2::Mmap;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// GGUF architecture -> (transformers class, whether its Q/K rows are permuted).
fn hf_arch(g: &Gguf, arch: &str) -> Option<(&'static str, bool)> {
    match arch {
        "llama" if g.usize("llama.expert_count").unwrap_or(0) > 0 => Some(("MixtralForCausalLM", true)),
        "qwen2moe" => Some(("Qwen2MoeForCausalLM", false)),
        "qwen3moe" => Some(("Qwen3MoeForCausalLM", false)),
        "olmoe" => Some(("OlmoeForCausalLM", false)),
        _ => None,
    }
}

/// The config.json a transformers checkpoint of this model would have.
pub fn hf_config(g: &Gguf) -> Result<Value> {
    let bad = |msg: String| Error::Config { path: g.path.clone(), msg };
    let arch = g.str("general.architecture").ok_or_else(|| bad("no general.architecture".into()))?;
    let (class, permuted) = hf_arch(g, arch).ok_or_else(|| {
        bad(format!(
            "GGUF architecture `{arch}` is not supported as an MoE model; supported: llama with experts (Mixtral), qwen2moe, qwen3moe, olmoe"
        ))
    })?;
    let need =
        |k: &str| g.usize(&format!("{arch}.{k}")).ok_or_else(|| bad(format!("missing or non-integer `{arch}.{k}`")));
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    let embed = g.tensors.iter().find(|t| t.name == "token_embd.weight");
    let vocab = g
        .usize(&format!("{arch}.vocab_size"))
        .or_else(|| g.kv.get("tokenizer.ggml.tokens").and_then(|t| t.as_array()).map(|a| a.len()))
        .or_else(|| embed.and_then(|t| t.ne.get(1)).map(|&v| v as usize))
        .ok_or_else(|| bad("no vocabulary size (vocab_size, tokenizer.ggml.tokens or token_embd.weight)".into()))?;
    if let Some(kind) = g.str(&format!("{arch}.rope.scaling.type")).filter(|k| *k != "none") {
        return Err(bad(format!("RoPE scaling `{kind}` in a GGUF model is not supported")));
    }
    let experts = need("expert_count")?;
    let mut c = json!({
        "architectures": [class],
        "hidden_size": hidden,
        "num_hidden_layers": need("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": g.usize(&format!("{arch}.attention.head_count_kv")).unwrap_or(heads),
        "head_dim": g.usize(&format!("{arch}.attention.key_length")).unwrap_or(hidden / heads),
        "vocab_size": vocab,
        "max_position_embeddings": g.usize(&format!("{arch}.context_length")).unwrap_or(4096),
        "rms_norm_eps": g.f64(&format!("{arch}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
        "rope_theta": g.f64(&format!("{arch}.rope.freq_base")).unwrap_or(10000.0),
        "num_experts_per_tok": need("expert_used_count")?,
        "tie_word_embeddings": !g.tensors.iter().any(|t| t.name == "output.weight"),
        "rope_interleave": permuted,
    });
    let ffn = g.usize(&format!("{arch}.feed_forward_length"));
    let expert_ffn = g.usize(&format!("{arch}.expert_feed_forward_length"));
    match arch {
        "llama" => {
            c["num_local_experts"] = json!(experts);
            c["intermediate_size"] = json!(ffn.ok_or_else(|| bad("missing llama.feed_forward_length".into()))?);
        }
        "qwen2moe" | "qwen3moe" => {
            c["num_experts"] = json!(experts);
            let width = expert_ffn.ok_or_else(|| bad(format!("missing {arch}.expert_feed_forward_length")))?;
            c["moe_intermediate_size"] = json!(width);
            c["intermediate_size"] = json!(ffn.unwrap_or(0));
            // llama.cpp renormalises the top-k weights for qwen3moe, not for qwen2moe.
            c["norm_topk_prob"] = json!(arch == "qwen3moe");
            if let Some(s) = g.usize("qwen2moe.expert_shared_feed_forward_length").filter(|_| arch == "qwen2moe") {
                c["shared_expert_intermediate_size"] = json!(s);
            }
        }
        _ => {
            c["num_experts"] = json!(experts);
            c["intermediate_size"] = json!(expert_ffn.or(ffn).unwrap_or(0));
            c["norm_topk_prob"] = json!(false);
        }
    }
    if let Some(clip) = g.f64(&format!("{arch}.attention.clamp_kqv")) {
        c["clip_qkv"] = json!(clip);
    }
    for (k, hf) in [("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id")] {
        if let Some(id) = g.usize(k) {
            c[hf] = json!(id);
        }
    }
    Ok(c)
}

/// The transformers name of GGUF tensor `name`, and a shape override (the Qwen2-MoE shared
/// expert gate is [C] in GGUF, [1, C] in transformers).
pub fn hf_name(name: &str) -> Option<(String, Option<Vec<usize>>)> {
    let global = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(n) = global {
        return Some((n.to_string(), None));
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (base, suffix) = rest.rsplit_once('.')?;
    let p = format!("model.layers.{layer}.");
    let mapped = match base {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate_inp" => "mlp.gate",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "ffn_gate_shexp" => "mlp.shared_expert.gate_proj",
        "ffn_up_shexp" => "mlp.shared_expert.up_proj",
        "ffn_down_shexp" => "mlp.shared_expert.down_proj",
        // Stacked [E, ...] expert tensors carry no `.weight` suffix in transformers.
        "ffn_gate_exps" => return Some((format!("{p}mlp.experts.gate_proj"), None)),
        "ffn_up_exps" => return Some((format!("{p}mlp.experts.up_proj"), None)),
        "ffn_down_exps" => return Some((format!("{p}mlp.experts.down_proj"), None)),
        "ffn_gate_inp_shexp" => return Some((format!("{p}mlp.shared_expert_gate.{suffix}"), Some(vec![]))),
        _ => return None,
    };
    Some((format!("{p}{mapped}.{suffix}"), None))
}

/// True for a path to a GGUF file (a file named *.gguf, or starting with the GGUF magic).
pub fn is_gguf(path: &Path) -> bool {
    if !path.is_file() {
        return false;
    }
    path.extension().is_some_and(|x| x == "gguf")
        || std::fs::File::open(path)
            .and_then(|mut f| {
                let mut m = [0u8; 4];
                std::io::Read::read_exact(&mut f, &mut m).map(|_| m == *b"GGUF")
            })
            .unwrap_or(false)
}

/// Opens a GGUF file: its model config and its tensors under transformers names.
pub fn open(path: &Path) -> Result<(Value, TensorStore)> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    // SAFETY: read-only map; a file changed on disk while we run is undefined behaviour we
    // accept, as every mmap-based loader does.
    let map = unsafe { Mmap::map(&file) }.map_err(io(path))?;
    let g = Gguf::parse(&map, path)?;
    let config = hf_config(&g)?;
    let mut entries = HashMap::new();
    for t in &g.tensors {
        let Some((name, shape_override)) = hf_name(&t.name) else { continue };
        let dtype = match t.ty {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            // Kept under its type's name: the loader refuses it by name if the model uses it.
            GgmlType::Other(_) => "",
        };
        let dtype = if dtype.is_empty() { t.ty.name() } else { dtype.to_string() };
        let mut shape = t.shape();
        if shape_override.is_some() {
            shape.insert(0, 1);
        }
        entries.insert(name, Entry { shard: 0, dtype, shape, start: t.start, end: t.end });
    }
    let store = TensorStore::from_map(path, Arc::new(Bytes::Map(map, file)), entries);
    Ok((config, store))
}
