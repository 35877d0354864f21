//! Expert stage: one SwiGLU MLP per expert over its contiguous bin of rows, weights stacked
//! as gate[E,F,C], up[E,F,C], down[E,C,F]. Experts run one after another, each GEMM using all
//! threads (grouped GEMM without per-row overhead; faster grouping is the speed issue's).

use super::dispatch::Routing;
use crate::ffn::{mlp_backward, mlp_forward, MlpActs, MlpGrads, MlpWeights};
use moe_kernels::Float;

/// Stacked expert weights.
#[derive(Clone, Copy)]
pub struct ExpertWeights<'a, T> {
    pub gate: &'a [T],
    pub up: &'a [T],
    pub down: &'a [T],
}

impl<'a, T> ExpertWeights<'a, T> {
    fn expert(&self, i: usize, fc: usize) -> MlpWeights<'a, T> {
        MlpWeights {
            gate: &self.gate[i * fc..(i + 1) * fc],
            up: &self.up[i * fc..(i + 1) * fc],
            down: &self.down[i * fc..(i + 1) * fc],
        }
    }
}

/// Stacked expert gradients.
pub struct ExpertGrads<'a, T> {
    pub gate: &'a mut [T],
    pub up: &'a mut [T],
    pub down: &'a mut [T],
}

/// ys[R,C] = expert_e(xs[R,C]) bin by bin; g, u, h [R,F] saved.
#[allow(clippy::too_many_arguments)]
pub fn experts_forward<T: Float>(
    ys: &mut [T],
    g: &mut [T],
    u: &mut [T],
    h: &mut [T],
    xs: &[T],
    w: ExpertWeights<T>,
    rt: &Routing,
    c: usize,
    f: usize,
) {
    for (i, bin) in rt.bins.windows(2).enumerate() {
        let (lo, hi) = (bin[0], bin[1]);
        if lo == hi {
            continue;
        }
        let acts = MlpActs { g: &mut g[lo * f..hi * f], u: &mut u[lo * f..hi * f], h: &mut h[lo * f..hi * f] };
        mlp_forward(&mut ys[lo * c..hi * c], acts, &xs[lo * c..hi * c], w.expert(i, f * c), hi - lo, c, f, true);
    }
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
    rt: &Routing,
    c: usize,
    f: usize,
) {
    let [dh, dg, du] = scratch;
    let fc = f * c;
    let r = *rt.bins.last().unwrap_or(&0);
    dxs[..r * c].fill(T::ZERO);
    for (i, bin) in rt.bins.windows(2).enumerate() {
        let (lo, hi) = (bin[0], bin[1]);
        if lo == hi {
            continue;
        }
        let (rf, rc) = (lo * f..hi * f, lo * c..hi * c);
        let grads = MlpGrads {
            gate: &mut gw.gate[i * fc..(i + 1) * fc],
            up: &mut gw.up[i * fc..(i + 1) * fc],
            down: &mut gw.down[i * fc..(i + 1) * fc],
        };
        let scratch = [&mut dh[rf.clone()], &mut dg[rf.clone()], &mut du[rf.clone()]];
        mlp_backward(
            &mut dxs[rc.clone()],
            grads,
            &dys[rc.clone()],
            &xs[rc],
            w.expert(i, fc),
            &g[rf.clone()],
            &u[rf.clone()],
            &h[rf],
            scratch,
            hi - lo,
            c,
            f,
            true,
        );
    }
}
