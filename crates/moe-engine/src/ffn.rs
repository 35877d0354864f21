//! The SwiGLU MLP over a block of rows: y = down(silu(gate(x)) * up(x)). Used as the dense
//! feed-forward block and, per expert, by the MoE expert stage.

use moe_kernels::matmul::{linear_backward, linear_forward};
use moe_kernels::swiglu::{swiglu_backward, swiglu_forward};
use moe_kernels::Float;

/// Weights of one SwiGLU MLP: gate[F,C], up[F,C], down[C,F].
#[derive(Clone, Copy)]
pub struct MlpWeights<'a, T> {
    pub gate: &'a [T],
    pub up: &'a [T],
    pub down: &'a [T],
}

/// Gradients of one SwiGLU MLP, same shapes as [`MlpWeights`].
pub struct MlpGrads<'a, T> {
    pub gate: &'a mut [T],
    pub up: &'a mut [T],
    pub down: &'a mut [T],
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
    linear_forward(a.g, x, w.gate, r, c, f, par);
    linear_forward(a.u, x, w.up, r, c, f, par);
    swiglu_forward(a.h, a.g, a.u);
    linear_forward(y, a.h, w.down, r, f, c, par);
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
    linear_backward(dh, gw.down, dy, h, w.down, r, f, c, false, par);
    swiglu_backward(dg, du, dh, g, u);
    linear_backward(dx, gw.gate, dg, x, w.gate, r, c, f, true, par);
    linear_backward(dx, gw.up, du, x, w.up, r, c, f, true, par);
}
