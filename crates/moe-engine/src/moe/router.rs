//! Router stage: x -> logits[N,E] (linear, no bias) -> probabilities (softmax over all E, in
//! the model's float type, f32 at least) -> top-k expert ids and routing weights, renormalised
//! over the k when `norm_topk_prob` (Mixtral) or left as probabilities (Qwen/OLMoE default).

use moe_kernels::matmul::{linear_backward, linear_forward};
use moe_kernels::softmax::{logsumexp, softmax_backward, softmax_row};
use moe_kernels::Float;
use rayon::prelude::*;

/// Router outputs kept for the backward and the statistics.
pub struct RouterActs<T> {
    /// [N,E]
    pub logits: Vec<T>,
    /// [N,E] softmax of the logits.
    pub probs: Vec<T>,
    /// [N] logsumexp of each logit row (for the z-loss).
    pub lse: Vec<T>,
    /// [N,K] selected experts, best first.
    pub topk_ids: Vec<u32>,
    /// [N,K] routing weights.
    pub topk_w: Vec<T>,
}

impl<T: Float> RouterActs<T> {
    pub fn new(n: usize, e: usize, k: usize) -> Self {
        RouterActs {
            logits: vec![T::ZERO; n * e],
            probs: vec![T::ZERO; n * e],
            lse: vec![T::ZERO; n],
            topk_ids: vec![0; n * k],
            topk_w: vec![T::ZERO; n * k],
        }
    }
}

/// x[N,C], wr[E,C] -> acts (first n rows).
pub fn router_forward<T: Float>(
    a: &mut RouterActs<T>,
    x: &[T],
    wr: &[T],
    n: usize,
    c: usize,
    e: usize,
    k: usize,
    norm_topk: bool,
) {
    linear_forward(&mut a.logits[..n * e], x, wr, n, c, e, true);
    a.probs[..n * e]
        .par_chunks_mut(e)
        .zip(a.logits.par_chunks(e))
        .zip(a.lse.par_iter_mut())
        .zip(a.topk_ids.par_chunks_mut(k).zip(a.topk_w.par_chunks_mut(k)))
        .for_each(|(((p, lg), lse), (ids, w))| {
            softmax_row(p, lg);
            *lse = logsumexp(lg);
            select_topk(ids, p);
            let mut sum = T::ZERO;
            for (wj, &id) in w.iter_mut().zip(ids.iter()) {
                *wj = p[id as usize];
                sum += *wj;
            }
            if norm_topk {
                let inv = T::ONE / sum;
                w.iter_mut().for_each(|v| *v *= inv);
            }
        });
}

/// The k largest entries of `p`, best first; ties go to the lower expert id.
fn select_topk<T: Float>(ids: &mut [u32], p: &[T]) {
    let k = ids.len();
    let mut filled = 0;
    for (i, &v) in p.iter().enumerate() {
        // Insertion into a sorted list of length <= k.
        let mut pos = filled;
        while pos > 0 && p[ids[pos - 1] as usize] < v {
            pos -= 1;
        }
        if pos < k {
            let end = filled.min(k - 1);
            for j in (pos..end).rev() {
                ids[j + 1] = ids[j];
            }
            ids[pos] = i as u32;
            filled = (filled + 1).min(k);
        }
    }
}

/// Backward of the router. Inputs: dtopk_w[N,K] (from combine), dprobs_extra[N,E] already
/// holding the auxiliary-loss gradient on the probabilities; `z_scale` = dLoss/d(z-loss).
/// Outputs: dx[N,C] +=, dwr[E,C] +=. `dlogits` [N,E] is scratch.
#[allow(clippy::too_many_arguments)]
pub fn router_backward<T: Float>(
    dx: &mut [T],
    dwr: &mut [T],
    dprobs: &mut [T],
    dlogits: &mut [T],
    dtopk_w: &[T],
    a: &RouterActs<T>,
    x: &[T],
    wr: &[T],
    n: usize,
    c: usize,
    e: usize,
    k: usize,
    norm_topk: bool,
    z_scale: f64,
) {
    // Routing weights -> probabilities of the selected experts.
    dprobs[..n * e]
        .par_chunks_mut(e)
        .zip(a.topk_ids.par_chunks(k))
        .zip(dtopk_w.par_chunks(k).zip(a.topk_w.par_chunks(k)))
        .zip(a.probs.par_chunks(e))
        .for_each(|(((dp, ids), (dw, w)), p)| {
            if norm_topk {
                // w_j = p_j / S  =>  dp_j = (dw_j - sum_i dw_i w_i) / S
                let s: T = ids.iter().map(|&i| p[i as usize]).sum();
                let dot: T = dw.iter().zip(w).map(|(&a, &b)| a * b).sum();
                for (&i, &d) in ids.iter().zip(dw) {
                    dp[i as usize] += (d - dot) / s;
                }
            } else {
                for (&i, &d) in ids.iter().zip(dw) {
                    dp[i as usize] += d;
                }
            }
        });
    dlogits[..n * e].fill(T::ZERO);
    softmax_backward(&mut dlogits[..n * e], &dprobs[..n * e], &a.probs[..n * e], e);
    // z-loss = mean_n lse_n^2  =>  dlogits += z_scale * 2 lse_n p_n / N
    let zs = T::from_f64(2.0 * z_scale / n as f64);
    dlogits[..n * e].par_chunks_mut(e).zip(a.probs.par_chunks(e)).zip(a.lse.par_iter()).for_each(|((d, p), &l)| {
        for (dv, &pv) in d.iter_mut().zip(p) {
            *dv += zs * l * pv;
        }
    });
    linear_backward(dx, dwr, &dlogits[..n * e], x, wr, n, c, e, true);
}
