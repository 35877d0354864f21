//! DeepSeek's multi-head latent attention (MLA) as the training model computes it, forward and
//! backward: from the normed input x[N,C] to the per-head queries q[N,H,D], keys k[N,H,D] and
//! values v[N,H,Dv] that the attention kernel takes (D = nope + rope), as transformers'
//! DeepseekV3Attention does:
//!   q    = q_b(RMSNorm(q_a(x)))  (or q_proj(x) without a query rank)      [N, H, nope + rope]
//!   ckv  = kv_a(x) = [c_pre | kr]                                          [N, kv_lora + rope]
//!   kvb  = kv_b(RMSNorm(c_pre))  = per head [k_nope | v]                   [N, H, nope + v]
//!   k    = per head [k_nope | RoPE(kr)] (one rotated key shared by all heads)
//! RoPE turns the last `rope` dims of every query head and kr; with `rope_interleave` those dims
//! are first de-interleaved (pairs 2i, 2i+1 become i, i + rope/2), as transformers does.
//! Decoding against a latent cache is moe-infer's (`mla.rs` there); this is the expanded form.

use crate::config::{AttnShape, ModelConfig};
use crate::linear::{GradCursor, Lin};
use crate::packed::Weights;
use crate::params::LayerSpans;
use moe_kernels::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use moe_kernels::rope::{rope_backward, rope_forward};
use moe_kernels::Float;

/// The epsilon of the query and latent RMSNorms: transformers builds them with its default
/// (DeepseekV3RMSNorm's 1e-6), not the config's rms_norm_eps.
pub const LATENT_NORM_EPS: f64 = 1e-6;

/// Sizes of one call: N = B*T rows at positions pos0.. of sequences of T, width C; the
/// attention's head shape; the RoPE tables (over `rope` dims).
#[derive(Clone, Copy)]
pub struct MlaStep<'a, T> {
    pub t: usize,
    pub pos0: usize,
    pub c: usize,
    pub shape: AttnShape,
    pub cos: &'a [T],
    pub sin: &'a [T],
    /// Factor on the queries for an attention scale other than 1/sqrt(D) (DeepSeek's YaRN
    /// mscale); 1 else.
    pub q_scale: T,
}

/// What the forward keeps for the backward, and the scratch of both (empty without MLA).
pub struct MlaActs<T> {
    /// q_a(x) and its norm [N, q_lora], rstd [N].
    qa_pre: Vec<T>,
    qa: Vec<T>,
    rstd_qa: Vec<T>,
    /// The latent before and after its norm [N, kv_lora], rstd [N].
    c_pre: Vec<T>,
    c: Vec<T>,
    rstd_c: Vec<T>,
    /// kv_a(x) [N, kv_lora + rope]; kv_b's output [N, H*(nope + v)] (and its gradient).
    ckv: Vec<T>,
    kvb: Vec<T>,
    /// The rotated dims of q [N, H, rope] and kr [N, rope] on their way through RoPE.
    qr: Vec<T>,
    kr: Vec<T>,
    /// Backward scratch: [N, q_lora] twice, [N, kv_lora] twice.
    dqa: Vec<T>,
    dqa_pre: Vec<T>,
    dc: Vec<T>,
    dc_pre: Vec<T>,
    /// q_lora, kv_lora, nope; interleaved RoPE.
    ql: usize,
    kvl: usize,
    nope: usize,
    interleave: bool,
}

impl<T: Float> MlaActs<T> {
    pub fn new(cfg: &ModelConfig, n: usize) -> Self {
        let a = cfg.mla.unwrap_or(crate::config::MlaConfig {
            q_lora_rank: 0,
            kv_lora_rank: 0,
            qk_nope_head_dim: 0,
            qk_rope_head_dim: 0,
            v_head_dim: 0,
            rope_interleave: false,
        });
        let s = cfg.attn_shape();
        let on = cfg.mla.is_some();
        let z = |len: usize| if on { vec![T::ZERO; len] } else { vec![] };
        let (ql, kvl, nope) = (a.q_lora_rank, a.kv_lora_rank, a.qk_nope_head_dim);
        MlaActs {
            qa_pre: z(n * ql),
            qa: z(n * ql),
            rstd_qa: z(n),
            c_pre: z(n * kvl),
            c: z(n * kvl),
            rstd_c: z(n),
            ckv: z(n * (kvl + s.rope)),
            kvb: z(n * s.h * (nope + s.dv)),
            qr: z(n * s.h * s.rope),
            kr: z(n * s.rope),
            dqa: z(n * ql),
            dqa_pre: z(n * ql),
            dc: z(n * kvl),
            dc_pre: z(n * kvl),
            ql,
            kvl,
            nope,
            interleave: a.rope_interleave,
        }
    }
}

/// Pairs (2i, 2i+1) of each `w`-wide chunk become (i, i + w/2), or back (`inverse`).
fn interleave_perm<T: Float>(x: &mut [T], w: usize, inverse: bool) {
    let half = w / 2;
    let mut tmp = vec![T::ZERO; w];
    for chunk in x.chunks_exact_mut(w) {
        for i in 0..half {
            if inverse {
                tmp[2 * i] = chunk[i];
                tmp[2 * i + 1] = chunk[half + i];
            } else {
                tmp[i] = chunk[2 * i];
                tmp[half + i] = chunk[2 * i + 1];
            }
        }
        chunk.copy_from_slice(&tmp);
    }
}

/// The rope dims of every head of q[N, H, D] to and from `qr`[N, H, rope].
fn rope_dims<T: Float>(q: &mut [T], qr: &mut [T], d: usize, rope: usize, out: bool) {
    for (head, r) in q.chunks_exact_mut(d).zip(qr.chunks_exact_mut(rope)) {
        if out {
            r.copy_from_slice(&head[d - rope..]);
        } else {
            head[d - rope..].copy_from_slice(r);
        }
    }
}

/// q[N,H,D], k[N,H,D], v[N,H,Dv] of x[N,C] under the layer's weights in `ws`.
#[allow(clippy::too_many_arguments)]
pub fn mla_forward<T: Float>(
    q: &mut [T],
    k: &mut [T],
    v: &mut [T],
    x: &[T],
    ls: &LayerSpans,
    ws: Weights<T>,
    a: &mut MlaActs<T>,
    s: MlaStep<T>,
) {
    let sp = ls.mla.expect("an MLA layer has its spans");
    let AttnShape { h, d, dv, rope, .. } = s.shape;
    let (n, c, ql, kvl, nope) = (x.len() / s.c, s.c, a.ql, a.kvl, a.nope);
    let lora = |i: usize| ls.attn_lora.map(|l| l[i]);
    // queries
    let wq = Lin::at(ws, ls.wq, lora(0));
    match sp.q_a {
        Some([qa_w, qa_norm]) => {
            Lin::at(ws, qa_w, None).forward(&mut a.qa_pre[..n * ql], x, n, c, ql, true);
            let (qa, rstd) = (&mut a.qa[..n * ql], &mut a.rstd_qa[..n]);
            rmsnorm_forward(qa, rstd, &a.qa_pre[..n * ql], qa_norm.of(ws.p), ql, LATENT_NORM_EPS);
            wq.forward(q, &a.qa[..n * ql], n, ql, h * d, true);
        }
        None => wq.forward(q, x, n, c, h * d, true),
    }
    let qr = &mut a.qr[..n * h * rope];
    rope_dims(q, qr, d, rope, true);
    if a.interleave {
        interleave_perm(qr, rope, false);
    }
    rope_forward(qr, s.cos, s.sin, s.t, h, rope, s.pos0);
    rope_dims(q, qr, d, rope, false);
    if s.q_scale != T::ONE {
        q.iter_mut().for_each(|v| *v *= s.q_scale);
    }
    // the latent, the shared rotated key, and the per-head keys and values
    let ckv = &mut a.ckv[..n * (kvl + rope)];
    Lin::at(ws, ls.wk, lora(1)).forward(ckv, x, n, c, kvl + rope, true);
    let kr = &mut a.kr[..n * rope];
    for ((row, cp), r) in ckv.chunks_exact(kvl + rope).zip(a.c_pre.chunks_exact_mut(kvl)).zip(kr.chunks_exact_mut(rope))
    {
        cp.copy_from_slice(&row[..kvl]);
        r.copy_from_slice(&row[kvl..]);
    }
    if a.interleave {
        interleave_perm(kr, rope, false);
    }
    rope_forward(kr, s.cos, s.sin, s.t, 1, rope, s.pos0);
    let (cn, rstd) = (&mut a.c[..n * kvl], &mut a.rstd_c[..n]);
    rmsnorm_forward(cn, rstd, &a.c_pre[..n * kvl], sp.kv_a_norm.of(ws.p), kvl, LATENT_NORM_EPS);
    let kvb = &mut a.kvb[..n * h * (nope + dv)];
    Lin::at(ws, ls.wv, lora(2)).forward(kvb, &a.c[..n * kvl], n, kvl, h * (nope + dv), true);
    for (((kt, vt), bt), r) in k
        .chunks_exact_mut(h * d)
        .zip(v.chunks_exact_mut(h * dv))
        .zip(kvb.chunks_exact(h * (nope + dv)))
        .zip(kr.chunks_exact(rope))
    {
        for ((kh, vh), bh) in kt.chunks_exact_mut(d).zip(vt.chunks_exact_mut(dv)).zip(bt.chunks_exact(nope + dv)) {
            kh[..nope].copy_from_slice(&bh[..nope]);
            kh[nope..].copy_from_slice(r);
            vh.copy_from_slice(&bh[nope..]);
        }
    }
}

/// dx[N,C] = dL/dx from dq, dk, dv (the gradients of what `mla_forward` returned; dq is
/// overwritten on the way), and the weights' and norms' gradients accumulated through `gc` (a
/// fresh cursor over the gradient buffer).
#[allow(clippy::too_many_arguments)]
pub fn mla_backward<T: Float>(
    dx: &mut [T],
    mut gc: GradCursor<T>,
    dq: &mut [T],
    dk: &[T],
    dv: &[T],
    x: &[T],
    ls: &LayerSpans,
    ws: Weights<T>,
    a: &mut MlaActs<T>,
    s: MlaStep<T>,
) {
    let sp = ls.mla.expect("an MLA layer has its spans");
    let AttnShape { h, d, dv: vw, rope, .. } = s.shape;
    let (n, c, ql, kvl, nope) = (x.len() / s.c, s.c, a.ql, a.kvl, a.nope);
    let lora = |i: usize| ls.attn_lora.map(|l| l[i]);
    // gradients in layout order
    let g_qa = sp.q_a.map(|[w, norm]| (gc.lin(w, None), gc.take(norm)));
    let (gq, gk) = (gc.lin(ls.wq, lora(0)), gc.lin(ls.wk, lora(1)));
    let g_norm = gc.take(sp.kv_a_norm);
    let gv = gc.lin(ls.wv, lora(2));
    if s.q_scale != T::ONE {
        dq.iter_mut().for_each(|v| *v *= s.q_scale);
    }
    // the queries' rotated dims back through RoPE
    let qr = &mut a.qr[..n * h * rope];
    rope_dims(dq, qr, d, rope, true);
    rope_backward(qr, s.cos, s.sin, s.t, h, rope, s.pos0);
    if a.interleave {
        interleave_perm(qr, rope, true);
    }
    rope_dims(dq, qr, d, rope, false);
    // keys and values to kv_b's output and the shared rotated key
    let (kvb, kr) = (&mut a.kvb[..n * h * (nope + vw)], &mut a.kr[..n * rope]);
    kr.fill(T::ZERO);
    for (((kt, vt), bt), r) in dk
        .chunks_exact(h * d)
        .zip(dv.chunks_exact(h * vw))
        .zip(kvb.chunks_exact_mut(h * (nope + vw)))
        .zip(kr.chunks_exact_mut(rope))
    {
        for ((kh, vh), bh) in kt.chunks_exact(d).zip(vt.chunks_exact(vw)).zip(bt.chunks_exact_mut(nope + vw)) {
            bh[..nope].copy_from_slice(&kh[..nope]);
            bh[nope..].copy_from_slice(vh);
            r.iter_mut().zip(&kh[nope..]).for_each(|(a, &b)| *a += b);
        }
    }
    rope_backward(kr, s.cos, s.sin, s.t, 1, rope, s.pos0);
    if a.interleave {
        interleave_perm(kr, rope, true);
    }
    let dc = &mut a.dc[..n * kvl];
    Lin::at(ws, ls.wv, lora(2)).backward(dc, gv, kvb, &a.c[..n * kvl], n, kvl, h * (nope + vw), false, true);
    // d ckv = [d c_pre | d kr], written into ckv (its values are no longer needed)
    let dckv = &mut a.ckv[..n * (kvl + rope)];
    dckv.fill(T::ZERO);
    let dc_pre = &mut a.dc_pre[..n * kvl];
    dc_pre.fill(T::ZERO);
    rmsnorm_backward(dc_pre, g_norm, dc, &a.c_pre[..n * kvl], sp.kv_a_norm.of(ws.p), &a.rstd_c[..n], kvl);
    for ((row, dcp), r) in dckv.chunks_exact_mut(kvl + rope).zip(dc_pre.chunks_exact(kvl)).zip(kr.chunks_exact(rope)) {
        row[..kvl].copy_from_slice(dcp);
        row[kvl..].copy_from_slice(r);
    }
    // queries, then the latent's projection, into dx
    let wq = Lin::at(ws, ls.wq, lora(0));
    match (sp.q_a, g_qa) {
        (Some([qa_w, qa_norm]), Some((g_qa_w, g_qa_norm))) => {
            wq.backward(&mut a.dqa[..n * ql], gq, dq, &a.qa[..n * ql], n, ql, h * d, false, true);
            let dqa_pre = &mut a.dqa_pre[..n * ql];
            dqa_pre.fill(T::ZERO);
            let (pre, w, rstd) = (&a.qa_pre[..n * ql], qa_norm.of(ws.p), &a.rstd_qa[..n]);
            rmsnorm_backward(dqa_pre, g_qa_norm, &a.dqa[..n * ql], pre, w, rstd, ql);
            Lin::at(ws, qa_w, None).backward(dx, g_qa_w, dqa_pre, x, n, c, ql, false, true);
        }
        _ => wq.backward(dx, gq, dq, x, n, c, h * d, false, true),
    }
    Lin::at(ws, ls.wk, lora(1)).backward(dx, gk, dckv, x, n, c, kvl + rope, true, true);
}
