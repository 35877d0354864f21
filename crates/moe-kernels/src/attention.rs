//! Causal multi-head attention with grouped-query heads (G key/value heads shared by H/G
//! query heads). Inputs are already projected and rotated; the probabilities are saved for
//! the backward. Queries may be a suffix of the keys (KV-cache decoding): query i sits at
//! absolute position tk - tq + i and sees keys 0..=that position.

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
    pub d: usize,
}

impl AttnDims {
    /// Training shape: queries and keys are the same T positions.
    pub fn causal(b: usize, t: usize, h: usize, g: usize, d: usize) -> Self {
        AttnDims { b, tq: t, tk: t, tcap: t, h, g, d }
    }
    fn q_off(&self, b: usize, t: usize, h: usize) -> usize {
        ((b * self.tq + t) * self.h + h) * self.d
    }
    fn k_off(&self, b: usize, t: usize, g: usize) -> usize {
        ((b * self.tcap + t) * self.g + g) * self.d
    }
    fn a_off(&self, b: usize, h: usize, t: usize) -> usize {
        ((b * self.h + h) * self.tq + t) * self.tk
    }
}

#[inline(always)]
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut s = T::ZERO;
    for i in 0..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// out[B,Tq,H,D] = softmax(q k^T / sqrt(D), causal) v; att[B,H,Tq,Tk] keeps the probabilities.
/// q[B,Tq,H,D], k/v[B,Tcap,G,D].
pub fn attention_forward<T: Float>(out: &mut [T], att: &mut [T], q: &[T], k: &[T], v: &[T], s: AttnDims) {
    let scale = T::from_f64(1.0 / (s.d as f64).sqrt());
    let (po, pa) = (SendPtr(out.as_mut_ptr()), SendPtr(att.as_mut_ptr()));
    assert!(out.len() >= s.b * s.tq * s.h * s.d && att.len() >= s.b * s.h * s.tq * s.tk);
    (0..s.b * s.h * s.tq).into_par_iter().for_each(|job| {
        let (bh, t) = (job / s.tq, job % s.tq);
        let (b, h) = (bh / s.h, bh % s.h);
        let g = h / (s.h / s.g);
        let pos = s.tk - s.tq + t;
        let qr = &q[s.q_off(b, t, h)..][..s.d];
        // SAFETY: each job owns row (b,h,t) of att and row (b,t,h) of out.
        let ar = unsafe { std::slice::from_raw_parts_mut(pa.at(s.a_off(b, h, t)), s.tk) };
        let or = unsafe { std::slice::from_raw_parts_mut(po.at(s.q_off(b, t, h)), s.d) };
        let mut m = T::from_f64(f64::NEG_INFINITY);
        for j in 0..=pos {
            let sc = dot(qr, &k[s.k_off(b, j, g)..][..s.d]) * scale;
            ar[j] = sc;
            m = m.max(sc);
        }
        let mut sum = T::ZERO;
        for a in ar[..=pos].iter_mut() {
            *a = (*a - m).exp();
            sum += *a;
        }
        let inv = T::ONE / sum;
        ar[..=pos].iter_mut().for_each(|a| *a *= inv);
        ar[pos + 1..].iter_mut().for_each(|a| *a = T::ZERO);
        or.fill(T::ZERO);
        for j in 0..=pos {
            let p = ar[j];
            for (o, &vv) in or.iter_mut().zip(&v[s.k_off(b, j, g)..][..s.d]) {
                *o += p * vv;
            }
        }
    });
}

/// Backward of the training shape (tq == tk == tcap): dq, dk, dv accumulate.
/// Parallel over (b, g): each job owns its key/value head and all query heads of its group.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Float>(
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    dout: &[T],
    att: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    s: AttnDims,
) {
    assert!(s.tq == s.tk && s.tk == s.tcap, "backward needs the training shape");
    let scale = T::from_f64(1.0 / (s.d as f64).sqrt());
    let (pq, pk, pv) = (SendPtr(dq.as_mut_ptr()), SendPtr(dk.as_mut_ptr()), SendPtr(dv.as_mut_ptr()));
    let hpg = s.h / s.g;
    (0..s.b * s.g).into_par_iter().for_each(|job| {
        let (b, g) = (job / s.g, job % s.g);
        let mut dp = vec![T::ZERO; s.tk];
        for h in g * hpg..(g + 1) * hpg {
            for t in 0..s.tq {
                let ar = &att[s.a_off(b, h, t)..][..s.tk];
                let dor = &dout[s.q_off(b, t, h)..][..s.d];
                let qr = &q[s.q_off(b, t, h)..][..s.d];
                // dp_j = do . v_j ; dv_j += p_j do
                let mut sum = T::ZERO;
                for j in 0..=t {
                    let ko = s.k_off(b, j, g);
                    dp[j] = dot(dor, &v[ko..][..s.d]);
                    sum += dp[j] * ar[j];
                    // SAFETY: (b, g) rows of dk/dv belong to this job only.
                    let dvr = unsafe { std::slice::from_raw_parts_mut(pv.at(ko), s.d) };
                    for (d, &o) in dvr.iter_mut().zip(dor) {
                        *d += ar[j] * o;
                    }
                }
                // ds_j = p_j (dp_j - sum); dq += ds_j k_j scale; dk_j += ds_j q scale
                // SAFETY: (b, t, h) row of dq belongs to this job (h is in its group).
                let dqr = unsafe { std::slice::from_raw_parts_mut(pq.at(s.q_off(b, t, h)), s.d) };
                for j in 0..=t {
                    let ds = ar[j] * (dp[j] - sum) * scale;
                    let ko = s.k_off(b, j, g);
                    let dkr = unsafe { std::slice::from_raw_parts_mut(pk.at(ko), s.d) };
                    for i in 0..s.d {
                        dqr[i] += ds * k[ko + i];
                        dkr[i] += ds * qr[i];
                    }
                }
            }
        }
    });
}

/// Naive twin of [`attention_forward`]: serial, explicit softmax, same layouts.
pub fn attention_forward_naive<T: Float>(out: &mut [T], att: &mut [T], q: &[T], k: &[T], v: &[T], s: AttnDims) {
    let scale = 1.0 / (s.d as f64).sqrt();
    for b in 0..s.b {
        for h in 0..s.h {
            let g = h * s.g / s.h;
            for t in 0..s.tq {
                let pos = s.tk - s.tq + t;
                let mut sc = vec![f64::NEG_INFINITY; s.tk];
                for (j, scj) in sc.iter_mut().enumerate().take(pos + 1) {
                    let mut acc = 0.0;
                    for i in 0..s.d {
                        acc += q[s.q_off(b, t, h) + i].to_f64() * k[s.k_off(b, j, g) + i].to_f64();
                    }
                    *scj = acc * scale;
                }
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|&x| (x - m).exp()).sum();
                for i in 0..s.d {
                    let mut acc = 0.0;
                    for (j, &scj) in sc.iter().enumerate() {
                        acc += (scj - m).exp() / z * v[s.k_off(b, j, g) + i].to_f64();
                    }
                    out[s.q_off(b, t, h) + i] = T::from_f64(acc);
                }
                for (j, &scj) in sc.iter().enumerate() {
                    att[s.a_off(b, h, t) + j] = T::from_f64((scj - m).exp() / z);
                }
            }
        }
    }
}
