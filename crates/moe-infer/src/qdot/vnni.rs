//! The 512-bit kernels (AVX-512 VNNI): Q8_0 and Q4_0 take two blocks per `vpdpbusd` on
//! unsigned weights (Q8_0: w + 128; Q4_0: the raw nibbles) whose offset is removed through the
//! activations' block sums, for N activation rows per pass; an odd last block runs through the
//! 256-bit kernel of `x86`. The `_lanes` twins read activations laid out by `lanes` (the same
//! sums in the same order, so the same results bit for bit, with less work per row).

use super::lanes::{LaneKind, Lanes};
use super::x86::ask_ahead;
use super::x86::{load_q8_0, nibbles, rows};
use super::Q8Row;
use std::arch::x86_64::*;

/// Pairs of blocks (b, b+1) in one 512-bit `vpdpbusd` each, for N activation rows at once
/// (the pair's weights are loaded and its scales converted once for all of them): `load`
/// gives the pair's weights as unsigned bytes (w + bias_w) in the lane order of `x_order`
/// applied to the activations, `idx` maps each int32 lane to its block (0: b, 1: b+1). Every
/// lane starts from -(bias_w * 32 / 8) x (sum of its block's x), so a block's 8 lanes sum to
/// sum w x; one FMA with d * dx spread over the lanes. Returns the N sums and the number of
/// blocks done (even).
///
/// # Safety
/// The features of this module; `load(p)` reads only inside the two blocks at p; row and
/// every activation row hold xd.len() blocks.
#[inline(always)]
unsafe fn pairs<const X_ORDER: i32, const N: usize>(
    blk_bytes: usize,
    row: &[u8],
    x: [Q8Row; N],
    idx: __m512i,
    lane_bias: i32,
    load: impl Fn(*const u8) -> __m512i,
) -> ([f32; N], usize) {
    let ahead = super::prefetch_distance();
    let nb = x[0].xd.len();
    for r in &x {
        assert!(
            row.len() >= blk_bytes * nb && r.xq.len() >= 32 * nb && r.xd.len() >= nb && r.xs.len() >= nb,
            "row and activations differ"
        );
    }
    let bias = _mm512_set1_epi32(lane_bias);
    let mut acc = [_mm512_setzero_ps(); N];
    let mut b = 0;
    while b + 2 <= nb {
        let p = row.as_ptr().add(blk_bytes * b);
        // the row (and the next ones, contiguous) streams from memory: ask ahead
        ask_ahead(p, ahead, 1);
        let w = load(p);
        let d = pair_scales(p, blk_bytes);
        for (a, r) in acc.iter_mut().zip(&x) {
            let xv = _mm512_loadu_si512(r.xq.as_ptr().add(32 * b) as *const _);
            let xv = _mm512_shuffle_i64x2::<X_ORDER>(xv, xv);
            let sums = _mm512_castsi128_si512(_mm_loadl_epi64(r.xs.as_ptr().add(b) as *const __m128i));
            let init = _mm512_mullo_epi32(_mm512_permutexvar_epi32(idx, sums), bias);
            let prod = _mm512_dpbusd_epi32(init, w, xv);
            let dx = _mm_castsi128_ps(_mm_loadl_epi64(r.xd.as_ptr().add(b) as *const __m128i));
            let sv = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_mul_ps(d, dx)));
            *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(prod), sv, *a);
        }
        b += 2;
    }
    (acc.map(|a| _mm512_reduce_add_ps(a)), b)
}

/// Q8_0: the pair's 64 weight bytes as w + 128 (unsigned), so sum (w + 128) x - 128 sum x.
pub fn dot_q8_0_n<const N: usize>(row: &[u8], x: [Q8Row; N]) -> [f32; N] {
    // SAFETY: the loads read the 32 value bytes after each block's scale (34-byte blocks);
    // the cfg that includes this module guarantees the features.
    let (mut total, b) = unsafe {
        let idx = lane_idx(LaneKind::Q8_0);
        let flip = _mm512_set1_epi8(-128);
        pairs::<0b11_10_01_00, N>(34, row, x, idx, -16, |p| pair_q8_0(p, flip))
    };
    let tail = rows::<N, false, 0>(34, &row[34 * b..], x.map(|r| r.skip(b)), load_q8_0);
    total.iter_mut().zip(tail).for_each(|(t, v)| *t += v);
    total
}

/// Q4_0: the unsigned nibbles of the pair as [lo_b, lo_b+1, hi_b, hi_b+1] against x in the
/// same order, so sum q x - 8 sum x = sum (q - 8) x.
pub fn dot_q4_0_n<const N: usize>(row: &[u8], x: [Q8Row; N]) -> [f32; N] {
    // SAFETY: the loads read the 16 nibble bytes after each block's scale (18-byte blocks);
    // the cfg that includes this module guarantees the features.
    let (mut total, b) = unsafe {
        let m = _mm256_set1_epi8(15);
        pairs::<0b11_01_10_00, N>(18, row, x, lane_idx(LaneKind::Q4_0), -1, |p| pair_q4_0(p, m))
    };
    let tail = rows::<N, false, 8>(18, &row[18 * b..], x.map(|r| r.skip(b)), |p| nibbles(p, 2));
    total.iter_mut().zip(tail).for_each(|(t, v)| *t += v);
    total
}

/// The f16 scales of the blocks at p and p + blk_bytes as the two low f32 lanes.
///
/// # Safety
/// The features of this module; p and p + blk_bytes start readable blocks.
#[inline(always)]
unsafe fn pair_scales(p: *const u8, blk_bytes: usize) -> __m128 {
    let (d0, d1) =
        (u16::from_le_bytes([*p, *p.add(1)]), u16::from_le_bytes([*p.add(blk_bytes), *p.add(blk_bytes + 1)]));
    _mm_cvtph_ps(_mm_cvtsi32_si128((d0 as u32 | (d1 as u32) << 16) as i32))
}

/// The pair at p of Q8_0 blocks as unsigned bytes w + 128 (`flip` = -128 in every byte).
///
/// # Safety
/// The features of this module; p starts two 34-byte blocks.
#[inline(always)]
unsafe fn pair_q8_0(p: *const u8, flip: __m512i) -> __m512i {
    let (w0, w1) = (_mm256_loadu_si256(p.add(2) as *const __m256i), _mm256_loadu_si256(p.add(36) as *const __m256i));
    _mm512_xor_si512(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(w0), w1), flip)
}

/// The pair at p of Q4_0 blocks as unsigned nibbles [lo_b, lo_b+1, hi_b, hi_b+1] (`m` = 15).
///
/// # Safety
/// The features of this module; p starts two 18-byte blocks.
#[inline(always)]
unsafe fn pair_q4_0(p: *const u8, m: __m256i) -> __m512i {
    let w0 = _mm_loadu_si128(p.add(2) as *const __m128i);
    let w1 = _mm_loadu_si128(p.add(20) as *const __m128i);
    let w = _mm256_set_m128i(w1, w0);
    let (lo, hi) = (_mm256_and_si256(w, m), _mm256_and_si256(_mm256_srli_epi16(w, 4), m));
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// The block (0 or 1) of each int32 lane of `kind`'s pair kernel, as a permutation index.
#[inline(always)]
fn lane_idx(kind: LaneKind) -> __m512i {
    let b = kind.lane_block().map(|v| v as i32);
    // SAFETY: the features of this module; 16 int32 values.
    unsafe { _mm512_loadu_si512(b.as_ptr() as *const _) }
}

/// [`pairs`] on activations laid out by `lanes`: per pair and row one `vpdpbusd` from the
/// row's starting lanes, one conversion, the weights' scales times the row's, one FMA.
///
/// # Safety
/// The features of this module; `load(p)` reads only inside the two blocks at p; every lanes
/// holds three chunks per pair and row holds two blocks per pair.
#[inline(always)]
unsafe fn pairs_lanes<const N: usize>(
    blk_bytes: usize,
    row: &[u8],
    x: [&Lanes; N],
    idx: __m512i,
    load: impl Fn(*const u8) -> __m512i,
) -> ([f32; N], usize) {
    let ahead = super::prefetch_distance();
    let pairs = x[0].v.len() / 3;
    for l in &x {
        assert!(l.v.len() == 3 * pairs && row.len() >= 2 * blk_bytes * pairs, "row and activations differ");
    }
    let mut acc = [_mm512_setzero_ps(); N];
    for p in 0..pairs {
        let at = row.as_ptr().add(2 * blk_bytes * p);
        ask_ahead(at, ahead, 1);
        let w = load(at);
        let d = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(pair_scales(at, blk_bytes)));
        for (a, l) in acc.iter_mut().zip(&x) {
            let c = l.v.as_ptr().add(3 * p) as *const __m512i;
            let prod =
                _mm512_dpbusd_epi32(_mm512_load_si512(c.add(1) as *const _), w, _mm512_load_si512(c as *const _));
            let s = _mm512_mul_ps(d, _mm512_load_ps(c.add(2) as *const f32));
            *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(prod), s, *a);
        }
    }
    (acc.map(|a| _mm512_reduce_add_ps(a)), 2 * pairs)
}

/// [`dot_q8_0_n`] on activations laid out for [`LaneKind::Q8_0`].
pub fn dot_q8_0_lanes<const N: usize>(row: &[u8], x: [&Lanes; N]) -> [f32; N] {
    assert!(x.iter().all(|l| l.kind == Some(LaneKind::Q8_0)), "activations laid out for another format");
    // SAFETY: as in dot_q8_0_n; pairs_lanes checks the layout's length.
    let (mut total, b) = unsafe {
        let flip = _mm512_set1_epi8(-128);
        pairs_lanes(34, row, x, lane_idx(LaneKind::Q8_0), |p| pair_q8_0(p, flip))
    };
    let tail = rows::<N, false, 0>(34, &row[34 * b..], x.map(|l| l.x.skip(b)), load_q8_0);
    total.iter_mut().zip(tail).for_each(|(t, v)| *t += v);
    total
}

/// [`dot_q4_0_n`] on activations laid out for [`LaneKind::Q4_0`].
pub fn dot_q4_0_lanes<const N: usize>(row: &[u8], x: [&Lanes; N]) -> [f32; N] {
    assert!(x.iter().all(|l| l.kind == Some(LaneKind::Q4_0)), "activations laid out for another format");
    // SAFETY: as in dot_q4_0_n; pairs_lanes checks the layout's length.
    let (mut total, b) = unsafe {
        let m = _mm256_set1_epi8(15);
        pairs_lanes(18, row, x, lane_idx(LaneKind::Q4_0), |p| pair_q4_0(p, m))
    };
    let tail = rows::<N, false, 8>(18, &row[18 * b..], x.map(|l| l.x.skip(b)), |p| nibbles(p, 2));
    total.iter_mut().zip(tail).for_each(|(t, v)| *t += v);
    total
}
