//! Prompt-sized products over quantised weights in integers (int8 GEMM): y[n, out] = x[n, in] W^T
//! for many tokens, without decoding the weights to f32. Every block format moe reads is
//! unpacked, 16 weight rows at a time, into unsigned bytes u with w = d u + m per row and scale
//! block (32 values; 16 for Q2_K, Q3_K and Q6_K), interleaved so one 512-bit load holds 4
//! consecutive values of the 16 rows (a panel). The tokens are quantised to Q8_0 blocks (q, dx,
//! and per scale block the sum s of q). Per scale block and token the 16 rows take I = sum u q
//! in eight (or four) `vpdpbusd`, each with 4 activation bytes broadcast, then in f32
//! y += (d dx) I + m (dx s); for the signed types stored with an offset (m = -c d) the sums
//! start from -c s instead and the second term goes. Panels are split over the threads; each is
//! unpacked once per call and multiplied with every token, `TOKENS` at a time.
//! Built where AVX-512 VNNI is (`BUILT`); elsewhere `Linear` decodes panels to f32 instead.

use crate::quants::{nibbles_into, scale_min, IQ4};
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

/// From how many tokens this GEMM beats the dot products of `Linear` on rows of `dtype`
/// (usize::MAX where it is not built or the type has no GEMM form). Measured with `cargo bench
/// -p moe-infer --bench qdot_batch` (2048 x 1024, one thread, AMD EPYC Zen 4, 2026-12-07): Q8_0
/// and Q4_0 cross over between 8 and 16 tokens (at 16: 19.6 and 17.2 against 27.0 and 26 ns per
/// token and row), the super-block types below 8 (at 8: Q4_K 26.5 against 49.2, Q6_K 26.5
/// against 58.0).
pub fn min_tokens(dtype: Dtype) -> usize {
    match (BUILT, dtype.format()) {
        (true, Some(f)) if supports(dtype) && f.values == 256 => 8,
        (true, Some(_)) if supports(dtype) => 16,
        _ => usize::MAX,
    }
}

/// Whether rows of `dtype` unpack to this GEMM's form.
pub fn supports(dtype: Dtype) -> bool {
    granularity(dtype).is_some()
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// IQ4_NL's levels stored unsigned (level + 128).
const IQ4U: [u8; 16] = {
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = (IQ4[i] as u8) ^ 0x80;
        i += 1;
    }
    t
};

/// An IQ4 block's 32 values (low nibbles of qs[..16] first, then the high ones) as their
/// unsigned levels `IQ4U` into u[..32]: one `pshufb` per 16 where AVX2 is built (a table
/// lookup per value took a third of the IQ4_XS prompt time), else a lookup each.
#[inline(always)]
fn iq4_levels_into(qs: &[u8], u: &mut [u8]) {
    let (qs, u): (&[u8; 16], &mut [u8; 32]) =
        (qs[..16].try_into().expect("16 bytes"), (&mut u[..32]).try_into().expect("32 values"));
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    // SAFETY: AVX2 (and so SSSE3) is built in; the loads and stores stay inside qs, IQ4U and u.
    unsafe {
        use std::arch::x86_64::*;
        let (b, m, t) = (
            _mm_loadu_si128(qs.as_ptr() as *const __m128i),
            _mm_set1_epi8(15),
            _mm_loadu_si128(IQ4U.as_ptr() as *const __m128i),
        );
        let (lo, hi) = (_mm_and_si128(b, m), _mm_and_si128(_mm_srli_epi16(b, 4), m));
        _mm_storeu_si128(u.as_mut_ptr() as *mut __m128i, _mm_shuffle_epi8(t, lo));
        _mm_storeu_si128(u.as_mut_ptr().add(16) as *mut __m128i, _mm_shuffle_epi8(t, hi));
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    {
        nibbles_into(qs, 0, u);
        u.iter_mut().for_each(|o| *o = IQ4U[*o as usize & 15]);
    }
}

/// Row `row` (bytes of a `supports` type) as unsigned values u[cols] and per scale block (of
/// `granularity` values) the scale d and offset m, so that value j is d[j / g] u[j] + m[j / g].
pub fn unpack_row(dtype: Dtype, row: &[u8], u: &mut [u8], d: &mut [f32], m: &mut [f32]) {
    let (us, ds, ms) = (u.chunks_exact_mut(32), d.iter_mut(), m.iter_mut());
    match dtype {
        Dtype::Q8_0 | Dtype::Q4_0 | Dtype::Q4_1 | Dtype::Q5_0 | Dtype::Q5_1 | Dtype::IQ4NL => {
            let bb = dtype.format().map_or(1, |f| f.bytes);
            for (((blk, u), d), m) in row.chunks_exact(bb).zip(us).zip(ds).zip(ms) {
                *d = f16(blk);
                let fifth = |at: usize| u32::from_le_bytes([blk[at], blk[at + 1], blk[at + 2], blk[at + 3]]);
                *m = match dtype {
                    Dtype::Q8_0 => {
                        // signed values stored unsigned: u = v + 128
                        u.iter_mut().zip(&blk[2..34]).for_each(|(o, &v)| *o = v ^ 0x80);
                        -128.0 * *d
                    }
                    Dtype::IQ4NL => {
                        iq4_levels_into(&blk[2..], u);
                        -128.0 * *d
                    }
                    Dtype::Q4_0 => {
                        nibbles_into(&blk[2..], 0, u);
                        -8.0 * *d
                    }
                    Dtype::Q5_0 => {
                        nibbles_into(&blk[6..], fifth(2), u);
                        -16.0 * *d
                    }
                    Dtype::Q4_1 => {
                        nibbles_into(&blk[4..], 0, u);
                        f16(&blk[2..])
                    }
                    _ => {
                        nibbles_into(&blk[8..], fifth(4), u); // Q5_1
                        f16(&blk[2..])
                    }
                };
            }
        }
        Dtype::Q4K | Dtype::Q5K => {
            let five = dtype == Dtype::Q5K;
            let bb = if five { 176 } else { 144 };
            let mut parts = us.zip(ds).zip(ms);
            for blk in row.chunks_exact(bb) {
                let (dd, dmin) = (f16(blk), f16(&blk[2..]));
                let (high, qs): (&[u8; 32], &[u8]) = match five {
                    true => (blk[16..48].try_into().expect("32 bytes"), &blk[48..]),
                    false => (&[0; 32], &blk[16..]),
                };
                for s in 0..8 {
                    let Some(((u, d), m)) = parts.next() else { return };
                    let q: &[u8; 32] = qs[32 * (s / 2)..32 * (s / 2) + 32].try_into().expect("32 bytes");
                    let (shift, u): (u32, &mut [u8; 32]) = (4 * (s as u32 % 2), u.try_into().expect("32 values"));
                    match five {
                        true => (0..32).for_each(|l| u[l] = ((q[l] >> shift) & 0xF) | (((high[l] >> s) & 1) << 4)),
                        false => (0..32).for_each(|l| u[l] = (q[l] >> shift) & 0xF),
                    }
                    let (sc, mn) = scale_min(s, &blk[4..16]);
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
                    iq4_levels_into(qs, u);
                    *d = dd * crate::quants::iq4_xs_scale(blk, ib) as f32;
                    *m = -128.0 * *d;
                }
            }
        }
        Dtype::Q2K | Dtype::Q3K | Dtype::Q6K => {
            let bb = dtype.format().map_or(1, |f| f.bytes);
            for ((blk, u), (d, m)) in row
                .chunks_exact(bb)
                .zip(u.chunks_exact_mut(256))
                .zip(d.chunks_exact_mut(16).zip(m.chunks_exact_mut(16)))
            {
                super_block_16(dtype, blk, u.try_into().expect("256 values"), d, m);
            }
        }
        other => unreachable!("{other:?} is not a qgemm type (supports is false)"),
    }
}

/// One Q2_K, Q3_K or Q6_K super-block: its 256 unsigned values u and the scale and offset of
/// each run of 16.
fn super_block_16(dtype: Dtype, blk: &[u8], u: &mut [u8; 256], d: &mut [f32], m: &mut [f32]) {
    use crate::quants::two_bit_runs;
    match dtype {
        Dtype::Q2K => {
            // w = d (sc & 15) q - dmin (sc >> 4), q in [0, 3]
            let (sc, dd, dmin) = (&blk[..16], f16(&blk[80..]), f16(&blk[82..]));
            two_bit_runs(&blk[16..80], u, |_, _, q| q);
            for r in 0..16 {
                (d[r], m[r]) = (dd * (sc[r] & 0xF) as f32, -dmin * (sc[r] >> 4) as f32);
            }
        }
        Dtype::Q3K => {
            // w = d sc (q - 4 unless the high bit is set): u = q + 4 high, m = -4 d sc
            let (hm, sc, dd) = (&blk[..32], crate::quants::q3_scales(&blk[96..108]), f16(&blk[108..]));
            two_bit_runs(&blk[32..96], u, |run, l, q| q | (((hm[l % 32] >> (4 * (run / 8) + run / 2 % 4)) & 1) << 2));
            for r in 0..16 {
                d[r] = dd * sc[r] as f32;
                m[r] = -4.0 * d[r];
            }
        }
        _ => {
            // Q6_K: w = d sc (q - 32), q in [0, 63]
            let dd = f16(&blk[208..210]);
            for h in 0..2 {
                let ql: &[u8; 64] = blk[64 * h..64 * h + 64].try_into().expect("64 bytes");
                let qh: &[u8; 32] = blk[128 + 32 * h..128 + 32 * h + 32].try_into().expect("32 bytes");
                let u: &mut [u8; 128] = (&mut u[128 * h..128 * h + 128]).try_into().expect("128 values");
                for l in 0..32 {
                    let (a, b, c) = (ql[l], ql[l + 32], qh[l]);
                    u[l] = (a & 0xF) | ((c & 3) << 4);
                    u[l + 32] = (b & 0xF) | (((c >> 2) & 3) << 4);
                    u[l + 64] = (a >> 4) | (((c >> 4) & 3) << 4);
                    u[l + 96] = (b >> 4) | (((c >> 6) & 3) << 4);
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
    /// Unpacks rows r0.. r0 + 16 of w: each row into `stage` ([16][cols], row-major), then
    /// interleaved; rd, rm hold one row's scales and offsets.
    fn fill(&mut self, w: &Weight, r0: usize, stage: &mut Vec<u8>, rd: &mut [f32], rm: &mut [f32]) {
        let (cols, ns) = (w.cols, rd.len());
        self.u.resize(cols * ROWS, 0);
        self.d.resize(ns * ROWS, 0.0);
        self.m.resize(ns * ROWS, 0.0);
        stage.resize(cols * ROWS, 0);
        for (r, row) in stage.chunks_exact_mut(cols).enumerate() {
            if r0 + r < w.rows {
                unpack_row(w.dtype, w.row_data(r0 + r), row, rd, rm);
            } else {
                row.fill(0);
                rd.fill(0.0);
                rm.fill(0.0);
            }
            for k in 0..ns {
                (self.d[k * ROWS + r], self.m[k * ROWS + r]) = (rd[k], rm[k]);
            }
        }
        interleave(stage, cols, &mut self.u);
    }
}

/// u[g][r][0..4] = stage[r][4 g..4 g + 4] for the 16 rows: one gather of 16 groups of 4 bytes
/// (a 32-bit lane each) per group.
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f", target_feature = "avx512vnni"))]
fn interleave(stage: &[u8], cols: usize, u: &mut [u8]) {
    use std::arch::x86_64::*;
    assert!(stage.len() >= ROWS * cols && u.len() >= ROWS * cols && ROWS * cols < i32::MAX as usize);
    // SAFETY: the features are built in; lane r reads stage[r cols + 4 g .. + 4] and the store
    // writes u[64 g .. + 64], inside the slices for g < cols / 4 (checked above).
    unsafe {
        let at = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(cols as i32),
        );
        for g in 0..cols / 4 {
            let v = _mm512_i32gather_epi32::<1>(at, stage.as_ptr().add(4 * g) as *const _);
            _mm512_storeu_si512(u.as_mut_ptr().add(64 * g) as *mut _, v);
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f", target_feature = "avx512vnni")))]
fn interleave(stage: &[u8], cols: usize, u: &mut [u8]) {
    for (g, dst) in u.chunks_exact_mut(4 * ROWS).enumerate() {
        for (r, d) in dst.chunks_exact_mut(4).enumerate() {
            d.copy_from_slice(&stage[r * cols + 4 * g..r * cols + 4 * g + 4]);
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
        || (Panel { u: vec![], d: vec![], m: vec![] }, vec![], vec![0.0; ns], vec![0.0; ns]),
        |(panel, stage, rd, rm), (p, tp)| {
            panel.fill(w, p * ROWS, stage, rd, rm);
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
#[cfg_attr(
    not(all(target_arch = "x86_64", target_feature = "avx512f", target_feature = "avx512vnni")),
    allow(dead_code)
)]
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
