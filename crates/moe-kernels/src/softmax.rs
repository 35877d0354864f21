//! Row softmax over the last dimension, computed stably (max subtracted).

use crate::float::{dot, max, sum};
use crate::Float;

/// y[N, E] = softmax(x) per row.
pub fn softmax_forward<T: Float>(y: &mut [T], x: &[T], e: usize) {
    for (yr, xr) in y.chunks_mut(e).zip(x.chunks(e)) {
        softmax_row(yr, xr);
    }
}

/// One row: y = softmax(x).
pub fn softmax_row<T: Float>(y: &mut [T], x: &[T]) {
    softmax_row_lse(y, x);
}

/// One row: y = softmax(x), returning logsumexp(x) from the same exponentials (a router needs
/// both; equal to [`logsumexp`] bit for bit for rows of up to 256).
pub fn softmax_row_lse<T: Float>(y: &mut [T], x: &[T]) -> T {
    let m = max(x);
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv = (xv - m).exp();
    }
    let s = sum(y);
    let inv = T::ONE / s;
    y.iter_mut().for_each(|v| *v *= inv);
    m + s.ln()
}

/// dx[N, E] += y * (dy - sum(dy * y)) per row.
pub fn softmax_backward<T: Float>(dx: &mut [T], dy: &[T], y: &[T], e: usize) {
    for ((dxr, dyr), yr) in dx.chunks_mut(e).zip(dy.chunks(e)).zip(y.chunks(e)) {
        let dot = dot(dyr, yr);
        for ((d, &g), &p) in dxr.iter_mut().zip(dyr).zip(yr) {
            *d += p * (g - dot);
        }
    }
}

/// log(sum(exp(x))) of one row, stably.
pub fn logsumexp<T: Float>(x: &[T]) -> T {
    let m = max(x);
    // exponentials a block at a time on the stack, so both loops vectorise
    let mut buf = [T::ZERO; 256];
    let mut s = T::ZERO;
    for c in x.chunks(256) {
        let b = &mut buf[..c.len()];
        b.iter_mut().zip(c).for_each(|(o, &v)| *o = (v - m).exp());
        s += sum(b);
    }
    m + s.ln()
}
