//! Expert stage: one SwiGLU MLP per expert over its contiguous bin of rows, weights stacked
//! as gate[E,F,C], up[E,F,C], down[E,C,F]. Experts run in parallel, each on one thread with
//! single-threaded GEMMs: small-M GEMMs scale poorly inside, and the bins, activations and
//! gradients of different experts are disjoint.

use crate::ffn::{mlp_backward, mlp_forward, MlpActs, MlpGrads, MlpWeights};
use moe_kernels::Float;
use rayon::prelude::*;

/// Splits `buf` into the consecutive pieces [bins[i]*w, bins[i+1]*w).
fn carve<'a, T>(mut buf: &'a mut [T], bins: &[usize], w: usize) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(bins.len().saturating_sub(1));
    buf = &mut buf[bins[0] * w..];
    for b in bins.windows(2) {
        let (head, rest) = buf.split_at_mut((b[1] - b[0]) * w);
        out.push(head);
        buf = rest;
    }
    out
}

/// Stacked expert weights (gate[E,F,C], up[E,F,C], down[E,C,F], adapters stacked the same way).
pub type ExpertWeights<'a, T> = MlpWeights<'a, T>;

/// Stacked expert gradients.
pub type ExpertGrads<'a, T> = MlpGrads<'a, T>;

/// ys[R,C] = expert_e(xs[R,C]) bin by bin (`bins`[E+1] row offsets); g, u, h [R,F] saved.
#[allow(clippy::too_many_arguments)]
pub fn experts_forward<T: Float>(
    ys: &mut [T],
    g: &mut [T],
    u: &mut [T],
    h: &mut [T],
    xs: &[T],
    w: ExpertWeights<T>,
    bins: &[usize],
    c: usize,
    f: usize,
) {
    let b = bins;
    let e = b.len() - 1;
    let jobs: Vec<_> =
        carve(ys, b, c).into_iter().zip(carve(g, b, f)).zip(carve(u, b, f)).zip(carve(h, b, f)).collect();
    jobs.into_par_iter().enumerate().for_each(|(i, (((y, g), u), h))| {
        let (lo, hi) = (b[i], b[i + 1]);
        if lo < hi {
            let acts = MlpActs { g, u, h };
            mlp_forward(y, acts, &xs[lo * c..hi * c], w.part(i, e), hi - lo, c, f, false);
        }
    });
}

/// dxs[R,C] (overwritten) and expert gradients (accumulated) from dys[R,C].
#[allow(clippy::too_many_arguments)]
pub fn experts_backward<T: Float>(
    dxs: &mut [T],
    gw: ExpertGrads<T>,
    dys: &[T],
    xs: &[T],
    w: ExpertWeights<T>,
    g: &[T],
    u: &[T],
    h: &[T],
    scratch: [&mut [T]; 3],
    bins: &[usize],
    c: usize,
    f: usize,
) {
    let [dh, dg, du] = scratch;
    let r = *bins.last().unwrap_or(&0);
    dxs[..r * c].fill(T::ZERO);
    let b = bins;
    let e = b.len() - 1;
    let jobs: Vec<_> = carve(dxs, b, c)
        .into_iter()
        .zip(carve(dh, b, f))
        .zip(carve(dg, b, f))
        .zip(carve(du, b, f))
        .zip(gw.split(e))
        .collect();
    jobs.into_par_iter().enumerate().for_each(|(i, ((((dx, dh), dg), du), grads))| {
        let (lo, hi) = (b[i], b[i + 1]);
        if lo < hi {
            let (rf, rc) = (lo * f..hi * f, lo * c..hi * c);
            mlp_backward(
                dx,
                grads,
                &dys[rc.clone()],
                &xs[rc],
                w.part(i, e),
                &g[rf.clone()],
                &u[rf.clone()],
                &h[rf],
                [dh, dg, du],
                hi - lo,
                c,
                f,
                false,
            );
        }
    });
}
