//! `moe`: the command line. Parses flags, validates them into the engine's configs, runs.

mod args;
mod bench_infer;
mod compare_cmd;
mod dist_cmd;
mod export_cmd;
mod hf;
mod inspect_cmd;
mod merge_cmd;
mod perplexity_cmd;
mod plan_cmd;
mod serve_cmd;
mod train_cmd;

#[cfg(test)]
mod doc_claims;

use anyhow::{bail, Context, Result};
use args::parse_enum;
use clap::{Args, Parser, Subcommand};
use moe_engine::checkpoint;
use moe_engine::compare::spec::preset_or_variant;
use moe_engine::config::ModelConfig;
use moe_engine::corpus::Source;
use moe_engine::generate::{generate_on, Sampling};
use moe_engine::model::Model;
use moe_engine::tokenizer::Tokenizer;
use moe_engine::train::Precision;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "moe", version, about = "Train and run Mixture-of-Experts language models on CPUs")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a dense or MoE model on a corpus (default: the toolchain's Rust documentation and Rust sources).
    Train(Box<train_cmd::TrainArgs>),
    /// Train a dense model and MoE models of equal active compute in lockstep and report which
    /// reaches which validation loss how fast (or a trade-off sweep with --sweep).
    Compare(Box<compare_cmd::CompareArgs>),
    /// Initialise an MoE from a trained dense checkpoint and train it against an MoE from scratch
    /// and the dense model continued, for the same extra compute.
    Upcycle(Box<compare_cmd::UpcycleArgs>),
    /// Generate text from a checkpoint of ours or a Hugging Face model directory.
    Generate(GenerateArgs),
    /// Serve a Hugging Face or GGUF model over an OpenAI-compatible HTTP API (continuous batching).
    Serve(serve_cmd::ServeArgs),
    /// Show parameters, FLOPs and memory of a preset, config file, checkpoint or Hugging Face model.
    Inspect(inspect_cmd::InspectArgs),
    /// Write the float32 logits of every position of a Hugging Face model to a .npy file.
    Logits(hf::LogitsArgs),
    /// Plot one run (loss, expert-load heatmap, load balance) or compare several.
    Plot(PlotArgs),
    /// Which experts the tokens of each document and of prose vs code go to.
    Routes(RoutesArgs),
    /// Place a run's experts on ranks: max/mean tokens per rank before and after balancing.
    Balance(dist_cmd::BalanceArgs),
    /// Memory of training and inference and the fewest devices that hold a model, with placement.
    Plan(plan_cmd::PlanArgs),
    /// Prepare a corpus (clean, deduplicate, train the tokenizer, tokenise; cached) and report its size.
    Corpus(CorpusArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Write a checkpoint trained by moe as a Hugging Face checkpoint (the eight MoE families, Llama, Qwen2) or a GGUF file.
    Export(export_cmd::ExportArgs),
    /// Fold the LoRA adapters of a fine-tuned checkpoint into its weights.
    MergeLora(merge_cmd::MergeLoraArgs),
    /// Mean cross-entropy and perplexity of a Hugging Face or GGUF model on a text.
    Perplexity(perplexity_cmd::PerplexityArgs),
}

#[derive(Args)]
struct RoutesArgs {
    /// Checkpoint directory, or a run directory (its latest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// UTF-8 text file or directory, or `rust-docs` (default) or `rust-books`. Markdown ``` fences
    /// mark code in text files; `<pre>` blocks in the books.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Tokens routed per document.
    #[arg(long, default_value_t = 20000)]
    max_tokens: usize,
    /// Where routes_domain.png and routes_documents.png go (default: the checkpoint's run directory).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct CorpusArgs {
    /// UTF-8 text file or directory, `rust-docs` (default) or `rust-books`.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Vocabulary size of the tokenizer trained on it.
    #[arg(long, default_value_t = ModelConfig::default_moe().vocab_size)]
    vocab_size: usize,
    /// Tokenizer and token cache (default: ~/.cache/moe).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Also write the cleaned text to this file (documents separated by form feeds and their names).
    #[arg(long)]
    dump: Option<PathBuf>,
}

#[derive(Args)]
struct PlotArgs {
    /// Run directories (written by `moe train`).
    #[arg(long, num_args = 1.., required = true)]
    runs: Vec<PathBuf>,
    /// Names of the runs in legends and the table (default: directory names).
    #[arg(long, num_args = 1..)]
    labels: Vec<String>,
    /// Where comparison plots go (default: the run directory for one run, else required).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct GenerateArgs {
    /// Checkpoint directory, or a run directory (its latest checkpoint).
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    checkpoint: Option<PathBuf>,
    /// A Hugging Face model directory (config.json, *.safetensors, tokenizer.json), or a
    /// llama.cpp GGUF file (Mixtral, Qwen2/3-MoE, OLMoE, GraniteMoE, DeepSeek-V3/R1; its embedded tokenizer is used unless a tokenizer.json sits beside it).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Directory of the tokenizer.json (default: the model directory; for a GGUF file, a tokenizer.json beside it, else the one embedded in the file).
    #[arg(long, requires = "model")]
    tokenizer: Option<PathBuf>,
    #[arg(long, default_value = "")]
    prompt: String,
    /// Send the prompt as a user message through the model's chat template (--model only).
    #[arg(long, requires = "model")]
    chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Quantise the weight matrices on load (--model only): q8_0 (blocks of 32 int8 + f16 scale).
    #[arg(long, requires = "model", value_parser = ["q8_0", "q4_0"])]
    quant: Option<String>,
    /// Keep the weights within this much memory (--model only; e.g. 4GiB): the shared weights
    /// stay resident, experts are read on demand into a cache of what is left (least used evicted), the next
    /// layer's likely experts prefetched.
    #[arg(long, requires = "model", value_parser = args::parse_size)]
    max_memory: Option<u64>,
    /// Multiply the prompt (prefill) in bf16 with f32 accumulation, on AMX or AVX512-BF16
    /// (--model only; decoding is unchanged). Faster prefill, logits within bf16 rounding.
    #[arg(long, alias = "amx", requires = "model")]
    bf16: bool,
    #[arg(long, default_value_t = 200)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = Sampling::default().temperature)]
    temperature: f64,
    /// 0 = off.
    #[arg(long, default_value_t = Sampling::default().top_k)]
    top_k: usize,
    /// 1 = off.
    #[arg(long, default_value_t = Sampling::default().top_p)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Spread the model's experts over N MPI ranks (`mpirun -np N`, `mpi` build feature); every
    /// rank decodes the same tokens, rank 0 prints.
    #[arg(long)]
    expert_parallel: Option<usize>,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Training and forward tokens/s of presets on random tokens.
    Train {
        /// Presets to measure; `PRESET/VARIANT` is a `moe compare` variant of the preset's dense
        /// reference (`default/dense default/8x2 default/16x3+1`: the comparison's shape).
        #[arg(long, num_args = 1.., default_values = ["bench-dense", "bench-moe8x2"])]
        presets: Vec<String>,
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        #[arg(long, default_value_t = 256)]
        seq_len: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// The machine's nominal fp32 peak (GFLOP/s, 2 threads; GUIDE section 6) for the second
        /// MFU column; the first is against the peak measured between the timed steps.
        #[arg(long, default_value_t = 330.0)]
        peak_gflops: f64,
        /// Matrix products in fp32, in bf16 on AMX or AVX512-BF16 (MFU is still against the fp32
        /// peak), or auto: bf16 where a calibration pass of each preset measures it faster.
        #[arg(long, value_parser = parse_enum::<Precision>, default_value = "auto")]
        precision: Precision,
        /// In-process data-parallel replicas (0 = one per thread; 1 = one, with multi-threaded
        /// matrix products); see `moe train --replicas`.
        #[arg(long, default_value_t = 0)]
        replicas: usize,
        /// Keep every preset in memory and run one step of each in turn, so they all see the
        /// same minutes of a shared machine; prints each step time against the first preset's.
        #[arg(long)]
        interleave: bool,
    },
    /// Prefill and decode tokens/s of a Hugging Face or GGUF model, bytes of weights per token,
    /// fraction of the memory bandwidth, and llama.cpp on the same GGUF file.
    Infer(bench_infer::InferBenchArgs),
}

fn main() {
    moe_engine::contain::install_quiet_hook();
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Train(a) => train_cmd::train(*a),
        Cmd::Compare(a) => compare_cmd::compare(*a),
        Cmd::Upcycle(a) => compare_cmd::upcycle_cmd(*a),
        Cmd::Generate(a) => generate_cmd(a),
        Cmd::Serve(a) => serve_cmd::serve(a),
        Cmd::Inspect(a) => inspect_cmd::inspect(a),
        Cmd::Logits(a) => hf::logits(a),
        Cmd::Plot(a) => plot(a),
        Cmd::Routes(a) => routes(a),
        Cmd::Corpus(a) => corpus_cmd(a),
        Cmd::Bench(b) => bench(b),
        Cmd::Export(a) => export_cmd::export(a),
        Cmd::MergeLora(a) => merge_cmd::merge_lora(a),
        Cmd::Perplexity(a) => perplexity_cmd::perplexity(a),
        Cmd::Balance(a) => dist_cmd::balance_cmd(a),
        Cmd::Plan(a) => plan_cmd::plan_cmd(a),
    }
}

fn generate_cmd(a: GenerateArgs) -> Result<()> {
    let s = Sampling { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed };
    let dist = match a.expert_parallel {
        Some(n) if n > 1 => Some(train_cmd::join_mpi_job(n)?),
        _ => None,
    };
    if a.bf16 {
        enable_bf16()?;
    }
    let ck_path = match (&a.model, &a.checkpoint) {
        (Some(dir), _) => {
            let comm = dist.as_ref().map(|d| d.comm.clone());
            let opts = hf::GenOpts {
                chat: a.chat,
                system: a.system.as_deref(),
                quant: a.quant.as_deref(),
                tokenizer: a.tokenizer.as_deref(),
                max_memory: a.max_memory,
                comm,
            };
            let r = hf::generate_cmd(dir, &a.prompt, &opts, a.max_tokens, &s);
            return match (r, &dist) {
                // A failing rank ends the job: the others may wait in an all-reduce.
                (Err(e), Some(d)) => d.comm.abort(&e.to_string()),
                (r, _) => r,
            };
        }
        (None, Some(p)) => p,
        (None, None) => bail!("pass --checkpoint DIR (a model trained by moe) or --model DIR (a Hugging Face model)"),
    };
    let lead = dist.as_ref().is_none_or(|d| d.shard.rank == 0);
    // Each rank reads only its own experts.
    let shard = dist.as_ref().map_or_else(moe_engine::dist::Shard::single, |d| d.shard.clone());
    let ck = checkpoint::load_sharded(ck_path, &shard)?;
    let tk_path = ck.dir.join("tokenizer.json");
    if !tk_path.is_file() {
        bail!("{}: no tokenizer.json in the checkpoint; it was not written by `moe train`", ck.dir.display());
    }
    let tk = Tokenizer::load(&tk_path)?;
    let (model, params) = (Model::<f32>::sharded(ck.config, shard)?, ck.params);
    let mut out = std::io::stdout();
    if lead {
        let _ = write!(out, "{}", a.prompt);
    }
    let comm = dist.as_ref().map(|d| d.comm.clone());
    let stats = generate_on(
        &model,
        &params,
        &tk,
        &a.prompt,
        a.max_tokens,
        &s,
        &mut |piece| {
            if lead {
                let _ = write!(out, "{piece}");
                let _ = out.flush();
            }
        },
        comm,
    )?;
    if !lead {
        return Ok(());
    }
    println!();
    eprintln!(
        "{} prompt tokens in {:.2}s, {} new tokens at {:.1} tokens/s{}",
        stats.prompt_tokens,
        stats.prefill_s,
        stats.new_tokens,
        stats.new_tokens as f64 / stats.decode_s.max(1e-9),
        if stats.hit_context { " (stopped at the model's context length)" } else { "" }
    );
    Ok(())
}

fn corpus_cmd(a: CorpusArgs) -> Result<()> {
    let source = Source::parse(a.data.as_deref());
    let cache = a.cache_dir.unwrap_or_else(args::default_cache_dir);
    let data = moe_engine::dataset::Dataset::prepare(&source, a.vocab_size, &cache, &|m| eprintln!("{m}"), true)?;
    println!("corpus: {}", source.describe());
    println!("documents: {}", data.info.documents);
    println!("text: {:.1} MB after cleaning and deduplication", data.info.chars as f64 / 1e6);
    if let Some(d) = data.info.dedup {
        println!(
            "deduplication: {} of {} pages kept, {:.1} of {:.1} MB of text",
            d.pages_kept,
            d.pages,
            d.chars_after as f64 / 1e6,
            d.chars_before as f64 / 1e6
        );
    }
    println!(
        "tokens ({} vocabulary): {:.2} M training, {:.2} M validation",
        data.tokenizer.vocab_size(),
        data.train.len() as f64 / 1e6,
        data.val.len() as f64 / 1e6
    );
    println!("unigram entropy: {:.3} nats", data.unigram_entropy());
    println!("cache: {}", data.cache_dir.display());
    if let Some(path) = a.dump {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).with_context(|| path.display().to_string())?);
        for d in moe_engine::corpus::load(&source, true)? {
            write!(f, "\x0c{}\n{}\n", d.name, d.text)?;
        }
        f.flush()?;
        println!("text written to {}", path.display());
    }
    Ok(())
}

fn routes(a: RoutesArgs) -> Result<()> {
    let ck = checkpoint::load(&a.checkpoint)?;
    if ck.config.num_local_experts == 0 {
        bail!("{}: a dense model has no routing to analyse", ck.dir.display());
    }
    let tk = Tokenizer::load(&ck.dir.join("tokenizer.json"))?;
    let docs = moe_engine::corpus::load(&Source::parse(a.data.as_deref()), true)?;
    let model = Model::<f32>::new(ck.config)?;
    let (domain, docs_table) = moe_engine::routes::analyse(&model, &ck.params, &tk, &docs, a.max_tokens)?;
    println!("## By domain (share of each layer's assignments per expert, %)\n\n{}", domain.markdown());
    for l in 0..domain.counts[0].len() {
        println!("layer {l}: prose vs code routing distance (total variation) {:.3}", domain.distance(0, 1, l));
    }
    println!("\n## By document\n\n{}", docs_table.markdown());
    let out =
        a.out.unwrap_or_else(|| ck.dir.parent().and_then(|p| p.parent()).map_or(ck.dir.clone(), |p| p.to_path_buf()));
    std::fs::create_dir_all(&out)?;
    domain.plot("expert share / uniform share: prose vs code", &out.join("routes_domain.png"))?;
    docs_table.plot("expert share / uniform share per document", &out.join("routes_documents.png"))?;
    println!("\nplots: {} {}", out.join("routes_domain.png").display(), out.join("routes_documents.png").display());
    Ok(())
}

fn plot(a: PlotArgs) -> Result<()> {
    if a.runs.len() == 1 && a.out.is_none() {
        for p in moe_engine::report::plot_run(&a.runs[0])? {
            println!("{}", p.display());
        }
        return Ok(());
    }
    let Some(out) = a.out else { bail!("comparing several runs needs --out DIR for the plots") };
    if !a.labels.is_empty() && a.labels.len() != a.runs.len() {
        bail!("{} labels for {} runs; give one label per run or none", a.labels.len(), a.runs.len());
    }
    let runs: Vec<(String, PathBuf)> =
        a.runs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let name = a.labels.get(i).cloned().unwrap_or_else(|| {
                    p.file_name().map_or(p.display().to_string(), |n| n.to_string_lossy().into_owned())
                });
                (name, p.clone())
            })
            .collect();
    print!("{}", moe_engine::report::compare_runs(&runs, &out)?);
    let plots: Vec<String> = ["val_loss.png", "load_balance.png", "rank_balance.png"]
        .iter()
        .map(|f| out.join(f))
        .filter(|p| p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    println!("plots: {}", plots.join(" "));
    Ok(())
}

fn bench(b: BenchCmd) -> Result<()> {
    match b {
        BenchCmd::Train {
            presets,
            batch_size,
            seq_len,
            warmup,
            steps,
            peak_gflops,
            precision,
            replicas,
            interleave,
        } => {
            println!(
                "threads: {}; batch {batch_size} x {seq_len}; {warmup} warm-up + {steps} timed steps (median){}; --precision {precision}",
                rayon_threads(),
                if interleave { ", presets interleaved step by step" } else { "" }
            );
            println!(
                "{:<15} {:>10} {:>10} {:>5} {:>12} {:>12} {:>10} {:>10} {:>7} {:>7} {:>8} {:>5} {:>10}",
                "preset",
                "params",
                "active",
                "reps",
                "train tok/s",
                "fwd tok/s",
                "MFLOP/tok",
                "GFLOP/s",
                "peak",
                "MFU",
                "MFU nom",
                "busy",
                "train RSS"
            );
            let configs = presets.iter().map(|p| Ok((p.clone(), preset_or_variant(p)?))).collect::<Result<Vec<_>>>()?;
            let spec = moe_engine::bench::BenchSpec { b: batch_size, t: seq_len, warmup, steps, precision, replicas };
            let results = moe_engine::bench::bench_train(configs, spec, interleave)?;
            for r in &results {
                let rss = r.train_rss_mb.map_or("-".into(), |m| format!("{m:.0} MB"));
                let busy = r.busy.map_or("?".into(), |b| format!("{:.0}%", 100.0 * b));
                println!(
                    "{:<15} {:>9.1}M {:>9.1}M {:>5} {:>12.0} {:>12.0} {:>10.1} {:>10.1} {:>7.0} {:>6.1}% {:>7.1}% {:>5} {:>10}",
                    r.name,
                    r.total_params as f64 / 1e6,
                    r.active_params as f64 / 1e6,
                    r.replicas,
                    r.train_tokens_per_s(),
                    r.forward_tokens_per_s(),
                    r.train_flops_per_token / 1e6,
                    r.train_gflops(),
                    r.peak_gflops,
                    100.0 * r.mfu(),
                    100.0 * r.train_gflops() / peak_gflops,
                    busy,
                    rss
                );
            }
            for r in &results {
                println!("{}: {}", r.name, r.precision);
            }
            if let (true, Some(first)) = (interleave, results.first()) {
                for r in &results[1..] {
                    println!("step time {} / {}: {:.3}", r.name, first.name, r.step_s / first.step_s);
                }
            }
            Ok(())
        }
        BenchCmd::Infer(a) => bench_infer::bench_infer(a),
    }
}

/// `--bf16`: every f32 matrix product of the process in bf16, or an error saying why not.
fn enable_bf16() -> Result<()> {
    if !moe_kernels::matmul::set_bf16_matmul(true) {
        anyhow::bail!("--bf16: this CPU has neither AMX-BF16 tiles nor AVX512-BF16; run without --bf16");
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
