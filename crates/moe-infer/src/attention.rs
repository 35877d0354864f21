//! Causal attention of new queries against a KV cache: grouped-query heads, separate q/k and v
//! head dims (MLA), an optional sliding window, and optional per-head attention sinks (gpt-oss:
//! a learned logit that joins the softmax denominator and is then dropped).

use rayon::prelude::*;

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
