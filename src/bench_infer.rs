//! `moe bench infer`: prefill and decode speed of a Hugging Face or GGUF model, the bytes of
//! weights a decoded token reads and the fraction of the measured memory bandwidth that makes,
//! with llama.cpp's `llama-bench` on the same GGUF file in the same run when it is installed.

use anyhow::{Context, Result};
use clap::Args;
use moe_engine::bench::median;
use moe_infer::bench::{active_bytes_per_token, read_bandwidth_gbs, time_decode, time_prefill, touch_weights};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Args)]
pub struct InferBenchArgs {
    /// A Hugging Face model directory or a GGUF file (llama.cpp runs only on a GGUF file).
    #[arg(long)]
    model: PathBuf,
    /// Quantise on load (our engine only; give llama.cpp a file of that type instead).
    #[arg(long, value_parser = ["q8_0", "q4_0"])]
    quant: Option<String>,
    /// Prompt tokens of the prefill measurement.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens of the decode measurement.
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    /// Tokens of context before the decode measurement (llama-bench's --n-depth), e.g. 4096 to
    /// measure decode against a long KV cache.
    #[arg(long, default_value_t = 0)]
    depth: usize,
    /// Repetitions (medians reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// llama.cpp's llama-bench (default: `llama-bench` on PATH; skipped when absent).
    #[arg(long)]
    llama_bench: Option<PathBuf>,
    /// Prefill in bf16 on AMX or AVX512-BF16 (f32 accumulation), as `moe generate --bf16`.
    #[arg(long, alias = "amx")]
    bf16: bool,
}

/// (prefill tokens/s, decode tokens/s) of llama-bench with the same sizes and thread count.
fn llama_cpp(bin: &Path, model: &Path, a: &InferBenchArgs, threads: usize) -> Result<(f64, f64)> {
    let out = Command::new(bin)
        .arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string(), "-p", &a.prompt_tokens.to_string(), "-n", &a.gen_tokens.to_string()])
        .args(["-r", &a.reps.to_string(), "-o", "json"])
        .args(if a.depth > 0 { vec!["-d".to_string(), a.depth.to_string()] } else { vec![] })
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        anyhow::bail!("{} failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("llama-bench printed no JSON")?;
    let rate = |prompt: bool| {
        v.as_array().into_iter().flatten().find_map(|r| {
            let n = r.get(if prompt { "n_prompt" } else { "n_gen" })?.as_u64()?;
            (n > 0).then(|| r.get("avg_ts")?.as_f64()).flatten()
        })
    };
    Ok((rate(true).unwrap_or(f64::NAN), rate(false).unwrap_or(f64::NAN)))
}

pub fn bench_infer(a: InferBenchArgs) -> Result<()> {
    let threads = crate::rayon_threads();
    if a.bf16 {
        crate::enable_bf16()?;
    }
    let mut m = moe_infer::Model::load(&a.model)?;
    if let Some(q) = a.quant.as_deref().and_then(moe_infer::weight::Quant::parse) {
        m.quantize(q, &mut |_, _| {});
    }
    let bytes = active_bytes_per_token(&m);
    eprintln!(
        "{} ({}), {threads} threads: {:.3} GB of weights read per decoded token",
        m.spec.arch.name(),
        a.model.display(),
        bytes as f64 / 1e9
    );
    let bw = read_bandwidth_gbs();
    // Warm-up, as llama-bench's: every page of the weights resident, one short decode.
    touch_weights(&m);
    time_decode(&m, 4, 1, 0)?;
    let reps = a.reps.max(1);
    let prefill =
        median((0..reps).map(|i| time_prefill(&m, a.prompt_tokens, i as u64)).collect::<moe_infer::Result<_>>()?);
    let decode =
        median((0..reps).map(|i| time_decode(&m, a.gen_tokens, i as u64, a.depth)).collect::<moe_infer::Result<_>>()?);
    let (pp, tg) = (a.prompt_tokens as f64 / prefill, 1.0 / decode);
    let gbs = bytes as f64 * tg / 1e9;
    println!("measured memory read bandwidth: {bw:.1} GB/s ({threads} threads)");
    let at = if a.depth > 0 { format!(" at depth {}", a.depth) } else { String::new() };
    println!("| engine | prefill {} tok/s | decode tok/s{at} | GB/s of weights | of bandwidth |", a.prompt_tokens);
    println!("|---|---:|---:|---:|---:|");
    println!("| moe | {pp:.1} | {tg:.2} | {gbs:.1} | {:.0}% |", 100.0 * gbs / bw);
    let bin = a.llama_bench.clone().unwrap_or_else(|| PathBuf::from("llama-bench"));
    let is_gguf = moe_infer::gguf_model::is_gguf(&a.model);
    match (is_gguf, a.quant.is_some()) {
        (false, _) => eprintln!("llama.cpp skipped: it needs a GGUF file (--model FILE.gguf)"),
        (true, true) => eprintln!("llama.cpp skipped: --quant changes our weights only"),
        (true, false) => match llama_cpp(&bin, &a.model, &a, threads) {
            Ok((lpp, ltg)) => {
                let lgbs = bytes as f64 * ltg / 1e9;
                println!("| llama.cpp | {lpp:.1} | {ltg:.2} | {lgbs:.1} | {:.0}% |", 100.0 * lgbs / bw);
                println!("| moe / llama.cpp | {:.2}x | {:.2}x | | |", pp / lpp, tg / ltg);
            }
            Err(e) => eprintln!("llama.cpp skipped: {e:#}"),
        },
    }
    Ok(())
}
