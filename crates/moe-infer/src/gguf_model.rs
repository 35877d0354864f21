//! A llama.cpp GGUF model read as the Hugging Face checkpoint it was converted from: its
//! metadata becomes a config.json value for `Spec::parse`, and each tensor gets the name and
//! row-major shape the Hugging Face loader asks for (the stacked `ffn_{gate,up,down}_exps`
//! tensors as 3-D expert tensors), its data left in place in the memory map (F32, F16, BF16,
//! Q8_0, Q4_0 and the k-quants Q4_K, Q5_K, Q6_K; other ggml types are refused by name). Architectures: Mixtral (llama.cpp's
//! `llama` with `expert_count`), Qwen2-MoE, Qwen3-MoE, OLMoE, GraniteMoE and DeepSeek-V3/R1 (`deepseek2` with
//! sigmoid gating). llama.cpp stores DeepSeek's `kv_b_proj` split per head into `attn_k_b`
//! (transposed) and `attn_v_b`; they are joined back into `kv_b_proj` in f32 at open time.
//!
//! llama.cpp's converter permutes the query and key rows of `llama` models so that its RoPE
//! rotates adjacent pairs (2i, 2i+1) where transformers rotates (i, i + d/2); such a model is
//! run with interleaved RoPE, which gives the same attention scores.

use crate::error::{io, Error, Result};
use crate::gguf::Gguf;
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
        "granitemoe" => Some(("GraniteMoeForCausalLM", true)),
        // llama.cpp's expert_gating_func 2 = sigmoid (DeepSeek-V3); absent or 1 = softmax (V2)
        "deepseek2" if g.usize("deepseek2.expert_gating_func") == Some(2) => Some(("DeepseekV3ForCausalLM", false)),
        _ => None,
    }
}

/// The config.json a transformers checkpoint of this model would have.
pub fn hf_config(g: &Gguf) -> Result<Value> {
    let bad = |msg: String| Error::Config { path: g.path.clone(), msg };
    let arch = g.str("general.architecture").ok_or_else(|| bad("no general.architecture".into()))?;
    let (class, permuted) = hf_arch(g, arch).ok_or_else(|| {
        bad(format!(
            "GGUF architecture `{arch}` is not supported as an MoE model; supported: llama with experts (Mixtral), qwen2moe, qwen3moe, olmoe, granitemoe, deepseek2 with sigmoid gating (DeepSeek-V3/R1; V2's softmax routing is not)"
        ))
    })?;
    let need =
        |k: &str| g.usize(&format!("{arch}.{k}")).ok_or_else(|| bad(format!("missing or non-integer `{arch}.{k}`")));
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    if heads == 0 || hidden == 0 {
        return Err(bad(format!(
            "`{arch}.attention.head_count` is {heads} and `{arch}.embedding_length` is {hidden}: both must be positive (a damaged or hand-made file)"
        )));
    }
    let embed = g.tensors.iter().find(|t| t.name == "token_embd.weight");
    let vocab = g
        .usize(&format!("{arch}.vocab_size"))
        .or_else(|| g.kv.get("tokenizer.ggml.tokens").and_then(|t| t.as_array()).map(|a| a.len()))
        .or_else(|| embed.and_then(|t| t.ne.get(1)).map(|&v| v as usize))
        .ok_or_else(|| bad("no vocabulary size (vocab_size, tokenizer.ggml.tokens or token_embd.weight)".into()))?;
    if let Some(kind) = g.str(&format!("{arch}.rope.scaling.type")).filter(|k| *k != "none") {
        if !(arch == "deepseek2" && kind == "yarn") {
            return Err(bad(format!("RoPE scaling `{kind}` in a GGUF model is not supported")));
        }
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
            if arch == "qwen2moe" {
                // Qwen2-MoE has query/key/value biases; a file without them (moe's exports of
                // models trained without) says so by their absence
                c["qkv_bias"] = json!(g.tensors.iter().any(|t| t.name.ends_with("attn_q.bias")));
            }
        }
        "deepseek2" => deepseek_config(g, &mut c, experts, ffn)?,
        "granitemoe" => {
            c["num_local_experts"] = json!(experts);
            c["intermediate_size"] = json!(ffn.ok_or_else(|| bad("missing granitemoe.feed_forward_length".into()))?);
            let scale = |k: &str, default: f64| g.f64(&format!("granitemoe.{k}")).unwrap_or(default);
            c["embedding_multiplier"] = json!(scale("embedding_scale", 1.0));
            c["attention_multiplier"] = json!(scale("attention.scale", 1.0 / ((hidden / heads) as f64).sqrt()));
            c["residual_multiplier"] = json!(scale("residual_scale", 1.0));
            c["logits_scaling"] = json!(scale("logit_scale", 1.0));
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

/// The DeepSeek-V3 part of the config: MLA sizes (llama.cpp writes the absorbed view as
/// key_length/value_length and the per-head sizes as *_mla), routing, YaRN.
fn deepseek_config(g: &Gguf, c: &mut Value, experts: usize, ffn: Option<usize>) -> Result<()> {
    let bad = |msg: String| Error::Config { path: g.path.clone(), msg };
    let need = |k: &str| g.usize(&format!("deepseek2.{k}")).ok_or_else(|| bad(format!("missing `deepseek2.{k}`")));
    let f = |k: &str| g.f64(&format!("deepseek2.{k}"));
    let rope = need("rope.dimension_count")?;
    let key = need("attention.key_length_mla")?;
    if key <= rope {
        return Err(bad(format!("key_length_mla {key} must exceed the rotary dimension {rope}")));
    }
    c["num_key_value_heads"] = c["num_attention_heads"].clone();
    c["n_routed_experts"] = json!(experts);
    c["moe_intermediate_size"] = json!(need("expert_feed_forward_length")?);
    c["intermediate_size"] = json!(ffn.unwrap_or(0));
    c["n_shared_experts"] = json!(g.usize("deepseek2.expert_shared_count").unwrap_or(0));
    c["first_k_dense_replace"] = json!(g.usize("deepseek2.leading_dense_block_count").unwrap_or(0));
    c["routed_scaling_factor"] = json!(f("expert_weights_scale").unwrap_or(1.0));
    c["norm_topk_prob"] = json!(g.kv.get("deepseek2.expert_weights_norm").and_then(|v| v.as_bool()).unwrap_or(false));
    c["n_group"] = json!(g.usize("deepseek2.expert_group_count").unwrap_or(1));
    c["topk_group"] = json!(g.usize("deepseek2.expert_group_used_count").unwrap_or(1));
    c["q_lora_rank"] = json!(g.usize("deepseek2.attention.q_lora_rank"));
    c["kv_lora_rank"] = json!(need("attention.kv_lora_rank")?);
    c["qk_rope_head_dim"] = json!(rope);
    c["qk_nope_head_dim"] = json!(key - rope);
    c["v_head_dim"] = json!(need("attention.value_length_mla")?);
    c["rope_interleave"] = json!(true);
    if g.str("deepseek2.rope.scaling.type") == Some("yarn") {
        // llama.cpp's converter writes yarn_log_multiplier = 0.1 * mscale_all_dim; DeepSeek-V3
        // and R1 have mscale = mscale_all_dim, which is assumed here.
        let mscale = f("rope.scaling.yarn_log_multiplier").map_or(0.0, |m| m / 0.1);
        c["rope_parameters"] = json!({
            "rope_type": "yarn",
            "rope_theta": c["rope_theta"].clone(),
            "factor": f("rope.scaling.factor").ok_or_else(|| bad("YaRN without rope.scaling.factor".into()))?,
            "original_max_position_embeddings": need("rope.scaling.original_context_length")?,
            "beta_fast": f("rope.scaling.yarn_beta_fast").unwrap_or(32.0),
            "beta_slow": f("rope.scaling.yarn_beta_slow").unwrap_or(1.0),
            "mscale": mscale,
            "mscale_all_dim": mscale,
        });
    }
    Ok(())
}

/// The transformers name of GGUF tensor `name` in a model of GGUF architecture `arch`, and a
/// shape override (the Qwen2-MoE shared expert gate is [C] in GGUF, [1, C] in transformers).
pub fn hf_name(arch: &str, name: &str) -> Option<(String, Option<Vec<usize>>)> {
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
        "attn_q_a" => "self_attn.q_a_proj",
        "attn_q_a_norm" => "self_attn.q_a_layernorm",
        "attn_q_b" => "self_attn.q_b_proj",
        "attn_kv_a_mqa" => "self_attn.kv_a_proj_with_mqa",
        "attn_kv_a_norm" => "self_attn.kv_a_layernorm",
        "attn_kv_b" => "self_attn.kv_b_proj",
        // joined into kv_b_proj by `open`
        "attn_k_b" => "self_attn.k_b_proj",
        "attn_v_b" => "self_attn.v_b_proj",
        "exp_probs_b" if suffix == "bias" => return Some((format!("{p}mlp.gate.e_score_correction_bias"), None)),
        "ffn_gate_inp" if arch == "granitemoe" => "block_sparse_moe.router.layer",
        "ffn_gate_inp" => "mlp.gate",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        // DeepSeek names its shared experts in the plural, Qwen2-MoE in the singular
        "ffn_gate_shexp" | "ffn_up_shexp" | "ffn_down_shexp" => {
            let shared = if arch == "deepseek2" { "shared_experts" } else { "shared_expert" };
            let proj = base.trim_start_matches("ffn_").trim_end_matches("_shexp"); // gate, up, down
            return Some((format!("{p}mlp.{shared}.{proj}_proj.{suffix}"), None));
        }
        // Stacked [E, ...] expert tensors carry no `.weight` suffix in transformers.
        "ffn_gate_exps" | "ffn_up_exps" | "ffn_down_exps" => {
            let blk = if arch == "granitemoe" { "block_sparse_moe" } else { "mlp" };
            let proj = base.trim_start_matches("ffn_").trim_end_matches("_exps"); // gate, up, down
            return Some((format!("{p}{blk}.experts.{proj}_proj"), None));
        }
        "ffn_gate_inp_shexp" => return Some((format!("{p}mlp.shared_expert_gate.{suffix}"), Some(vec![]))),
        _ => return None,
    };
    Some((format!("{p}{mapped}.{suffix}"), None))
}

/// The GGUF names of a layer's tensors (before `.weight` / `.bias`) that [`hf_name`] maps: what
/// [`gguf_name`] searches to invert it, so that the mapping itself is written once.
const LAYER_BASES: [&str; 26] = [
    "attn_norm",
    "ffn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "attn_q_norm",
    "attn_k_norm",
    "attn_q_a",
    "attn_q_a_norm",
    "attn_q_b",
    "attn_kv_a_mqa",
    "attn_kv_a_norm",
    "attn_kv_b",
    "exp_probs_b",
    "ffn_gate_inp",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "ffn_gate_shexp",
    "ffn_up_shexp",
    "ffn_down_shexp",
    "ffn_gate_exps",
    "ffn_up_exps",
    "ffn_down_exps",
    "ffn_gate_inp_shexp",
];

/// The GGUF name whose [`hf_name`] in architecture `arch` is `hf` (the writer's direction).
pub fn gguf_name(arch: &str, hf: &str) -> Option<String> {
    let found = |cand: String| (hf_name(arch, &cand).map(|(n, _)| n).as_deref() == Some(hf)).then_some(cand);
    if let Some(g) =
        ["token_embd.weight", "output_norm.weight", "output.weight"].into_iter().find_map(|g| found(g.into()))
    {
        return Some(g);
    }
    let layer = hf.strip_prefix("model.layers.")?.split_once('.')?.0;
    LAYER_BASES.iter().flat_map(|b| ["weight", "bias"].map(|x| format!("blk.{layer}.{b}.{x}"))).find_map(found)
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
    let arch = g.str("general.architecture").unwrap_or_default();
    let mut entries = HashMap::new();
    for t in &g.tensors {
        let Some((name, shape_override)) = hf_name(arch, &t.name) else { continue };
        // named as ggml names it: an unsupported type is refused by name if the model uses it
        let dtype = t.ty.name();
        let mut shape = t.shape();
        if shape_override.is_some() {
            shape.insert(0, 1);
        }
        entries.insert(name, Entry { shard: 0, dtype, shape, start: t.start, end: t.end });
    }
    let mut store = TensorStore::from_map(path, Arc::new(Bytes::Map(map, file)), entries);
    join_kv_b(&mut store, &config)?;
    Ok((config, store))
}

/// kv_b_proj [H*(nope+v), kv_lora] of every layer from llama.cpp's k_b [H, kv_lora, nope]
/// (transposed) and v_b [H, v, kv_lora]: head h's rows are its nope key rows, then its v rows.
fn join_kv_b(store: &mut TensorStore, c: &Value) -> Result<()> {
    let dim = |k: &str| c[k].as_u64().unwrap_or(0) as usize;
    let (h, kv, nope, v) =
        (dim("num_attention_heads"), dim("kv_lora_rank"), dim("qk_nope_head_dim"), dim("v_head_dim"));
    let mut joined = vec![];
    // No more layers can hold a k_b than the file has tensors: a damaged block_count (2^40,
    // found by fuzzing) must not keep this loop naming layers for hours.
    for l in 0..dim("num_hidden_layers").min(store.entries.len()) {
        let p = format!("model.layers.{l}.self_attn.");
        let (kn, vn) = (format!("{p}k_b_proj.weight"), format!("{p}v_b_proj.weight"));
        if !store.contains(&kn) && !store.contains(&vn) {
            continue;
        }
        let (kb, vb) = (store.weight(&kn, &[h, kv, nope])?, store.weight(&vn, &[h, v, kv])?);
        let (mut k, mut vv) = (vec![0.0; h * kv * nope], vec![0.0; h * v * kv]);
        kb.rows_f32(0, &mut k);
        vb.rows_f32(0, &mut vv);
        let mut out = vec![0.0f32; h * (nope + v) * kv];
        for head in 0..h {
            let rows = &mut out[head * (nope + v) * kv..(head + 1) * (nope + v) * kv];
            for n in 0..nope {
                for j in 0..kv {
                    rows[n * kv + j] = k[(head * kv + j) * nope + n];
                }
            }
            rows[nope * kv..].copy_from_slice(&vv[head * v * kv..(head + 1) * v * kv]);
        }
        joined.push((format!("{p}kv_b_proj.weight"), vec![h * (nope + v), kv], out));
    }
    if !joined.is_empty() {
        store.add_f32(joined);
    }
    Ok(())
}
