//! The commands on Hugging Face checkpoints: `generate --model`, `inspect DIR`, `logits`.

use anyhow::{bail, Result};
use clap::Args;
use moe_engine::dist::Comm;
use moe_engine::generate::{GenStats, Sampling};
use moe_engine::inspect::bytes as gib;
use moe_engine::tokenizer::Tokenizer;
use moe_infer::generate::{eos_ids, generate};
use moe_infer::{Cache, Model};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the tokenizer of `model` lives: `flag`, else the model directory, else (a GGUF file)
/// the directory that holds it.
pub fn tokenizer_dir(model: &Path, flag: Option<&Path>) -> PathBuf {
    match flag {
        Some(d) => d.to_path_buf(),
        None if model.is_file() => model.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        None => model.to_path_buf(),
    }
}

/// The tokenizer of `model`: the tokenizer.json in `flag` or beside the model, else (a GGUF
/// file) the tokenizer embedded in the file, so a lone .gguf works.
pub fn tokenizer(model: &Path, flag: Option<&Path>) -> Result<Tokenizer> {
    let dir = tokenizer_dir(model, flag);
    if flag.is_none() && model.is_file() && !dir.join("tokenizer.json").is_file() {
        return Ok(moe_infer::gguf_tokenizer::load(model)?);
    }
    Ok(Tokenizer::open(&dir)?)
}

/// Opens a model; with `comm`, keeps only this rank's experts (before quantising).
pub fn load(dir: &Path, quant: Option<&str>, comm: Option<Arc<dyn Comm>>) -> Result<Model> {
    let t0 = std::time::Instant::now();
    let mut m = Model::load(dir)?;
    let lead = comm.as_ref().is_none_or(|c| c.rank() == 0);
    if let Some(c) = comm {
        m.shard_experts(c)?;
    }
    if lead {
        eprintln!("loaded {} in {:.2}s (memory-mapped)", m.spec.arch.name(), t0.elapsed().as_secs_f64());
    }
    if let Some(q) = quant {
        let t0 = std::time::Instant::now();
        let pb = if lead { indicatif::ProgressBar::new(0) } else { indicatif::ProgressBar::hidden() };
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "quantising {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} [{eta}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let Some(kind) = moe_infer::weight::Quant::parse(q) else {
            bail!("unknown quantisation `{q}`; use q8_0 or q4_0")
        };
        let bytes = m.quantize(kind, &mut |done, total| {
            pb.set_length(total);
            pb.set_position(done);
        });
        pb.finish_and_clear();
        let gib = bytes as f64 / (1u64 << 30) as f64;
        if lead {
            eprintln!("quantised to {q} in {:.2}s: {gib:.2} GiB in memory", t0.elapsed().as_secs_f64());
        }
    }
    Ok(m)
}

/// Options of `moe generate --model`.
pub struct GenOpts<'a> {
    pub chat: bool,
    pub system: Option<&'a str>,
    pub quant: Option<&'a str>,
    /// Directory of the tokenizer.json (default: the model directory; for a GGUF file, a tokenizer.json beside it, else the one embedded in the file).
    pub tokenizer: Option<&'a Path>,
    /// A memory budget for the weights, in bytes.
    pub max_memory: Option<u64>,
    /// Expert parallelism: this process's rank of an MPI job (each keeps 1/N of the experts).
    pub comm: Option<Arc<dyn Comm>>,
}

/// `moe generate --model DIR`.
pub fn generate_cmd(dir: &Path, prompt: &str, o: &GenOpts, max_new: usize, s: &Sampling) -> Result<()> {
    let (chat, system) = (o.chat, o.system);
    let mut model = load(dir, o.quant, o.comm.clone())?;
    let rank = o.comm.as_ref().map(|c| c.rank());
    let lead = rank.is_none_or(|r| r == 0);
    if let Some(max) = o.max_memory {
        let budget = model.set_max_memory(max)?;
        if lead {
            eprintln!(
                "memory budget {}: {} for experts (least-used experts evicted, next layer prefetched)",
                gib(max),
                gib(budget)
            );
        }
    }
    let tok = tokenizer(dir, o.tokenizer)?;
    let ids = if chat {
        let mut msgs = vec![];
        if let Some(sys) = system {
            msgs.push(("system".to_string(), sys.to_string()));
        }
        msgs.push(("user".to_string(), prompt.to_string()));
        tok.encode_chat(&msgs)?
    } else {
        let mut ids = tok.encode_with_specials(prompt)?;
        if ids.is_empty() {
            ids.extend(model.spec.bos);
        }
        ids
    };
    if ids.is_empty() {
        bail!("the prompt is empty and the model has no BOS token; pass a non-empty --prompt");
    }
    let eos = eos_ids(&tokenizer_dir(dir, o.tokenizer), &model, &tok);
    let mut out = std::io::stdout();
    if !chat && lead {
        let _ = write!(out, "{prompt}");
    }
    let (_, stats) = generate(&model, &tok, &ids, max_new, s, &eos, &mut |piece| {
        if lead {
            let _ = write!(out, "{piece}");
            let _ = out.flush();
        }
    })?;
    if lead {
        println!();
        report(&stats);
        if let Some(c) = model.cache_stats() {
            eprintln!(
                "expert cache: hit rate {:.1}% ({} hits, {} misses), {} read, {} evictions; prefetch: {} experts read ahead, {} of them used",
                100.0 * c.hit_rate(),
                c.hits,
                c.misses,
                gib(c.bytes_read),
                c.evictions,
                c.prefetched,
                c.prefetch_used
            );
        }
    }
    memory_report(rank);
    Ok(())
}

/// Peak and current resident memory, split into anonymous (our allocations) and file-backed
/// (the memory-mapped weights, shared with the page cache) — Linux only.
fn memory_report(rank: Option<usize>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return };
    let field = |k: &str| {
        status.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
    };
    if let (Some(hwm), Some(anon), Some(file)) = (field("VmHWM:"), field("RssAnon:"), field("RssFile:")) {
        let g = |kb: f64| gib((kb * 1024.0) as u64);
        eprintln!(
            "{}memory: peak RSS {}; now {} allocated + {} of mapped weights",
            rank.map_or(String::new(), |r| format!("rank {r}: ")),
            g(hwm),
            g(anon),
            g(file)
        );
    }
}

fn report(s: &GenStats) {
    eprintln!(
        "{} prompt tokens in {:.2}s ({:.1} tokens/s), {} new tokens at {:.2} tokens/s{}",
        s.prompt_tokens,
        s.prefill_s,
        s.prompt_tokens as f64 / s.prefill_s.max(1e-9),
        s.new_tokens,
        s.new_tokens as f64 / s.decode_s.max(1e-9),
        if s.hit_context { " (stopped at the model's context length)" } else { "" }
    );
}

#[derive(Args)]
pub struct LogitsArgs {
    /// Hugging Face checkpoint directory, or a llama.cpp GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Directory of the tokenizer.json (default: the model directory; for a GGUF file, a tokenizer.json beside it, else the one embedded in the file).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',', required_unless_present = "prompt")]
    ids: Vec<u32>,
    /// Text to tokenize instead of --ids.
    #[arg(long, conflicts_with = "ids")]
    prompt: Option<String>,
    /// Output .npy file: float32 logits [T, vocab].
    #[arg(long)]
    out: PathBuf,
    /// Quantise the weight matrices on load: q8_0.
    #[arg(long, value_parser = ["q8_0", "q4_0"])]
    quant: Option<String>,
}

/// `moe logits`: float32 logits of every position to a .npy file.
pub fn logits(a: LogitsArgs) -> Result<()> {
    let m = load(&a.model, a.quant.as_deref(), None)?;
    let ids = match &a.prompt {
        Some(p) => tokenizer(&a.model, a.tokenizer.as_deref())?.encode_with_specials(p)?,
        None => a.ids,
    };
    let mut cache = Cache::new(&m.spec);
    let logits = m.forward(&ids, &mut cache, true)?;
    moe_infer::npy::write_npy(&a.out, &logits, &[ids.len(), m.spec.vocab])?;
    eprintln!("wrote {} ([{}, {}] float32)", a.out.display(), ids.len(), m.spec.vocab);
    memory_report(None);
    Ok(())
}
