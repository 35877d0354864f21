//! A checkpoint trained by moe, written as a Hugging Face Mixtral directory (config.json,
//! model.safetensors under the hub's per-expert names, tokenizer.json): what `moe export` hands
//! to transformers and llama.cpp, and what `moe serve --checkpoint` runs.
//!
//! Mixtral expresses softmax top-k routing with renormalised weights, every layer MoE, no
//! shared expert and no router bias. The aux-loss-free selection bias of moe's default preset
//! is one step further: with `selection_bias`, it is written as
//! `block_sparse_moe.gate.e_score_correction_bias` (DeepSeek-V3's name), which this crate adds
//! to the softmax scores for selection only, as training did; transformers would ignore it, so
//! an export for other tools leaves it out and refuses such models.

use crate::error::{io, Error, Result};
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
