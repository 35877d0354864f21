//! `moe inspect`: one report for every model moe knows. A preset, config file or checkpoint of
//! ours: the engine's size formulas (`moe_engine::inspect`). A Hugging Face directory or GGUF
//! file: what its files hold (`moe_infer::sizes`), then, for a Hugging Face directory, the same
//! formulas for the form `moe train --init` fine-tunes it in, or why it cannot.

use anyhow::{bail, Context, Result};
use clap::Args;
use moe_engine::checkpoint;
use moe_engine::config::{ModelConfig, PRESETS};
use moe_engine::inspect::{bytes, count, report};
use moe_infer::config::Ffn;
use moe_infer::Model;
use std::fmt::Write;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct InspectArgs {
    /// A preset name, a config JSON file, a checkpoint/run directory, a Hugging Face model directory or a GGUF file.
    #[arg(default_value = "default")]
    target: String,
    /// Micro-batch for the training memory estimate.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Sequence length for FLOPs and memory (default: the model context; at most 2048 for a Hugging Face model).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Print the config as JSON (a starting point for --config; for a Hugging Face model, its training form).
    #[arg(long)]
    print_config: bool,
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    let path = PathBuf::from(&a.target);
    let hf_dir = path.is_dir() && moe_infer::hf_train::is_hf_dir(&path);
    if hf_dir || moe_infer::gguf_model::is_gguf(&path) {
        return checkpoint_files(&path, hf_dir, &a);
    }
    let cfg = if PRESETS.contains(&a.target.as_str()) {
        ModelConfig::preset(&a.target)?
    } else if path.is_dir() {
        checkpoint::load(&path)?.config
    } else if path.is_file() {
        let text = std::fs::read_to_string(&path)?;
        serde_json::from_str(&text).with_context(|| format!("{}: invalid model config", path.display()))?
    } else {
        bail!("`{}` is neither a preset ({}) nor a config file or checkpoint directory", a.target, PRESETS.join(", "));
    };
    cfg.validate()?;
    if a.print_config {
        println!("{}", serde_json::to_string_pretty(&cfg)?);
        return Ok(());
    }
    print!("{}", report(&cfg, a.batch_size, a.seq_len.unwrap_or(cfg.max_position_embeddings)));
    Ok(())
}

/// A Hugging Face directory or GGUF file: its files, then its training form.
fn checkpoint_files(path: &Path, hf_dir: bool, a: &InspectArgs) -> Result<()> {
    let train = hf_dir.then(|| moe_infer::hf_train::training_config(path));
    if a.print_config {
        match train {
            Some(Ok(cfg)) => println!("{}", serde_json::to_string_pretty(&cfg)?),
            Some(Err(e)) => bail!("the training model cannot hold this checkpoint: {e}"),
            None => bail!("--print-config needs a Hugging Face directory (a GGUF file has no training form)"),
        }
        return Ok(());
    }
    match (Model::load(path), &train) {
        (Ok(m), _) => print!("{}", files_report(&m)),
        // dense Llama, Mistral and Qwen2 checkpoints: fine-tuned and upcycled here, not served
        (Err(e), Some(Ok(_))) => println!("{}\n  not run by the inference engine: {e}", path.display()),
        (Err(e), _) => return Err(e.into()),
    }
    match train {
        Some(Ok(cfg)) => {
            let t = a.seq_len.unwrap_or(cfg.max_position_embeddings.min(2048));
            println!("\nfine-tuned with `moe train --init` (full; LoRA needs a fraction of the training memory):");
            for line in report(&cfg, a.batch_size, t).lines() {
                println!("  {line}");
            }
        }
        Some(Err(e)) => println!("\nnot trainable here (`moe train --init`): {e}"),
        None => {}
    }
    Ok(())
}

/// Architecture, experts, parameters counted from the tensors, bytes by dtype and the memory to run it.
fn files_report(m: &Model) -> String {
    let s = &m.spec;
    let x = moe_infer::sizes::summary(m);
    let moe_layers = s.ffn.iter().filter(|f| **f == Ffn::Moe).count();
    let mut o = String::new();
    let _ = writeln!(o, "{}  ({})", s.arch.name(), m.store.dir.display());
    let _ = writeln!(o, "  layers           {} ({} MoE, {} dense)", s.layers, moe_layers, s.layers - moe_layers);
    let _ = writeln!(o, "  hidden           {}   vocab {}   context {}", s.hidden, s.vocab, s.max_pos);
    let attn = match s.mla {
        Some(m) => format!("MLA: {} heads, kv rank {}, q rank {:?}, rope dim {}", s.heads, m.kv_lora, m.q_lora, m.rope),
        None => format!("{} heads, {} kv heads, head dim {}", s.heads, s.kv_heads, s.head_dim),
    };
    let _ = writeln!(o, "  attention        {attn}");
    let windows = s.windows.iter().filter(|w| w.is_some()).count();
    if windows > 0 {
        let _ = writeln!(o, "  sliding window   {} of {} layers", windows, s.layers);
    }
    let shared = s.moe.shared.map(|(w, g)| format!(", shared expert {w}{}", if g { " (gated)" } else { "" }));
    let _ = writeln!(
        o,
        "  experts          {} per MoE layer, top-{}, expert width {}{}",
        s.moe.experts,
        s.moe.top_k,
        s.moe.inter,
        shared.unwrap_or_default()
    );
    let _ = writeln!(o, "  router           {:?}", s.moe.router);
    let _ = writeln!(
        o,
        "  parameters       {} total, {} active per token ({:.1}%), {} in experts",
        count(x.total_params),
        count(x.active_params),
        100.0 * x.active_params as f64 / x.total_params as f64,
        count(x.expert_params)
    );
    let dt: Vec<String> = m.store.bytes_by_dtype().iter().map(|(d, b)| format!("{d} {}", bytes(*b as u64))).collect();
    let files = m.store.files.len();
    let _ = writeln!(o, "  weights          {} in {files} file(s): {}", bytes(x.weight_bytes), dt.join(", "));
    let ctx = s.max_pos.min(4096) as u64;
    let kv = x.kv_bytes_per_token;
    let _ = writeln!(o, "  KV cache (f32)   {} per token, {} at {ctx} tokens", bytes(kv), bytes(kv * ctx));
    let _ = writeln!(
        o,
        "  memory to run    {} (weights, memory-mapped) + {} (KV cache at {ctx} tokens)",
        bytes(x.weight_bytes),
        bytes(kv * ctx)
    );
    o
}
