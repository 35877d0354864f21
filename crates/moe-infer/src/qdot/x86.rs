//! The 256-bit kernels (AVX2, FMA): one block of 32 int8 products at a time, |w| times
//! x * sign(w) (or unsigned w times x) summed to 8 int32 lanes (`vpmaddubsw` + `vpmaddwd` as
//! llama.cpp's AVX2 path, or one `vpdpbusd` where AVX-512 VNNI is there), scaled by dw * dx
//! into f32 lanes. Q8_0 and Q4_0 take N activation rows per pass (each weight block loaded and
//! unpacked once for all of them); Q6_K one row. Where AVX-512 VNNI is there, `vnni` runs Q8_0 and Q4_0 in pairs of
//! blocks and uses these for odd tails.

use super::Q8Row;
use std::arch::x86_64::*;

/// 8 partial i32 sums of w[j] * x[j] for 32 int8 pairs (x in [-127, 127]).
#[inline(always)]
fn block(w: __m256i, x: __m256i) -> __m256i {
    // SAFETY (of every intrinsic in this file): the cfg that includes this module guarantees
    // AVX2 and FMA (and AVX-512 VNNI + VL for vpdpbusd).
    unsafe {
        let (aw, sx) = (_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
        #[cfg(all(target_feature = "avx512vnni", target_feature = "avx512vl"))]
        return _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, sx);
        // |w| <= 128 and |x| <= 127: a pair sums to at most 32512, no i16 saturation
        #[cfg(not(all(target_feature = "avx512vnni", target_feature = "avx512vl")))]
        _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), _mm256_set1_epi16(1))
    }
}

/// 8 partial i32 sums of w[j] * x[j] for 32 pairs of unsigned w (at most 31: Q4_K, Q5_K, the
/// offset formats) and x in [-127, 127]: one `vpdpbusd` where AVX-512 VNNI is there, else
/// `vpmaddubsw` (no i16 saturation: a pair sums to at most 2 x 31 x 127) + `vpmaddwd`.
#[inline(always)]
fn ublock(w: __m256i, x: __m256i) -> __m256i {
    unsafe {
        #[cfg(all(target_feature = "avx512vnni", target_feature = "avx512vl"))]
        return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x);
        #[cfg(not(all(target_feature = "avx512vnni", target_feature = "avx512vl")))]
        _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
    }
}

/// The f16 at b[0..2], in all eight lanes. A scalar conversion compiled to `vpinsrw` into
/// whatever register was free, often the accumulator, so each block's scale waited for the
/// previous block's sum: a serial chain of about 16 cycles per block (measured: 7 against 17
/// GB/s on one thread for Q8_0). Broadcasting the half first (`vpbroadcastw`) writes a whole
/// register and depends on nothing.
#[inline(always)]
fn f16x8(b: &[u8]) -> __m256 {
    // SAFETY: F16C comes with the AVX2 machines this module is built for (x86-64-v3 and later).
    unsafe { _mm256_cvtph_ps(_mm_set1_epi16(u16::from_le_bytes([b[0], b[1]]) as i16)) }
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

/// Asks for `lines` cache lines from `ahead` bytes past p; nothing when ahead is 0 (see
/// `qdot::prefetch_distance`).
#[inline(always)]
pub(crate) fn ask_ahead(p: *const u8, ahead: usize, lines: usize) {
    if ahead != 0 {
        for l in 0..lines {
            // SAFETY: a prefetch never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead + 64 * l) as *const i8) };
        }
    }
}

#[inline(always)]
pub(super) fn hsum(v: __m256) -> f32 {
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_hadd_ps(s, s);
        _mm_cvtss_f32(_mm_hadd_ps(s, s))
    }
}

/// sum over blocks of dw * dx * sum_j w_j x_j for N activation rows; `load(p)` gives the 32
/// weights of the block whose scale is at p: signed (Q8_0, IQ4_NL), or unsigned q with an offset
/// per block, value = d q + m, the offset term m dx times the activations' block sum: with
/// `STORED_M` the f16 m after d (Q4_1, Q5_1), else m = -SHIFT d (Q4_0: 8, Q5_0: 16). Unsigned
/// weights take one `vpmaddubsw` without the sign trick (q <= 31, |x| <= 127: exact).
#[inline(always)]
pub(super) fn rows<const N: usize, const STORED_M: bool, const SHIFT: i32>(
    blk_bytes: usize,
    row: &[u8],
    x: [Q8Row; N],
    load: impl Fn(*const u8) -> __m256i,
) -> [f32; N] {
    let ahead = super::prefetch_distance();
    let nb = row.len() / blk_bytes;
    for r in &x {
        // the activation loads below are unchecked
        assert!(r.xq.len() >= 32 * nb && r.xd.len() >= nb && r.xs.len() >= nb, "row and activations differ");
    }
    // SAFETY: block b's bytes lie in row (nb whole blocks), its activations in xq (checked).
    unsafe {
        let mut acc = [_mm256_setzero_ps(); N];
        // the offset terms m dx (block sum), the same in every lane (whole-register operations
        // only, so no conversion waits on a register it does not need)
        let mut mins = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            let p = row.as_ptr().add(blk_bytes * b);
            // the row (and the next ones, contiguous) streams from memory: ask ahead
            ask_ahead(p, ahead, 1);
            let (w, d) = (load(p), f16x8(std::slice::from_raw_parts(p, 2)));
            for ((a, mn), r) in acc.iter_mut().zip(&mut mins).zip(&x) {
                let xv = _mm256_loadu_si256(r.xq.as_ptr().add(32 * b) as *const __m256i);
                let unsigned = STORED_M || SHIFT != 0;
                let s = if unsigned { ublock(w, xv) } else { block(w, xv) };
                *a = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(r.xd[b])), _mm256_cvtepi32_ps(s), *a);
                if unsigned {
                    let m = if STORED_M {
                        f16x8(std::slice::from_raw_parts(p.add(2), 2))
                    } else {
                        _mm256_mul_ps(d, _mm256_set1_ps(-SHIFT as f32))
                    };
                    let sum = _mm256_cvtepi32_ps(_mm256_set1_epi32(r.xs[b]));
                    *mn = _mm256_fmadd_ps(_mm256_mul_ps(m, _mm256_set1_ps(r.xd[b])), sum, *mn);
                }
            }
        }
        std::array::from_fn(|k| hsum(acc[k]) + _mm256_cvtss_f32(mins[k]))
    }
}

/// Q8_0's 32 weights after the scale at p.
#[inline(always)]
pub(super) fn load_q8_0(p: *const u8) -> __m256i {
    // SAFETY: the caller passes the start of a 34-byte block.
    unsafe { _mm256_loadu_si256(p.add(2) as *const __m256i) }
}

/// The 32 nibbles after byte `at` of the block at p, low nibbles as values 0-15, high ones as
/// 16-31 (unsigned; Q4_0's q before its shift by 8).
#[inline(always)]
pub(super) fn nibbles(p: *const u8, at: usize) -> __m256i {
    // SAFETY: the caller passes a block that holds 16 nibble bytes at `at`.
    unsafe {
        let bytes = _mm_loadu_si128(p.add(at) as *const __m128i);
        let m = _mm_set1_epi8(15);
        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), m), _mm_and_si128(bytes, m))
    }
}

/// 16 at byte j where bit j of the u32 at p is set (a Q5 block's fifth bits).
#[inline(always)]
fn fifth_bits(p: *const u8) -> __m256i {
    // SAFETY: the caller passes 4 readable bytes.
    unsafe {
        let bits = std::ptr::read_unaligned(p as *const i32);
        // byte j of the vector holds byte j / 8 of the bits; keep bit j % 8 of it
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits),
            _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
        );
        let select = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
        _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select), _mm256_set1_epi8(16))
    }
}

/// Q5_0's 32 unsigned weights q (the value is q - 16): nibbles after the u32 of fifth bits.
#[inline(always)]
fn load_q5_0(p: *const u8) -> __m256i {
    // SAFETY: the caller passes the start of a 22-byte block.
    unsafe { _mm256_or_si256(nibbles(p, 6), fifth_bits(p.add(2))) }
}

/// IQ4_NL's 32 weights: each nibble looked up in the 16 levels.
#[inline(always)]
pub(super) fn load_iq4_nl(p: *const u8) -> __m256i {
    // SAFETY: the caller passes the start of an 18-byte block.
    unsafe { _mm256_shuffle_epi8(iq4_levels(), nibbles(p, 2)) }
}

#[inline(always)]
fn iq4_levels() -> __m256i {
    let l = crate::quants::IQ4;
    // SAFETY: a plain register constant (AVX2, as the whole module).
    unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(l.as_ptr() as *const __m128i)) }
}

/// Q4_1 (20-byte blocks: d, m, nibbles) and Q5_1 (24: d, m, fifth bits, nibbles): unsigned
/// values plus an offset m, so sum (d q + m) x = d dx sum q qx + m dx (the block sum).
pub fn dot_q4_1_n<const N: usize>(row: &[u8], x: [Q8Row; N]) -> [f32; N] {
    rows::<N, true, 0>(20, row, x, |p| nibbles(p, 4))
}

pub fn dot_q5_1_n<const N: usize>(row: &[u8], x: [Q8Row; N]) -> [f32; N] {
    rows::<N, true, 0>(24, row, x, |p| {
        // SAFETY: the caller passes the start of a 24-byte block.
        unsafe { _mm256_or_si256(nibbles(p, 8), fifth_bits(p.add(4))) }
    })
}

pub fn dot_q5_0_n<const N: usize>(row: &[u8], x: [Q8Row; N]) -> [f32; N] {
    rows::<N, false, 16>(22, row, x, load_q5_0)
}

pub fn dot_iq4_nl_n<const N: usize>(row: &[u8], x: [Q8Row; N]) -> [f32; N] {
    rows::<N, false, 0>(18, row, x, load_iq4_nl)
}

pub fn dot_q8_0_n<const N: usize>(row: &[u8], x: [Q8Row; N]) -> [f32; N] {
    rows::<N, false, 0>(34, row, x, load_q8_0)
}

pub fn dot_q4_0_n<const N: usize>(row: &[u8], x: [Q8Row; N]) -> [f32; N] {
    rows::<N, false, 8>(18, row, x, |p| nibbles(p, 2))
}

pub fn dot_q6_k(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    let ahead = super::prefetch_distance();
    let nb = row.len() / 210;
    // The activation loads below are unchecked: a short activation row must stop here.
    assert!(xq.len() >= 256 * nb && xd.len() >= 8 * nb, "Q6_K row of {nb} super-blocks and activations differ");
    // SAFETY: every load reads 32 bytes inside a 210-byte super-block (chunks_exact), a
    // 32-value activation block of xq (at most 256 * nb values) or the super-block's 8 scales
    // of xd (at most 8 * nb; both checked above).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let (m4, m3, m32) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(3), _mm256_set1_epi8(32));
        for (b, blk) in row.chunks_exact(210).enumerate() {
            ask_ahead(blk.as_ptr(), ahead, 4);
            let d = f16x8(&blk[208..210]);
            let mut sums = [_mm256_setzero_si256(); 8];
            for h in 0..2 {
                let qh = _mm256_loadu_si256(blk.as_ptr().add(128 + 32 * h) as *const __m256i);
                for c in 0..4 {
                    let ql = _mm256_loadu_si256(blk.as_ptr().add(64 * h + 32 * (c % 2)) as *const __m256i);
                    let nib =
                        if c < 2 { _mm256_and_si256(ql, m4) } else { _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4) };
                    let hb = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c as i32)), m3);
                    let w = _mm256_sub_epi8(_mm256_or_si256(nib, _mm256_slli_epi16(hb, 4)), m32);
                    let x = _mm256_loadu_si256(xq.as_ptr().add(32 * (8 * b + 4 * h + c)) as *const __m256i);
                    sums[4 * h + c] = block(w, x);
                }
            }
            // the 8 activation blocks' sums times their 16 scales in one vector, times d dx
            // in one FMA
            let sc = _mm_loadu_si128(blk.as_ptr().add(192) as *const __m128i);
            let dx = _mm256_loadu_ps(xd.as_ptr().add(8 * b));
            acc = _mm256_fmadd_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(scaled_lane_sums(sums, sc)), acc);
        }
        hsum(acc)
    }
}

/// Q4_K or Q5_K (`five`): each sub-block of 32 unsigned values (nibbles, plus the fifth bit)
/// times its activation block in one `vpmaddubsw` (q >= 0 needs no sign trick); the 8
/// sub-blocks' sums gathered in one vector and scaled by d scale dx in one FMA; the mins leave
/// as dmin min dx times the block sums.
pub fn dot_q45_k(row: &[u8], x: Q8Row, five: bool) -> f32 {
    match five {
        true => q45_k::<true>(row, x),
        false => q45_k::<false>(row, x),
    }
}

fn q45_k<const FIVE: bool>(row: &[u8], x: Q8Row) -> f32 {
    let ahead = super::prefetch_distance();
    let bb = if FIVE { 176 } else { 144 };
    let nb = row.len() / bb;
    // the activation loads below are unchecked
    assert!(x.xq.len() >= 256 * nb && x.xd.len() >= 8 * nb && x.xs.len() >= 8 * nb, "row and activations differ");
    // SAFETY: every load reads 32 bytes inside a super-block (chunks_exact), an activation block
    // of xq, or 8 scales / block sums of the super-block's activation blocks (checked above).
    unsafe {
        let (m4, one) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(1));
        let (mut acc, mut mins) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for (b, blk) in row.chunks_exact(bb).enumerate() {
            ask_ahead(blk.as_ptr(), ahead, 3);
            // the 8 sub-blocks' multipliers in vectors: d scale_s dx_s for the sums, dmin min_s
            // dx_s xs_s for the mins
            let (sc, m) = crate::quants::scales_mins(&blk[4..16]);
            let cvt = |v: [u8; 8]| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(i64::from_le_bytes(v))));
            let dx = _mm256_loadu_ps(x.xd.as_ptr().add(8 * b));
            let mult = _mm256_mul_ps(_mm256_mul_ps(f16x8(blk), cvt(sc)), dx);
            let xs = _mm256_cvtepi32_ps(_mm256_loadu_si256(x.xs.as_ptr().add(8 * b) as *const __m256i));
            mins = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(f16x8(&blk[2..]), cvt(m)), dx), xs, mins);
            let qs = blk.as_ptr().add(if FIVE { 48 } else { 16 });
            let high =
                if FIVE { _mm256_loadu_si256(blk.as_ptr().add(16) as *const __m256i) } else { _mm256_setzero_si256() };
            let mut isum = [_mm256_setzero_si256(); 8];
            for g in 0..4 {
                let q = _mm256_loadu_si256(qs.add(32 * g) as *const __m256i);
                for h in 0..2 {
                    let s = 2 * g + h;
                    let mut w =
                        if h == 0 { _mm256_and_si256(q, m4) } else { _mm256_and_si256(_mm256_srli_epi16(q, 4), m4) };
                    if FIVE {
                        let fifth = _mm256_and_si256(_mm256_srl_epi16(high, _mm_cvtsi32_si128(s as i32)), one);
                        w = _mm256_or_si256(w, _mm256_slli_epi16(fifth, 4));
                    }
                    let xv = _mm256_loadu_si256(x.xq.as_ptr().add(32 * (8 * b + s)) as *const __m256i);
                    isum[s] = ublock(w, xv);
                }
            }
            // the 8 sub-blocks' sums into the 8 lanes of one vector, then one FMA with their
            // multipliers (no chain of 8 FMAs on the accumulator, no lane permute per sub-block)
            acc = _mm256_fmadd_ps(mult, _mm256_cvtepi32_ps(lane_sums(isum)), acc);
        }
        hsum(acc) - hsum(mins)
    }
}

/// Q3_K: per activation block of 32, the 2-bit values minus 4 where the high bit is clear
/// (signed, in [-4, 3]) in one block product; lanes 0-3 hold values 0-15 and 4-7 values
/// 16-31, scaled by their two 6-bit scales in integers; the 8 blocks' sums gathered in one
/// vector and scaled by d dx in one FMA per super-block (as Q6_K: no chain of 8 FMAs).
pub fn dot_q3_k(row: &[u8], x: Q8Row) -> f32 {
    let ahead = super::prefetch_distance();
    let nb = row.len() / 110;
    // the activation loads below are unchecked
    assert!(x.xq.len() >= 256 * nb && x.xd.len() >= 8 * nb, "row and activations differ");
    // SAFETY: every load reads 32 bytes inside a 110-byte super-block (chunks_exact), an
    // activation block of xq or the super-block's 8 scales of xd (checked above).
    unsafe {
        let (m3, one) = (_mm256_set1_epi8(3), _mm256_set1_epi8(1));
        let mut acc = _mm256_setzero_ps();
        for (b, blk) in row.chunks_exact(110).enumerate() {
            ask_ahead(blk.as_ptr(), ahead, 2);
            let (sc, d) = (q3_scales(blk.as_ptr().add(96)), f16x8(&blk[108..]));
            let hm = _mm256_loadu_si256(blk.as_ptr() as *const __m256i);
            let mut sums = [_mm256_setzero_si256(); 8];
            for h in 0..2 {
                let q = _mm256_loadu_si256(blk.as_ptr().add(32 + 32 * h) as *const __m256i);
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
            acc = _mm256_fmadd_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(scaled_lane_sums(sums, sc)), acc);
        }
        hsum(acc)
    }
}

/// IQ4_XS: per sub-block of 32, the nibbles' levels (pshufb) in one block product; the 8
/// sub-blocks' sums gathered in one vector and scaled by d (scale - 32) dx in one FMA.
pub fn dot_iq4_xs(row: &[u8], x: Q8Row) -> f32 {
    let ahead = super::prefetch_distance();
    let nb = row.len() / 136;
    // the activation loads below are unchecked
    assert!(x.xq.len() >= 256 * nb && x.xd.len() >= 8 * nb, "row and activations differ");
    // SAFETY: every load reads 16 nibble bytes inside a 136-byte super-block (chunks_exact), an
    // activation block of xq or the super-block's 8 scales of xd (checked above).
    unsafe {
        let levels = iq4_levels();
        let mut acc = _mm256_setzero_ps();
        for (b, blk) in row.chunks_exact(136).enumerate() {
            ask_ahead(blk.as_ptr(), ahead, 2);
            let sums: [__m256i; 8] = std::array::from_fn(|ib| {
                let w = _mm256_shuffle_epi8(levels, nibbles(blk.as_ptr(), 8 + 16 * ib));
                block(w, _mm256_loadu_si256(x.xq.as_ptr().add(32 * (8 * b + ib)) as *const __m256i))
            });
            let mult = _mm256_mul_ps(
                _mm256_mul_ps(f16x8(blk), iq4_xs_scales(blk.as_ptr())),
                _mm256_loadu_ps(x.xd.as_ptr().add(8 * b)),
            );
            acc = _mm256_fmadd_ps(mult, _mm256_cvtepi32_ps(lane_sums(sums)), acc);
        }
        hsum(acc)
    }
}
