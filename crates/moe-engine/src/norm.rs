//! The decoder's normalisation over rows of width C, forward and backward: RMSNorm (a weight),
//! or LayerNorm (a weight and a bias; PhiMoE) when the layer has a bias. `stats` holds rstd[N],
//! then, for LayerNorm, mean[N]: 2N values.

use moe_kernels::layernorm::{layernorm_backward, layernorm_forward};
use moe_kernels::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use moe_kernels::Float;

/// y[N,C] = norm(x[N,C]) with weight w[C] and, for LayerNorm, bias b[C].
pub fn norm_forward<T: Float>(y: &mut [T], stats: &mut [T], x: &[T], w: &[T], b: Option<&[T]>, c: usize, eps: f64) {
    let n = x.len() / c;
    let (rstd, mean) = stats.split_at_mut(n);
    match b {
        None => rmsnorm_forward(y, rstd, x, w, c, eps),
        Some(b) => layernorm_forward(y, &mut mean[..n], rstd, x, w, b, c, eps),
    }
}

/// dx[N,C] += dL/dx from dy; dw (and db) accumulate, empty when frozen.
#[allow(clippy::too_many_arguments)]
pub fn norm_backward<T: Float>(
    dx: &mut [T],
    dw: &mut [T],
    db: Option<&mut [T]>,
    dy: &[T],
    x: &[T],
    w: &[T],
    stats: &[T],
    c: usize,
) {
    let n = x.len() / c;
    let (rstd, mean) = stats.split_at(n);
    match db {
        None => rmsnorm_backward(dx, dw, dy, x, w, rstd, c),
        Some(db) => layernorm_backward(dx, dw, db, dy, x, w, &mean[..n], rstd, c),
    }
}
