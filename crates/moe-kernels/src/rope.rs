//! Rotary position embedding in the Hugging Face "rotate_half" layout: within each head of
//! dim D the pairs are (i, i + D/2), angle = pos * theta^(-2i/D).

use crate::Float;
use rayon::prelude::*;

/// Cos/sin tables: cos[T, D/2], sin[T, D/2] for positions 0..T.
pub fn rope_tables<T: Float>(cos: &mut [T], sin: &mut [T], t: usize, d: usize, theta: f64) {
    let half = d / 2;
    for p in 0..t {
        for i in 0..half {
            let freq = theta.powf(-(2.0 * i as f64) / d as f64);
            let a = p as f64 * freq;
            cos[p * half + i] = T::from_f64(a.cos());
            sin[p * half + i] = T::from_f64(a.sin());
        }
    }
}

/// In place on x[B, T, nh, D] rows; `pos0` is the position of t = 0 (KV-cache decoding).
/// `inverse` applies the transposed rotation (the backward).
#[allow(clippy::too_many_arguments)]
fn rope_apply<T: Float>(x: &mut [T], cos: &[T], sin: &[T], t: usize, nh: usize, d: usize, pos0: usize, inverse: bool) {
    let half = d / 2;
    x.par_chunks_mut(nh * d).enumerate().for_each(|(row, xr)| {
        let p = pos0 + row % t;
        let (c, s) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
        for h in xr.chunks_mut(d) {
            let (a, b) = h.split_at_mut(half);
            for i in 0..half {
                let (x1, x2) = (a[i], b[i]);
                let sn = if inverse { -s[i] } else { s[i] };
                a[i] = x1 * c[i] - x2 * sn;
                b[i] = x2 * c[i] + x1 * sn;
            }
        }
    });
}

/// Forward, in place on x[B, T, nh, D].
pub fn rope_forward<T: Float>(x: &mut [T], cos: &[T], sin: &[T], t: usize, nh: usize, d: usize, pos0: usize) {
    rope_apply(x, cos, sin, t, nh, d, pos0, false);
}

/// Backward, in place on dx[B, T, nh, D] (rotation is orthogonal: apply its transpose).
pub fn rope_backward<T: Float>(dx: &mut [T], cos: &[T], sin: &[T], t: usize, nh: usize, d: usize, pos0: usize) {
    rope_apply(dx, cos, sin, t, nh, d, pos0, true);
}
