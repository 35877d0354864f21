//! `moe`: the command line. Parses flags, validates them into the engine's configs, runs.

mod hf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use moe_engine::checkpoint;
use moe_engine::config::{BalanceScope, DropPolicy, ModelConfig, RouterKind, PRESETS};
use moe_engine::corpus::Source;
use moe_engine::generate::{generate, Sampling};
use moe_engine::model::Model;
use moe_engine::run::{run, RunOptions};
use moe_engine::tokenizer::Tokenizer;
use moe_engine::train::{Precision, TrainConfig};
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
    /// Train a dense or MoE model on a corpus (default: the toolchain's Rust books).
    Train(Box<TrainArgs>),
    /// Generate text from a checkpoint of ours or a Hugging Face model directory.
    Generate(GenerateArgs),
    /// Show parameters, FLOPs and memory of a preset, config file, checkpoint or Hugging Face model.
    Inspect(InspectArgs),
    /// Write the float32 logits of every position of a Hugging Face model to a .npy file.
    Logits(hf::LogitsArgs),
    /// Plot one run (loss, expert-load heatmap, load balance) or compare several.
    Plot(PlotArgs),
    /// Which experts the tokens of each document and of prose vs code go to.
    Routes(RoutesArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Args)]
struct RoutesArgs {
    /// Checkpoint directory, or a run directory (its latest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// UTF-8 text file or directory (default: the Rust documentation books). Markdown ``` fences
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
struct ModelArgs {
    /// Model preset.
    #[arg(long, default_value = "default", value_parser = clap::builder::PossibleValuesParser::new(PRESETS))]
    preset: String,
    /// Model config JSON (Hugging Face field names; see `moe inspect --print-config`); overrides --preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override the number of experts (0 = dense).
    #[arg(long)]
    experts: Option<usize>,
    /// Override top-k (experts per token).
    #[arg(long)]
    top_k: Option<usize>,
    /// Override the expert hidden width.
    #[arg(long)]
    expert_size: Option<usize>,
    /// Override the load-balancing loss coefficient.
    #[arg(long)]
    aux_loss_coef: Option<f64>,
    /// Override the router z-loss coefficient.
    #[arg(long)]
    z_loss_coef: Option<f64>,
    /// Router: softmax_topk, topk_softmax, switch, sigmoid_group, expert_choice.
    #[arg(long, value_parser = parse_enum::<RouterKind>)]
    router: Option<RouterKind>,
    /// Renormalise the top-k routing weights (true/false).
    #[arg(long)]
    norm_topk_prob: Option<bool>,
    /// Balancing-loss pooling: global (Hugging Face), layer, sequence.
    #[arg(long, value_parser = parse_enum::<BalanceScope>)]
    aux_loss_scope: Option<BalanceScope>,
    /// Aux-loss-free balancing: selection-bias update rate per step (0 = off).
    #[arg(long)]
    bias_update_rate: Option<f64>,
    /// Expert capacity factor with token dropping (0 = dropless).
    #[arg(long)]
    capacity_factor: Option<f64>,
    /// Which assignments an over-full expert keeps: probability or position.
    #[arg(long, value_parser = parse_enum::<DropPolicy>)]
    drop_policy: Option<DropPolicy>,
    /// Router input jitter (multiplicative uniform noise, training only).
    #[arg(long)]
    router_jitter: Option<f64>,
    /// Expert groups and groups per token (sigmoid_group routing).
    #[arg(long)]
    n_group: Option<usize>,
    #[arg(long)]
    topk_group: Option<usize>,
    /// Routing weight scale (sigmoid_group routing).
    #[arg(long)]
    routed_scaling_factor: Option<f64>,
    /// Width of a shared expert every token uses (0 = none).
    #[arg(long)]
    shared_expert_size: Option<usize>,
    /// Gate the shared expert with sigmoid(x . w) (Qwen2-MoE).
    #[arg(long)]
    shared_expert_gate: Option<bool>,
    /// The first N layers stay dense.
    #[arg(long)]
    first_dense: Option<usize>,
    /// Only every N-th layer is MoE.
    #[arg(long)]
    moe_every: Option<usize>,
}

/// Parses a config enum from its snake_case name.
fn parse_enum<T: serde::de::DeserializeOwned>(s: &str) -> std::result::Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| e.to_string())
}

impl ModelArgs {
    fn build(&self) -> Result<ModelConfig> {
        let mut cfg = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("cannot read config {}", p.display()))?;
                serde_json::from_str(&text).with_context(|| {
                    format!("{}: invalid model config; start from `moe inspect --print-config`", p.display())
                })?
            }
            None => ModelConfig::preset(&self.preset)?,
        };
        if let Some(e) = self.experts {
            cfg.num_local_experts = e;
        }
        if let Some(k) = self.top_k {
            cfg.num_experts_per_tok = k;
        }
        if let Some(f) = self.expert_size {
            cfg.moe_intermediate_size = f;
        }
        if let Some(a) = self.aux_loss_coef {
            cfg.router_aux_loss_coef = a;
        }
        if let Some(z) = self.z_loss_coef {
            cfg.router_z_loss_coef = z;
        }
        set(&mut cfg.router, self.router);
        set(&mut cfg.norm_topk_prob, self.norm_topk_prob);
        set(&mut cfg.aux_loss_scope, self.aux_loss_scope);
        set(&mut cfg.bias_update_rate, self.bias_update_rate);
        set(&mut cfg.capacity_factor, self.capacity_factor);
        set(&mut cfg.drop_policy, self.drop_policy);
        set(&mut cfg.router_jitter_noise, self.router_jitter);
        set(&mut cfg.n_group, self.n_group);
        set(&mut cfg.topk_group, self.topk_group);
        set(&mut cfg.routed_scaling_factor, self.routed_scaling_factor);
        set(&mut cfg.shared_expert_intermediate_size, self.shared_expert_size);
        set(&mut cfg.shared_expert_gate, self.shared_expert_gate);
        set(&mut cfg.first_k_dense_replace, self.first_dense);
        set(&mut cfg.decoder_sparse_step, self.moe_every);
        cfg.validate()?;
        Ok(cfg)
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// UTF-8 text file or directory of text files (default: the Rust documentation books).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Run directory (default: runs/<preset>-<UTC time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long, requires = "out")]
    resume: bool,
    /// Optimizer steps of the whole schedule.
    #[arg(long)]
    steps: Option<u64>,
    /// Stop with a checkpoint after this step (the schedule still spans --steps).
    #[arg(long)]
    stop_after: Option<u64>,
    #[arg(long, default_value_t = TrainConfig::default().batch_size)]
    batch_size: usize,
    /// Tokens per training sequence (at most the model context).
    #[arg(long)]
    seq_len: Option<usize>,
    #[arg(long, default_value_t = TrainConfig::default().grad_accum)]
    grad_accum: usize,
    #[arg(long, default_value_t = TrainConfig::default().lr)]
    lr: f64,
    #[arg(long, default_value_t = TrainConfig::default().min_lr_ratio)]
    min_lr_ratio: f64,
    #[arg(long, default_value_t = TrainConfig::default().warmup_steps)]
    warmup: u64,
    #[arg(long, default_value_t = TrainConfig::default().weight_decay)]
    weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = TrainConfig::default().grad_clip)]
    grad_clip: f64,
    #[arg(long, default_value_t = TrainConfig::default().eval_every)]
    eval_every: u64,
    #[arg(long, default_value_t = TrainConfig::default().eval_batches)]
    eval_batches: usize,
    #[arg(long, default_value_t = TrainConfig::default().checkpoint_every)]
    checkpoint_every: u64,
    #[arg(long, default_value_t = TrainConfig::default().log_every)]
    log_every: u64,
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    seed: u64,
    /// Matrix products in fp32, or bf16 on AMX with fp32 accumulation and fp32 master weights.
    #[arg(long, value_parser = parse_enum::<Precision>, default_value = "fp32")]
    precision: Precision,
    /// Tokenizer and token cache (default: ~/.cache/moe).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Prompt of the sample printed at the end.
    #[arg(long, default_value = "fn main() {")]
    sample_prompt: String,
    /// Tokens of the sample printed at the end (0 = none).
    #[arg(long, default_value_t = 120)]
    sample_tokens: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct GenerateArgs {
    /// Checkpoint directory, or a run directory (its latest checkpoint).
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    checkpoint: Option<PathBuf>,
    /// A Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "")]
    prompt: String,
    /// Send the prompt as a user message through the model's chat template (--model only).
    #[arg(long, requires = "model")]
    chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Quantise the weight matrices on load (--model only): q8_0 (blocks of 32 int8 + f16 scale).
    #[arg(long, requires = "model", value_parser = ["q8_0"])]
    quant: Option<String>,
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
}

#[derive(Args)]
struct InspectArgs {
    /// A preset name, a config JSON file, a checkpoint/run directory or a Hugging Face model directory.
    #[arg(default_value = "default")]
    target: String,
    /// Micro-batch for the training memory estimate.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Sequence length for FLOPs and memory (default: the model context).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Print the config as JSON (a starting point for --config).
    #[arg(long)]
    print_config: bool,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Training and forward tokens/s of presets on random tokens.
    Train {
        /// Presets to measure.
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
        /// The machine's fp32 peak for MFU (GFLOP/s, 2 threads; GUIDE section 6).
        #[arg(long, default_value_t = 330.0)]
        peak_gflops: f64,
        /// Matrix products in fp32, or bf16 on AMX (MFU is still against the fp32 peak).
        #[arg(long, value_parser = parse_enum::<Precision>, default_value = "fp32")]
        precision: Precision,
    },
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Train(a) => train(*a),
        Cmd::Generate(a) => generate_cmd(a),
        Cmd::Inspect(a) => inspect(a),
        Cmd::Logits(a) => hf::logits(a),
        Cmd::Plot(a) => plot(a),
        Cmd::Routes(a) => routes(a),
        Cmd::Bench(b) => bench(b),
    }
}

/// YYYYmmdd-HHMMSS in UTC, for default run directory names.
fn utc_stamp() -> String {
    let secs = moe_engine::clock::unix_secs();
    let (y, m, d) = moe_engine::clock::civil_date((secs / 86400) as i64);
    let rem = secs % 86400;
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

fn default_cache_dir() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from(".moe-cache"), |h| PathBuf::from(h).join(".cache/moe"))
}

fn train(a: TrainArgs) -> Result<()> {
    let model = a.model.build()?;
    let defaults = TrainConfig::default();
    let tc = TrainConfig {
        steps: a.steps.unwrap_or(defaults.steps),
        batch_size: a.batch_size,
        seq_len: a.seq_len.unwrap_or(model.max_position_embeddings),
        grad_accum: a.grad_accum,
        lr: a.lr,
        min_lr_ratio: a.min_lr_ratio,
        warmup_steps: a.warmup,
        weight_decay: a.weight_decay,
        grad_clip: a.grad_clip,
        eval_every: a.eval_every,
        eval_batches: a.eval_batches,
        checkpoint_every: a.checkpoint_every,
        log_every: a.log_every,
        seed: a.seed,
        precision: a.precision,
        ..defaults
    };
    let name = a.model.config.as_ref().map_or(a.model.preset.clone(), |_| "custom".into());
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(format!("{name}-{}", utc_stamp())));
    let opts = RunOptions {
        model,
        train: tc,
        source: a.data.clone().map_or(Source::RustDocs, Source::Path),
        out_dir: out.clone(),
        cache_dir: a.cache_dir.clone().unwrap_or_else(default_cache_dir),
        resume: a.resume,
        steps_override: a.steps.filter(|_| a.resume),
        stop_after: a.stop_after,
        progress: !a.quiet,
        sample_prompt: a.sample_prompt.clone(),
        sample_tokens: a.sample_tokens,
    };
    eprintln!("moe train: run directory {}", out.display());
    if !a.resume {
        eprint!("{}", moe_engine::inspect::report(&opts.model, opts.train.batch_size, opts.train.seq_len));
    }
    let log = |m: &str| eprintln!("{m}");
    let s = run(&opts, &log)?;
    let last = s.metrics.last();
    if let Some(m) = last {
        eprintln!("step {}: train loss {:.4}, {:.0} tokens/s", m.step, m.ce, m.tokens_per_s);
    }
    if let Some(&(step, vl)) = s.val.last() {
        eprintln!("validation loss {vl:.4} at step {step} (unigram entropy of the corpus {:.3})", s.unigram_entropy);
    }
    eprintln!(
        "checkpoint {}\nloss plot  {}\nmetrics    {}",
        s.checkpoint.display(),
        s.plot.display(),
        out.join("metrics.jsonl").display()
    );
    if let Some(text) = s.sample {
        println!("--- sample ---\n{text}\n--------------");
    } else if !s.finished {
        eprintln!("stopped before the end of the schedule; continue with: moe train --resume --out {}", out.display());
    }
    Ok(())
}

fn generate_cmd(a: GenerateArgs) -> Result<()> {
    let s = Sampling { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed };
    let ck_path = match (&a.model, &a.checkpoint) {
        (Some(dir), _) => {
            let opts = hf::GenOpts { chat: a.chat, system: a.system.as_deref(), quant: a.quant.as_deref() };
            return hf::generate_cmd(dir, &a.prompt, &opts, a.max_tokens, &s);
        }
        (None, Some(p)) => p,
        (None, None) => bail!("pass --checkpoint DIR (a model trained by moe) or --model DIR (a Hugging Face model)"),
    };
    let ck = checkpoint::load(ck_path)?;
    let tk_path = ck.dir.join("tokenizer.json");
    if !tk_path.is_file() {
        bail!("{}: no tokenizer.json in the checkpoint; it was not written by `moe train`", ck.dir.display());
    }
    let tk = Tokenizer::load(&tk_path)?;
    let model = Model::<f32>::new(ck.config)?;
    let mut out = std::io::stdout();
    let _ = write!(out, "{}", a.prompt);
    let stats = generate(&model, &ck.params, &tk, &a.prompt, a.max_tokens, &s, &mut |piece| {
        let _ = write!(out, "{piece}");
        let _ = out.flush();
    })?;
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

fn inspect(a: InspectArgs) -> Result<()> {
    let path = PathBuf::from(&a.target);
    if path.is_dir() && hf::is_hf_dir(&path) {
        return hf::inspect(&path);
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
    print!("{}", moe_engine::inspect::report(&cfg, a.batch_size, a.seq_len.unwrap_or(cfg.max_position_embeddings)));
    Ok(())
}

fn routes(a: RoutesArgs) -> Result<()> {
    let ck = checkpoint::load(&a.checkpoint)?;
    if ck.config.num_local_experts == 0 {
        bail!("{}: a dense model has no routing to analyse", ck.dir.display());
    }
    let tk = Tokenizer::load(&ck.dir.join("tokenizer.json"))?;
    let docs = moe_engine::corpus::load(&a.data.clone().map_or(Source::RustDocs, Source::Path))?;
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
    println!("plots: {} {}", out.join("val_loss.png").display(), out.join("load_balance.png").display());
    Ok(())
}

fn bench(b: BenchCmd) -> Result<()> {
    match b {
        BenchCmd::Train { presets, batch_size, seq_len, warmup, steps, peak_gflops, precision } => {
            println!(
                "threads: {}; batch {batch_size} x {seq_len}; {warmup} warm-up + {steps} timed steps (median); {precision:?} matmuls",
                rayon_threads()
            );
            println!(
                "{:<15} {:>10} {:>10} {:>12} {:>12} {:>10} {:>7} {:>10}",
                "preset", "params", "active", "train tok/s", "fwd tok/s", "GFLOP/s", "MFU", "train RSS"
            );
            for p in presets {
                let cfg = ModelConfig::preset(&p)?;
                let r = moe_engine::bench::bench_train(&p, cfg, batch_size, seq_len, warmup, steps, precision)?;
                let rss = r.train_rss_mb.map_or("?".into(), |m| format!("{m:.0} MB"));
                println!(
                    "{:<15} {:>9.1}M {:>9.1}M {:>12.0} {:>12.0} {:>10.1} {:>6.1}% {:>10}",
                    p,
                    r.total_params as f64 / 1e6,
                    r.active_params as f64 / 1e6,
                    r.train_tokens_per_s(),
                    r.forward_tokens_per_s(),
                    r.train_gflops(),
                    100.0 * r.train_gflops() / peak_gflops,
                    rss
                );
            }
            Ok(())
        }
    }
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
