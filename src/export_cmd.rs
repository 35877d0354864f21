//! `moe export`: a checkpoint trained by moe as a Hugging Face Mixtral checkpoint (config.json,
//! model.safetensors with the hub's per-expert names, tokenizer.json), so that the inference
//! engine (`--model`, `--quant`, `--max-memory`), transformers and llama.cpp's converter can run
//! it, or as a GGUF file with its tokenizer embedded (`--gguf`) for llama.cpp and `moe serve`. Only models Mixtral can express are exported: softmax top-k routing with renormalised
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
    /// Output directory (created; must not hold a model already), or the GGUF file to write
    /// with --gguf or a name ending in .gguf (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// Write one GGUF file (llama.cpp's `llama` architecture with experts, f32 weights, the
    /// tokenizer embedded) instead of a Hugging Face directory.
    #[arg(long)]
    gguf: bool,
}

pub fn export(a: ExportArgs) -> Result<()> {
    let ck = checkpoint::load(&a.checkpoint)?;
    let gguf = a.gguf || a.out.extension().is_some_and(|x| x == "gguf");
    let (params, what) = if gguf {
        (moe_infer::from_moe::write_mixtral_gguf(&ck, &a.out)?, "a GGUF file (llama with experts)")
    } else {
        (moe_infer::from_moe::write_mixtral(&ck, &a.out, false)?, "MixtralForCausalLM")
    };
    let params = params as f64 / 1e6;
    eprintln!("exported {} ({params:.2} M parameters) to {} as {what}", ck.dir.display(), a.out.display());
    Ok(())
}
