//! The SwiGLU MLP over a block of rows: y = down(silu(gate(x)) * up(x)). Used as the dense
//! feed-forward block and, per expert, by the MoE expert stage.

use crate::linear::{GradCursor, Lin, LinGrad, LoraSpans};
use crate::packed::Weights;
use crate::params::Span;
use moe_kernels::swiglu::{swiglu_backward, swiglu_forward};
use moe_kernels::Float;

/// Weights of one SwiGLU MLP: gate[F,C], up[F,C], down[C,F], each with its LoRA adapter if
/// it has one. Stacked per expert ([E,F,C]...) for the expert stage.
#[derive(Clone, Copy)]
pub struct MlpWeights<'a, T> {
    pub gate: Lin<'a, T>,
    pub up: Lin<'a, T>,
    pub down: Lin<'a, T>,
}

impl<'a, T: Float> MlpWeights<'a, T> {
    /// Plain weights without adapters.
    pub fn plain(gate: &'a [T], up: &'a [T], down: &'a [T]) -> Self {
        MlpWeights { gate: gate.into(), up: up.into(), down: down.into() }
    }
    /// The weights at `w` (gate, up, down) in `ws` with the adapters at `lora`.
    pub fn at(ws: Weights<'a, T>, w: [Span; 3], lora: Option<[LoraSpans; 3]>) -> Self {
        let [gate, up, down] = [0, 1, 2].map(|i| Lin::at(ws, w[i], lora.map(|l| l[i])));
        MlpWeights { gate, up, down }
    }
    /// Part `i` of `parts` (one expert of stacked weights).
    pub fn part(&self, i: usize, parts: usize) -> Self {
        MlpWeights { gate: self.gate.part(i, parts), up: self.up.part(i, parts), down: self.down.part(i, parts) }
    }
}

/// Gradients of one SwiGLU MLP, same shapes as [`MlpWeights`].
pub struct MlpGrads<'a, T> {
    pub gate: LinGrad<'a, T>,
    pub up: LinGrad<'a, T>,
    pub down: LinGrad<'a, T>,
}

impl<'a, T> MlpGrads<'a, T> {
    /// Gradients of plain trainable weights.
    pub fn plain(gate: &'a mut [T], up: &'a mut [T], down: &'a mut [T]) -> Self {
        MlpGrads { gate: gate.into(), up: up.into(), down: down.into() }
    }
    /// The gradients of the weights at `w` with the adapters at `lora`, from `gc`.
    pub fn take(gc: &mut GradCursor<'a, T>, w: [Span; 3], lora: Option<[LoraSpans; 3]>) -> Self {
        let [gate, up, down] = [0, 1, 2].map(|i| gc.lin(w[i], lora.map(|l| l[i])));
        MlpGrads { gate, up, down }
    }
    /// The gradients of each of `parts` stacked MLPs (experts).
    pub fn split(self, parts: usize) -> Vec<MlpGrads<'a, T>> {
        let (g, u, d) = (self.gate.split(parts), self.up.split(parts), self.down.split(parts));
        g.into_iter().zip(u).zip(d).map(|((gate, up), down)| MlpGrads { gate, up, down }).collect()
    }
}

/// Saved activations of R rows: g, u, h [R,F].
pub struct MlpActs<'a, T> {
    pub g: &'a mut [T],
    pub u: &'a mut [T],
    pub h: &'a mut [T],
}

/// y[R,C] = down(silu(x gate^T) * (x up^T)).
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
    swiglu_forward(a.h, a.g, a.u);
    w.down.forward(y, a.h, r, f, c, par);
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
    swiglu_backward(dg, du, dh, g, u);
    w.gate.backward(dx, gw.gate, dg, x, r, c, f, true, par);
    w.up.backward(dx, gw.up, du, x, r, c, f, true, par);
}
