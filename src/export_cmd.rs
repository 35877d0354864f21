//! `moe export`: a checkpoint trained by moe as a Hugging Face checkpoint in the form of the
//! family it fits (Mixtral; Qwen2-MoE for shared experts, dense layers and unnormalised routing
//! weights; OLMoE and Qwen3-MoE for query/key norms; GraniteMoE for its multipliers; DeepSeek-V3
//! for latent attention; gpt-oss for sinks and windows; PhiMoE for the sparsemixer; Llama and
//! Qwen2 for dense models; LoRA adapters merged first; config.json, model.safetensors with the
//! hub's names, tokenizer.json) that the inference engine (`--model`, `--quant`,
//! `--max-memory`), transformers and llama.cpp's converter run, or as a GGUF file with its
//! tokenizer embedded (`--gguf`; llama, qwen2moe, olmoe, qwen3moe, granitemoe or deepseek2) for llama.cpp and `moe
//! serve`. Models with no such form are refused with the reason (the writers are
//! `moe_infer::from_moe` and `from_moe_gguf`; `moe serve --checkpoint` shares the first).

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
    // LoRA adapters are folded into the weights first
    let ck = moe_engine::lora::merge_checkpoint(checkpoint::load(&a.checkpoint)?);
    let gguf = a.gguf || a.out.extension().is_some_and(|x| x == "gguf");
    let (params, what) = if gguf {
        let (params, arch) = moe_infer::from_moe_gguf::write_gguf(&ck, &a.out)?;
        (
            params,
            if arch == "llama" {
                "a GGUF file (llama with experts)".to_string()
            } else {
                format!("a GGUF file ({arch})")
            },
        )
    } else {
        let (params, form) = moe_infer::from_moe::write_hf(&ck, &a.out, false)?;
        let class = form.class();
        (params, class.to_string())
    };
    let params = params as f64 / 1e6;
    eprintln!("exported {} ({params:.2} M parameters) to {} as {what}", ck.dir.display(), a.out.display());
    Ok(())
}
