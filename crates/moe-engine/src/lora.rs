//! A linear layer y = x W^T with an optional LoRA adapter (Hu et al. 2021): the weight W[O,I]
//! plus a trainable low-rank update scale * B[O,R] A[R,I], so y = x W^T + scale (x A^T) B^T.
//! Under LoRA the base weight is frozen: its gradient is not computed (`LinGrad::w` = None),
//! while A and B get theirs and the input gradient flows through W and the adapter. The
//! product x A^T [N,R] is recomputed in the backward instead of saved (R is small).
//! Also here: `merge`, which folds an adapter into its weight (`moe merge-lora`).

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::params::{Span, SpanCursor};
use moe_kernels::matmul::{linear_backward, linear_forward, matmul, Mat};
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
            LoraTarget::Mlp => {
                cfg.num_moe_layers() < cfg.num_hidden_layers || cfg.shared_expert_intermediate_size > 0
            }
        }
    }
}

/// The adapters of a model: rank R, alpha (scale = alpha / R) and the layers they adapt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<LoraTarget>,
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
                format!("the LoRA target {t:?} does not exist in this model"),
                "choose --lora-targets among the model's layers (attn; experts and router need MoE layers; mlp needs dense layers or a shared expert)",
            ));
        }
        if self.targets.is_empty() {
            return Err(Error::config("no LoRA targets", "pass --lora-targets, e.g. attn,experts"));
        }
        Ok(())
    }
}

/// A low-rank adapter: a[R,I], b[O,R], and the scale alpha / R.
#[derive(Clone, Copy)]
pub struct Lora<'a, T> {
    pub a: &'a [T],
    pub b: &'a [T],
    pub scale: T,
}

/// The weight of one linear layer, w[O,I], and its adapter if it has one.
#[derive(Clone, Copy)]
pub struct Lin<'a, T> {
    pub w: &'a [T],
    pub lora: Option<Lora<'a, T>>,
}

/// Gradients of an adapter, same shapes.
pub struct LoraGrad<'a, T> {
    pub a: &'a mut [T],
    pub b: &'a mut [T],
}

/// Gradients of a linear layer: the weight's (None when it is frozen) and the adapter's.
pub struct LinGrad<'a, T> {
    pub w: Option<&'a mut [T]>,
    pub lora: Option<LoraGrad<'a, T>>,
}

/// The spans of an adapter in the parameter buffer: a[R,I] (or [E,R,I]) and b[O,R] ([E,O,R]),
/// and its scale alpha / R.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraSpans {
    pub a: Span,
    pub b: Span,
    pub scale: f64,
}

impl<'a, T> From<&'a [T]> for Lin<'a, T> {
    /// A plain weight without an adapter.
    fn from(w: &'a [T]) -> Self {
        Lin { w, lora: None }
    }
}

impl<'a, T> From<&'a mut [T]> for LinGrad<'a, T> {
    /// The gradient of a plain trainable weight.
    fn from(w: &'a mut [T]) -> Self {
        LinGrad { w: Some(w), lora: None }
    }
}

impl<'a, T: Float> Lin<'a, T> {
    /// The layer over `p` at `w`, with the adapter at `lora`.
    pub fn at(p: &'a [T], w: Span, lora: Option<LoraSpans>) -> Self {
        let lora = lora.map(|l| Lora { a: l.a.of(p), b: l.b.of(p), scale: T::from_f64(l.scale) });
        Lin { w: w.of(p), lora }
    }

    /// Part `i` of `parts` equal parts of every tensor (one expert of a stacked layer).
    pub fn part(&self, i: usize, parts: usize) -> Self {
        let cut = |x: &'a [T]| {
            let n = x.len() / parts;
            &x[i * n..(i + 1) * n]
        };
        Lin { w: cut(self.w), lora: self.lora.map(|l| Lora { a: cut(l.a), b: cut(l.b), scale: l.scale }) }
    }

    /// y[N,O] = x[N,I] W^T (+ scale (x A^T) B^T).
    pub fn forward(&self, y: &mut [T], x: &[T], n: usize, i: usize, o: usize, par: bool) {
        linear_forward(y, x, self.w, n, i, o, par);
        if let Some(l) = self.lora {
            let r = l.a.len() / i;
            // t[N,R] = scale * x A^T; y += t B^T
            let mut t = vec![T::ZERO; n * r];
            linear_forward(&mut t, x, l.a, n, i, r, par);
            t.iter_mut().for_each(|v| *v *= l.scale);
            matmul(y, Mat::new(&t, n, r), Mat::new(l.b, o, r).t(), true, par);
        }
    }

    /// dx[N,I] (+)= dy W (+ scale (dy B) A) (accumulated when `dx_acc`); the weight's gradient
    /// dy^T x when it has one, and the adapter's: dB += scale dy^T (x A^T), dA += scale (dy B)^T x.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        dx: &mut [T],
        g: LinGrad<T>,
        dy: &[T],
        x: &[T],
        n: usize,
        i: usize,
        o: usize,
        dx_acc: bool,
        par: bool,
    ) {
        match g.w {
            Some(dw) => linear_backward(dx, dw, dy, x, self.w, n, i, o, dx_acc, par),
            None => matmul(dx, Mat::new(dy, n, o), Mat::new(self.w, o, i), dx_acc, par),
        }
        if let (Some(l), Some(lg)) = (self.lora, g.lora) {
            let r = l.a.len() / i;
            let (mut t, mut u) = (vec![T::ZERO; n * r], vec![T::ZERO; n * r]);
            // t = scale * x A^T, u = scale * dy B   [N,R]
            linear_forward(&mut t, x, l.a, n, i, r, par);
            matmul(&mut u, Mat::new(dy, n, o), Mat::new(l.b, o, r), false, par);
            t.iter_mut().chain(u.iter_mut()).for_each(|v| *v *= l.scale);
            matmul(lg.b, Mat::new(dy, n, o).t(), Mat::new(&t, n, r), true, par);
            matmul(lg.a, Mat::new(&u, n, r).t(), Mat::new(x, n, i), true, par);
            matmul(dx, Mat::new(&u, n, r), Mat::new(l.a, r, i), true, par);
        }
    }
}

/// Hands out gradient views: base tensors' from the buffer's first `base_total` elements,
/// adapters' from the rest, each part in increasing offset order. When the base is frozen
/// (LoRA), base weights and optional tensors get no gradient.
pub struct GradCursor<'a, T> {
    base: SpanCursor<'a, T>,
    adapters: SpanCursor<'a, T>,
    pub frozen: bool,
}

impl<'a, T> GradCursor<'a, T> {
    pub fn new(gr: &'a mut [T], base_total: usize, frozen: bool) -> Self {
        let (b, a) = gr.split_at_mut(base_total);
        GradCursor { base: SpanCursor::new(b), adapters: SpanCursor::at(a, base_total), frozen }
    }
    /// The gradient of the linear layer at `w` with the adapter at `lora`.
    pub fn lin(&mut self, w: Span, lora: Option<LoraSpans>) -> LinGrad<'a, T> {
        let w = (!self.frozen).then(|| self.base.take(w));
        let lora = lora.map(|l| LoraGrad { a: self.adapters.take(l.a), b: self.adapters.take(l.b) });
        LinGrad { w, lora }
    }
    /// The gradient of a base tensor, computed even when the base is frozen (norm weights:
    /// the backward zeroes frozen vectors' gradients at its end).
    pub fn take(&mut self, s: Span) -> &'a mut [T] {
        self.base.take(s)
    }
    /// The gradient of an optional base tensor; None when the base is frozen.
    pub fn opt(&mut self, s: Option<Span>) -> Option<&'a mut [T]> {
        s.filter(|_| !self.frozen).map(|s| self.base.take(s))
    }
}

impl<'a, T> LinGrad<'a, T> {
    /// The gradients of `parts` equal parts (experts) of a stacked layer, in order.
    pub fn split(self, parts: usize) -> Vec<LinGrad<'a, T>> {
        fn cut<T>(x: &mut [T], parts: usize) -> Vec<&mut [T]> {
            let n = x.len() / parts;
            x.chunks_mut(n).collect()
        }
        let w: Vec<Option<&'a mut [T]>> = match self.w {
            Some(w) => cut(w, parts).into_iter().map(Some).collect(),
            None => (0..parts).map(|_| None).collect(),
        };
        let lora: Vec<Option<LoraGrad<'a, T>>> = match self.lora {
            Some(l) => cut(l.a, parts).into_iter().zip(cut(l.b, parts)).map(|(a, b)| Some(LoraGrad { a, b })).collect(),
            None => (0..parts).map(|_| None).collect(),
        };
        w.into_iter().zip(lora).map(|(w, lora)| LinGrad { w, lora }).collect()
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
        let (a, b) = (&adapters[l.a.off - layout.base_total..][..l.a.len], &adapters[l.b.off - layout.base_total..][..l.b.len]);
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
