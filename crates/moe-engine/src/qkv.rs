//! The query, key and value projections of a decoder layer, forward and backward: the normed
//! input x[N,C] -> q[N,H*D], k[N,G*D], v[N,G*D], with their biases when the config has them
//! (Qwen2) and RoPE on q and k: everything between the layer's first norm and the attention
//! kernel.

use crate::params::LayerSpans;
use moe_kernels::matmul::{add_bias, bias_backward, linear_backward, linear_forward};
use moe_kernels::rope::{rope_backward, rope_forward};
use moe_kernels::Float;

/// Sizes of one call: N = B*T rows at positions pos0.. of sequences of T, width C, H query and
/// G key/value heads of width D; the RoPE tables.
#[derive(Clone, Copy)]
pub struct Qkv<'a, T> {
    pub t: usize,
    pub pos0: usize,
    pub c: usize,
    pub h: usize,
    pub g: usize,
    pub d: usize,
    pub cos: &'a [T],
    pub sin: &'a [T],
}

/// q, k, v of x[N,C] (N = x.len() / C) under the layer's weights in `p`.
pub fn qkv_forward<T: Float>(q: &mut [T], k: &mut [T], v: &mut [T], x: &[T], ls: &LayerSpans, p: &[T], s: Qkv<T>) {
    let (n, hd, gd) = (x.len() / s.c, s.h * s.d, s.g * s.d);
    linear_forward(q, x, ls.wq.of(p), n, s.c, hd, true);
    linear_forward(k, x, ls.wk.of(p), n, s.c, gd, true);
    linear_forward(v, x, ls.wv.of(p), n, s.c, gd, true);
    if let Some([bq, bk, bv]) = ls.qkv_bias {
        add_bias(q, bq.of(p));
        add_bias(k, bk.of(p));
        add_bias(v, bv.of(p));
    }
    rope_forward(q, s.cos, s.sin, s.t, s.h, s.d, s.pos0);
    rope_forward(k, s.cos, s.sin, s.t, s.g, s.d, s.pos0);
}

/// dx[N,C] = dL/dx from dq, dk, dv (the gradients of the rotated q and k, overwritten on the
/// way), and the weights' and biases' gradients accumulated into `gr`.
#[allow(clippy::too_many_arguments)]
pub fn qkv_backward<T: Float>(
    dx: &mut [T],
    gr: &mut [T],
    dq: &mut [T],
    dk: &mut [T],
    dv: &[T],
    x: &[T],
    ls: &LayerSpans,
    p: &[T],
    s: Qkv<T>,
) {
    let (n, hd, gd) = (x.len() / s.c, s.h * s.d, s.g * s.d);
    rope_backward(dq, s.cos, s.sin, s.t, s.h, s.d, s.pos0);
    rope_backward(dk, s.cos, s.sin, s.t, s.g, s.d, s.pos0);
    if let Some([bq, bk, bv]) = ls.qkv_bias {
        bias_backward(bq.of_mut(gr), dq);
        bias_backward(bk.of_mut(gr), dk);
        bias_backward(bv.of_mut(gr), dv);
    }
    linear_backward(dx, ls.wq.of_mut(gr), dq, x, ls.wq.of(p), n, s.c, hd, false, true);
    linear_backward(dx, ls.wk.of_mut(gr), dk, x, ls.wk.of(p), n, s.c, gd, true, true);
    linear_backward(dx, ls.wv.of_mut(gr), dv, x, ls.wv.of(p), n, s.c, gd, true, true);
}
