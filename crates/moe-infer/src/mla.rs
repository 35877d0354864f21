//! Multi-head latent attention (DeepSeek-V2/V3) over a latent cache. Each position keeps one
//! row per layer: its normalised compressed KV c [kv_lora] and its rotated rope key kr [rope],
//! shared by all heads (at DeepSeek-V3's size 576 floats against 128 x (192 + 128) for expanded
//! per-head keys and values: 71x less). The up-projection kv_b [H*(nope+v), kv_lora] holds per
//! head h the key rows W_uk^h [nope, kv_lora] and the value rows W_uv^h [v, kv_lora].
//!
//! Absorbed (decode, short chunks): q_nope^h . (W_uk^h c_j) = (W_uk^h^T q_nope^h) . c_j, so a head's
//! query becomes [W_uk^h^T q_nope^h, q_rope^h] against key rows [c_j, kr_j], one key/value head
//! for all H query heads; the output is W_uv^h (sum_j p_j c_j). Expanded (a long prefill with
//! nothing cached yet): the new rows' per-head keys and values from kv_b, the usual attention.
//! [`expand`] picks the one with fewer FLOPs.

use crate::config::Mla;
use crate::linear::Linear;
use moe_kernels::matmul::{matmul, Mat};

/// Whether attention of `t` new queries after `pos0` cached positions runs expanded (only
/// without cached positions: expanding them would cost a temporary as large as the cache the
/// latent form saves) and costs fewer multiply-adds per head than absorbed.
pub fn expand(m: &Mla, t: usize, pos0: usize) -> bool {
    if pos0 > 0 || t < 2 {
        return false;
    }
    let pairs = t * (t + 1) / 2; // causal (query, key) pairs
    let expanded = t * m.kv_lora * (m.nope + m.v) + pairs * (m.nope + m.rope + m.v);
    let absorbed = t * m.kv_lora * (m.nope + m.v) + pairs * (2 * m.kv_lora + m.rope);
    expanded < absorbed
}

/// out[t, H*v] = attention of queries q[t, H*(nope+rope)] (rope part rotated) at positions
/// pos0.. against the latent rows lat[pos0 + t, kv_lora + rope] (the new rows included), with
/// the key and value up-projections absorbed from `kv_b`.
#[allow(clippy::too_many_arguments)]
pub fn attend_latent(
    out: &mut [f32],
    q: &[f32],
    lat: &[f32],
    pos0: usize,
    t: usize,
    h: usize,
    m: &Mla,
    kv_b: &Linear,
    scale: f32,
) {
    let (dq, dl) = (m.nope + m.rope, m.kv_lora + m.rope);
    // Absorbed queries qa[t, H, dl]: [W_uk^h^T q_nope^h, q_rope^h].
    let mut qa = vec![0.0f32; t * h * dl];
    let (mut qn, mut ql) = (vec![0.0f32; t * m.nope], vec![0.0f32; t * m.kv_lora]);
    for hh in 0..h {
        for i in 0..t {
            qn[i * m.nope..][..m.nope].copy_from_slice(&q[(i * h + hh) * dq..][..m.nope]);
        }
        // W_uk^h [nope, kv_lora] read as an [in, out] weight: ql = qn W_uk^h.
        let uk = Linear::transposed(kv_b.w.rows(hh * (m.nope + m.v), m.nope), None);
        uk.forward(&qn, t, &mut ql);
        for i in 0..t {
            let row = &mut qa[(i * h + hh) * dl..][..dl];
            row[..m.kv_lora].copy_from_slice(&ql[i * m.kv_lora..][..m.kv_lora]);
            row[m.kv_lora..].copy_from_slice(&q[(i * h + hh) * dq + m.nope..][..m.rope]);
        }
    }
    // Per query: scores [H, L] against every visible latent row, softmax, then [H, kv_lora].
    let mut ol = vec![0.0f32; t * h * m.kv_lora];
    let mut s = vec![0.0f32; h * (pos0 + t)];
    for i in 0..t {
        let l = pos0 + i + 1;
        let keys = Mat::new(&lat[..l * dl], l, dl);
        let par = h * l * dl > 1 << 16;
        matmul(&mut s[..h * l], Mat::new(&qa[i * h * dl..][..h * dl], h, dl), keys.t(), false, par);
        for row in s[..h * l].chunks_exact_mut(l) {
            softmax_scaled(row, scale);
        }
        let values = Mat { data: &lat[..l * dl], rows: l, cols: m.kv_lora, rs: dl, cs: 1 };
        matmul(&mut ol[i * h * m.kv_lora..][..h * m.kv_lora], Mat::new(&s[..h * l], h, l), values, false, par);
    }
    // out^h = W_uv^h ol^h.
    let (mut oh, mut yh) = (vec![0.0f32; t * m.kv_lora], vec![0.0f32; t * m.v]);
    for hh in 0..h {
        for i in 0..t {
            oh[i * m.kv_lora..][..m.kv_lora].copy_from_slice(&ol[(i * h + hh) * m.kv_lora..][..m.kv_lora]);
        }
        let uv = Linear::new(kv_b.w.rows(hh * (m.nope + m.v) + m.nope, m.v), None);
        uv.forward(&oh, t, &mut yh);
        for i in 0..t {
            out[(i * h + hh) * m.v..][..m.v].copy_from_slice(&yh[i * m.v..][..m.v]);
        }
    }
}

/// row = softmax(row * scale).
fn softmax_scaled(row: &mut [f32], scale: f32) {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) * scale;
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = moe_kernels::Float::exp(*v * scale - max);
        sum += *v;
    }
    row.iter_mut().for_each(|v| *v /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{attend, Dims};
    use crate::weight::{Dtype, Weight};

    /// The absorbed form equals the expanded one: keys [c W_uk^T, kr] and values c W_uv^T per
    /// head, the usual attention, for a few queries after cached positions and from scratch.
    #[test]
    fn absorbed_attention_equals_expanded() {
        let m = Mla { q_lora: None, kv_lora: 24, nope: 8, rope: 4, v: 12 };
        let h = 3;
        let val = |i: usize, s: usize| ((i * 7919 + s * 104729) % 1000) as f32 / 500.0 - 1.0;
        let wb: Vec<f32> = (0..h * (m.nope + m.v) * m.kv_lora).map(|i| val(i, 1) * 0.3).collect();
        let bytes: Vec<u8> = wb.iter().flat_map(|v| v.to_le_bytes()).collect();
        let kv_b = Linear::new(Weight::from_bytes(bytes, Dtype::F32, h * (m.nope + m.v), m.kv_lora).unwrap(), None);
        let (dq, dl) = (m.nope + m.rope, m.kv_lora + m.rope);
        for (t, pos0) in [(1, 0), (1, 9), (3, 5), (6, 0)] {
            let l = pos0 + t;
            let q: Vec<f32> = (0..t * h * dq).map(|i| val(i, 2)).collect();
            let lat: Vec<f32> = (0..l * dl).map(|i| val(i, 3)).collect();
            let mut got = vec![0.0; t * h * m.v];
            attend_latent(&mut got, &q, &lat, pos0, t, h, &m, &kv_b, 0.3);
            // Expanded keys [L, H, nope + rope] and values [L, H, v].
            let (mut k, mut v) = (vec![0.0; l * h * dq], vec![0.0; l * h * m.v]);
            for j in 0..l {
                let c = &lat[j * dl..][..m.kv_lora];
                for hh in 0..h {
                    let w = |r: usize| &wb[(hh * (m.nope + m.v) + r) * m.kv_lora..][..m.kv_lora];
                    let dot = |r: usize| c.iter().zip(w(r)).map(|(a, b)| a * b).sum::<f32>();
                    for r in 0..m.nope {
                        k[(j * h + hh) * dq + r] = dot(r);
                    }
                    k[(j * h + hh) * dq + m.nope..][..m.rope].copy_from_slice(&lat[j * dl + m.kv_lora..][..m.rope]);
                    for r in 0..m.v {
                        v[(j * h + hh) * m.v + r] = dot(m.nope + r);
                    }
                }
            }
            let mut want = vec![0.0; t * h * m.v];
            let d = Dims { t, pos0, h, g: h, dk: dq, dv: m.v };
            attend(&mut want, &q, &k, &v, d, 0.3, None, None);
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(err < 1e-5, "t {t} pos0 {pos0}: {err}");
        }
    }

    #[test]
    fn long_fresh_prefills_expand_and_decode_absorbs() {
        let v3 = Mla { q_lora: Some(1536), kv_lora: 512, nope: 128, rope: 64, v: 128 };
        assert!(!expand(&v3, 1, 0) && !expand(&v3, 1, 4000) && !expand(&v3, 512, 100));
        assert!(expand(&v3, 512, 0));
    }
}
