//! Flags shared by the training commands (`train`, `compare`, `upcycle`): the model (preset,
//! config file, overrides), the optimizer and batch, and small helpers. Flags are parsed here
//! and validated into the engine's configs.

use anyhow::{Context, Result};
use clap::Args;
use moe_engine::config::{BalanceScope, DropPolicy, ModelConfig, RouterKind, PRESETS};
use moe_engine::train::{Precision, TrainConfig};
use std::path::PathBuf;

#[derive(Args)]
pub struct ModelArgs {
    /// Model preset.
    #[arg(long, default_value = "default", value_parser = clap::builder::PossibleValuesParser::new(PRESETS))]
    pub preset: String,
    /// Model config JSON (Hugging Face field names; see `moe inspect --print-config`); overrides --preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
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
/// A memory size: a number with an optional unit, B, K/KiB, M/MiB, G/GiB, T/TiB (powers of
/// 1024) or KB, MB, GB, TB (powers of 1000): `4GiB`, `512M`, `1.5GB`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let x: f64 = num.parse().map_err(|_| format!("`{s}` is not a size; write e.g. 4GiB, 512MiB or 1.5GB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        u => return Err(format!("unknown size unit `{u}` in `{s}`; use KiB, MiB, GiB (or KB, MB, GB)")),
    };
    Ok((x * mult) as u64)
}

pub fn parse_enum<T: serde::de::DeserializeOwned>(s: &str) -> std::result::Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| e.to_string())
}

impl ModelArgs {
    pub fn build(&self) -> Result<ModelConfig> {
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
/// Batch, optimizer and evaluation settings every training command shares.
#[derive(Args)]
pub struct TrainFlags {
    #[arg(long, default_value_t = TrainConfig::default().batch_size)]
    pub batch_size: usize,
    /// Tokens per training sequence (default: the model context).
    #[arg(long)]
    pub seq_len: Option<usize>,
    #[arg(long, default_value_t = TrainConfig::default().grad_accum)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = TrainConfig::default().lr)]
    pub lr: f64,
    #[arg(long, default_value_t = TrainConfig::default().min_lr_ratio)]
    pub min_lr_ratio: f64,
    #[arg(long, default_value_t = TrainConfig::default().warmup_steps)]
    pub warmup: u64,
    #[arg(long, default_value_t = TrainConfig::default().weight_decay)]
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = TrainConfig::default().grad_clip)]
    pub grad_clip: f64,
    /// Batches per validation.
    #[arg(long, default_value_t = TrainConfig::default().eval_batches)]
    pub eval_batches: usize,
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    pub seed: u64,
    /// Matrix products in fp32, or bf16 (AMX or AVX512-BF16) with fp32 accumulation and fp32 master
    /// weights, or auto: bf16 only where a forward + backward pass of this model and batch
    /// measures at least 1.05x faster than fp32 on this CPU (measured once per CPU, model and
    /// batch, cached in $MOE_CACHE_DIR or ~/.cache/moe/precision.json). An explicit bf16 that
    /// measures slower warns with the ratio. A resumed run keeps the precision it started with.
    #[arg(long, value_parser = parse_enum::<Precision>, default_value = "auto")]
    pub precision: Precision,
    /// In-process data parallelism: N replicas each train B/N sequences of a batch on one core
    /// with single-threaded matrix products (0 = one per thread, if that divides the batch; 1 =
    /// one replica whose products use all threads).
    #[arg(long, default_value_t = 0)]
    pub replicas: usize,
    /// Steps in a row whose loss or gradient may be NaN or infinite (each one skipped: no
    /// weight changes) before the run stops, keeping its last checkpoint.
    #[arg(long, default_value_t = TrainConfig::default().max_skipped_steps)]
    pub max_skipped_steps: u64,
    /// Activation checkpointing: keep only each layer's input and recompute the layer in the
    /// backward (about a third more compute; activations of one layer instead of all).
    #[arg(long)]
    pub recompute: bool,
    /// Tokenizer and token cache (default: ~/.cache/moe).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// UTF-8 text file or directory of text files, or `rust-docs` (the default: the toolchain's
    /// Rust documentation, books, API pages and std sources, deduplicated) or `rust-books` (its
    /// books only), or with `moe train --init` a .jsonl file of chat conversations
    /// ({"messages": [...]} per line; loss on the assistant turns only). `moe train --resume`
    /// reuses the run's own data when this is not given.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl TrainFlags {
    /// The training config for `model` (steps and evaluation cadence set by the caller).
    pub fn config(&self, model: &ModelConfig) -> TrainConfig {
        TrainConfig {
            batch_size: self.batch_size,
            seq_len: self.seq_len.unwrap_or(model.max_position_embeddings),
            grad_accum: self.grad_accum,
            lr: self.lr,
            min_lr_ratio: self.min_lr_ratio,
            warmup_steps: self.warmup,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            eval_batches: self.eval_batches,
            seed: self.seed,
            precision: self.precision,
            replicas: self.replicas,
            recompute: self.recompute,
            max_skipped_steps: self.max_skipped_steps,
            ..TrainConfig::default()
        }
    }
    pub fn source(&self) -> moe_engine::corpus::Source {
        moe_engine::corpus::Source::parse(self.data.as_deref())
    }
    /// --data if given (a resumed run otherwise reads its own record).
    pub fn given_source(&self) -> Option<moe_engine::corpus::Source> {
        self.data.is_some().then(|| self.source())
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(default_cache_dir)
    }
}

/// YYYYmmdd-HHMMSS in UTC, for default run directory names.
pub fn utc_stamp() -> String {
    let secs = moe_engine::clock::unix_secs();
    let (y, m, d) = moe_engine::clock::civil_date((secs / 86400) as i64);
    let rem = secs % 86400;
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from(".moe-cache"), |h| PathBuf::from(h).join(".cache/moe"))
}
