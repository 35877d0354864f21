//! Prompt-sized products over quantised weights in integers (int8 GEMM): y[n, out] = x[n, in] W^T
//! for many tokens, without decoding the weights to f32. Every block format moe reads is
//! unpacked, 16 weight rows at a time, into unsigned bytes u with w = d u + m per row and scale
//! block (32 values; 16 for Q2_K, Q3_K and Q6_K), interleaved so one 512-bit load holds 4
//! consecutive values of the 16 rows (a panel). The tokens are quantised to Q8_0 blocks (q, dx,
//! and per scale block the sum s of q). Per scale block and token the 16 rows take I = sum u q
//! in eight (or four) `vpdpbusd`, each with 4 activation bytes broadcast, then in f32
//! y += (d dx) I + m (dx s); for the signed types stored with an offset (m = -c d) the sums
//! start from -c s instead and the second term goes. Panels are split over the threads; each is unpacked once per call
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
pub const BUILT: bool = cfg!(all(target_arch = "x86_64", target_feature = "avx512f", target_feature = "avx512vnni"));

/// Values per scale block of `dtype` in this GEMM's form, if it has one.
pub fn granularity(dtype: Dtype) -> Option<usize> {
    use Dtype::*;
    match dtype {
        Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | IQ4NL | Q4K | Q5K | IQ4XS => Some(32),
        Q2K | Q3K | Q6K => Some(16),
        _ => None,
    }
}

/// For the types whose offset is a fixed multiple of the scale (m = -c d: signed values stored
/// unsigned), c: the offset then starts the integer sums (-c s) instead of costing an FMA.
fn centre(dtype: Dtype) -> Option<i32> {
    use Dtype::*;
    match dtype {
        Q8_0 | IQ4NL | IQ4XS => Some(128),
        Q4_0 => Some(8),
        Q5_0 => Some(16),
        Q3K => Some(4),
        Q6K => Some(32),
        _ => None,
    }
}

/// Whether rows of `dtype` unpack to this GEMM's form.
pub fn supports(dtype: Dtype) -> bool {
    granularity(dtype).is_some()
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// Row `row` (bytes of a `supports` type) as unsigned values u[cols] and per scale block (of
/// `granularity` values) the scale d and offset m, so that value j is d[j / g] u[j] + m[j / g].
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
        Dtype::Q2K | Dtype::Q3K | Dtype::Q6K => {
            let bb = dtype.format().map_or(1, |f| f.bytes);
            let mut v = [0.0f32; crate::quants::QK_K];
            for ((blk, u), (d, m)) in row
                .chunks_exact(bb)
                .zip(u.chunks_exact_mut(256))
                .zip(d.chunks_exact_mut(16).zip(m.chunks_exact_mut(16)))
            {
                super_block_16(dtype, blk, &mut v, d, m);
                u.iter_mut().zip(&v).for_each(|(o, &q)| *o = q as u8);
            }
        }
        other => unreachable!("{other:?} is not a qgemm type (supports is false)"),
    }
}

/// One Q2_K, Q3_K or Q6_K super-block: its 256 unsigned values (as f32, in v) and the scale and
/// offset of each run of 16.
fn super_block_16(dtype: Dtype, blk: &[u8], v: &mut [f32; 256], d: &mut [f32], m: &mut [f32]) {
    use crate::quants::two_bit_runs;
    match dtype {
        Dtype::Q2K => {
            // w = d (sc & 15) q - dmin (sc >> 4), q in [0, 3]
            let (sc, dd, dmin) = (&blk[..16], f16(&blk[80..]), f16(&blk[82..]));
            two_bit_runs(&blk[16..80], v, |_, _, q| q as f32);
            for r in 0..16 {
                (d[r], m[r]) = (dd * (sc[r] & 0xF) as f32, -dmin * (sc[r] >> 4) as f32);
            }
        }
        Dtype::Q3K => {
            // w = d sc (q - sub), q - sub in [-4, 3]: u = q - sub + 4, m = -4 d sc
            let (hm, sc, dd) = (&blk[..32], crate::quants::q3_scales(&blk[96..108]), f16(&blk[108..]));
            two_bit_runs(&blk[32..96], v, |run, l, q| {
                let bit = 4 * (run / 8) + run / 2 % 4;
                let sub = if hm[l % 32] >> bit & 1 == 1 { 0 } else { 4 };
                (q as i32 - sub + 4) as f32
            });
            for r in 0..16 {
                d[r] = dd * sc[r] as f32;
                m[r] = -4.0 * d[r];
            }
        }
        _ => {
            // Q6_K: w = d sc (q - 32), q in [0, 63]
            let dd = f16(&blk[208..210]);
            for h in 0..2 {
                let (ql, qh) = (&blk[64 * h..64 * h + 64], &blk[128 + 32 * h..128 + 32 * h + 32]);
                for l in 0..32 {
                    let (a, b, c) = (ql[l], ql[l + 32], qh[l]);
                    let at = 128 * h + l;
                    v[at] = ((a & 0xF) | ((c & 3) << 4)) as f32;
                    v[at + 32] = ((b & 0xF) | (((c >> 2) & 3) << 4)) as f32;
                    v[at + 64] = ((a >> 4) | (((c >> 4) & 3) << 4)) as f32;
                    v[at + 96] = ((b >> 4) | (((c >> 6) & 3) << 4)) as f32;
                }
            }
            for r in 0..16 {
                d[r] = dd * (blk[192 + r] as i8) as f32;
                m[r] = -32.0 * d[r];
            }
        }
    }
}

/// 16 weight rows unpacked and interleaved: u as [group of 4 values][row][4], d and m as
/// [scale block][row]. Rows past the weight's end are zero.
struct Panel {
    u: Vec<u8>,
    d: Vec<f32>,
    m: Vec<f32>,
}

impl Panel {
    fn fill(&mut self, w: &Weight, r0: usize, row: &mut [u8], rd: &mut [f32], rm: &mut [f32]) {
        let (cols, nb) = (w.cols, rd.len());
        self.u.resize(cols * ROWS, 0);
        self.d.resize(nb * ROWS, 0.0);
        self.m.resize(nb * ROWS, 0.0);
        for r in 0..ROWS {
            if r0 + r < w.rows {
                unpack_row(w.dtype, w.row_data(r0 + r), row, rd, rm);
            } else {
                row.fill(0);
                rd.fill(0.0);
                rm.fill(0.0);
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
    /// dx per token and block of 32.
    d: Vec<f32>,
    /// Per token and scale block (of `g` values) with s the sum of its q: dx s (types with a
    /// free offset m), or -c s (types centred on c, `centre`) to start the integer sums from.
    ds: Vec<f32>,
    start: Vec<i32>,
}

impl Tokens {
    fn new(x: &[f32], n: usize, cols: usize, g: usize, centre: Option<i32>) -> Tokens {
        let (nb, ns, padded) = (cols / 32, cols / g, n.div_ceil(TOKENS) * TOKENS);
        let mut t = Tokens {
            q: vec![0; padded * cols],
            d: vec![0.0; padded * nb],
            ds: vec![0.0; padded * ns],
            start: vec![0; padded * ns],
        };
        for tok in 0..n {
            let (q, d) = (&mut t.q[tok * cols..(tok + 1) * cols], &mut t.d[tok * nb..(tok + 1) * nb]);
            quantize_q8_row(&x[tok * cols..(tok + 1) * cols], q, d);
            let (ds, start) = (&mut t.ds[tok * ns..(tok + 1) * ns], &mut t.start[tok * ns..(tok + 1) * ns]);
            for (k, qs) in q.chunks_exact(g).enumerate() {
                let sum = qs.iter().map(|&v| v as i32).sum::<i32>();
                match centre {
                    Some(c) => start[k] = -c * sum,
                    None => ds[k] = d[k * g / 32] * sum as f32,
                }
            }
        }
        t
    }
}

/// y[n, out] = x[n, cols] W^T for a weight of a `supports` type, on a machine where `BUILT`.
pub fn forward(w: &Weight, x: &[f32], n: usize, y: &mut [f32]) {
    let g = granularity(w.dtype).filter(|_| BUILT && w.cols.is_multiple_of(32));
    let g = g.expect("qgemm::forward on a weight it cannot multiply (check BUILT and supports)");
    let (cols, nb, ns, out) = (w.cols, w.cols / 32, w.cols / g, w.rows);
    let centred = centre(w.dtype);
    let tokens = Tokens::new(x, n, cols, g, centred);
    let padded = n.div_ceil(TOKENS) * TOKENS;
    let panels = out.div_ceil(ROWS);
    // per panel [padded tokens][16 rows], so the panels' outputs are contiguous for the threads
    let mut t = vec![0.0f32; panels * padded * ROWS];
    t.par_chunks_mut(padded * ROWS).enumerate().for_each_init(
        || (Panel { u: vec![], d: vec![], m: vec![] }, vec![0u8; cols], vec![0.0; ns], vec![0.0; ns]),
        |(panel, row, rd, rm), (p, tp)| {
            panel.fill(w, p * ROWS, row, rd, rm);
            for (k, tk) in tp.chunks_exact_mut(TOKENS * ROWS).enumerate() {
                let x = TokenGroup {
                    q: &tokens.q[k * TOKENS * cols..],
                    d: &tokens.d[k * TOKENS * nb..],
                    ds: &tokens.ds[k * TOKENS * ns..],
                    start: &tokens.start[k * TOKENS * ns..],
                };
                match (g, centred.is_some()) {
                    (32, true) => tile::<1, false>(panel, nb, x, tk),
                    (32, false) => tile::<1, true>(panel, nb, x, tk),
                    (_, true) => tile::<2, false>(panel, nb, x, tk),
                    (_, false) => tile::<2, true>(panel, nb, x, tk),
                }
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

/// `TOKENS` tokens of a `Tokens` from the first on: q [TOKENS][cols], d [TOKENS][nb], ds and
/// start [TOKENS][scale blocks].
#[derive(Clone, Copy)]
struct TokenGroup<'a> {
    q: &'a [i8],
    d: &'a [f32],
    ds: &'a [f32],
    start: &'a [i32],
}

/// One panel against a group of tokens: out [TOKENS][16]. SUB scale blocks per block of 32 (1,
/// or 2 for runs of 16); MIN: the type has a free offset m (else its integer sums start from
/// the tokens' `start`).
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f", target_feature = "avx512vnni"))]
fn tile<const SUB: usize, const MIN: bool>(p: &Panel, nb: usize, x: TokenGroup, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let (cols, ns) = (32 * nb, SUB * nb);
    let TokenGroup { q, d, ds, start } = x;
    assert!(
        p.u.len() >= cols * ROWS
            && p.d.len() >= ns * ROWS
            && p.m.len() >= ns * ROWS
            && q.len() >= TOKENS * cols
            && d.len() >= TOKENS * nb
            && ds.len() >= TOKENS * ns
            && start.len() >= TOKENS * ns
            && out.len() >= TOKENS * ROWS,
        "panel, tokens and output differ"
    );
    // SAFETY: the features are built in (cfg); every read below is inside the slices checked
    // above: u[(8 b + g) 64 .. + 64], d/m[16 k .. + 16] for k < nb SUB, q[t cols + 32 b + 4 g ..
    // + 4], d[t nb + b], ds/start[t ns + k], out[16 t .. + 16].
    unsafe {
        let mut acc = [_mm512_setzero_ps(); TOKENS];
        for b in 0..nb {
            for s in 0..SUB {
                let k = SUB * b + s;
                let mut sum: [__m512i; TOKENS] =
                    std::array::from_fn(|t| _mm512_set1_epi32(*start.get_unchecked(t * ns + k)));
                for g in s * 8 / SUB..(s + 1) * 8 / SUB {
                    let wv = _mm512_loadu_si512(p.u.as_ptr().add((8 * b + g) * 64) as *const _);
                    for (t, v) in sum.iter_mut().enumerate() {
                        let xv = (q.as_ptr().add(t * cols + 32 * b + 4 * g) as *const i32).read_unaligned();
                        *v = _mm512_dpbusd_epi32(*v, wv, _mm512_set1_epi32(xv));
                    }
                }
                let dv = _mm512_loadu_ps(p.d.as_ptr().add(k * ROWS));
                let mv = _mm512_loadu_ps(p.m.as_ptr().add(k * ROWS));
                for (t, (a, v)) in acc.iter_mut().zip(sum).enumerate() {
                    let scale = _mm512_mul_ps(dv, _mm512_set1_ps(*d.get_unchecked(t * nb + b)));
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), scale, *a);
                    if MIN {
                        *a = _mm512_fmadd_ps(mv, _mm512_set1_ps(*ds.get_unchecked(t * ns + k)), *a);
                    }
                }
            }
        }
        for (t, a) in acc.into_iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(t * ROWS), a);
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f", target_feature = "avx512vnni")))]
fn tile<const SUB: usize, const MIN: bool>(_: &Panel, _: usize, _: TokenGroup, _: &mut [f32]) {
    unreachable!("qgemm::forward checks BUILT")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qdot::{block_sums, Q8Row};

    /// Every block format moe reads.
    fn block_types() -> impl Iterator<Item = Dtype> {
        Dtype::ALL.into_iter().filter(|d| d.is_block_quant())
    }

    fn random_weight(dtype: Dtype, rows: usize, cols: usize, rng: &mut moe_engine::rng::Rng) -> Weight {
        let f = dtype.format().unwrap();
        Weight::from_bytes(f.random_blocks(rows * cols / f.values, rng), dtype, rows, cols).unwrap()
    }

    /// Every supported type: the unpacked form d u + m equals the format's own decoder.
    #[test]
    fn unpacked_rows_equal_the_decoder() {
        let mut rng = moe_engine::rng::Rng::new(5);
        let (rows, cols) = (3, 512);
        for dtype in block_types() {
            assert!(supports(dtype), "{dtype:?}");
            let w = random_weight(dtype, rows, cols, &mut rng);
            let g = granularity(dtype).unwrap();
            let (mut u, mut d, mut m, mut want) =
                (vec![0u8; cols], vec![0.0; cols / g], vec![0.0; cols / g], vec![0.0; cols]);
            for r in 0..rows {
                unpack_row(dtype, w.row_data(r), &mut u, &mut d, &mut m);
                w.row_f32(r, &mut want);
                for (j, &v) in want.iter().enumerate() {
                    let got = d[j / g] * u[j] as f32 + m[j / g];
                    assert!((got - v).abs() <= 1e-6 * (1e-3 + v.abs()), "{dtype:?} row {r} value {j}: {got} vs {v}");
                }
            }
        }
        assert!(!supports(Dtype::BF16) && !supports(Dtype::F32) && !supports(Dtype::Mxfp4));
    }

    /// The GEMM equals the product of the decoded rows with the quantised activations (in f64,
    /// to the f32 rounding of the sums), for token counts that are not a multiple of the pass and
    /// rows that are not of the panel; and for the types with integer dot products, those.
    #[test]
    fn the_gemm_equals_the_decoded_product_and_the_row_dot_products() {
        if !BUILT {
            eprintln!("skipped: qgemm is not built on this CPU (no AVX-512 VNNI)");
            return;
        }
        let mut rng = moe_engine::rng::Rng::new(7);
        for dtype in block_types() {
            let (rows, cols) = (37, 512);
            let w = random_weight(dtype, rows, cols, &mut rng);
            for n in [1, 8, 13] {
                let x: Vec<f32> = (0..n * cols).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect();
                let mut y = vec![f32::NAN; n * rows];
                forward(&w, &x, n, &mut y);
                let mut wr = vec![0.0; cols];
                for tok in 0..n {
                    let (mut xq, mut xd) = (vec![0i8; cols], vec![0.0; cols / 32]);
                    quantize_q8_row(&x[tok * cols..(tok + 1) * cols], &mut xq, &mut xd);
                    let xs = block_sums(&xq);
                    for r in 0..rows {
                        let got = y[tok * rows + r];
                        w.row_f32(r, &mut wr);
                        let terms = wr.iter().enumerate().map(|(j, &v)| v as f64 * (xd[j / 32] * xq[j] as f32) as f64);
                        let (exact, size) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
                        let what = format!("{dtype:?} n {n} token {tok} row {r}");
                        assert!((got as f64 - exact).abs() <= 1e-5 * size, "{what}: {got} vs decoded {exact}");
                        if dtype.has_q8_dot() {
                            let dot = w.dot_row_q8_n(r, [Q8Row { xq: &xq, xd: &xd, xs: &xs }])[0];
                            assert!((got - dot).abs() <= 1e-5 * size as f32, "{what}: {got} vs dot {dot}");
                        }
                    }
                }
            }
        }
    }
}
