//! Causal attention of new queries against a KV cache: grouped-query heads, separate q/k and v
//! head dims (MLA), an optional sliding window, and optional per-head attention sinks (gpt-oss:
//! a learned logit that joins the softmax denominator and is then dropped). A prompt's queries go
//! through the training engine's attention kernel (`moe_kernels::attention`, which has all of
//! these); a decode step's one query per sequence through a loop over heads.

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
    if d.t > 1 {
        return attend_gemm(out, q, k, v, d, scale, window, sinks);
    }
    attend_loop(out, q, k, v, d, scale, window, sinks);
}

/// [`attend`] one query (head) at a time: decoding, where a step has one query per sequence (the
/// kernel's one-row GEMMs decode 6-7% slower at a 2048-token context: Mixtral-shaped Q8_0, one
/// thread, 31.3 against 33.5 tokens/s, `moe bench infer --depth 2048`).
#[allow(clippy::too_many_arguments)]
fn attend_loop(
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

/// Several queries (prefill): the training engine's causal attention kernel (per head and block
/// of 64 queries, scores and outputs as GEMMs; windows, sinks and value heads of their own width
/// as there). Its scale is 1/sqrt(D), so the queries are rescaled first when `scale` differs
/// (sinks are logits of the scaled scores, as here).
#[allow(clippy::too_many_arguments)]
fn attend_gemm(
    out: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: Dims,
    scale: f32,
    window: Option<usize>,
    sinks: Option<&[f32]>,
) {
    use moe_kernels::attention::{attention_forward, AttnDims};
    let Dims { t, pos0, h, g, dk, dv } = d;
    let tk = pos0 + t;
    let dims = AttnDims { b: 1, tq: t, tk, tcap: tk, h, g, d: dk, dv, window: window.unwrap_or(0) };
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
    attention_forward(&mut out[..t * h * dv], &mut probs, q, &k[..tk * g * dk], &v[..tk * g * dv], sinks, dims);
    PROBS.with(|p| *p.borrow_mut() = probs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_path_equals_the_per_query_loop() {
        // plain; a window; sinks; value heads narrower than query/key heads (latent attention)
        let (h, g) = (4, 2);
        let sinks = [0.3f32, -1.0, 2.0, 0.0];
        let cases = [
            (5, 0, 0.25f32, 16, 16, None, false),
            (70, 3, 0.1, 16, 16, None, false),
            (2, 9, 0.3, 16, 16, None, false),
            (70, 3, 0.1, 16, 16, Some(9), false),
            (6, 2, 0.2, 8, 8, Some(3), true),
            (7, 0, 0.3, 12, 8, None, false),
        ];
        for (t, pos0, scale, dk, dv, window, with_sinks) in cases {
            let l = pos0 + t;
            let val = |i: usize, s: usize| ((i * 7919 + s * 104729) % 1000) as f32 / 500.0 - 1.0;
            let q: Vec<f32> = (0..t * h * dk).map(|i| val(i, 1)).collect();
            let k: Vec<f32> = (0..l * g * dk).map(|i| val(i, 2)).collect();
            let v: Vec<f32> = (0..l * g * dv).map(|i| val(i, 3)).collect();
            let d = Dims { t, pos0, h, g, dk, dv };
            let z = with_sinks.then_some(&sinks[..]);
            let (mut a, mut b) = (vec![0.0; t * h * dv], vec![0.0; t * h * dv]);
            attend_gemm(&mut a, &q, &k, &v, d, scale, window, z);
            attend_loop(&mut b, &q, &k, &v, d, scale, window, z);
            let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(err < 1e-5, "t {t} pos0 {pos0} window {window:?} sinks {with_sinks} dv {dv}: {err}");
        }
    }
}
