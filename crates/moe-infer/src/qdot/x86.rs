//! The 256-bit kernels (AVX2, FMA): one block of 32 int8 products at a time, |w| times
//! x * sign(w) (or unsigned w times x) summed to 8 int32 lanes (`vpmaddubsw` + `vpmaddwd` as
//! llama.cpp's AVX2 path, or one `vpdpbusd` where AVX-512 VNNI is there), scaled by dw * dx
//! into f32 lanes. The formats of blocks of 32 take N activation rows per pass (each weight
//! block loaded and unpacked once for all of them); the super-block formats are in
//! `superblock`, on the helpers here. Where AVX-512 VNNI is there, `vnni` runs Q8_0 and Q4_0
//! in pairs of blocks and uses these for odd tails.

use super::Q8Row;
use std::arch::x86_64::*;

/// 8 partial i32 sums of w[j] * x[j] for 32 int8 pairs (x in [-127, 127]).
#[inline(always)]
pub(super) fn block(w: __m256i, x: __m256i) -> __m256i {
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
pub(super) fn ublock(w: __m256i, x: __m256i) -> __m256i {
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
pub(super) fn f16x8(b: &[u8]) -> __m256 {
    // SAFETY: F16C comes with the AVX2 machines this module is built for (x86-64-v3 and later).
    unsafe { _mm256_cvtph_ps(_mm_set1_epi16(u16::from_le_bytes([b[0], b[1]]) as i16)) }
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
    let nb = row.len() / blk_bytes;
    if nb == 0 {
        // an empty tail (the pair kernels' rows of an even block count): nothing to check or ask
        return [0.0; N];
    }
    let ahead = super::prefetch_distance();
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
pub(super) fn iq4_levels() -> __m256i {
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
