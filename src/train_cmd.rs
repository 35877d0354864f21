//! `moe train`: flags, then one training run (`moe_engine::run`) with its report.

use crate::args::{parse_enum, utc_stamp, ModelArgs, TrainFlags};
use anyhow::Result;
use clap::Args;
use moe_engine::dist::Dist;
use moe_engine::lora::{LoraConfig, LoraTarget};
use moe_engine::packed::BaseFormat;
use moe_engine::run::{run, RunOptions};
use moe_engine::train::TrainConfig;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    flags: TrainFlags,
    /// Run directory (default: runs/<preset>-<UTC time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long, requires = "out")]
    resume: bool,
    /// Fine-tune a Hugging Face checkpoint (Llama, Mistral, Qwen2, Mixtral, Qwen2-MoE with its
    /// dense layers first, OLMoE, Qwen3-MoE, GraniteMoE; any float dtype): its config replaces --preset/--config, and the data is tokenised with
    /// its tokenizer.json.
    #[arg(long, conflicts_with_all = ["resume", "config"])]
    init: Option<PathBuf>,
    /// With --init: train LoRA adapters of this rank (8 to 64 is usual) instead of all weights;
    /// the base model is frozen. `moe merge-lora` folds them into the weights.
    #[arg(long, requires = "init")]
    lora_rank: Option<usize>,
    /// The adapters' update B A is scaled by alpha / rank [default: 2 x rank].
    #[arg(long, requires = "lora_rank")]
    lora_alpha: Option<f64>,
    /// Comma-separated layers that get adapters: attn (q, k, v, o projections), experts (one
    /// adapter per routed expert), router, mlp (dense layers' MLPs and shared experts)
    /// [default: attn,experts,mlp, those the model has].
    #[arg(long, requires = "lora_rank", value_delimiter = ',', value_parser = parse_enum::<LoraTarget>)]
    lora_targets: Option<Vec<LoraTarget>>,
    /// How the frozen base's weight matrices are held while training: f32, bf16 (half the
    /// memory) or q8_0 (llama.cpp's 8-bit blocks, a quarter plus scales); products decode them.
    #[arg(long, requires = "lora_rank", default_value = "f32", value_parser = parse_enum::<BaseFormat>)]
    lora_base: BaseFormat,
    /// Optimizer steps of the whole schedule.
    #[arg(long)]
    steps: Option<u64>,
    /// Stop with a checkpoint after this step (the schedule still spans --steps).
    #[arg(long)]
    stop_after: Option<u64>,
    #[arg(long, default_value_t = TrainConfig::default().eval_every)]
    eval_every: u64,
    #[arg(long, default_value_t = TrainConfig::default().checkpoint_every)]
    checkpoint_every: u64,
    #[arg(long, default_value_t = TrainConfig::default().log_every)]
    log_every: u64,
    /// Prompt of the sample printed at the end.
    #[arg(long, default_value = "fn main() {")]
    sample_prompt: String,
    /// Tokens of the sample printed at the end (0 = none).
    #[arg(long, default_value_t = 120)]
    sample_tokens: usize,
    /// Spread the experts over N MPI ranks (start with `mpirun -np N`; needs the `mpi` build
    /// feature). --batch-size is per rank; every rank needs --out on a shared filesystem.
    #[arg(long, requires = "out")]
    expert_parallel: Option<usize>,
    /// With --expert-parallel: re-place the experts every N steps for the loads routed since
    /// the last placement, moving them and replicating hot ones (0 = keep them contiguous).
    #[arg(long, default_value_t = 0, requires = "expert_parallel")]
    rebalance_every: u64,
    /// With --rebalance-every: extra expert slots per MoE layer for replicas of hot experts;
    /// experts + redundant must be a multiple of the ranks.
    #[arg(long, default_value_t = 0, requires = "rebalance_every")]
    redundant_experts: usize,
}

/// This process's rank of an `mpirun -np N` job.
#[cfg(feature = "mpi")]
pub fn join_mpi_job(n: usize) -> Result<Dist> {
    use moe_engine::dist::Comm;
    let comm = moe_mpi::MpiComm::init().map_err(anyhow::Error::msg)?;
    if comm.size() != n {
        anyhow::bail!(
            "--expert-parallel {n}, but this job has {} processes; start it with `mpirun -np {n} moe ... --expert-parallel {n}`",
            comm.size()
        );
    }
    Ok(Dist::new(std::sync::Arc::new(comm)))
}

#[cfg(not(feature = "mpi"))]
pub fn join_mpi_job(_: usize) -> Result<Dist> {
    anyhow::bail!(
        "this moe was built without MPI; build it with `cargo build --release --features mpi` (Debian: apt install libopenmpi-dev openmpi-bin libclang-dev)"
    )
}

pub fn train(a: TrainArgs) -> Result<()> {
    let (model, init) = match &a.init {
        Some(dir) => {
            let d = moe_infer::hf_train::read_checkpoint(dir)?;
            let Some(tokenizer) = d.tokenizer else {
                anyhow::bail!(
                    "{}: has no tokenizer.json; fine-tuning tokenises the data with the model's own",
                    dir.display()
                )
            };
            let mut config = d.config;
            config.lora = a.lora_rank.map(|rank| LoraConfig {
                rank,
                alpha: a.lora_alpha.unwrap_or(2.0 * rank as f64),
                targets: a
                    .lora_targets
                    .clone()
                    .unwrap_or_else(|| LoraTarget::DEFAULT.into_iter().filter(|t| t.present_in(&config)).collect()),
                base: a.lora_base,
            });
            (config, Some(moe_engine::run::Init::new(d.params, tokenizer)))
        }
        None => (a.model.build()?, None),
    };
    // Chat fine-tuning: JSONL conversations rendered by the model's template (the model's
    // directory given, or the one the resumed run recorded).
    let chat_dir = match (&a.init, a.resume) {
        (Some(dir), _) if a.flags.data.as_ref().is_some_and(|d| d.extension().is_some_and(|x| x == "jsonl")) => {
            Some(dir.clone())
        }
        (None, true) => moe_engine::run::recorded_chat(a.out.as_deref().unwrap_or(Path::new(".")))?
            .and_then(|t| t.parent().map(Path::to_path_buf)),
        _ => None,
    };
    let chat = chat_dir.map(|d| moe_engine::chat_data::chat_encoder(&d)).transpose()?;
    let tc = TrainConfig {
        steps: a.steps.unwrap_or(TrainConfig::default().steps),
        eval_every: a.eval_every,
        checkpoint_every: a.checkpoint_every,
        log_every: a.log_every,
        rebalance_every: a.rebalance_every,
        redundant_experts: a.redundant_experts,
        ..a.flags.config(&model)
    };
    let dist = match a.expert_parallel {
        Some(0) => anyhow::bail!("--expert-parallel needs at least 1 rank"),
        Some(n) if n > 1 => Some(join_mpi_job(n)?),
        _ => None,
    };
    let lead = dist.as_ref().is_none_or(|d| d.shard.rank == 0);
    let name = match (&a.init, &a.model.config) {
        (Some(_), _) => "init".to_string(),
        (None, Some(_)) => "custom".into(),
        (None, None) => a.model.preset.clone(),
    };
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(format!("{name}-{}", utc_stamp())));
    let opts = RunOptions {
        model,
        train: tc,
        source: a.flags.given_source(),
        out_dir: out.clone(),
        cache_dir: a.flags.cache_dir(),
        resume: a.resume,
        steps_override: a.steps.filter(|_| a.resume),
        stop_after: a.stop_after,
        progress: !a.flags.quiet,
        sample_prompt: a.sample_prompt.clone(),
        sample_tokens: a.sample_tokens,
        dist: dist.clone(),
        init,
        chat,
    };
    if lead {
        eprintln!("moe train: run directory {}", out.display());
        if let Some(d) = &dist {
            eprintln!(
                "expert parallelism over {} ranks: {} experts per rank, global batch {} sequences",
                d.shard.ranks,
                d.shard.slots_per_rank(opts.model.num_local_experts),
                d.shard.ranks * opts.train.batch_size
            );
        }
        if !a.resume {
            opts.model.validate()?;
            eprint!("{}", moe_engine::inspect::report(&opts.model, opts.train.batch_size, opts.train.seq_len));
        }
    }
    let log = |m: &str| eprintln!("{m}");
    let s = match (run(&opts, &log), &dist) {
        (Ok(s), _) => s,
        (Err(e), None) => return Err(e.into()),
        // A rank that fails ends the whole job: the others may be waiting in a collective.
        (Err(e), Some(d)) => d.comm.abort(&e.to_string()),
    };
    if !lead {
        return Ok(());
    }
    let last = s.metrics.last();
    if let Some(m) = last {
        eprintln!("step {}: train loss {:.4}, {:.0} tokens/s", m.step, m.ce, m.tokens_per_s);
    }
    if let Some(&(step, vl)) = s.val.last() {
        eprintln!("validation loss {vl:.4} at step {step} (unigram entropy of the corpus {:.3})", s.unigram_entropy);
    }
    let tail = &s.metrics[s.metrics.len() - s.metrics.len().div_ceil(5)..];
    let balance = moe_engine::report::layer_balance(tail);
    if !balance.is_empty() {
        let per_layer: Vec<String> = balance.iter().map(|b| format!("{b:.2}")).collect();
        eprintln!(
            "expert load over the last 20% of logged steps, max/mean per MoE layer: {} (1 = even)",
            per_layer.join(" ")
        );
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
