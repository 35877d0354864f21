//! `moe perplexity`: the mean next-token cross-entropy and perplexity of a Hugging Face or
//! GGUF model on a text, in non-overlapping windows, to see what quantisation costs in quality.

use anyhow::{bail, Result};
use clap::Args;
use moe_infer::Cache;
use std::path::PathBuf;

#[derive(Args)]
pub struct PerplexityArgs {
    /// Hugging Face checkpoint directory, or a llama.cpp GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Directory of the tokenizer.json (default: the model directory; for a GGUF file, a tokenizer.json beside it, else the one embedded in the file).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Quantise the weight matrices on load.
    #[arg(long, value_parser = ["q8_0", "q4_0"])]
    quant: Option<String>,
    /// A UTF-8 text file.
    #[arg(long)]
    text: PathBuf,
    /// Tokens of the text to score (from its start).
    #[arg(long, default_value_t = 8192)]
    max_tokens: usize,
    /// Window length (default: the model's context, at most 512).
    #[arg(long)]
    window: Option<usize>,
}

pub fn perplexity(a: PerplexityArgs) -> Result<()> {
    let m = crate::hf::load(&a.model, a.quant.as_deref(), None)?;
    let text = std::fs::read_to_string(&a.text).map_err(|e| anyhow::anyhow!("{}: {e}", a.text.display()))?;
    let mut ids = crate::hf::tokenizer(&a.model, a.tokenizer.as_deref())?.encode(&text)?;
    ids.truncate(a.max_tokens);
    let w = a.window.unwrap_or(m.spec.max_pos.min(512)).min(m.spec.max_pos);
    if ids.len() < 2 || w < 2 {
        bail!("{}: fewer than 2 tokens to score (text of {} tokens, window {w})", a.text.display(), ids.len());
    }
    let v = m.spec.vocab;
    let (mut nll, mut n) = (0.0f64, 0usize);
    let pb = indicatif::ProgressBar::new(ids.len() as u64);
    for chunk in ids.chunks(w).filter(|c| c.len() >= 2) {
        let logits = m.forward(chunk, &mut Cache::new(&m.spec), true)?;
        for (row, &next) in logits.chunks_exact(v).zip(&chunk[1..]) {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            nll += lse - row[next as usize] as f64;
            n += 1;
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let mean = nll / n as f64;
    println!("{n} tokens in windows of {w}: mean cross-entropy {mean:.4} nats, perplexity {:.3}", mean.exp());
    Ok(())
}
