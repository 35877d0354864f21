//! Causal attention of new queries against a KV cache: grouped-query heads, separate q/k and v
//! head dims (MLA), an optional sliding window, and optional per-head attention sinks (gpt-oss:
//! a learned logit that joins the softmax denominator and is then dropped).

use rayon::prelude::*;
use std::cell::RefCell;

thread_local! {
    /// Probabilities [H, T, L] of the GEMM path, reused across calls.
    static PROBS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    /// New queries and the position of the first.
    pub t: usize,
    pub pos0: usize,
    /// Query heads, key/value heads, q/k head dim, v head dim.
    pub h: usize,
    pub g: usize,
    pub dk: usize,
    pub dv: usize,
}

/// out[t, h*dv] = softmax(q k^T * scale + mask) v for queries q[t, h*dk] at positions pos0.., keys
/// k[L, g*dk] and values v[L, g*dv] for positions 0..L (L >= pos0 + t). A key at position j is
/// visible from position p when j <= p and, with a window w, p - j < w.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    out: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: Dims,
    scale: f32,
    window: Option<usize>,
    sinks: Option<&[f32]>,
) {
    let Dims { h, g, dk, dv, pos0, .. } = d;
    if d.t > 1 && window.is_none() && sinks.is_none() && dk == dv {
        return attend_gemm(out, q, k, v, d, scale);
    }
    out[..d.t * h * dv].par_chunks_mut(dv).enumerate().for_each(|(idx, o)| {
        let (i, head) = (idx / h, idx % h);
        let kvh = head / (h / g);
        let p = pos0 + i;
        let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
        let qv = &q[(i * h + head) * dk..][..dk];
        let mut scores: Vec<f32> = (lo..=p)
            .map(|j| {
                let kv = &k[(j * g + kvh) * dk..][..dk];
                moe_kernels::float::dot(qv, kv) * scale
            })
            .collect();
        let sink = sinks.map(|s| s[head]);
        let max = scores.iter().copied().chain(sink).fold(f32::NEG_INFINITY, f32::max);
        let mut sum = sink.map_or(0.0, |s| (s - max).exp());
        for s in scores.iter_mut() {
            *s = moe_kernels::Float::exp(*s - max);
        }
        sum += moe_kernels::float::sum(&scores);
        o.fill(0.0);
        for (j, s) in (lo..=p).zip(&scores) {
            let w = s / sum;
            let vv = &v[(j * g + kvh) * dv..][..dv];
            o.iter_mut().zip(vv).for_each(|(a, b)| *a += w * b);
        }
    });
}

/// Several queries without window or sinks and equal q/k/v head dims (prefill): the training
/// engine's causal attention (per head and block of 64 queries, scores and outputs as GEMMs).
/// Its scale is 1/sqrt(D), so the queries are rescaled first when `scale` differs.
fn attend_gemm(out: &mut [f32], q: &[f32], k: &[f32], v: &[f32], d: Dims, scale: f32) {
    use moe_kernels::attention::{attention_forward, AttnDims};
    let Dims { t, pos0, h, g, dk, .. } = d;
    let tk = pos0 + t;
    let dims = AttnDims { b: 1, tq: t, tk, tcap: tk, h, g, d: dk, dv: dk, window: 0 };
    let adjust = scale * (dk as f32).sqrt();
    let scaled: Vec<f32>;
    let q = if adjust == 1.0 {
        &q[..t * h * dk]
    } else {
        scaled = q[..t * h * dk].iter().map(|x| x * adjust).collect();
        &scaled
    };
    let mut probs = PROBS.with(|p| std::mem::take(&mut *p.borrow_mut()));
    probs.resize(h * t * tk, 0.0);
    attention_forward(&mut out[..t * h * dk], &mut probs, q, &k[..tk * g * dk], &v[..tk * g * dk], None, dims);
    PROBS.with(|p| *p.borrow_mut() = probs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_path_equals_the_per_query_loop() {
        // A window longer than any sequence changes nothing but forces the per-query loop.
        let (h, g, dk) = (4, 2, 16);
        for (t, pos0, scale) in [(5, 0, 0.25f32), (70, 3, 0.1), (2, 9, 0.3)] {
            let l = pos0 + t;
            let val = |i: usize, s: usize| ((i * 7919 + s * 104729) % 1000) as f32 / 500.0 - 1.0;
            let q: Vec<f32> = (0..t * h * dk).map(|i| val(i, 1)).collect();
            let k: Vec<f32> = (0..l * g * dk).map(|i| val(i, 2)).collect();
            let v: Vec<f32> = (0..l * g * dk).map(|i| val(i, 3)).collect();
            let d = Dims { t, pos0, h, g, dk, dv: dk };
            let (mut a, mut b) = (vec![0.0; t * h * dk], vec![0.0; t * h * dk]);
            attend(&mut a, &q, &k, &v, d, scale, None, None);
            attend(&mut b, &q, &k, &v, d, scale, Some(1 << 20), None);
            let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(err < 1e-5, "t {t} pos0 {pos0}: {err}");
        }
    }
}
