//! Combine stage: scale each expert output row by its routing weight and sum a token's K rows
//! back into token order.

use super::dispatch::Routing;
use moe_kernels::Float;
use rayon::prelude::*;

/// out[N,C] = sum_k topk_w[n,k] * ys[position(n,k)].
pub fn combine_forward<T: Float>(out: &mut [T], ys: &[T], topk_w: &[T], rt: &Routing, k: usize, c: usize) {
    out.par_chunks_mut(c).enumerate().for_each(|(n, o)| {
        o.fill(T::ZERO);
        for slot in 0..k {
            let a = n * k + slot;
            let (w, pos) = (topk_w[a], rt.positions[a] as usize);
            for (ov, &y) in o.iter_mut().zip(&ys[pos * c..(pos + 1) * c]) {
                *ov += w * y;
            }
        }
    });
}

/// dys[R,C] = w * dout[token] (overwritten); dtopk_w[N,K] = dout[n] . ys[row] (overwritten).
pub fn combine_backward<T: Float>(
    dys: &mut [T],
    dtopk_w: &mut [T],
    dout: &[T],
    ys: &[T],
    topk_w: &[T],
    rt: &Routing,
    k: usize,
    c: usize,
) {
    let r = rt.indices.len().min(topk_w.len());
    dys[..r * c].par_chunks_mut(c).zip(rt.indices[..r].par_iter()).for_each(|(d, &a)| {
        let n = a as usize / k;
        let w = topk_w[a as usize];
        for (dv, &g) in d.iter_mut().zip(&dout[n * c..(n + 1) * c]) {
            *dv = w * g;
        }
    });
    dtopk_w[..r].par_iter_mut().enumerate().for_each(|(a, dw)| {
        let n = a / k;
        let pos = rt.positions[a] as usize;
        *dw = dout[n * c..(n + 1) * c].iter().zip(&ys[pos * c..(pos + 1) * c]).map(|(&x, &y)| x * y).sum();
    });
}
