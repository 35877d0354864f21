//! `moe compare` (a dense model against MoE variants of equal active compute, or a sweep) and
//! `moe upcycle` (an MoE initialised from a dense checkpoint against one trained from scratch):
//! flags, the variants, then `moe_engine::compare` and its report.

use crate::args::{utc_stamp, ModelArgs, TrainFlags};
use anyhow::{bail, Context, Result};
use clap::Args;
use moe_engine::checkpoint;
use moe_engine::compare::spec::{dense_reference, Spec, SWEEP};
use moe_engine::compare::upcycle::upcycle;
use moe_engine::compare::{report, run, Budget, CompareOptions, Variant, VariantRun};
use moe_engine::config::ModelConfig;
use moe_engine::train::{Precision, TrainConfig};
use std::path::{Path, PathBuf};

/// How long each model trains; one of them (default: --tokens 1.2M).
#[derive(Args)]
#[group(multiple = false)]
pub struct BudgetArgs {
    /// Training tokens per model (suffixes k, M, G: 2.4M).
    #[arg(long, value_parser = parse_amount)]
    tokens: Option<f64>,
    /// Training FLOPs per model (1e15, 500T), each model at its own FLOPs per token.
    #[arg(long, value_parser = parse_amount)]
    flops: Option<f64>,
    /// Minutes of training steps per model (steps from the median of five timed steps of each model, taken in turns).
    #[arg(long)]
    minutes: Option<f64>,
    /// Minutes of training steps of the whole comparison, as equal tokens per model, at most
    /// one epoch each (`--total-minutes 60`: the one-hour comparison of RESULTS.md).
    #[arg(long)]
    total_minutes: Option<f64>,
}

impl BudgetArgs {
    fn budget(&self) -> Result<Budget> {
        let b = match (self.tokens, self.flops, self.minutes, self.total_minutes) {
            (_, Some(f), _, _) => Budget::Flops(f),
            (_, _, Some(m), _) => Budget::Seconds(m * 60.0),
            (_, _, _, Some(m)) => Budget::Total(m * 60.0),
            (t, _, _, _) => Budget::Tokens(t.unwrap_or(1.2e6) as u64),
        };
        let v = match b {
            Budget::Tokens(t) => t as f64,
            Budget::Flops(v) | Budget::Seconds(v) | Budget::Total(v) => v,
        };
        if !(v > 0.0 && v.is_finite()) {
            bail!("the budget must be positive");
        }
        Ok(b)
    }
}

/// Parses 2.4M, 500k, 1e15, 3T.
fn parse_amount(s: &str) -> std::result::Result<f64, String> {
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('M') => (&s[..s.len() - 1], 1e6),
        Some('G' | 'B') => (&s[..s.len() - 1], 1e9),
        Some('T') => (&s[..s.len() - 1], 1e12),
        _ => (s, 1.0),
    };
    num.parse::<f64>().map(|v| v * mult).map_err(|_| format!("`{s}` is not an amount such as 2.4M or 1e15"))
}

/// Settings every comparison shares.
#[derive(Args)]
pub struct CompareCommon {
    #[command(flatten)]
    budget: BudgetArgs,
    #[command(flatten)]
    flags: TrainFlags,
    /// Validations per model, evenly spaced (resolution of the time-to-loss figures).
    #[arg(long, default_value_t = 24)]
    evals: u64,
    /// Output directory (default: runs/compare-<UTC time> or runs/upcycle-<UTC time>).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
pub struct CompareArgs {
    /// The architecture; its dense version (every MoE block a dense MLP of --intermediate-size
    /// width) is the reference. Routing flags apply to every MoE variant.
    #[command(flatten)]
    model: ModelArgs,
    /// MoE variants: ExK (E experts, top-K, expert width = dense width / K: equal active
    /// compute), ExK+S (plus a shared expert S expert-widths wide, width = dense / (K + S)),
    /// ExK:F (explicit width F); a suffix @B trains that variant for B times the budget, its
    /// schedule ending there (16x3+1@0.5: does the MoE reach the dense loss in half the tokens?).
    #[arg(long, num_args = 1.., default_values = ["16x3+1"], conflicts_with = "sweep")]
    moe: Vec<String>,
    /// The trade-off sweep instead: 4x2, 8x2, 16x2 (experts), 8x1, 16x4, 32x8 (granularity), 16x3+1 (shared).
    #[arg(long)]
    sweep: bool,
    #[command(flatten)]
    common: CompareCommon,
}

#[derive(Args)]
pub struct UpcycleArgs {
    /// A dense checkpoint of ours (or its run directory), or a Hugging Face dense checkpoint
    /// directory (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM), trained on with its
    /// own tokenizer.
    #[arg(long)]
    from: PathBuf,
    /// The MoE: ExK[:F]; the expert width must divide the dense width (dense / width = slices).
    #[arg(long, default_value = "8x2")]
    moe: String,
    /// Standard deviation of the router's initial weights (small: near-uniform routing).
    #[arg(long, default_value_t = 1e-3)]
    router_std: f64,
    #[command(flatten)]
    common: CompareCommon,
}

fn header(title: &str, c: &CompareCommon, tc: &TrainConfig, budget: Budget, precision: Precision) -> String {
    let cmd: Vec<String> = std::iter::once("moe".to_string()).chain(std::env::args().skip(1)).collect();
    format!(
        "# {title}\n\n`{}`\n\n{} UTC; batch {} x {} tokens (x{} accumulation), lr {}, warmup {}, seed {}, {} matrix products, budget {:?}, data {}.\n\n",
        cmd.join(" "),
        utc_stamp(),
        tc.batch_size,
        tc.seq_len,
        tc.grad_accum,
        tc.lr,
        tc.warmup_steps,
        tc.seed,
        precision,
        budget,
        c.flags.source().describe()
    )
}

fn execute(
    title: &str,
    variants: Vec<Variant>,
    c: &CompareCommon,
    kind: &str,
    tokenizer: Option<PathBuf>,
) -> Result<()> {
    let tc = c.flags.config(&variants[0].model);
    let budget = c.budget.budget()?;
    let out = c.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(format!("{kind}-{}", utc_stamp())));
    let o = CompareOptions {
        variants,
        train: tc.clone(),
        budget,
        evals: c.evals.max(1),
        source: c.flags.source(),
        tokenizer,
        out_dir: out.clone(),
        cache_dir: c.flags.cache_dir(),
        progress: !c.flags.quiet,
    };
    eprintln!("moe {kind}: {} models in lockstep, output in {}", o.variants.len(), out.display());
    let runs: Vec<VariantRun> = run(&o, &|m| eprintln!("{m}"))?;
    let (md, plots) = report::write(&out, &runs, &tc, &header(title, c, &tc, budget, runs[0].precision))?;
    println!("{md}");
    for p in plots.iter().chain([&out.join("compare.md")]) {
        println!("{}", p.display());
    }
    Ok(())
}

pub fn compare(a: CompareArgs) -> Result<()> {
    let dense = dense_reference(&a.model.build()?);
    let specs: Vec<String> = if a.sweep { SWEEP.iter().map(|s| s.to_string()).collect() } else { a.moe.clone() };
    let mut variants = vec![Variant { label: "dense".into(), model: dense.clone(), init: None, budget: 1.0 }];
    for s in specs.iter().filter(|s| s.as_str() != "dense") {
        let spec = Spec::parse(s)?;
        variants.push(Variant { label: s.clone(), model: spec.config(&dense)?, init: None, budget: spec.budget });
    }
    execute("moe compare", variants, &a.common, "compare", None)
}

/// A dense model to upcycle: parameters trained by `moe train` (or `moe compare`) in `path`, and
/// the tokens they saw; or a Hugging Face dense checkpoint and its tokenizer.json.
struct DenseStart {
    config: ModelConfig,
    params: Vec<f32>,
    seen: u64,
    tokenizer: Option<PathBuf>,
}

fn load_dense(path: &Path) -> Result<DenseStart> {
    if moe_infer::hf_train::is_hf_dir(path) {
        let d = moe_infer::hf_train::read_checkpoint(path)?;
        if d.tokenizer.is_none() {
            bail!("{}: has no tokenizer.json; the corpus is tokenised with the model's own tokenizer", path.display());
        }
        return Ok(DenseStart { config: d.config, params: d.params, seen: 0, tokenizer: d.tokenizer });
    }
    let ck = checkpoint::load(path)?;
    if ck.config.num_local_experts != 0 {
        bail!("{}: is an MoE model; upcycling starts from a dense checkpoint", ck.dir.display());
    }
    let seen = ck.state.as_ref().and_then(|s| s.get("tokens")).and_then(|t| t.as_u64()).unwrap_or(0);
    Ok(DenseStart { config: ck.config, params: ck.params, seen, tokenizer: None })
}

pub fn upcycle_cmd(a: UpcycleArgs) -> Result<()> {
    let DenseStart { config: dense, params: dense_params, seen, tokenizer } = load_dense(&a.from)?;
    let spec = Spec::parse(&a.moe)?;
    let moe = spec.config(&dense)?;
    let f = moe.moe_intermediate_size;
    if !dense.intermediate_size.is_multiple_of(f) {
        bail!("--moe {}: expert width {f} does not divide the dense width {}", a.moe, dense.intermediate_size);
    }
    let split = dense.intermediate_size / f;
    let seed = a.common.flags.seed;
    let init = upcycle(&dense, &dense_params, &moe, split, a.router_std, seed)
        .with_context(|| format!("upcycling {}", a.from.display()))?;
    eprintln!(
        "upcycling {} (dense, {:.2} M tokens trained) into {} experts of width {f} ({} slice{} of the dense MLP)",
        a.from.display(),
        seen as f64 / 1e6,
        moe.num_local_experts,
        split,
        if split > 1 { "s" } else { "" }
    );
    let tag = a.moe.clone();
    let variants = vec![
        Variant { label: format!("{tag}-scratch"), model: moe.clone(), init: None, budget: 1.0 },
        Variant { label: format!("{tag}-upcycled"), model: moe, init: Some(init), budget: 1.0 },
        Variant { label: "dense-continued".into(), model: dense, init: Some(dense_params), budget: 1.0 },
    ];
    let title = format!(
        "moe upcycle (dense start: {}, {:.2} M tokens already trained, not counted below)",
        a.from.display(),
        seen as f64 / 1e6
    );
    execute(&title, variants, &a.common, "upcycle", tokenizer)
}
