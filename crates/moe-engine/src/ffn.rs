//! The gated MLP over a block of rows: y = down(act(gate(x), up(x))), act = SwiGLU's
//! silu(g) * u, or gpt-oss's clamped form; optionally with biases on the three projections
//! (gpt-oss's experts). Used as the dense feed-forward block and, per expert, by the MoE expert
//! stage.

use crate::linear::{GradCursor, Lin, LinGrad, LoraSpans};
use crate::packed::Weights;
use crate::params::Span;
use moe_kernels::matmul::{add_bias, bias_backward};
use moe_kernels::swiglu::{clamped_swiglu_backward, clamped_swiglu_forward, swiglu_backward, swiglu_forward};
use moe_kernels::Float;

/// The gated activation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    /// silu(g) * u
    Swiglu,
    /// gpt-oss: (clamp(u, -limit, limit) + 1) * g' * sigmoid(alpha * g'), g' = min(g, limit).
    Clamped { alpha: f64, limit: f64 },
}

/// Weights of one gated MLP: gate[F,C], up[F,C], down[C,F], each with its LoRA adapter if it
/// has one, biases gate[F], up[F], down[C] if it has them, and its activation. Stacked per
/// expert ([E,F,C]..., biases [E,F]...) for the expert stage.
#[derive(Clone, Copy)]
pub struct MlpWeights<'a, T> {
    pub gate: Lin<'a, T>,
    pub up: Lin<'a, T>,
    pub down: Lin<'a, T>,
    pub bias: Option<[&'a [T]; 3]>,
    pub act: Act,
}

impl<'a, T: Float> MlpWeights<'a, T> {
    /// Plain SwiGLU weights without adapters or biases.
    pub fn plain(gate: &'a [T], up: &'a [T], down: &'a [T]) -> Self {
        MlpWeights { gate: gate.into(), up: up.into(), down: down.into(), bias: None, act: Act::Swiglu }
    }
    /// The SwiGLU weights at `w` (gate, up, down) in `ws` with the adapters at `lora`.
    pub fn at(ws: Weights<'a, T>, w: [Span; 3], lora: Option<[LoraSpans; 3]>) -> Self {
        let [gate, up, down] = [0, 1, 2].map(|i| Lin::at(ws, w[i], lora.map(|l| l[i])));
        MlpWeights { gate, up, down, bias: None, act: Act::Swiglu }
    }
    /// Part `i` of `parts` (one expert of stacked weights).
    pub fn part(&self, i: usize, parts: usize) -> Self {
        let cut = |x: &'a [T]| &x[i * x.len() / parts..(i + 1) * x.len() / parts];
        MlpWeights {
            gate: self.gate.part(i, parts),
            up: self.up.part(i, parts),
            down: self.down.part(i, parts),
            bias: self.bias.map(|b| b.map(cut)),
            act: self.act,
        }
    }
}

/// Gradients of one gated MLP, same shapes as [`MlpWeights`] (biases: empty when frozen).
pub struct MlpGrads<'a, T> {
    pub gate: LinGrad<'a, T>,
    pub up: LinGrad<'a, T>,
    pub down: LinGrad<'a, T>,
    pub bias: Option<[&'a mut [T]; 3]>,
}

impl<'a, T> MlpGrads<'a, T> {
    /// Gradients of plain trainable weights.
    pub fn plain(gate: &'a mut [T], up: &'a mut [T], down: &'a mut [T]) -> Self {
        MlpGrads { gate: gate.into(), up: up.into(), down: down.into(), bias: None }
    }
    /// The gradients of the weights at `w` with the adapters at `lora`, then of the biases at
    /// `bias` (laid out after the weights), from `gc`.
    pub fn take(
        gc: &mut GradCursor<'a, T>,
        w: [Span; 3],
        lora: Option<[LoraSpans; 3]>,
        bias: Option<[Span; 3]>,
    ) -> Self {
        let [gate, up, down] = [0, 1, 2].map(|i| gc.lin(w[i], lora.map(|l| l[i])));
        let bias = bias.map(|b| b.map(|s| gc.take(s)));
        MlpGrads { gate, up, down, bias }
    }
    /// The gradients of each of `parts` stacked MLPs (experts).
    pub fn split(self, parts: usize) -> Vec<MlpGrads<'a, T>> {
        let (g, u, d) = (self.gate.split(parts), self.up.split(parts), self.down.split(parts));
        let biases: Vec<Option<[&'a mut [T]; 3]>> = match self.bias {
            Some([bg, bu, bd]) => {
                // a frozen base's gradients are empty: empty parts
                let cut = |x: &'a mut [T]| -> Vec<&'a mut [T]> {
                    let n = x.len() / parts;
                    if n == 0 {
                        (0..parts).map(|_| Default::default()).collect()
                    } else {
                        x.chunks_mut(n).collect()
                    }
                };
                cut(bg).into_iter().zip(cut(bu)).zip(cut(bd)).map(|((a, b), c)| Some([a, b, c])).collect()
            }
            None => (0..parts).map(|_| None).collect(),
        };
        g.into_iter()
            .zip(u)
            .zip(d)
            .zip(biases)
            .map(|(((gate, up), down), bias)| MlpGrads { gate, up, down, bias })
            .collect()
    }
}

/// Saved activations of R rows: g, u, h [R,F].
pub struct MlpActs<'a, T> {
    pub g: &'a mut [T],
    pub u: &'a mut [T],
    pub h: &'a mut [T],
}

/// y[R,C] = down(act(x gate^T, x up^T)) (with the biases).
#[allow(clippy::too_many_arguments)]
pub fn mlp_forward<T: Float>(
    y: &mut [T],
    a: MlpActs<T>,
    x: &[T],
    w: MlpWeights<T>,
    r: usize,
    c: usize,
    f: usize,
    par: bool,
) {
    w.gate.forward(a.g, x, r, c, f, par);
    w.up.forward(a.u, x, r, c, f, par);
    if let Some([bg, bu, _]) = w.bias {
        add_bias(a.g, bg);
        add_bias(a.u, bu);
    }
    match w.act {
        Act::Swiglu => swiglu_forward(a.h, a.g, a.u),
        Act::Clamped { alpha, limit } => clamped_swiglu_forward(a.h, a.g, a.u, T::from_f64(alpha), T::from_f64(limit)),
    }
    w.down.forward(y, a.h, r, f, c, par);
    if let Some([_, _, bd]) = w.bias {
        add_bias(y, bd);
    }
}

/// dx[R,C] += dL/dx and weight gradients accumulate. `scratch` holds three
/// [R,F] buffers (dh, dg, du) of any content; they are overwritten.
#[allow(clippy::too_many_arguments)]
pub fn mlp_backward<T: Float>(
    dx: &mut [T],
    gw: MlpGrads<T>,
    dy: &[T],
    x: &[T],
    w: MlpWeights<T>,
    g: &[T],
    u: &[T],
    h: &[T],
    scratch: [&mut [T]; 3],
    r: usize,
    c: usize,
    f: usize,
    par: bool,
) {
    let [dh, dg, du] = scratch;
    w.down.backward(dh, gw.down, dy, h, r, f, c, false, par);
    match w.act {
        Act::Swiglu => swiglu_backward(dg, du, dh, g, u),
        Act::Clamped { alpha, limit } => {
            clamped_swiglu_backward(dg, du, dh, g, u, T::from_f64(alpha), T::from_f64(limit))
        }
    }
    // a frozen base (LoRA) has empty bias gradients
    if let Some([bg, bu, bd]) = gw.bias.filter(|b| !b[2].is_empty()) {
        bias_backward(bd, dy);
        bias_backward(bg, dg);
        bias_backward(bu, du);
    }
    w.gate.backward(dx, gw.gate, dg, x, r, c, f, true, par);
    w.up.backward(dx, gw.up, du, x, r, c, f, true, par);
}
