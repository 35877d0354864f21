//! SwiGLU activation: h = silu(g) * u, with silu(g) = g * sigmoid(g).

use crate::Float;
use rayon::prelude::*;

#[inline(always)]
fn sigmoid<T: Float>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

/// h[R, F] = silu(g) * u, elementwise.
pub fn swiglu_forward<T: Float>(h: &mut [T], g: &[T], u: &[T]) {
    h.par_chunks_mut(4096).zip(g.par_chunks(4096)).zip(u.par_chunks(4096)).for_each(|((h, g), u)| {
        for ((hv, &gv), &uv) in h.iter_mut().zip(g).zip(u) {
            *hv = gv * sigmoid(gv) * uv;
        }
    });
}

/// dg[R, F] = dh * u * silu'(g); du[R, F] = dh * silu(g) (overwritten: they are scratch).
pub fn swiglu_backward<T: Float>(dg: &mut [T], du: &mut [T], dh: &[T], g: &[T], u: &[T]) {
    dg.par_chunks_mut(4096)
        .zip(du.par_chunks_mut(4096))
        .zip(dh.par_chunks(4096))
        .zip(g.par_chunks(4096).zip(u.par_chunks(4096)))
        .for_each(|(((dg, du), dh), (g, u))| {
            for i in 0..dg.len() {
                let s = sigmoid(g[i]);
                let silu = g[i] * s;
                dg[i] = dh[i] * u[i] * s * (T::ONE + g[i] * (T::ONE - s));
                du[i] = dh[i] * silu;
            }
        });
}

/// min(x, limit) without a `min` on the sealed float trait.
#[inline(always)]
fn cap<T: Float>(x: T, limit: T) -> T {
    if x > limit {
        limit
    } else {
        x
    }
}

/// gpt-oss's clamped SwiGLU: with g' = min(g, limit) and u' = clamp(u, -limit, limit),
/// h = (u' + 1) * g' * sigmoid(alpha * g'), elementwise.
pub fn clamped_swiglu_forward<T: Float>(h: &mut [T], g: &[T], u: &[T], alpha: T, limit: T) {
    h.par_chunks_mut(4096).zip(g.par_chunks(4096)).zip(u.par_chunks(4096)).for_each(|((h, g), u)| {
        for ((hv, &gv), &uv) in h.iter_mut().zip(g).zip(u) {
            let (gc, uc) = (cap(gv, limit), cap(uv.max(-limit), limit));
            *hv = (uc + T::ONE) * gc * sigmoid(alpha * gc);
        }
    });
}

/// Backward of [`clamped_swiglu_forward`]: dg, du (overwritten) from dh; a clamped input gets
/// no gradient.
pub fn clamped_swiglu_backward<T: Float>(dg: &mut [T], du: &mut [T], dh: &[T], g: &[T], u: &[T], alpha: T, limit: T) {
    dg.par_chunks_mut(4096)
        .zip(du.par_chunks_mut(4096))
        .zip(dh.par_chunks(4096))
        .zip(g.par_chunks(4096).zip(u.par_chunks(4096)))
        .for_each(|(((dg, du), dh), (g, u))| {
            for i in 0..dg.len() {
                let (gc, uc) = (cap(g[i], limit), cap(u[i].max(-limit), limit));
                let s = sigmoid(alpha * gc);
                let glu = gc * s;
                let dglu = s + gc * alpha * s * (T::ONE - s);
                dg[i] = if g[i] <= limit { dh[i] * (uc + T::ONE) * dglu } else { T::ZERO };
                du[i] = if u[i].abs() <= limit { dh[i] * glu } else { T::ZERO };
            }
        });
}
