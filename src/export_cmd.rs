//! `moe export`: a checkpoint trained by moe as a Hugging Face Mixtral checkpoint (config.json,
//! model.safetensors with the hub's per-expert names, tokenizer.json), so that the inference
//! engine (`--model`, `--quant`, `--max-memory`), transformers and llama.cpp's converter can run
//! it. Only models Mixtral can express are exported: softmax top-k routing with renormalised
//! weights, every layer MoE, no shared expert, router bias or selection bias.

use anyhow::{bail, Context, Result};
use clap::Args;
use moe_engine::checkpoint;
use moe_engine::config::{ModelConfig, RouterKind};
use moe_engine::params::Layout;
use safetensors::tensor::{Dtype, TensorView};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ExportArgs {
    /// Checkpoint directory, or a run directory (its latest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output directory (created; must not hold a model already).
    #[arg(long)]
    out: PathBuf,
}

/// Why `cfg` is not a Mixtral, if it is not.
fn not_mixtral(cfg: &ModelConfig) -> Option<String> {
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
    } else if cfg.has_selection_bias() {
        "its router has a selection bias (the aux-loss-free balancing of the default preset; train with --bias-update-rate 0 to export)"
    } else {
        return None;
    };
    Some(why.to_string())
}

/// The Hugging Face name of tensor `name` of our layout, and for a stacked expert tensor the
/// per-expert name pattern (`{e}` is the expert).
fn hf_name(name: &str) -> (String, bool) {
    let map = [
        (".mlp.router.weight", ".block_sparse_moe.gate.weight"),
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

pub fn export(a: ExportArgs) -> Result<()> {
    let ck = checkpoint::load(&a.checkpoint)?;
    let cfg = &ck.config;
    if let Some(why) = not_mixtral(cfg) {
        bail!("{}: cannot be exported as Mixtral: {why}; export supports Mixtral-style MoE models", ck.dir.display());
    }
    if a.out.join("config.json").exists() {
        bail!("{} already holds a model; choose another --out", a.out.display());
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
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
    write(&a.out.join("config.json"), serde_json::to_vec_pretty(&config)?.as_slice())?;
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
    let views = tensors
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()?;
    write(&a.out.join("model.safetensors"), &safetensors::serialize(views, None)?)?;
    let tk = ck.dir.join("tokenizer.json");
    if tk.is_file() {
        std::fs::copy(&tk, a.out.join("tokenizer.json")).with_context(|| format!("copying {}", tk.display()))?;
    }
    write(&a.out.join("tokenizer_config.json"), b"{}")?;
    let params = layout.total as f64 / 1e6;
    eprintln!("exported {} ({params:.2} M parameters) to {} as MixtralForCausalLM", ck.dir.display(), a.out.display());
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    checkpoint::write_atomic(path, bytes).map_err(Into::into)
}
