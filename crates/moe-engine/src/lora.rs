//! LoRA (Hu et al. 2021): which linear layers of a model get a trainable low-rank update
//! scale * B[O,R] A[R,I] beside their frozen weight (`LoraConfig`, part of the model config),
//! and merging the adapters into the weights (`moe merge-lora`). The adapted layer itself,
//! forward and backward, is `linear::Lin`; the adapters' tensors are laid out after the base
//! model (`params::Layout`).

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use moe_kernels::matmul::{matmul, Mat};
use moe_kernels::Float;
use serde::{Deserialize, Serialize};

/// Which linear layers get adapters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    /// The query, key, value and output projections.
    Attn,
    /// Every routed expert's gate, up and down projections (one adapter per expert).
    Experts,
    /// The router of each MoE layer.
    Router,
    /// The dense layers' MLPs and the shared experts.
    Mlp,
}

impl LoraTarget {
    /// Attention, experts and router, MLP: the default targets (the router is small and steers
    /// the routing, so it is adapted only when asked for).
    pub const DEFAULT: [LoraTarget; 3] = [LoraTarget::Attn, LoraTarget::Experts, LoraTarget::Mlp];

    /// Whether `cfg` has layers of this kind.
    pub fn present_in(self, cfg: &ModelConfig) -> bool {
        match self {
            LoraTarget::Attn => true,
            LoraTarget::Experts | LoraTarget::Router => cfg.num_moe_layers() > 0,
            LoraTarget::Mlp => cfg.num_moe_layers() < cfg.num_hidden_layers || cfg.shared_expert_intermediate_size > 0,
        }
    }
}

/// The adapters of a model: rank R, alpha (scale = alpha / R), the layers they adapt, and the
/// storage of the frozen base.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<LoraTarget>,
    /// How the frozen base's weight matrices are held while training (`packed`).
    #[serde(default)]
    pub base: crate::packed::BaseFormat,
}

impl LoraConfig {
    /// alpha / R: the factor of B A.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
    pub fn has(&self, t: LoraTarget) -> bool {
        self.targets.contains(&t)
    }
    /// The rank is positive, alpha finite, and some target exists in `cfg`.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::config("the LoRA rank is 0", "pass --lora-rank 1 or more (8 to 64 is usual)"));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(Error::config(format!("the LoRA alpha is {}", self.alpha), "pass a positive --lora-alpha"));
        }
        if let Some(t) = self.targets.iter().find(|t| !t.present_in(cfg)) {
            return Err(Error::config(
                format!("the LoRA target `{}` does not exist in this model", format!("{t:?}").to_lowercase()),
                "choose --lora-targets among the model's layers (attn; experts and router need MoE layers; mlp needs dense layers or a shared expert)",
            ));
        }
        if self.targets.is_empty() {
            return Err(Error::config("no LoRA targets", "pass --lora-targets, e.g. attn,experts"));
        }
        Ok(())
    }
}

/// The model of `cfg` (with adapters) as a plain model: every adapter folded into its weight,
/// the base parameters [..base_total] returned with the config without `lora`.
pub fn merge_model<T: Float>(cfg: &ModelConfig, mut p: Vec<T>) -> (ModelConfig, Vec<T>) {
    let layout = crate::params::Layout::new(cfg);
    let Some(lc) = &cfg.lora else { return (cfg.clone(), p) };
    assert_eq!(p.len(), layout.total, "parameters of this config");
    let (base, adapters) = p.split_at_mut(layout.base_total);
    for (w, l) in layout.adapters() {
        let shape = &layout.tensors.iter().find(|t| t.span == w).expect("an adapted tensor of the layout").shape;
        let parts = if shape.len() == 3 { shape[0] } else { 1 };
        let (a, b) =
            (&adapters[l.a.off - layout.base_total..][..l.a.len], &adapters[l.b.off - layout.base_total..][..l.b.len]);
        merge(w.of_mut(base), a, b, lc.rank, l.scale, parts);
    }
    p.truncate(layout.base_total);
    (ModelConfig { lora: None, ..cfg.clone() }, p)
}

/// A checkpoint with its adapters folded into the weights (without optimizer state, which
/// belongs to the adapters); a checkpoint without adapters as it is.
pub fn merge_checkpoint(ck: crate::checkpoint::Checkpoint) -> crate::checkpoint::Checkpoint {
    if ck.config.lora.is_none() {
        return ck;
    }
    let (config, params) = merge_model(&ck.config, ck.params);
    crate::checkpoint::Checkpoint { dir: ck.dir, config, params, moments: None, state: None }
}

/// W[O,I] += scale * B[O,R] A[R,I] for each of the `parts` stacked matrices (experts) of `w`.
pub fn merge<T: Float>(w: &mut [T], a: &[T], b: &[T], rank: usize, scale: f64, parts: usize) {
    let (wn, an, bn) = (w.len() / parts, a.len() / parts, b.len() / parts);
    let (o, i) = (bn / rank, an / rank);
    for ((w, a), b) in w.chunks_mut(wn).zip(a.chunks(an)).zip(b.chunks(bn)) {
        let bs: Vec<T> = b.iter().map(|&v| v * T::from_f64(scale)).collect();
        matmul(w, Mat::new(&bs, o, rank), Mat::new(a, rank, i), true, false);
    }
}
