//! The portable twins of the integer kernels: what every SIMD path must equal.

use super::{f16, Q8Row};
use crate::quants::{nibbles, q4_values};

fn dot(blk_bytes: usize, row: &[u8], xq: &[i8], xd: &[f32], values: impl Fn(&[u8]) -> [i8; 32]) -> f32 {
    let mut acc = 0.0f32;
    for ((blk, qx), &dx) in row.chunks_exact(blk_bytes).zip(xq.chunks_exact(32)).zip(xd) {
        let q = values(&blk[2..]);
        let s: i32 = q.iter().zip(qx).map(|(&a, &b)| a as i32 * b as i32).sum();
        acc += f16(blk) * dx * s as f32;
    }
    acc
}

pub fn dot_q8_0(row: &[u8], xq: &[i8], xd: &[f32], _xs: &[i32]) -> f32 {
    dot(34, row, xq, xd, |b| std::array::from_fn(|j| b[j] as i8))
}

pub fn dot_q4_0(row: &[u8], xq: &[i8], xd: &[f32], _xs: &[i32]) -> f32 {
    dot(18, row, xq, xd, q4_values)
}

/// Q5_0 (22-byte blocks: d, u32 of fifth bits, nibbles) and IQ4_NL (18: d, nibbles into the
/// 16 levels): the signed values of one block from the bytes after d.
fn q5_0_values(b: &[u8]) -> [i8; 32] {
    nibbles(&b[4..], Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))).map(|q| q as i8 - 16)
}

fn iq4_nl_values(b: &[u8]) -> [i8; 32] {
    nibbles(b, None).map(|q| crate::quants::IQ4[q as usize])
}

pub fn dot_q5_0_n<const N: usize>(row: &[u8], x: [Q8Row; N]) -> [f32; N] {
    x.map(|r| dot(22, row, r.xq, r.xd, q5_0_values))
}

pub fn dot_iq4_nl_n<const N: usize>(row: &[u8], x: [Q8Row; N]) -> [f32; N] {
    x.map(|r| dot(18, row, r.xq, r.xd, iq4_nl_values))
}

pub fn dot_q8_0_n<const N: usize>(row: &[u8], x: [Q8Row; N]) -> [f32; N] {
    x.map(|r| dot_q8_0(row, r.xq, r.xd, r.xs))
}

pub fn dot_q4_0_n<const N: usize>(row: &[u8], x: [Q8Row; N]) -> [f32; N] {
    x.map(|r| dot_q4_0(row, r.xq, r.xd, r.xs))
}

/// Q6_K super-blocks (210 bytes) against 8 Q8_0 activation blocks each: per 16 values
/// scale_s * sum_j q_j qx_j in integers, times d * dx per 32. Panics when the activations
/// are shorter than the row (as the SIMD kernel does).
pub fn dot_q6_k(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    let nb = row.len() / 210;
    assert!(xq.len() >= 256 * nb && xd.len() >= 8 * nb, "Q6_K row of {nb} super-blocks and activations differ");
    let mut acc = 0.0f32;
    for (b, blk) in row.chunks_exact(210).enumerate() {
        let d = f16(&blk[208..210]);
        for h in 0..2 {
            let (ql, qh) = (&blk[64 * h..64 * h + 64], &blk[128 + 32 * h..128 + 32 * h + 32]);
            for c in 0..4 {
                let chunk = 8 * b + 4 * h + c; // activation block of 32
                let mut sum = 0i32;
                for l in 0..32 {
                    let nib = if c < 2 { ql[32 * c + l] & 0xF } else { ql[32 * (c - 2) + l] >> 4 };
                    let q = (nib | (((qh[l] >> (2 * c)) & 3) << 4)) as i32 - 32;
                    let sc = blk[192 + 8 * h + 2 * c + l / 16] as i8 as i32;
                    sum += sc * q * xq[32 * chunk + l] as i32;
                }
                acc += d * xd[chunk] * sum as f32;
            }
        }
    }
    acc
}

/// Q4_K (144-byte super-blocks) or Q5_K (176, `five`) against Q8_0 activations: sub-block s
/// of 32 values is activation block 8 b + s, so its dot is
/// dx (d scale_s sum_j q_j qx_j - dmin min_s sum_j qx_j), the second sum being the block sum.
pub fn dot_q45_k(row: &[u8], x: Q8Row, five: bool) -> f32 {
    let bb = if five { 176 } else { 144 };
    let nb = row.len() / bb;
    assert!(x.xq.len() >= 256 * nb && x.xd.len() >= 8 * nb && x.xs.len() >= 8 * nb, "row and activations differ");
    let mut acc = 0.0f32;
    for (b, blk) in row.chunks_exact(bb).enumerate() {
        let (d, dmin) = (f16(blk), f16(&blk[2..]));
        let (high, qs) = if five { (&blk[16..48], &blk[48..]) } else { (&[0u8; 32][..], &blk[16..]) };
        for s in 0..8 {
            let (sc, m) = crate::quants::scale_min(s, &blk[4..16]);
            let c = 8 * b + s;
            let isum: i32 = (0..32)
                .map(|l| {
                    let q = ((qs[32 * (s / 2) + l] >> (4 * (s % 2))) & 0xF) | (((high[l] >> s) & 1) << 4);
                    q as i32 * x.xq[32 * c + l] as i32
                })
                .sum();
            acc += x.xd[c] * (d * sc as f32 * isum as f32 - dmin * m as f32 * x.xs[c] as f32);
        }
    }
    acc
}

/// Q3_K (110-byte super-blocks) against Q8_0 activations: per 16 values
/// (scale - 32) sum_j q_j qx_j in integers (q in [-4, 3]), times d dx per 32.
pub fn dot_q3_k(row: &[u8], x: Q8Row) -> f32 {
    let nb = row.len() / 110;
    assert!(x.xq.len() >= 256 * nb && x.xd.len() >= 8 * nb, "row and activations differ");
    let mut acc = 0.0f32;
    for (b, blk) in row.chunks_exact(110).enumerate() {
        let (hm, sc, d) = (&blk[..32], crate::quants::q3_scales(&blk[96..108]), f16(&blk[108..]));
        for h in 0..2 {
            for j in 0..4 {
                let c = 8 * b + 4 * h + j;
                let sum = |run: usize, ls: std::ops::Range<usize>| -> i32 {
                    let s: i32 = ls
                        .map(|l| {
                            let q = ((blk[32 + 32 * h + l] >> (2 * j)) & 3) as i32
                                - 4 * (1 - ((hm[l] >> (4 * h + j)) & 1) as i32);
                            q * x.xq[32 * c + l] as i32
                        })
                        .sum();
                    sc[run] as i32 * s
                };
                let isum = sum(8 * h + 2 * j, 0..16) + sum(8 * h + 2 * j + 1, 16..32);
                acc += d * x.xd[c] * isum as f32;
            }
        }
    }
    acc
}

/// IQ4_XS (136-byte super-blocks) against Q8_0 activations: per 32 values
/// d (scale - 32) dx sum_j level(q_j) qx_j.
pub fn dot_iq4_xs(row: &[u8], x: Q8Row) -> f32 {
    let nb = row.len() / 136;
    assert!(x.xq.len() >= 256 * nb && x.xd.len() >= 8 * nb, "row and activations differ");
    let mut acc = 0.0f32;
    for (b, blk) in row.chunks_exact(136).enumerate() {
        let d = f16(blk);
        for (ib, qs) in blk[8..].chunks_exact(16).enumerate() {
            let c = 8 * b + ib;
            let w = iq4_nl_values(qs);
            let isum: i32 = w.iter().zip(&x.xq[32 * c..32 * c + 32]).map(|(&a, &v)| a as i32 * v as i32).sum();
            acc += d * crate::quants::iq4_xs_scale(blk, ib) as f32 * x.xd[c] * isum as f32;
        }
    }
    acc
}

/// Q4_1 (20-byte blocks) and Q5_1 (24): d dx sum q qx + m dx sum qx per block.
fn dot_min(blk_bytes: usize, row: &[u8], r: Q8Row, values: impl Fn(&[u8]) -> [u8; 32]) -> f32 {
    let mut acc = 0.0f32;
    for (b, blk) in row.chunks_exact(blk_bytes).enumerate() {
        let q = values(blk);
        let isum: i32 = q.iter().zip(&r.xq[32 * b..32 * b + 32]).map(|(&a, &v)| a as i32 * v as i32).sum();
        acc += f16(blk) * r.xd[b] * isum as f32 + f16(&blk[2..]) * r.xd[b] * r.xs[b] as f32;
    }
    acc
}

pub fn dot_q4_1_n<const N: usize>(row: &[u8], x: [Q8Row; N]) -> [f32; N] {
    x.map(|r| dot_min(20, row, r, |b| nibbles(&b[4..], None)))
}

pub fn dot_q5_1_n<const N: usize>(row: &[u8], x: [Q8Row; N]) -> [f32; N] {
    x.map(|r| dot_min(24, row, r, |b| nibbles(&b[8..], Some(u32::from_le_bytes([b[4], b[5], b[6], b[7]])))))
}

/// out[r] = row r of `rows` (out.len() rows of whole super-blocks of `kind`) dotted with x.
pub fn dot_super_rows(kind: super::Super, rows: &[u8], x: Q8Row, out: &mut [f32]) {
    use super::Super;
    let rb = super::run_row_bytes(kind, rows.len(), out.len());
    for (row, o) in rows.chunks_exact(rb.max(1)).zip(out) {
        *o = match kind {
            Super::Q3K => dot_q3_k(row, x),
            Super::Q4K => dot_q45_k(row, x, false),
            Super::Q5K => dot_q45_k(row, x, true),
            Super::Q6K => dot_q6_k(row, x.xq, x.xd),
            Super::IQ4XS => dot_iq4_xs(row, x),
        };
    }
}
