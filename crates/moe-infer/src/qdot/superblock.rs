//! The 256-bit kernels (AVX2, FMA) of the super-block formats (256 values per block: Q3_K,
//! Q4_K, Q5_K, Q6_K, IQ4_XS) against Q8_0 activations, a run of consecutive rows per call: the
//! checks, the prefetch distance and the dispatch are paid once per run rather than per row
//! (decode rows are short: 4 super-blocks at width 1024). Per super-block, the 8 activation
//! blocks' integer sums are gathered into the lanes of one vector, scaled (per 16 values in
//! integers for Q3_K and Q6_K) and multiplied by their float scales in one FMA.
//! SAFETY of every intrinsic here: the cfg that includes this module guarantees AVX2 and FMA.

use super::x86::{ask_ahead, block, f16x8, hsum, iq4_levels, nibbles, ublock};
use super::{Q8Row, Super};
use std::arch::x86_64::*;

/// out[r] = row r of `rows` (out.len() rows of equal length, whole super-blocks of `kind`)
/// dotted with x. Panics when the rows do not split so or x is shorter than a row.
pub fn dot_super_rows(kind: Super, rows: &[u8], x: Q8Row, out: &mut [f32]) {
    // SAFETY (of the block kernels): `each_row` passes p at a whole super-block of `rows` and
    // b below the super-blocks of a row, whose activations x holds (checked there).
    match kind {
        Super::Q3K => each_row(kind, rows, x, out, |p, b, x, acc| unsafe { q3_k(p, b, x, acc) }),
        Super::Q4K => each_row(kind, rows, x, out, |p, b, x, acc| unsafe { q45_k::<false>(p, b, x, acc) }),
        Super::Q5K => each_row(kind, rows, x, out, |p, b, x, acc| unsafe { q45_k::<true>(p, b, x, acc) }),
        Super::Q6K => each_row(kind, rows, x, out, |p, b, x, acc| unsafe { q6_k(p, b, x, acc) }),
        Super::IQ4XS => each_row(kind, rows, x, out, |p, b, x, acc| unsafe { iq4_xs(p, b, x, acc) }),
    }
}

/// Runs `sb(p, b, x, acc)` over the super-blocks b of each row (p their start), the row's
/// sum into out.
#[inline(always)]
fn each_row(
    kind: Super,
    rows: &[u8],
    x: Q8Row,
    out: &mut [f32],
    sb: impl Fn(*const u8, usize, &Q8Row, __m256) -> __m256,
) {
    let (bb, rb) = (kind.bytes(), super::run_row_bytes(kind, rows.len(), out.len()));
    let nb = rb / bb;
    // the activation loads of the kernels are unchecked: a short activation row must stop here
    let xs_needed = if matches!(kind, Super::Q4K | Super::Q5K) { 8 * nb } else { 0 };
    assert!(
        x.xq.len() >= 256 * nb && x.xd.len() >= 8 * nb && x.xs.len() >= xs_needed,
        "a {kind:?} row of {nb} super-blocks and its activations differ"
    );
    let (ahead, lines) = (super::prefetch_distance(), bb.div_ceil(64));
    for (r, o) in out.iter_mut().enumerate() {
        // SAFETY: an f32 vector of zeros.
        let mut acc = unsafe { _mm256_setzero_ps() };
        for b in 0..nb {
            let p = rows[r * rb + b * bb..].as_ptr();
            // the row (and the next ones, contiguous) streams from memory: ask ahead
            ask_ahead(p, ahead, lines);
            acc = sb(p, b, &x, acc);
        }
        *o = hsum(acc);
    }
}

/// Q6_K (210 bytes: low nibbles, high 2-bit pairs, 16 int8 scales, f16 d): per activation
/// block of 32, the 6-bit values minus 32 in one signed block product; the two halves' sums
/// times their scales in integers, then d dx in one FMA for the super-block.
#[inline(always)]
unsafe fn q6_k(p: *const u8, b: usize, x: &Q8Row, acc: __m256) -> __m256 {
    let (m4, m3, m32) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(3), _mm256_set1_epi8(32));
    let mut sums = [_mm256_setzero_si256(); 8];
    for h in 0..2 {
        let qh = _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i);
        for c in 0..4 {
            let ql = _mm256_loadu_si256(p.add(64 * h + 32 * (c % 2)) as *const __m256i);
            let nib = if c < 2 { _mm256_and_si256(ql, m4) } else { _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4) };
            let hb = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c as i32)), m3);
            let w = _mm256_sub_epi8(_mm256_or_si256(nib, _mm256_slli_epi16(hb, 4)), m32);
            let xv = _mm256_loadu_si256(x.xq.as_ptr().add(32 * (8 * b + 4 * h + c)) as *const __m256i);
            sums[4 * h + c] = block(w, xv);
        }
    }
    let sc = _mm_loadu_si128(p.add(192) as *const __m128i);
    let d = f16x8(std::slice::from_raw_parts(p.add(208), 2));
    let dx = _mm256_loadu_ps(x.xd.as_ptr().add(8 * b));
    _mm256_fmadd_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(scaled_lane_sums(sums, sc)), acc)
}

/// Q4_K (144 bytes: d, dmin, 12 bytes of 6-bit scales and mins, nibbles) or Q5_K (176: the
/// fifth bits before the nibbles): each sub-block of 32 unsigned values times its activation
/// block in one product (q >= 0 needs no sign trick); the 8 sums scaled by d scale dx in one
/// FMA, and the mins leave as dmin min dx times the activations' block sums in another.
#[inline(always)]
unsafe fn q45_k<const FIVE: bool>(p: *const u8, b: usize, x: &Q8Row, acc: __m256) -> __m256 {
    let (m4, one) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(1));
    let (sc, m) = crate::quants::scales_mins(std::slice::from_raw_parts(p.add(4), 12));
    let cvt = |v: [u8; 8]| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(i64::from_le_bytes(v))));
    let dx = _mm256_loadu_ps(x.xd.as_ptr().add(8 * b));
    let mult = _mm256_mul_ps(_mm256_mul_ps(f16x8(std::slice::from_raw_parts(p, 2)), cvt(sc)), dx);
    let min_mult = _mm256_mul_ps(_mm256_mul_ps(f16x8(std::slice::from_raw_parts(p.add(2), 2)), cvt(m)), dx);
    let xs = _mm256_cvtepi32_ps(_mm256_loadu_si256(x.xs.as_ptr().add(8 * b) as *const __m256i));
    let qs = p.add(if FIVE { 48 } else { 16 });
    let high = if FIVE { _mm256_loadu_si256(p.add(16) as *const __m256i) } else { _mm256_setzero_si256() };
    let mut isum = [_mm256_setzero_si256(); 8];
    for g in 0..4 {
        let q = _mm256_loadu_si256(qs.add(32 * g) as *const __m256i);
        for h in 0..2 {
            let s = 2 * g + h;
            let mut w = if h == 0 { _mm256_and_si256(q, m4) } else { _mm256_and_si256(_mm256_srli_epi16(q, 4), m4) };
            if FIVE {
                let fifth = _mm256_and_si256(_mm256_srl_epi16(high, _mm_cvtsi32_si128(s as i32)), one);
                w = _mm256_or_si256(w, _mm256_slli_epi16(fifth, 4));
            }
            let xv = _mm256_loadu_si256(x.xq.as_ptr().add(32 * (8 * b + s)) as *const __m256i);
            isum[s] = ublock(w, xv);
        }
    }
    let acc = _mm256_fnmadd_ps(min_mult, xs, acc);
    _mm256_fmadd_ps(mult, _mm256_cvtepi32_ps(lane_sums(isum)), acc)
}

/// Q3_K (110 bytes: high-bit mask, 2-bit values, 12 bytes of scales, f16 d): per activation
/// block, the 2-bit values minus 4 where the high bit is clear (signed, in [-4, 3]) in one
/// block product; the halves' sums times their 6-bit scales in integers, then d dx in one FMA.
#[inline(always)]
unsafe fn q3_k(p: *const u8, b: usize, x: &Q8Row, acc: __m256) -> __m256 {
    let (m3, one) = (_mm256_set1_epi8(3), _mm256_set1_epi8(1));
    let (sc, d) = (q3_scales(p.add(96)), f16x8(std::slice::from_raw_parts(p.add(108), 2)));
    let hm = _mm256_loadu_si256(p as *const __m256i);
    let mut sums = [_mm256_setzero_si256(); 8];
    for h in 0..2 {
        let q = _mm256_loadu_si256(p.add(32 + 32 * h) as *const __m256i);
        for j in 0..4 {
            let q2 = _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * j as i32)), m3);
            let hb = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128((4 * h + j) as i32)), one);
            let w = _mm256_sub_epi8(q2, _mm256_slli_epi16(_mm256_xor_si256(hb, one), 2));
            let c = 4 * h + j;
            let xv = _mm256_loadu_si256(x.xq.as_ptr().add(32 * (8 * b + c)) as *const __m256i);
            sums[c] = block(w, xv);
        }
    }
    let dx = _mm256_loadu_ps(x.xd.as_ptr().add(8 * b));
    _mm256_fmadd_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(scaled_lane_sums(sums, sc)), acc)
}

/// IQ4_XS (136 bytes: d, scales, nibbles): per sub-block of 32, the nibbles' levels (pshufb) in
/// one block product; the 8 sums scaled by d (scale - 32) dx in one FMA.
#[inline(always)]
unsafe fn iq4_xs(p: *const u8, b: usize, x: &Q8Row, acc: __m256) -> __m256 {
    let levels = iq4_levels();
    let sums: [__m256i; 8] = std::array::from_fn(|ib| {
        let w = _mm256_shuffle_epi8(levels, nibbles(p, 8 + 16 * ib));
        block(w, _mm256_loadu_si256(x.xq.as_ptr().add(32 * (8 * b + ib)) as *const __m256i))
    });
    let d = f16x8(std::slice::from_raw_parts(p, 2));
    let mult = _mm256_mul_ps(_mm256_mul_ps(d, iq4_xs_scales(p)), _mm256_loadu_ps(x.xd.as_ptr().add(8 * b)));
    _mm256_fmadd_ps(mult, _mm256_cvtepi32_ps(lane_sums(sums)), acc)
}

/// Lane s of the result: the sum of the 8 lanes of v[s].
#[inline(always)]
fn lane_sums(v: [__m256i; 8]) -> __m256i {
    let (ab, cd) = half_sums(v);
    // SAFETY: as every intrinsic in this file.
    unsafe { _mm256_add_epi32(_mm256_permute2x128_si256::<0x20>(ab, cd), _mm256_permute2x128_si256::<0x31>(ab, cd)) }
}

/// The sums of lanes 0-3 and of lanes 4-7 of each v[s] (a block's values 0-15 and 16-31):
/// ([s0 h0, s1 h0, s2 h0, s3 h0 | s0 h1, s1 h1, s2 h1, s3 h1], the same for s = 4-7).
#[inline(always)]
fn half_sums(v: [__m256i; 8]) -> (__m256i, __m256i) {
    unsafe {
        // pairwise: [v0 v1 v0 v1 | v0 v1 v0 v1]-style partial sums
        let (a, b) = (_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        let (c, d) = (_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
        (_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d))
    }
}

/// Lane s of the result: sum over the two halves h of v[s] (lanes 0-3, 4-7) of the half's sum
/// times the int8 scale 2 s + h of `scales` (Q3_K, Q6_K: a scale per 16 values).
#[inline(always)]
fn scaled_lane_sums(v: [__m256i; 8], scales: __m128i) -> __m256i {
    let (ab, cd) = half_sums(v);
    unsafe {
        // the scales in the order of half_sums' lanes: 0 2 4 6 1 3 5 7 | 8 10 12 14 9 11 13 15
        let order = _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
        let s = _mm_shuffle_epi8(scales, order);
        let ab = _mm256_mullo_epi32(ab, _mm256_cvtepi8_epi32(s));
        let cd = _mm256_mullo_epi32(cd, _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(s)));
        _mm256_add_epi32(_mm256_permute2x128_si256::<0x20>(ab, cd), _mm256_permute2x128_si256::<0x31>(ab, cd))
    }
}

/// Q3_K's 16 scales (6 bits, minus 32) from the 12 packed bytes at p, as `quants::q3_scales`:
/// low nibbles from bytes 0-7 (scales 0-7: low halves, 8-15: high halves), the top two bits
/// of scale i at bit 2 (i / 4) of byte 8 + i % 4.
#[inline(always)]
fn q3_scales(p: *const u8) -> __m128i {
    // SAFETY: the caller passes 12 readable bytes.
    unsafe {
        let (lo8, m) = (_mm_loadl_epi64(p as *const __m128i), _mm_set1_epi8(0xF));
        let low = _mm_unpacklo_epi64(_mm_and_si128(lo8, m), _mm_and_si128(_mm_srli_epi16(lo8, 4), m));
        // lane g of h >> 2g holds, in the low two bits of its byte k, those of scale 4 g + k
        let h = _mm_set1_epi32(std::ptr::read_unaligned(p.add(8) as *const i32));
        let high = _mm_and_si128(_mm_srlv_epi32(h, _mm_setr_epi32(0, 2, 4, 6)), _mm_set1_epi8(3));
        _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi16(high, 4)), _mm_set1_epi8(32))
    }
}

/// IQ4_XS's 8 sub-block scales (6 bits, minus 32) of the super-block at p as f32 lanes, as
/// `quants::iq4_xs_scale`: low nibbles from bytes 4-7, top two bits from the u16 at 2.
#[inline(always)]
fn iq4_xs_scales(p: *const u8) -> __m256 {
    // SAFETY: the caller passes the start of a 136-byte super-block.
    unsafe {
        let lo = _mm256_set1_epi32(std::ptr::read_unaligned(p.add(4) as *const i32));
        let lo = _mm256_and_si256(
            _mm256_srlv_epi32(lo, _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
            _mm256_set1_epi32(15),
        );
        let hi = _mm256_set1_epi32(u16::from_le_bytes([*p.add(2), *p.add(3)]) as i32);
        let hi =
            _mm256_and_si256(_mm256_srlv_epi32(hi, _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)), _mm256_set1_epi32(3));
        let ls = _mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)), _mm256_set1_epi32(32));
        _mm256_cvtepi32_ps(ls)
    }
}
