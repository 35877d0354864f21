//! RMSNorm over the last dimension: y = x / sqrt(mean(x^2) + eps) * w (LLaMA, no bias).

use crate::Float;
use rayon::prelude::*;

/// y[N,C] = x * rstd * w; rstd[N] is saved for the backward.
pub fn rmsnorm_forward<T: Float>(y: &mut [T], rstd: &mut [T], x: &[T], w: &[T], c: usize, eps: f64) {
    let eps = T::from_f64(eps);
    let inv_c = T::from_f64(1.0 / c as f64);
    y.par_chunks_mut(c).zip(rstd.par_iter_mut()).zip(x.par_chunks(c)).for_each(|((yr, rs), xr)| {
        let ms: T = crate::float::dot(xr, xr) * inv_c;
        let r = T::ONE / (ms + eps).sqrt();
        *rs = r;
        for ((yv, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
            *yv = xv * r * wv;
        }
    });
}

/// dx[N,C] += dL/dx; dw[C] += sum_n dy * x * rstd.
/// `dw` may be empty: then no weight gradient is computed (a frozen norm).
pub fn rmsnorm_backward<T: Float>(dx: &mut [T], dw: &mut [T], dy: &[T], x: &[T], w: &[T], rstd: &[T], c: usize) {
    let inv_c = T::from_f64(1.0 / c as f64);
    dx.par_chunks_mut(c).zip(dy.par_chunks(c)).zip(x.par_chunks(c)).zip(rstd.par_iter()).for_each(
        |(((dxr, dyr), xr), &r)| {
            // g = dy*w; dx = r*g - x * r^3 * mean(g*x). g a block at a time on the stack, so
            // the dot product vectorises (a plain iterator sum runs in order, one add at a time).
            let mut g = [T::ZERO; 256];
            let mut dot = T::ZERO;
            for ((d, wv), xv) in dyr.chunks(256).zip(w.chunks(256)).zip(xr.chunks(256)) {
                let g = &mut g[..d.len()];
                g.iter_mut().zip(d).zip(wv).for_each(|((gv, &dv), &wv)| *gv = dv * wv);
                dot += crate::float::dot(g, xv);
            }
            let coef = r * r * r * dot * inv_c;
            for (((dxv, &d), &wv), &xv) in dxr.iter_mut().zip(dyr).zip(w).zip(xr) {
                *dxv += r * d * wv - coef * xv;
            }
        },
    );
    // Weight gradient: reduce over rows (serial over rows, vectorised over C).
    if dw.is_empty() {
        return;
    }
    for ((dyr, xr), &r) in dy.chunks(c).zip(x.chunks(c)).zip(rstd) {
        for ((dwv, &d), &xv) in dw.iter_mut().zip(dyr).zip(xr) {
            *dwv += d * xv * r;
        }
    }
}
