//! The `moe train` job around a `Trainer`: prepares the data, starts or resumes, shows a
//! progress bar, writes metrics (JSONL), validation, checkpoints and the loss plot, and ends
//! with a sample of generated text.

use crate::checkpoint;
use crate::config::ModelConfig;
use crate::corpus::Source;
use crate::dataset::{Dataset, DocEncoder, Vocab};
use crate::dist::Dist;
use crate::error::{Error, Result};
use crate::generate::{generate_on, Sampling};
use crate::train::{StepMetrics, TrainConfig, Trainer};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Everything `moe train` needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Model to train (ignored when resuming: the checkpoint's config is used).
    pub model: ModelConfig,
    /// Training settings (when resuming, the checkpoint's, except `steps_override`).
    pub train: TrainConfig,
    /// The data; None: the data the run in `out_dir` recorded when resuming, else the default
    /// corpus.
    pub source: Option<Source>,
    /// Run directory: metrics.jsonl, loss.png, checkpoints/, run.json (the data, for resumes).
    pub out_dir: PathBuf,
    /// Where tokenizers and tokenised corpora are cached.
    pub cache_dir: PathBuf,
    pub resume: bool,
    pub steps_override: Option<u64>,
    /// Stop (with a checkpoint) after this step, keeping the schedule of `steps`.
    pub stop_after: Option<u64>,
    pub progress: bool,
    /// Prompt and length of the sample printed at the end (0 tokens = no sample).
    pub sample_prompt: String,
    pub sample_tokens: usize,
    /// Expert parallelism: this process's rank of the job. Every rank trains; rank 0 alone
    /// logs, writes metrics, plots and the sample, and checkpoints (gathered from all ranks).
    pub dist: Option<Dist>,
    /// Start from these weights of `model` (a Hugging Face checkpoint: `moe train --init`) and
    /// tokenise the data with this tokenizer.json instead of training one.
    pub init: Option<Init>,
    /// Chat data: the encoder of JSONL conversations (with the tokenizer of `init`, or, when
    /// resuming, the one the run recorded).
    pub chat: Option<DocEncoder>,
}

/// Initial weights and their tokenizer. The run takes the weights instead of copying them (a
/// 1 B model's are 4 GB in f32): clones of the options share them, and only one run gets them.
#[derive(Clone, Debug)]
pub struct Init {
    params: std::sync::Arc<std::sync::Mutex<Option<Vec<f32>>>>,
    pub tokenizer: PathBuf,
}

impl Init {
    pub fn new(params: Vec<f32>, tokenizer: PathBuf) -> Self {
        Init { params: std::sync::Arc::new(std::sync::Mutex::new(Some(params))), tokenizer }
    }
    /// The weights, for the first caller.
    fn take(&self) -> Result<Vec<f32>> {
        let taken = self.params.lock().map(|mut p| p.take()).unwrap_or(None);
        taken.ok_or_else(|| Error::config("the initial weights were used by an earlier run", "load them again"))
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct RunSummary {
    pub metrics: Vec<StepMetrics>,
    /// (step, validation loss)
    pub val: Vec<(u64, f64)>,
    pub unigram_entropy: f64,
    pub checkpoint: PathBuf,
    pub plot: PathBuf,
    pub sample: Option<String>,
    pub finished: bool,
}

/// Prepares the data; under expert parallelism rank 0 first (it may train the tokenizer),
/// then the others from its cache.
fn prepare_data(o: &RunOptions, source: &Source, vocab: Vocab, log: &dyn Fn(&str)) -> Result<Dataset> {
    let Some(d) = &o.dist else { return Dataset::prepare(source, vocab, &o.cache_dir, log, o.progress) };
    let lead = d.shard.rank == 0;
    let first = if lead { Some(Dataset::prepare(source, vocab.clone(), &o.cache_dir, log, o.progress)) } else { None };
    if d.any_failed(first.as_ref().is_some_and(|r| r.is_err())) {
        return match first {
            Some(Err(e)) => Err(e),
            _ => Err(Error::config("rank 0 could not prepare the data", "see rank 0's error")),
        };
    }
    match first {
        Some(r) => r,
        None => Dataset::prepare(source, vocab, &o.cache_dir, &|_| {}, false),
    }
}

/// Ends the job on every rank if the ranks disagree on the model, the training settings or
/// the data (e.g. different flags per rank).
fn check_agreement(d: &Dist, what: &str) -> Result<()> {
    let h = crate::dataset::fnv(what.as_bytes(), crate::dataset::FNV_OFFSET);
    let mut root = h.to_le_bytes();
    d.comm.broadcast(&mut root, 0).map_err(|e| Error::config(e.to_string(), "check that every rank is running"))?;
    let differs = u64::from_le_bytes(root) != h;
    if d.any_failed(differs) {
        return Err(Error::config(
            format!(
                "the ranks of this job disagree on the model, training settings or data{}",
                if differs { format!(" (rank {} differs from rank 0)", d.shard.rank) } else { String::new() }
            ),
            "start every rank with the same flags and data",
        ));
    }
    Ok(())
}

pub fn run(o: &RunOptions, log: &dyn Fn(&str)) -> Result<RunSummary> {
    let lead = o.dist.as_ref().is_none_or(|d| d.shard.rank == 0);
    let quiet = |_: &str| {};
    let log: &dyn Fn(&str) = if lead { log } else { &quiet };
    let ck_root = o.out_dir.join("checkpoints");
    let metrics_path = o.out_dir.join("metrics.jsonl");
    let resume_ck = if o.resume {
        let shard = o.dist.as_ref().map_or_else(crate::dist::Shard::single, |d| d.shard.clone());
        Some(checkpoint::load_sharded(&ck_root, &shard).map_err(|e| match e {
            Error::Checkpoint { what, .. } if !ck_root.join("latest").exists() => Error::checkpoint(
                &o.out_dir,
                format!("nothing to resume ({what})"),
                "drop --resume to start a new run, or pass the --out of an earlier run",
            ),
            other => other,
        })?)
    } else {
        if ck_root.join("latest").exists() {
            return Err(Error::checkpoint(
                &o.out_dir,
                "already holds a training run",
                "pass --resume to continue it, or choose another --out",
            ));
        }
        None
    };
    let model_cfg = resume_ck.as_ref().map_or(o.model.clone(), |c| c.config.clone());
    model_cfg.validate()?;
    let (recorded, recorded_tokenizer) = if o.resume { recorded_data(&o.out_dir)? } else { (None, None) };
    let tokenizer = match (&o.init, o.resume) {
        (Some(i), false) => Some(i.tokenizer.clone()),
        _ => recorded_tokenizer,
    };
    if o.init.is_some() && o.dist.is_some() {
        return Err(Error::config(
            "--init with --expert-parallel",
            "fine-tune in one process (replicas use both cores)",
        ));
    }
    let source = match (&o.source, &recorded) {
        (Some(s), _) => s.clone(),
        (None, Some(r)) => {
            log(&format!("data: {r} (recorded by the run)"));
            Source::parse(Some(Path::new(r)))
        }
        (None, None) => Source::RustDocs,
    };
    let vocab = match (tokenizer.clone(), o.chat.clone()) {
        (Some(t), Some(encoder)) => Vocab::GivenWith { tokenizer: t, encoder, tag: "chat".into() },
        (Some(t), None) => Vocab::Given(t),
        (None, Some(_)) => {
            return Err(Error::config("chat data without a model's tokenizer", "fine-tune with --init MODEL_DIR"))
        }
        (None, None) => Vocab::Train(model_cfg.vocab_size),
    };
    let data = prepare_data(o, &source, vocab, log)?;
    data.check_vocab(model_cfg.vocab_size)?;
    let data_key = data.cache_dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    if tokenizer.is_none() && data.tokenizer.vocab_size() > model_cfg.vocab_size {
        return Err(Error::config(
            format!(
                "the tokenizer has {} tokens, the model only {}",
                data.tokenizer.vocab_size(),
                model_cfg.vocab_size
            ),
            "raise vocab_size",
        ));
    }
    if let Some(d) = &o.dist {
        let resume_step = resume_ck.as_ref().map(|c| c.state.clone());
        let what = serde_json::json!([model_cfg, o.train, data_key, resume_step, o.steps_override, o.stop_after]);
        check_agreement(d, &what.to_string())?;
    }
    let mut tr = match resume_ck {
        Some(ck) => {
            let tr = match &o.dist {
                Some(d) => Trainer::resume_distributed(ck, o.steps_override, d.clone())?,
                None => Trainer::resume(ck, o.steps_override)?,
            };
            if tr.state.data_key != data_key {
                let was = recorded.as_deref().unwrap_or("data this build no longer records");
                let what = match &o.source {
                    Some(s) if recorded.as_deref() != Some(s.to_arg().as_str()) => {
                        format!("was trained on another corpus or tokenizer ({was}), not on --data {}", s.to_arg())
                    }
                    _ => format!("was trained on another corpus or tokenizer: {was} has changed since"),
                };
                return Err(Error::checkpoint(
                    &o.out_dir,
                    what,
                    "resume with the run's own data as it was, or start a new run on this data",
                ));
            }
            tr
        }
        None => match (&o.dist, &o.init) {
            (Some(d), _) => Trainer::distributed(model_cfg, o.train.clone(), data_key, d.clone())?,
            (None, Some(i)) => Trainer::with_params(model_cfg, o.train.clone(), data_key, i.take()?)?,
            (None, None) => Trainer::new(model_cfg, o.train.clone(), data_key)?,
        },
    };
    let tc = tr.state.train.clone();
    data.check_context(tc.seq_len)?;
    std::fs::create_dir_all(&o.out_dir).map_err(Error::io(&o.out_dir))?;
    if lead {
        truncate_metrics(&metrics_path, tr.state.step)?;
        if recorded.is_none() {
            record_data(&o.out_dir, &source, tokenizer.as_deref(), o.chat.is_some())?;
        }
    }
    let unigram = data.unigram_entropy();
    log(&format!(
        "{} documents, {} training / {} validation tokens; unigram entropy {:.3} nats",
        data.info.documents,
        data.train.len(),
        data.val.len(),
        unigram
    ));
    let per_step = (tc.batch_size * tc.seq_len * tc.grad_accum) as f64;
    log(&data.epochs_message("this run", per_step * tc.steps as f64));
    let reps = tr.replicas();
    log(&format!(
        "batch {} x {} tokens on {reps} data-parallel replica{} ({} sequences each; --replicas); {}",
        tc.batch_size,
        tc.seq_len,
        if reps == 1 { "" } else { "s" },
        tc.batch_size / reps,
        tr.precision_line()
    ));
    let tk_json = std::fs::read(data.cache_dir.join("tokenizer.json"))
        .map_err(Error::io(data.cache_dir.join("tokenizer.json")))?;
    let mut mf = match lead {
        true => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .map_err(Error::io(&metrics_path))?,
        ),
        false => None,
    };
    let mut write_line = |v: serde_json::Value| -> Result<()> {
        mf.as_mut().map_or(Ok(()), |f| writeln!(f, "{v}").map_err(Error::io(&metrics_path)))
    };
    let end = o.stop_after.map_or(tc.steps, |s| s.min(tc.steps));
    let pb = if o.progress && lead { ProgressBar::new(tc.steps) } else { ProgressBar::hidden() };
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_position(tr.state.step);
    let (mut metrics, mut val) = (vec![], vec![]);
    let mut last_ck = None;
    while tr.state.step < end {
        let m = tr.step(&data.train)?;
        let s = m.step;
        if s % tc.log_every.max(1) == 0 || s == end {
            write_line(json!({"kind": "train", "m": m}))?;
        }
        let status = format!("loss {:.3} lr {:.1e} {:.0} tok/s", m.ce, m.lr, m.tokens_per_s);
        if pb.is_hidden() && o.progress && s % (10 * tc.log_every.max(1)) == 0 {
            log(&format!("step {s}/{}: {status}", tc.steps));
        }
        if m.skipped {
            let msg = format!(
                "step {s}: non-finite loss or gradient (loss {:.3e}, gradient norm {:.3e}), update skipped ({} in a row; the run stops after {})",
                m.loss, m.grad_norm, tr.state.skipped_in_a_row, tc.max_skipped_steps
            );
            if pb.is_hidden() {
                log(&msg);
            } else {
                pb.println(msg);
            }
        }
        if let Some(r) = m.rebalanced {
            let msg = format!(
                "step {s}: experts re-placed; max/mean tokens per rank over the last {} steps {:.2} -> {:.2}",
                r.steps, r.before, r.after
            );
            if pb.is_hidden() {
                log(&msg);
            } else {
                pb.println(msg);
            }
        }
        pb.set_message(status);
        pb.set_position(s);
        metrics.push(m);
        if (tc.eval_every > 0 && s % tc.eval_every == 0) || s == tc.steps {
            let vl = tr.evaluate(&data.val, tc.eval_batches);
            let msg = format!("step {s}: validation loss {vl:.4}");
            if pb.is_hidden() {
                log(&msg);
            } else {
                pb.println(msg);
            }
            write_line(json!({"kind": "val", "step": s, "tokens": tr.state.tokens, "val_loss": vl}))?;
            val.push((s, vl));
        }
        if (tc.checkpoint_every > 0 && s % tc.checkpoint_every == 0) || s == end {
            last_ck = Some(tr.save(&ck_root, Some(&tk_json))?);
        }
    }
    pb.finish_and_clear();
    if let Some(line) = rank_summary(&metrics) {
        log(&line);
    }
    let checkpoint = match last_ck {
        Some(c) => c,
        None => checkpoint::resolve(&ck_root)?,
    };
    let finished = tr.state.step >= tc.steps;
    let mut sample = None;
    if finished && o.sample_tokens > 0 {
        // Under expert parallelism every rank takes part, each with its own experts.
        let s = Sampling { seed: tc.seed, ..Default::default() };
        let mut text = o.sample_prompt.clone();
        let mut push = |piece: &str| text.push_str(piece);
        let comm = o.dist.as_ref().map(|d| d.comm.clone());
        let (p, n) = (&o.sample_prompt, o.sample_tokens);
        generate_on(&tr.model, &tr.params, &data.tokenizer, p, n, &s, &mut push, comm)?;
        sample = Some(text);
    }
    if !lead {
        let plot = o.out_dir.join("loss.png");
        return Ok(RunSummary { metrics, val, unigram_entropy: unigram, checkpoint, plot, sample: None, finished });
    }
    let plots = crate::report::plot_run(&o.out_dir)?;
    let plot = plots[0].clone();
    Ok(RunSummary { metrics, val, unigram_entropy: unigram, checkpoint, plot, sample, finished })
}

/// Drops metric lines past `step` (a run that went on after its last checkpoint).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    let kept: String =
        text.lines().filter(|l| line_step(l).is_some_and(|s| s <= step)).map(|l| format!("{l}\n")).collect();
    crate::checkpoint::write_atomic(path, kept.as_bytes())
}

fn line_step(line: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v.get("step").or_else(|| v.get("m").and_then(|m| m.get("step"))).and_then(|s| s.as_u64())
}

/// Per-rank expert rows and all-to-all seconds over the run (expert parallelism only).
fn rank_summary(metrics: &[StepMetrics]) -> Option<String> {
    let p = metrics.first()?.rank_rows.len();
    if p == 0 {
        return None;
    }
    let mut rows = vec![0.0; p];
    let mut wait = vec![0.0; p];
    let mut bytes = 0u64;
    for m in metrics {
        rows.iter_mut().zip(&m.rank_rows).for_each(|(a, b)| *a += b);
        wait.iter_mut().zip(&m.rank_comm_s).for_each(|(a, b)| *a += b);
        bytes += m.comm_bytes;
    }
    let mean = rows.iter().sum::<f64>() / p as f64;
    let max = rows.iter().cloned().fold(0.0, f64::max);
    let n = metrics.len() as f64;
    Some(format!(
        "expert parallelism: rows per rank and step {}; max/mean {:.2}; all-to-all seconds per step {}; {:.2} MB sent per step",
        rows.iter().map(|r| format!("{:.0}", r / n)).collect::<Vec<_>>().join(" / "),
        max / mean.max(1e-9),
        wait.iter().map(|w| format!("{:.3}", w / n)).collect::<Vec<_>>().join(" / "),
        bytes as f64 / n / 1e6
    ))
}

/// The run directory's record of its data (`run.json`), written when the run starts.
fn record_data(out: &Path, source: &Source, tokenizer: Option<&Path>, chat: bool) -> Result<()> {
    let mut json = serde_json::json!({ "data": source.to_arg() });
    if let Some(t) = tokenizer {
        json["tokenizer"] = serde_json::json!(t.to_string_lossy());
    }
    if chat {
        json["chat"] = serde_json::json!(true);
    }
    crate::checkpoint::write_atomic(&out.join("run.json"), json.to_string().as_bytes())
}

/// The `--data` the run in `out` recorded (None for runs from before 2026-12-06), and the
/// tokenizer.json it was given (`--init`).
fn recorded_data(out: &Path) -> Result<(Option<String>, Option<PathBuf>)> {
    let path = out.join("run.json");
    if !path.is_file() {
        return Ok((None, None));
    }
    let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::checkpoint(&path, format!("invalid run record ({e})"), "delete it and pass --data again")
    })?;
    let tokenizer = v.get("tokenizer").and_then(|t| t.as_str()).map(PathBuf::from);
    match v.get("data").and_then(|d| d.as_str()) {
        Some(d) => Ok((Some(d.to_string()), tokenizer)),
        None => Err(Error::checkpoint(&path, "names no data", "delete it and pass --data again")),
    }
}

/// Whether the run in `out` trains on chat data, and the tokenizer.json it recorded: what
/// `--resume` needs to build the chat encoder again.
pub fn recorded_chat(out: &Path) -> Result<Option<PathBuf>> {
    let path = out.join("run.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    Ok(if v["chat"] == true { v["tokenizer"].as_str().map(PathBuf::from) } else { None })
}
