//! The query, key and value projections of a decoder layer, forward and backward: the normed
//! input x[N,C] -> q[N,H*D], k[N,G*D], v[N,G*D], with their biases when the config has them
//! (Qwen2), the RMSNorm of q and k (per head: Qwen3; whole: OLMoE), OLMoE's clamp of q, k and v,
//! RoPE on q and k, and the
//! queries' factor for an attention scale other than 1/sqrt(D) (Granite): everything between the
//! layer's first norm and the attention kernel.

use crate::config::{ModelConfig, QkNorm};
use crate::linear::{GradCursor, Lin};
use crate::packed::Weights;
use crate::params::LayerSpans;
use moe_kernels::matmul::{add_bias, bias_backward};
use moe_kernels::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
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
    /// Factor on the rotated queries (an attention scale other than 1/sqrt(D); 1 else).
    pub q_scale: T,
    /// q, k and v clamped to [-clip, clip] after the norms (OLMoE's `clip_qkv`; 0 = none).
    pub clip: T,
}

/// What the q/k norms keep for the backward, for N rows (empty without q/k norms): q and k
/// before the norm, their rstd per normed row, and a scratch of the larger.
pub struct QkNormActs<T> {
    q_pre: Vec<T>,
    k_pre: Vec<T>,
    rstd_q: Vec<T>,
    rstd_k: Vec<T>,
    scratch: Vec<T>,
    /// Normed row widths of q and k (D per head, or H*D and G*D); eps.
    widths: [usize; 2],
    eps: f64,
    /// q, k, v before the clamp, one after the other (empty without `clip_qkv`).
    unclipped: Vec<T>,
}

impl<T: Float> QkNormActs<T> {
    pub fn new(cfg: &ModelConfig, n: usize) -> Self {
        let (d, h, g) = (cfg.head_dim(), cfg.num_attention_heads, cfg.num_key_value_heads);
        let widths = match cfg.qk_norm {
            QkNorm::None => [0, 0],
            QkNorm::PerHead => [d, d],
            QkNorm::Whole => [h * d, g * d],
        };
        let z = |len| if widths[0] == 0 { vec![] } else { vec![T::ZERO; len] };
        QkNormActs {
            q_pre: z(n * h * d),
            k_pre: z(n * g * d),
            rstd_q: z(n * h * d / widths[0].max(1)),
            rstd_k: z(n * g * d / widths[1].max(1)),
            scratch: z(n * h * d),
            widths,
            eps: cfg.rms_norm_eps,
            unclipped: if cfg.clip_qkv > 0.0 { vec![T::ZERO; n * (h + 2 * g) * d] } else { vec![] },
        }
    }
}

/// q, k, v of x[N,C] (N = x.len() / C) under the layer's weights in `ws`.
#[allow(clippy::too_many_arguments)]
pub fn qkv_forward<T: Float>(
    q: &mut [T],
    k: &mut [T],
    v: &mut [T],
    x: &[T],
    ls: &LayerSpans,
    ws: Weights<T>,
    a: &mut QkNormActs<T>,
    s: Qkv<T>,
) {
    let (n, hd, gd) = (x.len() / s.c, s.h * s.d, s.g * s.d);
    let p = ws.p;
    let [wq, wk, wv] = lins(ls, ws);
    wq.forward(q, x, n, s.c, hd, true);
    wk.forward(k, x, n, s.c, gd, true);
    wv.forward(v, x, n, s.c, gd, true);
    if let Some([bq, bk, bv]) = ls.qkv_bias {
        add_bias(q, bq.of(p));
        add_bias(k, bk.of(p));
        add_bias(v, bv.of(p));
    }
    if let Some([nq, nk]) = ls.qk_norm {
        let [wq, wk] = a.widths;
        let (qp, kp) = (&mut a.q_pre[..q.len()], &mut a.k_pre[..k.len()]);
        qp.copy_from_slice(q);
        kp.copy_from_slice(k);
        rmsnorm_forward(q, &mut a.rstd_q[..q.len() / wq], qp, nq.of(p), wq, a.eps);
        rmsnorm_forward(k, &mut a.rstd_k[..k.len() / wk], kp, nk.of(p), wk, a.eps);
    }
    if s.clip > T::ZERO {
        let c = s.clip;
        let (uq, rest) = a.unclipped.split_at_mut(q.len());
        let (uk, uv) = rest.split_at_mut(k.len());
        let nv = v.len();
        for (x, u) in [(&mut *q, uq), (&mut *k, uk), (&mut *v, &mut uv[..nv])] {
            u.copy_from_slice(x);
            x.iter_mut().for_each(|y| *y = if *y > c { c } else { y.max(-c) });
        }
    }
    rope_forward(q, s.cos, s.sin, s.t, s.h, s.d, s.pos0);
    rope_forward(k, s.cos, s.sin, s.t, s.g, s.d, s.pos0);
    if s.q_scale != T::ONE {
        q.iter_mut().for_each(|v| *v *= s.q_scale);
    }
}

/// The q, k, v projections of the layer with their adapters.
fn lins<'a, T: Float>(ls: &LayerSpans, ws: Weights<'a, T>) -> [Lin<'a, T>; 3] {
    let lora = |i: usize| ls.attn_lora.map(|l| l[i]);
    [Lin::at(ws, ls.wq, lora(0)), Lin::at(ws, ls.wk, lora(1)), Lin::at(ws, ls.wv, lora(2))]
}

/// dx[N,C] = dL/dx from dq, dk, dv (the gradients of the rotated q and k, overwritten on the
/// way), and the weights', biases' and q/k norms' gradients accumulated through `gc` (a fresh
/// cursor over the gradient buffer).
#[allow(clippy::too_many_arguments)]
pub fn qkv_backward<T: Float>(
    dx: &mut [T],
    mut gc: GradCursor<T>,
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    x: &[T],
    ls: &LayerSpans,
    ws: Weights<T>,
    a: &mut QkNormActs<T>,
    s: Qkv<T>,
) {
    let (n, hd, gd) = (x.len() / s.c, s.h * s.d, s.g * s.d);
    let p = ws.p;
    let lora = |i: usize| ls.attn_lora.map(|l| l[i]);
    let (gq, gk, gv) = (gc.lin(ls.wq, lora(0)), gc.lin(ls.wk, lora(1)), gc.lin(ls.wv, lora(2)));
    let bias_grads = ls.qkv_bias.map(|spans| spans.map(|b| gc.opt(Some(b))));
    let norm_grads = ls.qk_norm.map(|[nq, nk]| [gc.take(nq), gc.take(nk)]);
    if s.q_scale != T::ONE {
        dq.iter_mut().for_each(|v| *v *= s.q_scale);
    }
    rope_backward(dq, s.cos, s.sin, s.t, s.h, s.d, s.pos0);
    rope_backward(dk, s.cos, s.sin, s.t, s.g, s.d, s.pos0);
    if s.clip > T::ZERO {
        // a clamped value passes no gradient
        let (uq, rest) = a.unclipped.split_at(dq.len());
        let (uk, uv) = rest.split_at(dk.len());
        let nv = dv.len();
        for (d, u) in [(&mut *dq, uq), (&mut *dk, uk), (&mut *dv, &uv[..nv])] {
            d.iter_mut().zip(u).filter(|(_, &u)| u.abs() > s.clip).for_each(|(g, _)| *g = T::ZERO);
        }
    }
    if let (Some([nq, nk]), Some([gnq, gnk])) = (ls.qk_norm, norm_grads) {
        // through the norms: dq and dk become the gradients of q and k before them
        let [wq, wk] = a.widths;
        for (dy, pre, rstd, w, width, g) in
            [(&mut *dq, &a.q_pre, &a.rstd_q, nq.of(p), wq, gnq), (&mut *dk, &a.k_pre, &a.rstd_k, nk.of(p), wk, gnk)]
        {
            let len = dy.len();
            let dpre = &mut a.scratch[..len];
            dpre.fill(T::ZERO);
            rmsnorm_backward(dpre, g, dy, &pre[..len], w, &rstd[..len / width], width);
            dy.copy_from_slice(dpre);
        }
    }
    for (db, dy) in bias_grads.into_iter().flatten().zip([&*dq, &*dk, dv]) {
        if let Some(db) = db {
            bias_backward(db, dy);
        }
    }
    let [wq, wk, wv] = lins(ls, ws);
    wq.backward(dx, gq, dq, x, n, s.c, hd, false, true);
    wk.backward(dx, gk, dk, x, n, s.c, gd, true, true);
    wv.backward(dx, gv, dv, x, n, s.c, gd, true, true);
}
