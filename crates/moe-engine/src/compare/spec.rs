//! Variant specs of `moe compare`: short names such as `8x2`, `16x3+1`, `8x2:256` or `16x3+1@0.5`
//! turned into model configs derived from the dense reference, with the same active compute per
//! token unless an expert width is given, and the share of the comparison's budget each trains
//! (its own learning-rate schedule fitted to it). Owns only the parsing and the derivation.

use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// The sweep of `moe compare --sweep`: number of experts (4, 8, 16 at top-2), top-k and
/// expert size (8x1 coarse, 16x4 and 32x8 fine-grained) and a shared expert (16x3+1).
pub const SWEEP: &[&str] = &["dense", "4x2", "8x2", "16x2", "8x1", "16x4", "32x8", "16x3+1"];

/// One parsed spec: `dense` or `E x K [+ S] [: F]`, then optionally `@ B`.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    /// E (0 = dense)
    pub experts: usize,
    /// K
    pub top_k: usize,
    /// Shared-expert width in units of the routed expert width (0 = none).
    pub shared: usize,
    /// Explicit expert width F; None = the dense width / (K + S) (equal active compute).
    pub expert_size: Option<usize>,
    /// B: the share of the comparison's budget this variant trains, its learning-rate schedule
    /// ending there (1 = the whole budget). `16x3+1@0.5` asks whether the MoE trained for half
    /// the dense model's tokens, annealed at the end, reaches the dense model's final loss.
    pub budget: f64,
}

fn bad(spec: &str, why: &str) -> Error {
    Error::config(
        format!("variant `{spec}`: {why}"),
        "write `dense`, `ExK` (E experts, top-K), `ExK+S` (plus a shared expert S expert widths wide) or `ExK:F` (expert width F), each optionally followed by `@B` (train B times the budget, 0 < B <= 1), e.g. 8x2, 16x3+1, 8x2:256, 16x3+1@0.5",
    )
}

impl Spec {
    pub fn parse(spec: &str) -> Result<Spec> {
        let (s, budget) = match spec.trim().split_once('@') {
            Some((s, b)) => match b.parse::<f64>() {
                Ok(b) if b > 0.0 && b <= 1.0 => (s, b),
                _ => return Err(bad(spec, "the budget share after `@` must be a number in (0, 1]")),
            },
            None => (spec.trim(), 1.0),
        };
        if s == "dense" {
            return Ok(Spec { experts: 0, top_k: 0, shared: 0, expert_size: None, budget });
        }
        let (body, width) = match s.split_once(':') {
            Some((b, w)) => {
                (b, Some(w.parse::<usize>().map_err(|_| bad(spec, "the width after `:` is not a number"))?))
            }
            None => (s, None),
        };
        let (ek, shared) = match body.split_once('+') {
            Some((ek, sh)) => {
                (ek, sh.parse::<usize>().map_err(|_| bad(spec, "the shared part after `+` is not a number"))?)
            }
            None => (body, 0),
        };
        let (e, k) = ek.split_once('x').ok_or_else(|| bad(spec, "no `x` between experts and top-k"))?;
        let num =
            |v: &str, what: &str| v.parse::<usize>().map_err(|_| bad(spec, &format!("{what} `{v}` is not a number")));
        let (experts, top_k) = (num(e, "the expert count")?, num(k, "top-k")?);
        if experts == 0 || top_k == 0 || top_k > experts {
            return Err(bad(spec, "needs 1 <= K <= E"));
        }
        if width == Some(0) {
            return Err(bad(spec, "the expert width must be positive"));
        }
        Ok(Spec { experts, top_k, shared, expert_size: width, budget })
    }

    /// The config of this variant: `dense` with its MLP replaced by the variant's MoE layers
    /// (in the layers the dense config's `first_k_dense_replace` / `decoder_sparse_step` mark).
    pub fn config(&self, dense: &ModelConfig) -> Result<ModelConfig> {
        let mut cfg = dense.clone();
        cfg.num_local_experts = self.experts;
        cfg.num_experts_per_tok = self.top_k;
        if self.experts == 0 {
            cfg.moe_intermediate_size = 0;
            cfg.shared_expert_intermediate_size = 0;
            return Ok(cfg);
        }
        let f = match self.expert_size {
            Some(f) => f,
            None => {
                let units = self.top_k + self.shared;
                if dense.intermediate_size < units {
                    return Err(Error::config(
                        format!("the dense width {} cannot be split into {units} experts", dense.intermediate_size),
                        "use a wider dense MLP or fewer active experts",
                    ));
                }
                dense.intermediate_size / units
            }
        };
        cfg.moe_intermediate_size = f;
        cfg.shared_expert_intermediate_size = self.shared * f;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The dense reference of a config: the same model with every MoE block a dense MLP.
pub fn dense_reference(cfg: &ModelConfig) -> ModelConfig {
    ModelConfig {
        num_local_experts: 0,
        num_experts_per_tok: 0,
        moe_intermediate_size: 0,
        shared_expert_intermediate_size: 0,
        shared_expert_gate: false,
        ..cfg.clone()
    }
}

/// A preset, or `PRESET/VARIANT`: the variant of the preset's dense reference that `moe compare`
/// would train (e.g. `default/dense`, `default/16x3+1`), for benchmarks at the comparison's shape.
pub fn preset_or_variant(name: &str) -> Result<ModelConfig> {
    match name.split_once('/') {
        Some((preset, variant)) => Spec::parse(variant)?.config(&dense_reference(&ModelConfig::preset(preset)?)),
        None => ModelConfig::preset(name),
    }
}
