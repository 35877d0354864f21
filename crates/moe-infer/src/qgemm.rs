//! Prompt-sized products over quantised weights in integers (int8 GEMM): y[n, out] = x[n, in] W^T
//! for many tokens, without decoding the weights to f32. Every block format whose scales come per
//! 32 values (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q4_K, Q5_K, IQ4_XS) is unpacked, 16 weight
//! rows at a time, into unsigned bytes u with w = d u + m per row and block of 32, interleaved so
//! one 512-bit load holds 4 consecutive values of the 16 rows (a panel). The tokens are quantised
//! to Q8_0 blocks (q, dx, and the block sum s = sum q). Per block and token the 16 rows take
//! I = sum u q in eight `vpdpbusd` (each with 4 activation bytes broadcast), then in f32
//! y += (d dx) I + m (dx s). Panels are split over the threads; each is unpacked once per call
//! and multiplied with every token, `TOKENS` at a time.
//! Built where AVX-512 VNNI is (`BUILT`); elsewhere `Linear` decodes panels to f32 instead.

use crate::quants::{nibbles, scale_min, IQ4};
use crate::weight::{quantize_q8_row, Dtype, Weight};
use rayon::prelude::*;

/// Weight rows per panel (one 512-bit vector of int32 or f32 sums).
const ROWS: usize = 16;
/// Tokens per pass over a panel (8 int32 and 8 f32 accumulators of 16 rows).
pub const TOKENS: usize = 8;

/// Whether the integer GEMM is built on this machine.
pub const BUILT: bool = cfg!(all(
    target_arch = "x86_64",
    target_feature = "avx512f",
    target_feature = "avx512vnni"
));

/// Whether rows of `dtype` unpack to this GEMM's form (scales per 32 values).
pub fn supports(dtype: Dtype) -> bool {
    use Dtype::*;
    matches!(dtype, Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | IQ4NL | Q4K | Q5K | IQ4XS)
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// Row `row` (bytes of a `supports` type) as unsigned values u[cols] and per block of 32 the
/// scale d and offset m, so that value j of block b is d[b] u[j] + m[b].
pub fn unpack_row(dtype: Dtype, row: &[u8], u: &mut [u8], d: &mut [f32], m: &mut [f32]) {
    // signed values v in [-128, 127] with one scale: u = v + 128, m = -128 d
    let signed = |v: [i8; 32], u: &mut [u8]| u.iter_mut().zip(v).for_each(|(o, v)| *o = (v as u8) ^ 0x80);
    let (us, ds, ms) = (u.chunks_exact_mut(32), d.iter_mut(), m.iter_mut());
    match dtype {
        Dtype::Q8_0 | Dtype::Q4_0 | Dtype::Q4_1 | Dtype::Q5_0 | Dtype::Q5_1 | Dtype::IQ4NL => {
            let bb = dtype.format().map_or(1, |f| f.bytes);
            for (((blk, u), d), m) in row.chunks_exact(bb).zip(us).zip(ds).zip(ms) {
                *d = f16(blk);
                let hi = |at: usize| Some(u32::from_le_bytes([blk[at], blk[at + 1], blk[at + 2], blk[at + 3]]));
                let (q, offset) = match dtype {
                    Dtype::Q8_0 => {
                        signed(std::array::from_fn(|j| blk[2 + j] as i8), u);
                        (None, -128.0 * *d)
                    }
                    Dtype::IQ4NL => {
                        signed(nibbles(&blk[2..], None).map(|q| IQ4[q as usize]), u);
                        (None, -128.0 * *d)
                    }
                    Dtype::Q4_0 => (Some(nibbles(&blk[2..], None)), -8.0 * *d),
                    Dtype::Q5_0 => (Some(nibbles(&blk[6..], hi(2))), -16.0 * *d),
                    Dtype::Q4_1 => (Some(nibbles(&blk[4..], None)), f16(&blk[2..])),
                    _ => (Some(nibbles(&blk[8..], hi(4))), f16(&blk[2..])), // Q5_1
                };
                if let Some(q) = q {
                    u.copy_from_slice(&q);
                }
                *m = offset;
            }
        }
        Dtype::Q4K | Dtype::Q5K => {
            let five = dtype == Dtype::Q5K;
            let bb = if five { 176 } else { 144 };
            let mut parts = us.zip(ds).zip(ms);
            for blk in row.chunks_exact(bb) {
                let (dd, dmin) = (f16(blk), f16(&blk[2..]));
                let (high, qs) = if five { (&blk[16..48], &blk[48..]) } else { (&[0u8; 32][..], &blk[16..]) };
                for s in 0..8 {
                    let Some(((u, d), m)) = parts.next() else { return };
                    let (sc, mn) = scale_min(s, &blk[4..16]);
                    for (l, o) in u.iter_mut().enumerate() {
                        *o = ((qs[32 * (s / 2) + l] >> (4 * (s % 2))) & 0xF) | (((high[l] >> s) & 1) << 4);
                    }
                    (*d, *m) = (dd * sc as f32, -dmin * mn as f32);
                }
            }
        }
        Dtype::IQ4XS => {
            let mut parts = us.zip(ds).zip(ms);
            for blk in row.chunks_exact(136) {
                let dd = f16(blk);
                for (ib, qs) in blk[8..].chunks_exact(16).enumerate() {
                    let Some(((u, d), m)) = parts.next() else { return };
                    signed(nibbles(qs, None).map(|q| IQ4[q as usize]), u);
                    *d = dd * crate::quants::iq4_xs_scale(blk, ib) as f32;
                    *m = -128.0 * *d;
                }
            }
        }
        other => unreachable!("{other:?} is not a qgemm type (supports is false)"),
    }
}

/// 16 weight rows unpacked and interleaved: u as [block][group of 4 values][row][4], d and m as
/// [block][row]. Rows past the weight's end are zero.
struct Panel {
    u: Vec<u8>,
    d: Vec<f32>,
    m: Vec<f32>,
}

impl Panel {
    fn fill(&mut self, w: &Weight, r0: usize, row: &mut [u8], rd: &mut [f32], rm: &mut [f32]) {
        let (cols, nb) = (w.cols, w.cols / 32);
        self.u.resize(cols * ROWS, 0);
        self.d.resize(nb * ROWS, 0.0);
        self.m.resize(nb * ROWS, 0.0);
        for r in 0..ROWS {
            if r0 + r < w.rows {
                unpack_row(w.dtype, w.row_data(r0 + r), row, rd, rm);
            } else {
                (row.fill(0), rd.fill(0.0), rm.fill(0.0));
            }
            for (g, v) in row.chunks_exact(4).enumerate() {
                self.u[g * 4 * ROWS + 4 * r..g * 4 * ROWS + 4 * r + 4].copy_from_slice(v);
            }
            for b in 0..nb {
                (self.d[b * ROWS + r], self.m[b * ROWS + r]) = (rd[b], rm[b]);
            }
        }
    }
}

/// Tokens quantised to Q8_0 blocks, padded with zero tokens to a multiple of `TOKENS`.
struct Tokens {
    q: Vec<i8>,
    /// dx per token and block.
    d: Vec<f32>,
    /// dx times the block sum per token and block.
    ds: Vec<f32>,
}

impl Tokens {
    fn new(x: &[f32], n: usize, cols: usize) -> Tokens {
        let (nb, padded) = (cols / 32, n.div_ceil(TOKENS) * TOKENS);
        let mut t = Tokens { q: vec![0; padded * cols], d: vec![0.0; padded * nb], ds: vec![0.0; padded * nb] };
        for tok in 0..n {
            let (q, d) = (&mut t.q[tok * cols..(tok + 1) * cols], &mut t.d[tok * nb..(tok + 1) * nb]);
            quantize_q8_row(&x[tok * cols..(tok + 1) * cols], q, d);
            for ((ds, qb), &dx) in t.ds[tok * nb..(tok + 1) * nb].iter_mut().zip(q.chunks_exact(32)).zip(d.iter()) {
                *ds = dx * qb.iter().map(|&v| v as i32).sum::<i32>() as f32;
            }
        }
        t
    }
}

/// y[n, out] = x[n, cols] W^T for a weight of a `supports` type, on a machine where `BUILT`.
pub fn forward(w: &Weight, x: &[f32], n: usize, y: &mut [f32]) {
    assert!(BUILT && supports(w.dtype) && w.cols % 32 == 0, "qgemm::forward on a weight it cannot multiply");
    let (cols, nb, out) = (w.cols, w.cols / 32, w.rows);
    let tokens = Tokens::new(x, n, cols);
    let padded = n.div_ceil(TOKENS) * TOKENS;
    let panels = out.div_ceil(ROWS);
    // per panel [padded tokens][16 rows], so the panels' outputs are contiguous for the threads
    let mut t = vec![0.0f32; panels * padded * ROWS];
    t.par_chunks_mut(padded * ROWS).enumerate().for_each_init(
        || (Panel { u: vec![], d: vec![], m: vec![] }, vec![0u8; cols], vec![0.0; nb], vec![0.0; nb]),
        |(panel, row, rd, rm), (p, tp)| {
            panel.fill(w, p * ROWS, row, rd, rm);
            for (g, tg) in tp.chunks_exact_mut(TOKENS * ROWS).enumerate() {
                let tok = g * TOKENS;
                tile(panel, nb, &tokens.q[tok * cols..], &tokens.d[tok * nb..], &tokens.ds[tok * nb..], tg);
            }
        },
    );
    for (p, tp) in t.chunks_exact(padded * ROWS).enumerate() {
        let r0 = p * ROWS;
        let rows = ROWS.min(out - r0);
        for tok in 0..n {
            y[tok * out + r0..tok * out + r0 + rows].copy_from_slice(&tp[tok * ROWS..tok * ROWS + rows]);
        }
    }
}

/// One panel against `TOKENS` tokens (q [TOKENS][cols], d and ds [TOKENS][nb]): out [TOKENS][16].
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f", target_feature = "avx512vnni"))]
fn tile(p: &Panel, nb: usize, q: &[i8], d: &[f32], ds: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let cols = 32 * nb;
    assert!(
        p.u.len() >= cols * ROWS
            && p.d.len() >= nb * ROWS
            && p.m.len() >= nb * ROWS
            && q.len() >= TOKENS * cols
            && d.len() >= TOKENS * nb
            && ds.len() >= TOKENS * nb
            && out.len() >= TOKENS * ROWS,
        "panel, tokens and output differ"
    );
    // SAFETY: the features are built in (cfg); every read below is inside the slices checked
    // above: u[(8 b + g) 64 .. + 64], d/m[16 b .. + 16], q[t cols + 32 b + 4 g .. + 4],
    // d/ds[t nb + b], out[16 t .. + 16].
    unsafe {
        let mut acc = [_mm512_setzero_ps(); TOKENS];
        for b in 0..nb {
            let mut sum = [_mm512_setzero_si512(); TOKENS];
            for g in 0..8 {
                let wv = _mm512_loadu_si512(p.u.as_ptr().add((8 * b + g) * 64) as *const _);
                for (t, s) in sum.iter_mut().enumerate() {
                    let xv = (q.as_ptr().add(t * cols + 32 * b + 4 * g) as *const i32).read_unaligned();
                    *s = _mm512_dpbusd_epi32(*s, wv, _mm512_set1_epi32(xv));
                }
            }
            let dv = _mm512_loadu_ps(p.d.as_ptr().add(b * ROWS));
            let mv = _mm512_loadu_ps(p.m.as_ptr().add(b * ROWS));
            for (t, (a, s)) in acc.iter_mut().zip(sum).enumerate() {
                let scale = _mm512_mul_ps(dv, _mm512_set1_ps(*d.get_unchecked(t * nb + b)));
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, *a);
                *a = _mm512_fmadd_ps(mv, _mm512_set1_ps(*ds.get_unchecked(t * nb + b)), *a);
            }
        }
        for (t, a) in acc.into_iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(t * ROWS), a);
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f", target_feature = "avx512vnni")))]
fn tile(_: &Panel, _: usize, _: &[i8], _: &[f32], _: &[f32], _: &mut [f32]) {
    unreachable!("qgemm::forward checks BUILT")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qdot::{block_sums, Q8Row};

    const TYPES: [Dtype; 9] = [
        Dtype::Q8_0,
        Dtype::Q4_0,
        Dtype::Q4_1,
        Dtype::Q5_0,
        Dtype::Q5_1,
        Dtype::IQ4NL,
        Dtype::Q4K,
        Dtype::Q5K,
        Dtype::IQ4XS,
    ];

    /// A weight of random bytes in `dtype` whose f16 fields (scales, mins) are finite.
    fn random_weight(dtype: Dtype, rows: usize, cols: usize, rng: &mut moe_engine::rng::Rng) -> Weight {
        let f = dtype.format().unwrap();
        let halves: &[usize] = match dtype {
            Dtype::Q4_1 | Dtype::Q5_1 | Dtype::Q4K | Dtype::Q5K => &[0, 2],
            _ => &[0],
        };
        let mut bytes: Vec<u8> = (0..rows * cols / f.values * f.bytes).map(|_| (rng.uniform() * 256.0) as u8).collect();
        for blk in bytes.chunks_exact_mut(f.bytes) {
            for &at in halves {
                let v = half::f16::from_f32((rng.uniform() as f32 - 0.3) * 0.02);
                blk[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
            }
        }
        Weight::from_bytes(bytes, dtype, rows, cols).unwrap()
    }

    /// Every supported type: the unpacked form d u + m equals the format's own decoder.
    #[test]
    fn unpacked_rows_equal_the_decoder() {
        let mut rng = moe_engine::rng::Rng::new(5);
        let (rows, cols) = (3, 512);
        for dtype in TYPES {
            assert!(supports(dtype));
            let w = random_weight(dtype, rows, cols, &mut rng);
            let (mut u, mut d, mut m, mut want) = (vec![0u8; cols], vec![0.0; cols / 32], vec![0.0; cols / 32], vec![0.0; cols]);
            for r in 0..rows {
                unpack_row(dtype, w.row_data(r), &mut u, &mut d, &mut m);
                w.row_f32(r, &mut want);
                for (j, &v) in want.iter().enumerate() {
                    let got = d[j / 32] * u[j] as f32 + m[j / 32];
                    assert!((got - v).abs() <= 1e-6 * (1e-3 + v.abs()), "{dtype:?} row {r} value {j}: {got} vs {v}");
                }
            }
        }
        assert!(!supports(Dtype::Q6K) && !supports(Dtype::Q3K) && !supports(Dtype::BF16));
    }

    /// The GEMM equals the integer dot products of each row and token (the same quantised
    /// activations, the same integer block sums; only the f32 summation order differs), for
    /// token counts that are not a multiple of the pass and rows that are not of the panel.
    #[test]
    fn the_gemm_equals_the_row_dot_products() {
        if !BUILT {
            eprintln!("skipped: qgemm is not built on this CPU (no AVX-512 VNNI)");
            return;
        }
        let mut rng = moe_engine::rng::Rng::new(7);
        for dtype in TYPES {
            let (rows, cols) = (37, 512);
            let w = random_weight(dtype, rows, cols, &mut rng);
            for n in [1, 8, 13] {
                let x: Vec<f32> = (0..n * cols).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect();
                let mut y = vec![f32::NAN; n * rows];
                forward(&w, &x, n, &mut y);
                for tok in 0..n {
                    let (mut xq, mut xd) = (vec![0i8; cols], vec![0.0; cols / 32]);
                    quantize_q8_row(&x[tok * cols..(tok + 1) * cols], &mut xq, &mut xd);
                    let xs = block_sums(&xq);
                    for r in 0..rows {
                        let want = w.dot_row_q8_n(r, [Q8Row { xq: &xq, xd: &xd, xs: &xs }])[0];
                        let got = y[tok * rows + r];
                        assert!(
                            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                            "{dtype:?} n {n} token {tok} row {r}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
