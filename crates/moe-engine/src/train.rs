//! One training process in memory: parameters, gradients, AdamW moments, activations and
//! batch buffers allocated once; `step` runs gradient accumulation, clipping, the warmup +
//! cosine schedule and AdamW without allocating. The run loop around it (data, logging,
//! checkpoints, plots) is `run`.

use crate::checkpoint::{self, Checkpoint, SaveRequest};
use crate::config::ModelConfig;
use crate::dataset::sample_batch;
use crate::dist::Dist;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::moe::losses::max_over_mean;
use crate::nonfinite::{self, Fault};
use crate::precision::Decision;
pub use crate::precision::Precision;
use crate::replicas::{auto_replicas, Replicas};
use crate::rng::Rng;
use moe_kernels::adamw::{adamw_update, AdamW};
use moe_kernels::buffer::zeroed;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Training settings (separate from the model config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimizer steps of the whole schedule.
    pub steps: u64,
    /// Sequences per micro-batch (B).
    pub batch_size: usize,
    /// Tokens per sequence (T), at most the model's context.
    pub seq_len: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate as a fraction of the peak (cosine decay).
    pub min_lr_ratio: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip; 0 disables.
    pub grad_clip: f64,
    /// Validation every n steps (and at the end); 0 = only at the end.
    pub eval_every: u64,
    /// Batches per validation.
    pub eval_batches: usize,
    /// Checkpoint every n steps (and at the end); 0 = only at the end.
    pub checkpoint_every: u64,
    /// Metrics every n steps.
    pub log_every: u64,
    pub seed: u64,
    /// Matrix products in f32, or in bf16 (AMX or AVX512-BF16) with f32 accumulation (master weights,
    /// gradients, optimizer and element-wise work stay f32).
    #[serde(default)]
    pub precision: Precision,
    /// Expert parallelism: re-place the experts every n steps for the loads routed since the
    /// last placement, moving them and replicating hot ones (0 = keep the contiguous placement).
    #[serde(default)]
    pub rebalance_every: u64,
    /// Extra expert slots per MoE layer for replicas of hot experts when re-placing.
    #[serde(default)]
    pub redundant_experts: usize,
    /// In-process data parallelism: replicas that each run B / R sequences of the micro-batch
    /// on one core (`replicas`); 0 = one per thread when they divide the batch.
    #[serde(default)]
    pub replicas: usize,
    /// Steps in a row whose loss or gradient may be non-finite (each skipped) before the run
    /// stops (see `nonfinite`).
    #[serde(default = "crate::nonfinite::default_limit")]
    pub max_skipped_steps: u64,
    /// Activation recomputation: keep only each layer's input and run the layer's forward
    /// again in the backward (about a third more compute, a fraction of the activations).
    #[serde(default)]
    pub recompute: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 600,
            batch_size: 16,
            seq_len: 128,
            grad_accum: 1,
            lr: 3e-3,
            min_lr_ratio: 0.1,
            warmup_steps: 40,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            eval_every: 100,
            eval_batches: 8,
            checkpoint_every: 200,
            log_every: 10,
            seed: 1234,
            precision: Precision::Fp32,
            rebalance_every: 0,
            redundant_experts: 0,
            replicas: 0,
            max_skipped_steps: crate::nonfinite::default_limit(),
            recompute: false,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self, model: &ModelConfig) -> Result<()> {
        let bad = |what: String, hint: &str| Err(Error::config(what, hint));
        if self.steps == 0 || self.batch_size == 0 || self.grad_accum == 0 || self.seq_len == 0 {
            return bad(
                "steps, batch size, grad accumulation and sequence length must be positive".into(),
                "pass positive values",
            );
        }
        if self.replicas > 0 && !self.batch_size.is_multiple_of(self.replicas) {
            return bad(
                format!("--replicas {} does not divide --batch-size {}", self.replicas, self.batch_size),
                "pick a replica count that divides the batch size (or 0 for automatic)",
            );
        }
        if self.seq_len > model.max_position_embeddings {
            return bad(
                format!("--seq-len {} exceeds the model context {}", self.seq_len, model.max_position_embeddings),
                "lower --seq-len or raise max_position_embeddings",
            );
        }
        if !(self.lr > 0.0 && self.lr.is_finite() && (0.0..=1.0).contains(&self.min_lr_ratio)) {
            return bad(
                format!("learning rate {} / min ratio {}", self.lr, self.min_lr_ratio),
                "use lr > 0 and 0 <= min_lr_ratio <= 1",
            );
        }
        if !(0.0..1.0).contains(&self.beta1)
            || !(0.0..1.0).contains(&self.beta2)
            || self.grad_clip < 0.0
            || self.weight_decay < 0.0
        {
            return bad("AdamW betas must be in [0, 1), clip and weight decay >= 0".into(), "fix the optimizer flags");
        }
        Ok(())
    }

    /// Learning rate at `step` (0-based): linear warmup, then cosine to min_lr_ratio * lr.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = (self.steps.saturating_sub(self.warmup_steps)).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let min = self.lr * self.min_lr_ratio;
        min + 0.5 * (self.lr - min) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// What one optimizer step measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: u64,
    pub loss: f64,
    pub ce: f64,
    pub aux: f64,
    pub z: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: u64,
    pub tokens_per_s: f64,
    /// [MoE layer][expert] rows routed during the step.
    pub expert_load: Vec<Vec<u32>>,
    /// max / mean load per MoE layer.
    pub max_over_mean_load: Vec<f64>,
    /// Fraction of routed assignments dropped for capacity, per MoE layer.
    #[serde(default)]
    pub dropped_fraction: Vec<f64>,
    /// Mean entropy of the routing distribution (nats), per MoE layer.
    #[serde(default)]
    pub router_entropy: Vec<f64>,
    /// Each MoE layer's own Switch loss and z-loss (before coefficients).
    #[serde(default)]
    pub layer_aux: Vec<f64>,
    #[serde(default)]
    pub layer_z: Vec<f64>,
    /// Expert parallelism, per rank: rows its experts processed in the step and seconds in
    /// all-to-alls (waiting for slower ranks included); bytes all ranks sent in all-to-alls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rank_rows: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rank_comm_s: Vec<f64>,
    #[serde(default)]
    pub comm_bytes: u64,
    /// Set when the experts were re-placed after this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalanced: Option<Rebalanced>,
    /// The loss or gradient was non-finite: the step changed no weight.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// A live re-placement of the experts: max/mean tokens per rank of the loads it was computed
/// from, under the old placement and the new one (mean over MoE layers).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Rebalanced {
    pub steps: u64,
    pub before: f64,
    pub after: f64,
}

/// Mutable training state saved in checkpoints besides the weights and moments.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    pub step: u64,
    pub tokens: u64,
    pub data_rng: Rng,
    pub train: TrainConfig,
    /// Identifies the tokenised corpus (cache key); resuming on other data is refused.
    pub data_key: String,
    /// Non-finite steps skipped in a row up to now.
    #[serde(default)]
    pub skipped_in_a_row: u64,
}

impl TrainState {
    /// The state before the first step.
    fn fresh(train: TrainConfig, data_key: String) -> Self {
        let data_rng = Rng::new(train.seed ^ 0xDA7A);
        TrainState { step: 0, tokens: 0, data_rng, train, data_key, skipped_in_a_row: 0 }
    }
}

/// Parameters, gradients, moments and buffers of one run.
pub struct Trainer {
    pub model: Model<f32>,
    pub params: Vec<f32>,
    pub grads: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub state: TrainState,
    /// Activations and batch slices of the in-process replicas (one unless data-parallel).
    pub(crate) reps: Replicas,
    /// Expert parallelism: this rank's place in the job, and the global batch [P*B, T] every
    /// rank draws (keeping its slice), so any rank count sees the same data.
    pub(crate) dist: Option<Dist>,
    /// [MoE layer][expert] global loads routed since the experts were last placed.
    pub(crate) load_window: Vec<Vec<f64>>,
    x_all: Vec<u32>,
    y_all: Vec<u32>,
    /// Partial sums of squared gradients, one per NORM_CHUNK.
    pub(crate) norm_parts: Vec<f64>,
    /// A fault the next step injects (tests of the non-finite guard).
    pub fault: Option<Fault>,
    /// How the precision was chosen (`auto`) or checked (an explicit bf16), for the log.
    pub precision_decision: Option<Decision>,
}

pub(crate) const NORM_CHUNK: usize = 1 << 16;

impl Trainer {
    pub fn new(cfg: ModelConfig, train: TrainConfig, data_key: String) -> Result<Self> {
        let params = crate::params::Layout::new(&cfg).init(train.seed);
        Self::with_params(cfg, train, data_key, params)
    }

    /// One rank of an expert-parallel job: the rank's experts and a replica of the rest,
    /// initialised as the single-process model would be; `train.batch_size` sequences per rank.
    pub fn distributed(cfg: ModelConfig, train: TrainConfig, data_key: String, dist: Dist) -> Result<Self> {
        train.validate(&cfg)?;
        train.precision.apply()?;
        let model = Model::sharded(cfg, dist.shard.clone())?;
        let params = model.layout.init(train.seed);
        let state = TrainState::fresh(train, data_key);
        Self::assemble(model, params, None, state).with_dist(dist)?.with_precision()
    }

    /// Resumes one rank of an expert-parallel job from its part of a checkpoint (written by any
    /// number of ranks), loaded with `checkpoint::load_sharded(path, &dist.shard)`.
    pub fn resume_distributed(ck: Checkpoint, steps_override: Option<u64>, dist: Dist) -> Result<Self> {
        let (cfg, params, moments, state) = Self::resume_parts(ck, steps_override)?;
        let model = Model::sharded(cfg, dist.shard.clone())?;
        if params.len() != model.layout.total {
            return Err(Error::config(
                format!("{} parameters for this rank's shard of {}", params.len(), model.layout.total),
                "load the checkpoint with checkpoint::load_sharded for this rank",
            ));
        }
        Self::assemble(model, params, Some(moments), state).with_dist(dist)?.with_precision()
    }

    fn with_dist(mut self, dist: Dist) -> Result<Self> {
        crate::rebalance::check(&self.model.cfg, &self.state.train, dist.shard.ranks)?;
        let (b, t) = (self.state.train.batch_size, self.state.train.seq_len);
        let p = dist.shard.ranks;
        if self.state.train.replicas > 1 {
            return Err(Error::config(
                "--replicas with --expert-parallel",
                "run one rank per core instead of replicas inside a rank",
            ));
        }
        if self.state.train.recompute {
            return Err(Error::config(
                "--recompute with --expert-parallel",
                "spread the experts over more ranks instead, or train in one process",
            ));
        }
        if self.reps.len() > 1 {
            self.reps = Replicas::new(&self.model.cfg, b, t, 1, 0, false);
        }
        self.reps.reps[0].acts.attach_expert_parallel(&self.model.cfg, dist.comm.clone(), &dist.shard);
        self.x_all = vec![0; p * b * t];
        self.y_all = vec![0; p * b * t];
        self.dist = Some(dist);
        Ok(self)
    }

    /// Draws the next micro-batch of this process into the replicas (its slice of the global
    /// batch when distributed).
    fn next_batch(&mut self, stream: &[u32], rng: &mut Rng) {
        let (b, t) = (self.state.train.batch_size, self.state.train.seq_len);
        let (rank, p) = self.rank();
        sample_batch(stream, rng, p * b, t, &mut self.x_all, &mut self.y_all);
        let mine = rank * b * t..(rank + 1) * b * t;
        self.reps.load(&self.x_all[mine.clone()], &self.y_all[mine]);
    }

    /// Starts from the given parameters (upcycled, or a model trained further) with fresh
    /// optimizer moments and schedule.
    /// With LoRA in `cfg`, `params` may be the base model's alone: the adapters are added.
    pub fn with_params(cfg: ModelConfig, train: TrainConfig, data_key: String, mut params: Vec<f32>) -> Result<Self> {
        train.validate(&cfg)?;
        train.precision.apply()?;
        let mut model = Model::new(cfg)?;
        if model.cfg.lora.is_some() && params.len() == model.layout.base_total {
            // LoRA over the given base model: fresh adapters (B = 0, so step 0 is the base).
            model.layout.init_adapters(&mut params, train.seed);
        }
        if params.len() != model.layout.total {
            return Err(Error::config(
                format!("{} initial parameters for a model of {}", params.len(), model.layout.total),
                "initialise from a checkpoint of this config",
            ));
        }
        let params = crate::packed::pack_base(&mut model, params)?;
        let state = TrainState::fresh(train, data_key);
        Self::assemble(model, params, None, state).with_precision()
    }

    /// Continues from a checkpoint that holds optimizer moments and training state.
    pub fn resume(ck: Checkpoint, steps_override: Option<u64>) -> Result<Self> {
        let (cfg, params, moments, state) = Self::resume_parts(ck, steps_override)?;
        let mut model = Model::new(cfg)?;
        let params = crate::packed::pack_base(&mut model, params)?;
        Self::assemble(model, params, Some(moments), state).with_precision()
    }

    /// Resolves `auto` (and checks an explicit bf16) once the buffers exist (`precision`).
    fn with_precision(mut self) -> Result<Self> {
        self.precision_decision = self.resolve_precision()?;
        Ok(self)
    }

    #[allow(clippy::type_complexity)]
    fn resume_parts(
        ck: Checkpoint,
        steps_override: Option<u64>,
    ) -> Result<(ModelConfig, Vec<f32>, (Vec<f32>, Vec<f32>), TrainState)> {
        let missing = |what: &str| {
            Error::checkpoint(
                &ck.dir,
                format!("no {what} saved"),
                "resume needs a checkpoint written during `moe train`",
            )
        };
        let state_json = ck.state.clone().ok_or_else(|| missing("training state (state.json)"))?;
        let mut state: TrainState = serde_json::from_value(state_json).map_err(|e| {
            Error::checkpoint(&ck.dir, format!("invalid state.json ({e})"), "use an earlier checkpoint")
        })?;
        let moments = ck.moments.ok_or_else(|| missing("optimizer moments (optimizer.safetensors)"))?;
        if let Some(s) = steps_override {
            state.train.steps = s;
        }
        state.train.validate(&ck.config)?;
        state.train.precision.apply()?;
        Ok((ck.config, ck.params, moments, state))
    }

    fn assemble(model: Model<f32>, params: Vec<f32>, moments: Option<(Vec<f32>, Vec<f32>)>, state: TrainState) -> Self {
        let (b, t) = (state.train.batch_size, state.train.seq_len);
        let p = params.len();
        let (m, v) = moments.unwrap_or_else(|| (zeroed(p), zeroed(p)));
        let r = match state.train.replicas {
            0 => auto_replicas(b),
            r => r,
        };
        Trainer {
            reps: Replicas::new(&model.cfg, b, t, r, p, state.train.recompute),
            dist: None,
            load_window: vec![],
            x_all: vec![0; b * t],
            y_all: vec![0; b * t],
            grads: zeroed(p),
            norm_parts: vec![0.0; model.layout.grad_range().len().div_ceil(NORM_CHUNK)],
            fault: None,
            precision_decision: None,
            model,
            params,
            m,
            v,
            state,
        }
    }

    /// One optimizer step on random windows of `train` tokens.
    pub fn step(&mut self, train: &[u32]) -> Result<StepMetrics> {
        let t0 = Instant::now();
        let tc = self.state.train.clone();
        self.use_precision();
        let (b, t) = (tc.batch_size, tc.seq_len);
        self.reps.zero_grads(&mut self.grads, self.model.layout.grad_range());
        let mut met = StepMetrics { step: self.state.step + 1, ..Default::default() };
        let counters = self.reps.reps[0].acts.expert_parallel_counters();
        for micro in 0..tc.grad_accum {
            let mut rng = self.state.data_rng.clone();
            self.next_batch(train, &mut rng);
            self.state.data_rng = rng;
            // Router jitter noise: a function of (seed, step, micro-batch), so resumes are exact.
            self.forward(Some(tc.seed ^ (self.state.step * 64 + micro as u64).wrapping_mul(0xD1B54A32D192ED03)));
            let mut parts = self.loss(true);
            match self.fault.take() {
                Some(Fault::NanLoss) => parts.total = f64::NAN,
                Some(Fault::InfGradient) => self.grads[self.model.layout.grad_range().start] = f32::INFINITY,
                None => {}
            }
            let stats = self.reps.reps[0].acts.moe_stats();
            if met.expert_load.is_empty() {
                met.expert_load = stats.iter().map(|s| vec![0; s.tokens_per_expert.len()]).collect();
            }
            for (acc, s) in met.expert_load.iter_mut().zip(&stats) {
                acc.iter_mut().zip(&s.tokens_per_expert).for_each(|(a, &c)| *a += c);
            }
            for (i, s) in stats.iter().enumerate() {
                if met.dropped_fraction.len() <= i {
                    for v in [&mut met.dropped_fraction, &mut met.router_entropy, &mut met.layer_aux, &mut met.layer_z]
                    {
                        v.push(0.0);
                    }
                }
                let ga = tc.grad_accum as f64;
                met.dropped_fraction[i] += s.dropped_fraction() / ga;
                met.router_entropy[i] += s.entropy / ga;
                met.layer_aux[i] += s.switch_loss() / ga;
                met.layer_z[i] += s.z_loss / ga;
            }
            let ga = tc.grad_accum as f64;
            met.loss += parts.total / ga;
            met.ce += parts.ce / ga;
            met.aux += parts.aux / ga;
            met.z += parts.z / ga;
        }
        self.rank_load(counters, &mut met);
        // The mean over micro-batches and replicas.
        let scale = 1.0 / (tc.grad_accum * self.reps.len()) as f64;
        if !met.loss.is_finite() {
            // Every rank's gradient norm (summed over ranks) then says skip.
            self.grads[self.model.layout.grad_range().start] = f32::NAN;
        }
        let norm = match &self.dist {
            Some(d) => {
                self.reps.sum_grads(&mut self.grads, self.model.layout.grad_range(), None);
                d.sync_grads(&self.model.layout, &mut self.grads);
                d.grad_norm_sq(&self.model.layout, &self.grads).sqrt() * scale
            }
            None => {
                // Fixed-size chunks summed in order: the norm is bitwise reproducible (exact resume).
                self.reps.sum_grads(&mut self.grads, self.model.layout.grad_range(), Some(&mut self.norm_parts));
                self.norm_parts.iter().sum::<f64>().sqrt() * scale
            }
        };
        met.grad_norm = norm;
        met.lr = tc.lr_at(self.state.step);
        let ranks = self.dist.as_ref().map_or(1, |d| d.shard.ranks);
        let tokens = (ranks * b * t * tc.grad_accum) as u64;
        let limit = tc.max_skipped_steps;
        met.skipped = nonfinite::check(met.step, met.loss, norm, &mut self.state.skipped_in_a_row, limit)?;
        if met.skipped {
            self.state.step += 1;
            self.state.tokens += tokens;
            met.tokens = self.state.tokens;
            met.tokens_per_s = tokens as f64 / t0.elapsed().as_secs_f64();
            return Ok(met);
        }
        let clip = if tc.grad_clip > 0.0 && norm > tc.grad_clip { tc.grad_clip / norm } else { 1.0 };
        let h = AdamW {
            lr: met.lr,
            beta1: tc.beta1,
            beta2: tc.beta2,
            eps: tc.eps,
            weight_decay: tc.weight_decay,
            grad_scale: (scale * clip) as f32,
        };
        self.state.step += 1;
        for tsr in self.model.layout.tensors.iter().filter(|t| t.trainable) {
            let sp = tsr.span;
            adamw_update(
                sp.of_mut(&mut self.params),
                sp.of(&self.grads),
                sp.of_mut(&mut self.m),
                sp.of_mut(&mut self.v),
                &h,
                self.state.step,
                tsr.decay,
            );
        }
        crate::moe::select::update_selection_bias(
            &mut self.params,
            &self.model.layout,
            self.model.cfg.bias_update_rate,
            &met.expert_load,
        );
        self.maybe_rebalance(&mut met)?;
        self.state.tokens += tokens;
        met.tokens = self.state.tokens;
        met.tokens_per_s = tokens as f64 / t0.elapsed().as_secs_f64();
        met.max_over_mean_load = met.expert_load.iter().map(|l| max_over_mean(l)).collect();
        Ok(met)
    }

    /// Mean cross-entropy over `batches` fixed windows of `val` (the same windows every call).
    pub fn evaluate(&mut self, val: &[u32], batches: usize) -> f64 {
        self.use_precision();
        let mut rng = Rng::new(0xE7A1);
        let mut total = 0.0;
        for _ in 0..batches {
            self.next_batch(val, &mut rng);
            self.forward(None);
            total += self.loss(false).ce;
        }
        total / batches as f64
    }

    /// Writes a checkpoint `step-NNNNNNN` under `root`. Expert-parallel ranks each write their
    /// own experts into it; every rank returns the checkpoint's path.
    pub fn save(&self, root: &Path, tokenizer_json: Option<&[u8]>) -> Result<PathBuf> {
        let name = format!("step-{:07}", self.state.step);
        let state = serde_json::to_value(&self.state)
            .map_err(|e| Error::checkpoint(root, e.to_string(), "report this as a bug"))?;
        let req = SaveRequest {
            config: &self.model.cfg,
            layout: &self.model.layout,
            params: &self.params,
            packed: self.model.packed.as_ref(),
            moments: Some((&self.m, &self.v)),
            state: Some(&state),
            tokenizer_json,
        };
        match &self.dist {
            None => checkpoint::save(root, &name, &req, 2),
            Some(d) => crate::dist::save::save_from_ranks(d, root, &name, &req, 2),
        }
    }

    /// In-process data-parallel replicas (1 under expert parallelism).
    pub fn replicas(&self) -> usize {
        self.reps.len()
    }

    /// This process's rank and the job's rank count (0 and 1 unless expert-parallel).
    pub fn rank(&self) -> (usize, usize) {
        self.dist.as_ref().map_or((0, 1), |d| (d.shard.rank, d.shard.ranks))
    }

    /// Bytes the expert-parallel all-to-alls sent from this rank so far (all, to other ranks).
    pub fn comm_bytes(&self) -> (u64, u64) {
        let c = self.reps.reps[0].acts.expert_parallel_counters();
        (c.bytes, c.bytes_remote)
    }

    /// Per-rank expert rows and all-to-all seconds of the step since `before`, and the bytes
    /// all ranks sent.
    fn rank_load(&self, before: crate::model::EpCounters, met: &mut StepMetrics) {
        let Some(d) = &self.dist else { return };
        let now = self.reps.reps[0].acts.expert_parallel_counters();
        let p = d.shard.ranks;
        let mut v = vec![0.0; 2 * p + 1];
        v[d.shard.rank] = (now.rows - before.rows) as f64;
        v[p + d.shard.rank] = now.comm_seconds - before.comm_seconds;
        v[2 * p] = (now.bytes - before.bytes) as f64;
        d.mean(&mut v);
        v.iter_mut().for_each(|x| *x *= p as f64);
        met.rank_rows = v[..p].to_vec();
        met.rank_comm_s = v[p..2 * p].to_vec();
        met.comm_bytes = v[2 * p].round() as u64;
    }
}
