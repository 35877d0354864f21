//! A checkpoint trained by moe, written as a Hugging Face Mixtral directory (config.json,
//! model.safetensors under the hub's per-expert names, tokenizer.json): what `moe export` hands
//! to transformers and llama.cpp, and what `moe serve --checkpoint` runs; or as a GGUF file
//! (llama.cpp's `llama` architecture with experts, the tokenizer embedded: `moe export --gguf`).
//!
//! Mixtral expresses softmax top-k routing with renormalised weights, every layer MoE, no
//! shared expert and no router bias. The aux-loss-free selection bias of moe's default preset
//! is one step further: with `selection_bias`, it is written as
//! `block_sparse_moe.gate.e_score_correction_bias` (DeepSeek-V3's name), which this crate adds
//! to the softmax scores for selection only, as training did; transformers would ignore it, so
//! an export for other tools leaves it out and refuses such models.

use crate::error::{io, Error, Result};
use crate::gguf_write::{GgufWriter, Meta};
use moe_engine::checkpoint::{self, Checkpoint};
use moe_engine::config::{ModelConfig, RouterKind};
use moe_engine::params::Layout;
use safetensors::tensor::{Dtype, TensorView};
use std::path::Path;

/// Why `cfg` cannot be written as Mixtral (with or without the selection bias), if it cannot.
pub fn not_mixtral(cfg: &ModelConfig, selection_bias: bool) -> Option<String> {
    let why = if cfg.num_local_experts == 0 {
        "it is dense"
    } else if cfg.router != RouterKind::SoftmaxTopk || !cfg.norm_topk_prob {
        "its router is not softmax top-k with renormalised weights"
    } else if cfg.num_moe_layers() != cfg.num_hidden_layers {
        "some of its layers are dense"
    } else if cfg.shared_expert_intermediate_size > 0 {
        "it has a shared expert"
    } else if cfg.router_bias {
        "its router has a bias"
    } else if cfg.has_selection_bias() && !selection_bias {
        "its router has a selection bias (the aux-loss-free balancing of the default preset; train with --bias-update-rate 0 to export)"
    } else {
        return None;
    };
    Some(why.to_string())
}

/// The Hugging Face name of tensor `name` of our layout, and whether it is stacked per expert
/// (`{e}` is the expert).
fn hf_name(name: &str) -> (String, bool) {
    let map = [
        (".mlp.router.weight", ".block_sparse_moe.gate.weight"),
        (".mlp.router.selection_bias", ".block_sparse_moe.gate.e_score_correction_bias"),
        (".mlp.experts.gate_proj", ".block_sparse_moe.experts.{e}.w1.weight"),
        (".mlp.experts.up_proj", ".block_sparse_moe.experts.{e}.w3.weight"),
        (".mlp.experts.down_proj", ".block_sparse_moe.experts.{e}.w2.weight"),
    ];
    for (ours, hf) in map {
        if let Some(prefix) = name.strip_suffix(ours) {
            return (format!("{prefix}{hf}"), hf.contains("{e}"));
        }
    }
    (name.to_string(), false)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    checkpoint::write_atomic(path, bytes).map_err(|e| Error::Input(format!("writing {}: {e}", path.display())))
}

/// Writes `ck` into the directory `out` (created; it must not hold a model). Returns the
/// parameter count.
pub fn write_mixtral(ck: &Checkpoint, out: &Path, selection_bias: bool) -> Result<usize> {
    let cfg = &ck.config;
    if let Some(why) = not_mixtral(cfg, selection_bias) {
        return Err(Error::Input(format!(
            "{}: cannot be written as Mixtral: {why}; Mixtral-style MoE models are supported",
            ck.dir.display()
        )));
    }
    if out.join("config.json").exists() {
        return Err(Error::Input(format!("{} already holds a model; choose another directory", out.display())));
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let config = serde_json::json!({
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.moe_intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim(),
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "num_local_experts": cfg.num_local_experts,
        "num_experts_per_tok": cfg.num_experts_per_tok,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
        "sliding_window": null,
        "torch_dtype": "float32",
        "router_aux_loss_coef": cfg.router_aux_loss_coef,
    });
    let text = serde_json::to_vec_pretty(&config).map_err(|e| Error::Input(e.to_string()))?;
    write(&out.join("config.json"), &text)?;
    // Every tensor under its hub name; stacked experts split into one matrix per expert.
    let layout = Layout::new(cfg);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
    for t in &layout.tensors {
        let data = t.span.of(&ck.params);
        let (name, per_expert) = hf_name(&t.name);
        if per_expert {
            let n = t.per_expert();
            for (e, chunk) in data.chunks_exact(n).enumerate() {
                tensors.push((name.replace("{e}", &e.to_string()), t.shape[1..].to_vec(), checkpoint::to_bytes(chunk)));
            }
        } else {
            tensors.push((name, t.shape.clone(), checkpoint::to_bytes(data)));
        }
    }
    let bad = |e: safetensors::SafeTensorError| Error::Input(format!("serialising the weights: {e}"));
    let views = tensors
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b).map_err(bad)?)))
        .collect::<Result<Vec<_>>>()?;
    write(&out.join("model.safetensors"), &safetensors::serialize(views, None).map_err(bad)?)?;
    let tk = ck.dir.join("tokenizer.json");
    if tk.is_file() {
        std::fs::copy(&tk, out.join("tokenizer.json")).map_err(io(&tk))?;
    }
    write(&out.join("tokenizer_config.json"), b"{}")?;
    Ok(layout.total)
}

/// The GGUF name of tensor `name` of our layout (llama.cpp's `llama` architecture with experts),
/// and the head count its rows are permuted over (queries and keys), if any.
fn gguf_name(cfg: &ModelConfig, name: &str) -> Option<(String, Option<usize>)> {
    let global = match name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(g) = global {
        return Some((g.to_string(), None));
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (base, heads) = match rest {
        "input_layernorm.weight" => ("attn_norm.weight", None),
        "self_attn.q_proj.weight" => ("attn_q.weight", Some(cfg.num_attention_heads)),
        "self_attn.k_proj.weight" => ("attn_k.weight", Some(cfg.num_key_value_heads)),
        "self_attn.v_proj.weight" => ("attn_v.weight", None),
        "self_attn.o_proj.weight" => ("attn_output.weight", None),
        "post_attention_layernorm.weight" => ("ffn_norm.weight", None),
        "mlp.router.weight" => ("ffn_gate_inp.weight", None),
        "mlp.experts.gate_proj" => ("ffn_gate_exps.weight", None),
        "mlp.experts.up_proj" => ("ffn_up_exps.weight", None),
        "mlp.experts.down_proj" => ("ffn_down_exps.weight", None),
        _ => return None,
    };
    Some((format!("blk.{layer}.{base}"), heads))
}

/// Query or key rows [heads * d, C] reordered as llama.cpp's converter does, so that its RoPE
/// over adjacent pairs (2i, 2i+1) computes what ours over (i, i + d/2) does: within a head, row
/// 2i + j takes row j * d/2 + i.
fn permute_rope_rows(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let d = w.len() / cols / heads;
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let (to, from) = (h * d + 2 * i + j, h * d + j * d / 2 + i);
                out[to * cols..(to + 1) * cols].copy_from_slice(&w[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

/// The tokenizer.json of a checkpoint (byte-level BPE, as moe trains them) as GGUF metadata:
/// tokens by id, their types (control for special added tokens), merges, and the
/// end-of-text token as BOS and EOS (no BOS is added).
fn gguf_tokenizer(w: &mut GgufWriter, tk: &serde_json::Value, vocab_size: usize) -> Result<()> {
    let bad = |what: &str| Error::Input(format!("tokenizer.json: {what}; a byte-level BPE written by moe is expected"));
    let model = &tk["model"];
    if model["type"] != "BPE" {
        return Err(bad("its model is not BPE"));
    }
    let mut tokens = vec![None; vocab_size];
    let mut types = vec![1i32; vocab_size];
    let vocab = model["vocab"].as_object().ok_or_else(|| bad("no model.vocab"))?;
    let entries = vocab.iter().map(|(t, id)| (t.as_str(), id, false));
    let added = tk["added_tokens"].as_array().into_iter().flatten();
    let added = added.map(|a| (a["content"].as_str().unwrap_or(""), &a["id"], a["special"] == true));
    for (text, id, special) in entries.chain(added) {
        let id = id
            .as_u64()
            .map(|i| i as usize)
            .filter(|&i| i < vocab_size)
            .ok_or_else(|| bad("a token id beyond the vocabulary"))?;
        tokens[id] = Some(text.to_string());
        if special {
            types[id] = 3; // control
        }
    }
    // ids the tokenizer never produces (the model's vocabulary may be larger): unused tokens
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = 5;
                format!("[PAD{i}]")
            })
        })
        .collect();
    let merges: Vec<String> = model["merges"]
        .as_array()
        .ok_or_else(|| bad("no model.merges"))?
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(p) => Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?)),
            _ => None,
        })
        .collect::<Option<_>>()
        .ok_or_else(|| bad("a merge that is neither \"a b\" nor [a, b]"))?;
    let eos = tokens.iter().position(|t| t == moe_engine::tokenizer::EOS);
    w.meta("tokenizer.ggml.model", Meta::Str("gpt2".into()));
    w.meta("tokenizer.ggml.pre", Meta::Str("gpt-2".into()));
    w.meta("tokenizer.ggml.tokens", Meta::Strs(tokens));
    w.meta("tokenizer.ggml.token_type", Meta::I32s(types));
    w.meta("tokenizer.ggml.merges", Meta::Strs(merges));
    if let Some(id) = eos {
        w.meta("tokenizer.ggml.bos_token_id", Meta::U32(id as u32));
        w.meta("tokenizer.ggml.eos_token_id", Meta::U32(id as u32));
    }
    w.meta("tokenizer.ggml.add_bos_token", Meta::Bool(false));
    Ok(())
}

/// Writes `ck` as a GGUF file at `out` (llama.cpp's `llama` architecture with experts, f32
/// tensors, the checkpoint's tokenizer embedded). Returns the parameter count.
pub fn write_mixtral_gguf(ck: &Checkpoint, out: &Path) -> Result<usize> {
    let cfg = &ck.config;
    if let Some(why) = not_mixtral(cfg, false) {
        return Err(Error::Input(format!(
            "{}: cannot be written as a Mixtral GGUF file: {why}; Mixtral-style MoE models are supported",
            ck.dir.display()
        )));
    }
    if out.exists() {
        return Err(Error::Input(format!("{} exists; choose another file name", out.display())));
    }
    let mut w = GgufWriter::default();
    let arch = "llama";
    w.meta("general.architecture", Meta::Str(arch.into()));
    w.meta("general.name", Meta::Str(format!("moe export of {}", ck.dir.display())));
    w.meta("general.file_type", Meta::U32(0)); // all f32
    let u = |x: usize| Meta::U32(x as u32);
    for (key, v) in [
        ("block_count", u(cfg.num_hidden_layers)),
        ("context_length", u(cfg.max_position_embeddings)),
        ("embedding_length", u(cfg.hidden_size)),
        ("feed_forward_length", u(cfg.moe_intermediate_size)),
        ("attention.head_count", u(cfg.num_attention_heads)),
        ("attention.head_count_kv", u(cfg.num_key_value_heads)),
        ("attention.layer_norm_rms_epsilon", Meta::F32(cfg.rms_norm_eps as f32)),
        ("rope.freq_base", Meta::F32(cfg.rope_theta as f32)),
        ("rope.dimension_count", u(cfg.head_dim())),
        ("expert_count", u(cfg.num_local_experts)),
        ("expert_used_count", u(cfg.num_experts_per_tok)),
        ("vocab_size", u(cfg.vocab_size)),
    ] {
        w.meta(&format!("{arch}.{key}"), v);
    }
    let tk = ck.dir.join("tokenizer.json");
    if tk.is_file() {
        let text = std::fs::read(&tk).map_err(io(&tk))?;
        let json = serde_json::from_slice(&text).map_err(|e| Error::Input(format!("{}: {e}", tk.display())))?;
        gguf_tokenizer(&mut w, &json, cfg.vocab_size)?;
    }
    let layout = Layout::new(cfg);
    for t in &layout.tensors {
        let (name, heads) = gguf_name(cfg, &t.name)
            .ok_or_else(|| Error::Input(format!("tensor {} has no GGUF name; report this as a bug", t.name)))?;
        let data = t.span.of(&ck.params);
        let data = match heads {
            Some(h) => permute_rope_rows(data, h, cfg.hidden_size),
            None => data.to_vec(),
        };
        w.tensor(&name, &t.shape, data);
    }
    write(out, &w.bytes())?;
    Ok(layout.total)
}
