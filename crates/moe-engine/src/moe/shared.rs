//! Shared expert: one SwiGLU MLP that every token goes through besides its routed experts,
//! optionally scaled per token by sigmoid(x . w_gate) (Qwen2-MoE's `shared_expert_gate`).
//! out += gate(x) * shared(x).

use crate::ffn::{mlp_backward, mlp_forward, MlpActs, MlpGrads, MlpWeights};
use moe_kernels::Float;
use rayon::prelude::*;

/// Shared-expert weights: the MLP (gate/up [Fs,C], down [C,Fs]) and the optional gate [1,C].
#[derive(Clone, Copy)]
pub struct SharedWeights<'a, T> {
    pub mlp: MlpWeights<'a, T>,
    pub gate: Option<&'a [T]>,
}

pub struct SharedGrads<'a, T> {
    pub mlp: MlpGrads<'a, T>,
    pub gate: Option<&'a mut [T]>,
}

/// Activations for N tokens and backward scratch.
pub struct SharedActs<T> {
    g: Vec<T>,
    u: Vec<T>,
    h: Vec<T>,
    /// [N,C] shared MLP output before the gate.
    y: Vec<T>,
    /// [N] sigmoid gate (1 when ungated).
    gs: Vec<T>,
    dy: Vec<T>,
    scratch: [Vec<T>; 3],
}

impl<T: Float> SharedActs<T> {
    pub fn new(n: usize, c: usize, fs: usize) -> Self {
        let z = |len| vec![T::ZERO; len];
        SharedActs {
            g: z(n * fs),
            u: z(n * fs),
            h: z(n * fs),
            y: z(n * c),
            gs: z(n),
            dy: z(n * c),
            scratch: [z(n * fs), z(n * fs), z(n * fs)],
        }
    }
}

/// out[N,C] += gate(x) * shared(x).
pub fn shared_forward<T: Float>(
    out: &mut [T],
    x: &[T],
    w: SharedWeights<T>,
    a: &mut SharedActs<T>,
    n: usize,
    c: usize,
    fs: usize,
) {
    let acts = MlpActs { g: &mut a.g[..n * fs], u: &mut a.u[..n * fs], h: &mut a.h[..n * fs] };
    mlp_forward(&mut a.y[..n * c], acts, &x[..n * c], w.mlp, n, c, fs, true);
    a.gs[..n].par_iter_mut().zip(x.par_chunks(c)).for_each(|(g, xr)| {
        *g = match w.gate {
            Some(wg) => {
                let l: T = xr.iter().zip(wg).map(|(&a, &b)| a * b).sum();
                T::ONE / (T::ONE + (-l).exp())
            }
            None => T::ONE,
        };
    });
    out[..n * c].par_chunks_mut(c).zip(a.y.par_chunks(c)).zip(a.gs.par_iter()).for_each(|((o, y), &g)| {
        o.iter_mut().zip(y).for_each(|(ov, &yv)| *ov += g * yv);
    });
}

/// dx[N,C] += dL/dx of the shared branch; gradients accumulate.
#[allow(clippy::too_many_arguments)]
pub fn shared_backward<T: Float>(
    dx: &mut [T],
    gr: SharedGrads<T>,
    dout: &[T],
    x: &[T],
    w: SharedWeights<T>,
    a: &mut SharedActs<T>,
    n: usize,
    c: usize,
    fs: usize,
) {
    if let Some(wg) = w.gate {
        // dgate_logit_n = (dout_n . y_n) * g (1 - g); the gate's own gradient unless frozen
        let mut dwg = gr.gate;
        for ((((dxr, xr), d), y), &g) in
            dx.chunks_mut(c).zip(x.chunks(c)).zip(dout.chunks(c)).zip(a.y.chunks(c)).zip(&a.gs[..n])
        {
            let dl = d.iter().zip(y).map(|(&p, &q)| p * q).sum::<T>() * g * (T::ONE - g);
            dxr.iter_mut().zip(wg).for_each(|(v, &wv)| *v += dl * wv);
            if let Some(dwg) = dwg.as_deref_mut() {
                dwg.iter_mut().zip(xr).for_each(|(v, &xv)| *v += dl * xv);
            }
        }
    }
    a.dy[..n * c].par_chunks_mut(c).zip(dout.par_chunks(c)).zip(a.gs.par_iter()).for_each(|((dy, d), &g)| {
        dy.iter_mut().zip(d).for_each(|(v, &dv)| *v = g * dv);
    });
    let [s0, s1, s2] = &mut a.scratch;
    let scratch = [&mut s0[..n * fs], &mut s1[..n * fs], &mut s2[..n * fs]];
    mlp_backward(
        &mut dx[..n * c],
        gr.mlp,
        &a.dy[..n * c],
        &x[..n * c],
        w.mlp,
        &a.g[..n * fs],
        &a.u[..n * fs],
        &a.h[..n * fs],
        scratch,
        n,
        c,
        fs,
        true,
    );
}
