//! `moe compare` and `moe upcycle`: train a reference model and variants on the same data, seed
//! and token order, one optimizer step of each in turn (lockstep), so every model meets the same
//! machine load; a model's wall-clock is the sum of its own step times (validation excluded).
//! Each variant gets a run directory like `moe train`'s (metrics.jsonl, final checkpoint);
//! `report` turns the runs into the comparison. Derivation of variants lives in `spec`, the
//! dense-to-MoE initialisation in `upcycle`.

pub mod report;
pub mod spec;
pub mod upcycle;

use crate::config::ModelConfig;
use crate::corpus::Source;
use crate::dataset::{Dataset, Vocab};
use crate::error::{Error, Result};
use crate::inspect::sizes;
use crate::train::{TrainConfig, Trainer};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// One model of a comparison.
#[derive(Clone, Debug)]
pub struct Variant {
    /// Name in tables and plots, and the name of its run directory.
    pub label: String,
    pub model: ModelConfig,
    /// Initial parameters (upcycled or continued); None = fresh initialisation.
    pub init: Option<Vec<f32>>,
    /// Share of the budget this variant trains (its schedule ends there; 1 = all of it).
    pub budget: f64,
}

/// How long every variant trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// Training tokens per variant.
    Tokens(u64),
    /// Training FLOPs per variant (each variant's own FLOPs per token).
    Flops(f64),
    /// Seconds of training steps per variant (steps estimated from a calibration).
    Seconds(f64),
    /// Seconds of training steps of the whole comparison, shared as equal tokens per variant
    /// (steps estimated from a calibration of each) and capped at one epoch of the training
    /// tokens, so no variant repeats data.
    Total(f64),
}

/// Everything a comparison needs.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// The first variant is the reference whose final validation loss the others must reach.
    pub variants: Vec<Variant>,
    /// Shared training settings; `steps` and `eval_every` are derived from the budget.
    pub train: TrainConfig,
    pub budget: Budget,
    /// Validations per variant, evenly spaced (the resolution of the time-to-loss figures).
    pub evals: u64,
    pub source: Source,
    /// A given tokenizer.json (a Hugging Face model's); None trains one on the corpus with the
    /// models' vocabulary size.
    pub tokenizer: Option<PathBuf>,
    pub out_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub progress: bool,
}

/// One validation of one variant.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct ValPoint {
    pub step: u64,
    pub tokens: u64,
    /// Seconds of training steps so far.
    pub seconds: f64,
    pub loss: f64,
}

/// What one variant did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VariantRun {
    pub label: String,
    pub model: ModelConfig,
    pub steps: u64,
    pub val: Vec<ValPoint>,
    /// Wall-clock of every optimizer step.
    pub step_seconds: Vec<f64>,
    pub dir: PathBuf,
    pub checkpoint: PathBuf,
    /// The matrix products' precision (`auto` resolved; the same for every variant).
    pub precision: crate::train::Precision,
}

/// Directory-safe form of a label.
pub fn dir_name(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

/// Steps of each variant for the budget.
fn plan_steps(o: &CompareOptions, data: &Dataset, data_key: &str) -> Result<Vec<u64>> {
    let tc = &o.train;
    let per_step = (tc.batch_size * tc.seq_len * tc.grad_accum) as f64;
    let step_s = match o.budget {
        Budget::Seconds(_) | Budget::Total(_) => calibrate(&o.variants, tc, data, data_key)?,
        _ => vec![],
    };
    if let Budget::Total(s) = o.budget {
        let epoch = (data.train.len() as f64 / per_step).floor().max(1.0);
        let steps = (s / step_s.iter().sum::<f64>()).min(epoch);
        return Ok(o.variants.iter().map(|v| (steps * v.budget).round().max(1.0) as u64).collect());
    }
    let steps = o.variants.iter().enumerate().map(|(i, v)| {
        let steps = match o.budget {
            Budget::Tokens(n) => n as f64 / per_step,
            Budget::Flops(f) => f / (sizes(&v.model, tc.batch_size, tc.seq_len).train_flops_per_token * per_step),
            Budget::Seconds(s) | Budget::Total(s) => s / step_s[i],
        };
        (steps * v.budget).round().max(1.0) as u64
    });
    Ok(steps.collect())
}

/// Timed rounds of [`calibrate`].
const CALIBRATION_ROUNDS: usize = 5;

/// Median seconds per step of a throwaway copy of each variant: one warm-up step each, then
/// rounds of one step of every variant in turn (as the comparison runs them), so a load that
/// comes or goes during the measurement weighs on every variant alike.
fn calibrate(variants: &[Variant], tc: &TrainConfig, data: &Dataset, data_key: &str) -> Result<Vec<f64>> {
    let tc = TrainConfig { steps: 1 + CALIBRATION_ROUNDS as u64, ..tc.clone() };
    let mut trainers = variants
        .iter()
        .map(|v| Trainer::new(v.model.clone(), tc.clone(), data_key.into()))
        .collect::<Result<Vec<_>>>()?;
    let mut times = vec![vec![]; trainers.len()];
    for round in 0..=CALIBRATION_ROUNDS {
        for (tr, t) in trainers.iter_mut().zip(&mut times) {
            let t0 = Instant::now();
            tr.step(&data.train)?;
            if round > 0 {
                t.push(t0.elapsed().as_secs_f64());
            }
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect())
}

/// Runs the comparison; returns one record per variant, in order.
pub fn run(o: &CompareOptions, log: &dyn Fn(&str)) -> Result<Vec<VariantRun>> {
    let Some(first) = o.variants.first() else {
        return Err(Error::config("nothing to compare", "give at least one variant"));
    };
    let mut labels: Vec<String> = o.variants.iter().map(|v| dir_name(&v.label)).collect();
    labels.sort();
    labels.dedup();
    if labels.len() != o.variants.len() {
        return Err(Error::config("two variants have the same name", "give every variant its own spec or label"));
    }
    for v in &o.variants {
        v.model.validate()?;
        if v.model.vocab_size != first.model.vocab_size {
            return Err(Error::config(
                format!(
                    "variant {} has vocabulary {}, {} has {}",
                    v.label, v.model.vocab_size, first.label, first.model.vocab_size
                ),
                "compare models that share a vocabulary",
            ));
        }
        o.train.validate(&v.model)?;
    }
    if o.out_dir.join("compare.json").exists() {
        return Err(Error::checkpoint(&o.out_dir, "already holds a comparison", "choose another --out"));
    }
    o.train.precision.apply()?;
    let vocab = match &o.tokenizer {
        Some(t) => Vocab::Given(t.clone()),
        None => Vocab::Train(first.model.vocab_size),
    };
    let data = Dataset::prepare(&o.source, vocab, &o.cache_dir, log, o.progress)?;
    data.check_context(o.train.seq_len)?;
    data.check_vocab(first.model.vocab_size)?;
    let data_key = data.cache_dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let tk_json = std::fs::read(data.cache_dir.join("tokenizer.json"))
        .map_err(Error::io(data.cache_dir.join("tokenizer.json")))?;
    // One precision for every variant (their losses compare without a precision effect):
    // `auto` decides on the reference model.
    let reference = Trainer::new(first.model.clone(), TrainConfig { steps: 1, ..o.train.clone() }, data_key.clone())?;
    log(&format!("{}: {}", first.label, reference.precision_line()));
    let o = &CompareOptions {
        train: TrainConfig { precision: reference.state.train.precision, ..o.train.clone() },
        ..o.clone()
    };
    drop(reference);
    let steps = plan_steps(o, &data, &data_key)?;
    let mut runs = vec![];
    let mut trainers = vec![];
    let mut logs = vec![];
    for (v, &n) in o.variants.iter().zip(&steps) {
        let tc = TrainConfig { steps: n, eval_every: (n / o.evals.max(1)).max(1), ..o.train.clone() };
        let tr = match &v.init {
            Some(p) => Trainer::with_params(v.model.clone(), tc, data_key.clone(), p.clone())?,
            None => Trainer::new(v.model.clone(), tc, data_key.clone())?,
        };
        let dir = o.out_dir.join(dir_name(&v.label));
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let path = dir.join("metrics.jsonl");
        logs.push((std::fs::File::create(&path).map_err(Error::io(&path))?, path));
        log(&format!(
            "{}: {} steps, {:.2} M parameters ({:.2} M active); {}",
            v.label,
            n,
            sizes(&v.model, 1, 1).total_params as f64 / 1e6,
            sizes(&v.model, 1, 1).active_params as f64 / 1e6,
            tr.precision_line()
        ));
        let per_step = (o.train.batch_size * o.train.seq_len * o.train.grad_accum) as f64;
        log(&data.epochs_message(&v.label, per_step * n as f64));
        runs.push(VariantRun {
            label: v.label.clone(),
            model: v.model.clone(),
            steps: n,
            val: vec![],
            step_seconds: vec![],
            dir,
            checkpoint: PathBuf::new(),
            precision: tr.state.train.precision,
        });
        trainers.push(tr);
    }
    let pb = if o.progress { ProgressBar::new(steps.iter().sum()) } else { ProgressBar::hidden() };
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} [{elapsed_precise}<{eta_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // Lockstep: one step of every unfinished variant per round.
    while runs.iter().zip(&trainers).any(|(r, t)| t.state.step < r.steps) {
        for ((r, tr), (file, path)) in runs.iter_mut().zip(trainers.iter_mut()).zip(logs.iter_mut()) {
            if tr.state.step >= r.steps {
                continue;
            }
            let t0 = Instant::now();
            let m = tr.step(&data.train)?;
            r.step_seconds.push(t0.elapsed().as_secs_f64());
            let mut line = json!({"kind": "train", "m": m}).to_string();
            let s = m.step;
            let tc = &tr.state.train;
            if s % tc.eval_every == 0 || s == r.steps {
                let loss = tr.evaluate(&data.val, tc.eval_batches);
                let seconds = r.step_seconds.iter().sum();
                r.val.push(ValPoint { step: s, tokens: tr.state.tokens, seconds, loss });
                let val =
                    json!({"kind": "val", "step": s, "tokens": tr.state.tokens, "seconds": seconds, "val_loss": loss});
                line = format!("{line}\n{val}");
                pb.println(format!("{}: step {s}/{}, validation loss {loss:.4}", r.label, r.steps));
                if pb.is_hidden() && o.progress {
                    log(&format!("{}: step {s}/{}, validation loss {loss:.4}", r.label, r.steps));
                }
            }
            writeln!(file, "{line}").map_err(Error::io(path.as_path()))?;
            if s == r.steps {
                r.checkpoint = tr.save(&r.dir.join("checkpoints"), Some(&tk_json))?;
            }
            pb.set_message(format!("{} loss {:.3}", r.label, m.ce));
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    Ok(runs)
}
