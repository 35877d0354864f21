//! `moe export`: a checkpoint trained by moe as a Hugging Face Mixtral checkpoint (config.json,
//! model.safetensors with the hub's per-expert names, tokenizer.json), so that the inference
//! engine (`--model`, `--quant`, `--max-memory`), transformers and llama.cpp's converter can run
//! it. Only models Mixtral can express are exported: softmax top-k routing with renormalised
//! weights, every layer MoE, no shared expert, router bias or selection bias (the writer is
//! `moe_infer::from_moe`, which `moe serve --checkpoint` shares).

use anyhow::Result;
use clap::Args;
use moe_engine::checkpoint;
use std::path::PathBuf;

#[derive(Args)]
pub struct ExportArgs {
    /// Checkpoint directory, or a run directory (its latest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output directory (created; must not hold a model already).
    #[arg(long)]
    out: PathBuf,
}

pub fn export(a: ExportArgs) -> Result<()> {
    let ck = checkpoint::load(&a.checkpoint)?;
    let params = moe_infer::from_moe::write_mixtral(&ck, &a.out, false)? as f64 / 1e6;
    eprintln!("exported {} ({params:.2} M parameters) to {} as MixtralForCausalLM", ck.dir.display(), a.out.display());
    Ok(())
}
