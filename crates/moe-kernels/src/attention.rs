//! Causal multi-head attention with grouped-query heads (G key/value heads shared by H/G
//! query heads), query/key heads of width D and value heads of width Dv (they differ under
//! DeepSeek's latent attention), an optional sliding window (a key at j is seen from position p
//! when p - j < window) and optional per-head attention sinks (gpt-oss: a learned logit that
//! joins each softmax denominator and is then dropped). Inputs are already projected and
//! rotated; the probabilities are saved for the backward. Queries may be a suffix of the keys (KV-cache decoding): query i sits at
//! absolute position tk - tq + i and sees keys 0..=that position.

use crate::matmul::{matmul_raw, Mat};
use crate::{Float, SendPtr};
use rayon::prelude::*;

/// Sizes of one attention call. Keys live in a cache of capacity `tcap` >= `tk` per sequence.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub b: usize,
    pub tq: usize,
    pub tk: usize,
    pub tcap: usize,
    pub h: usize,
    pub g: usize,
    /// Query/key head width (scores scaled by 1/sqrt(d)) and value head width.
    pub d: usize,
    pub dv: usize,
    /// Sliding window (0 = none).
    pub window: usize,
}

impl AttnDims {
    /// Training shape: queries and keys are the same T positions.
    pub fn causal(b: usize, t: usize, h: usize, g: usize, d: usize) -> Self {
        AttnDims { b, tq: t, tk: t, tcap: t, h, g, d, dv: d, window: 0 }
    }
    /// The first key position seen from position `pos`.
    fn lo(&self, pos: usize) -> usize {
        if self.window == 0 {
            0
        } else {
            (pos + 1).saturating_sub(self.window)
        }
    }
    fn q_off(&self, b: usize, t: usize, h: usize) -> usize {
        ((b * self.tq + t) * self.h + h) * self.d
    }
    fn k_off(&self, b: usize, t: usize, g: usize) -> usize {
        ((b * self.tcap + t) * self.g + g) * self.d
    }
    /// Offsets in the outputs [B, Tq, H, Dv] and values [B, Tcap, G, Dv].
    fn o_off(&self, b: usize, t: usize, h: usize) -> usize {
        ((b * self.tq + t) * self.h + h) * self.dv
    }
    fn v_off(&self, b: usize, t: usize, g: usize) -> usize {
        ((b * self.tcap + t) * self.g + g) * self.dv
    }
    fn a_off(&self, b: usize, h: usize, t: usize) -> usize {
        ((b * self.h + h) * self.tq + t) * self.tk
    }
}

fn view<T>(data: &[T], off: usize, rows: usize, cols: usize, rs: usize) -> Mat<'_, T> {
    Mat { data: &data[off..], rows, cols, rs, cs: 1 }
}

/// Query rows per block: a block's scores are computed only against the keys its last row sees,
/// which skips about half of the causal products (the upper triangle).
pub const QUERY_BLOCK: usize = 64;

/// Query blocks of a sequence: (first row, rows, keys seen by the block's last row).
fn query_blocks(s: &AttnDims) -> impl Iterator<Item = (usize, usize, usize)> {
    let (tq, tk) = (s.tq, s.tk);
    (0..tq).step_by(QUERY_BLOCK).map(move |q0| {
        let rows = QUERY_BLOCK.min(tq - q0);
        (q0, rows, tk - tq + q0 + rows)
    })
}

/// out[B,Tq,H,Dv] = softmax(q k^T / sqrt(D), causal, windowed) v; att[B,H,Tq,Tk] keeps the
/// probabilities. q[B,Tq,H,D], k[B,Tcap,G,D], v[B,Tcap,G,Dv], sinks[H]. One job per (b, h); per
/// block of query rows, two GEMMs against the keys the block sees and a masked softmax.
pub fn attention_forward<T: Float>(
    out: &mut [T],
    att: &mut [T],
    q: &[T],
    k: &[T],
    v: &[T],
    sinks: Option<&[T]>,
    s: AttnDims,
) {
    let scale = T::from_f64(1.0 / (s.d as f64).sqrt());
    assert!(sinks.is_none_or(|x| x.len() >= s.h));
    assert!(out.len() >= s.b * s.tq * s.h * s.dv && att.len() >= s.b * s.h * s.tq * s.tk);
    assert!(
        q.len() >= s.b * s.tq * s.h * s.d
            && k.len() >= s.b * s.tcap * s.g * s.d
            && v.len() >= s.b * s.tcap * s.g * s.dv
    );
    let (po, pa) = (SendPtr(out.as_mut_ptr()), SendPtr(att.as_mut_ptr()));
    let (hd, gd, hdv, gdv) = (s.h * s.d, s.g * s.d, s.h * s.dv, s.g * s.dv);
    (0..s.b * s.h).into_par_iter().for_each(|bh| {
        let (b, h) = (bh / s.h, bh % s.h);
        let g = h / (s.h / s.g);
        for (q0, rows, kend) in query_blocks(&s) {
            // keys before the block's first window are seen by none of its rows: skipped
            let k0 = s.lo(s.tk - s.tq + q0);
            let qv = view(q, s.q_off(b, q0, h), rows, s.d, hd);
            let kv = view(k, s.k_off(b, k0, g), kend - k0, s.d, gd);
            let vv = view(v, s.v_off(b, k0, g), kend - k0, s.dv, gdv);
            // SAFETY: job (b, h) owns the att block [b, h] and the (b, *, h) rows of out.
            unsafe {
                let a_ptr = pa.at(s.a_off(b, h, q0));
                matmul_raw(a_ptr.add(k0), s.tk, qv, kv.t(), false, false);
                let block = std::slice::from_raw_parts_mut(a_ptr, rows * s.tk);
                let sink = sinks.map(|x| x[h]);
                for (t, row) in block.chunks_mut(s.tk).enumerate() {
                    let pos = s.tk - s.tq + q0 + t;
                    let (seen, masked) = row.split_at_mut(pos + 1);
                    let (outside, live) = seen.split_at_mut(s.lo(pos));
                    live.iter_mut().for_each(|x| *x *= scale);
                    let m = sink.map_or(crate::float::max(live), |z| crate::float::max(live).max(z));
                    live.iter_mut().for_each(|x| *x = (*x - m).exp());
                    let total = crate::float::sum(live) + sink.map_or(T::ZERO, |z| (z - m).exp());
                    let inv = T::ONE / total;
                    live.iter_mut().for_each(|x| *x *= inv);
                    outside.fill(T::ZERO);
                    masked.fill(T::ZERO);
                }
                let pv = Mat { data: &block[k0..], rows, cols: kend - k0, rs: s.tk, cs: 1 };
                matmul_raw(po.at(s.o_off(b, q0, h)), hdv, pv, vv, false, false);
            }
        }
    });
}

/// Backward of the training shape (tq == tk == tcap): dq, dk, dv (and dsinks[H], with sinks)
/// accumulate. One job per (b, g) owning its key/value head and the query heads of its group;
/// per query block, products only against the keys the block sees (as in the forward). A sink's
/// probability is 1 - the row's sum, and d sink = -p_sink * sum_j p_j dP_j. Keys outside the
/// window have probability 0, so their dS is 0.
/// `scratch` holds at least B*G*T*T elements (overwritten).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Float>(
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    dsinks: Option<&mut [T]>,
    scratch: &mut [T],
    dout: &[T],
    att: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    s: AttnDims,
) {
    assert!(s.tq == s.tk && s.tk == s.tcap, "backward needs the training shape");
    let (t, hd, gd, hdv, gdv) = (s.tq, s.h * s.d, s.g * s.d, s.h * s.dv, s.g * s.dv);
    assert!(
        scratch.len() >= s.b * s.g * t * t
            && dq.len() >= s.b * t * hd
            && dk.len() >= s.b * t * gd
            && dv.len() >= s.b * t * gdv
    );
    let scale = T::from_f64(1.0 / (s.d as f64).sqrt());
    let (pq, pk, pv) = (SendPtr(dq.as_mut_ptr()), SendPtr(dk.as_mut_ptr()), SendPtr(dv.as_mut_ptr()));
    let hpg = s.h / s.g;
    let sink_grads: Vec<Vec<T>> = scratch[..s.b * s.g * t * t]
        .par_chunks_mut(t * t)
        .enumerate()
        .map(|(job, dp)| {
            let (b, g) = (job / s.g, job % s.g);
            let with_sinks = dsinks.is_some();
            let mut dsink = vec![T::ZERO; if with_sinks { hpg } else { 0 }];
            for h in g * hpg..(g + 1) * hpg {
                for (q0, rows, kend) in query_blocks(&s) {
                    let kv = view(k, s.k_off(b, 0, g), kend, s.d, gd);
                    let vv = view(v, s.v_off(b, 0, g), kend, s.dv, gdv);
                    let p = view(att, s.a_off(b, h, q0), rows, kend, t);
                    let dov = view(dout, s.o_off(b, q0, h), rows, s.dv, hdv);
                    let qv = view(q, s.q_off(b, q0, h), rows, s.d, hd);
                    let dpb = &mut dp[..rows * t];
                    // SAFETY: job (b, g) owns rows (b, *, g) of dk/dv and (b, *, h) of dq for h in g.
                    unsafe {
                        matmul_raw(pv.at(s.v_off(b, 0, g)), gdv, p.t(), dov, true, false); // dV += P^T dO
                        matmul_raw(dpb.as_mut_ptr(), t, dov, vv.t(), false, false);
                        // dP = dO V^T
                    }
                    // dS = P * (dP - rowsum(P * dP)) * scale, zero past each row's last key
                    for (r, dpr) in dpb.chunks_mut(t).enumerate() {
                        let live = q0 + r + 1;
                        let pr = &att[s.a_off(b, h, q0 + r)..][..live];
                        let sum = crate::float::dot(&dpr[..live], pr);
                        if with_sinks {
                            dsink[h - g * hpg] -= (T::ONE - crate::float::sum(pr)) * sum;
                        }
                        for (d, &pp) in dpr[..live].iter_mut().zip(pr) {
                            *d = pp * (*d - sum) * scale;
                        }
                        dpr[live..kend].fill(T::ZERO);
                    }
                    let ds = Mat { data: &*dpb, rows, cols: kend, rs: t, cs: 1 };
                    unsafe {
                        matmul_raw(pq.at(s.q_off(b, q0, h)), hd, ds, kv, true, false); // dQ += dS K
                        matmul_raw(pk.at(s.k_off(b, 0, g)), gd, ds.t(), qv, true, false);
                        // dK += dS^T Q
                    }
                }
            }
            dsink
        })
        .collect();
    if let Some(ds) = dsinks {
        for (job, part) in sink_grads.iter().enumerate() {
            let g = job % s.g;
            ds[g * hpg..(g + 1) * hpg].iter_mut().zip(part).for_each(|(a, &b)| *a += b);
        }
    }
}

/// Naive twin of [`attention_forward`]: serial, explicit softmax, same layouts.
pub fn attention_forward_naive<T: Float>(
    out: &mut [T],
    att: &mut [T],
    q: &[T],
    k: &[T],
    v: &[T],
    sinks: Option<&[T]>,
    s: AttnDims,
) {
    let scale = 1.0 / (s.d as f64).sqrt();
    for b in 0..s.b {
        for h in 0..s.h {
            let g = h * s.g / s.h;
            for t in 0..s.tq {
                let pos = s.tk - s.tq + t;
                let mut sc = vec![f64::NEG_INFINITY; s.tk];
                for (j, scj) in sc.iter_mut().enumerate().take(pos + 1).skip(s.lo(pos)) {
                    let mut acc = 0.0;
                    for i in 0..s.d {
                        acc += q[s.q_off(b, t, h) + i].to_f64() * k[s.k_off(b, j, g) + i].to_f64();
                    }
                    *scj = acc * scale;
                }
                let sink = sinks.map(|x| x[h].to_f64());
                let m = sc.iter().cloned().chain(sink).fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().chain(&sink).map(|&x| (x - m).exp()).sum();
                for i in 0..s.dv {
                    let mut acc = 0.0;
                    for (j, &scj) in sc.iter().enumerate() {
                        acc += (scj - m).exp() / z * v[s.v_off(b, j, g) + i].to_f64();
                    }
                    out[s.o_off(b, t, h) + i] = T::from_f64(acc);
                }
                for (j, &scj) in sc.iter().enumerate() {
                    att[s.a_off(b, h, t) + j] = T::from_f64((scj - m).exp() / z);
                }
            }
        }
    }
}

/// Naive twin of [`attention_backward`]: serial loops over every (query, key) pair in f64.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_naive<T: Float>(
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    mut dsinks: Option<&mut [T]>,
    dout: &[T],
    att: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    s: AttnDims,
) {
    let scale = 1.0 / (s.d as f64).sqrt();
    let f = |x: T| x.to_f64();
    for b in 0..s.b {
        for h in 0..s.h {
            let g = h * s.g / s.h;
            for t in 0..s.tq {
                let p = |j: usize| f(att[s.a_off(b, h, t) + j]);
                let dot = |x: &[T], xo: usize, y: &[T], yo: usize, n: usize| {
                    (0..n).map(|i| f(x[xo + i]) * f(y[yo + i])).sum::<f64>()
                };
                let dp: Vec<f64> = (0..s.tk).map(|j| dot(dout, s.o_off(b, t, h), v, s.v_off(b, j, g), s.dv)).collect();
                let sum: f64 = (0..s.tk).map(|j| p(j) * dp[j]).sum();
                if let Some(ds) = dsinks.as_deref_mut() {
                    let p_sink = 1.0 - (0..s.tk).map(p).sum::<f64>();
                    ds[h] = T::from_f64(f(ds[h]) - p_sink * sum);
                }
                for (j, &dpj) in dp.iter().enumerate() {
                    let ds = p(j) * (dpj - sum) * scale;
                    for i in 0..s.dv {
                        let (oi, vi) = (s.o_off(b, t, h) + i, s.v_off(b, j, g) + i);
                        dv[vi] = T::from_f64(f(dv[vi]) + p(j) * f(dout[oi]));
                    }
                    for i in 0..s.d {
                        let (qi, ki) = (s.q_off(b, t, h) + i, s.k_off(b, j, g) + i);
                        dq[qi] = T::from_f64(f(dq[qi]) + ds * f(k[ki]));
                        dk[ki] = T::from_f64(f(dk[ki]) + ds * f(q[qi]));
                    }
                }
            }
        }
    }
}
