//! LayerNorm over the last dimension: y = (x - mean) / sqrt(var + eps) * w + b (PhiMoE).

use crate::Float;
use rayon::prelude::*;

/// y[N,C] = (x - mean) * rstd * w + b; mean[N] and rstd[N] are saved for the backward.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward<T: Float>(
    y: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
    x: &[T],
    w: &[T],
    b: &[T],
    c: usize,
    eps: f64,
) {
    let (eps, inv_c) = (T::from_f64(eps), T::from_f64(1.0 / c as f64));
    y.par_chunks_mut(c).zip(mean.par_iter_mut().zip(rstd.par_iter_mut())).zip(x.par_chunks(c)).for_each(
        |((yr, (mu, rs)), xr)| {
            let m = crate::float::sum(xr) * inv_c;
            let var = xr.iter().fold(T::ZERO, |a, &v| a + (v - m) * (v - m)) * inv_c;
            let r = T::ONE / (var + eps).sqrt();
            (*mu, *rs) = (m, r);
            for (((yv, &xv), &wv), &bv) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                *yv = (xv - m) * r * wv + bv;
            }
        },
    );
}

/// dx[N,C] += dL/dx; dw[C] += sum_n dy * xhat, db[C] += sum_n dy (both may be empty: a frozen
/// norm), with xhat = (x - mean) * rstd.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<T: Float>(
    dx: &mut [T],
    dw: &mut [T],
    db: &mut [T],
    dy: &[T],
    x: &[T],
    w: &[T],
    mean: &[T],
    rstd: &[T],
    c: usize,
) {
    let inv_c = T::from_f64(1.0 / c as f64);
    dx.par_chunks_mut(c).zip(dy.par_chunks(c)).zip(x.par_chunks(c)).zip(mean.par_iter().zip(rstd.par_iter())).for_each(
        |(((dxr, dyr), xr), (&m, &r))| {
            // g = dy * w; dx = r * (g - mean(g) - xhat * mean(g * xhat))
            let (mut sg, mut sgx) = (T::ZERO, T::ZERO);
            for ((&d, &wv), &xv) in dyr.iter().zip(w).zip(xr) {
                let g = d * wv;
                sg += g;
                sgx += g * (xv - m) * r;
            }
            let (mg, mgx) = (sg * inv_c, sgx * inv_c);
            for (((dxv, &d), &wv), &xv) in dxr.iter_mut().zip(dyr).zip(w).zip(xr) {
                *dxv += r * (d * wv - mg - (xv - m) * r * mgx);
            }
        },
    );
    if dw.is_empty() {
        return;
    }
    for ((dyr, xr), (&m, &r)) in dy.chunks(c).zip(x.chunks(c)).zip(mean.iter().zip(rstd)) {
        for (((dwv, dbv), &d), &xv) in dw.iter_mut().zip(db.iter_mut()).zip(dyr).zip(xr) {
            *dwv += d * (xv - m) * r;
            *dbv += d;
        }
    }
}
