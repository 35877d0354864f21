//! Integer dot products of a Q8_0, Q4_0 or Q6_K weight row with an activation row quantised to
//! Q8_0 blocks (the decode kernel of quantised models): per block of 32, sum_j qw_j * qx_j in
//! integers, scaled by dw * dx (Q6_K: by its int8 scale per 16 values and d), as llama.cpp does.
//! With AVX-512 VNNI (built for the machine, `-C target-cpu=native`) Q8_0 and Q4_0 take two
//! blocks per 512-bit `vpdpbusd` on unsigned weights (Q8_0: w + 128; Q4_0: the raw nibbles)
//! whose offset is removed through the activations' block sums, and Q6_K one block per 256-bit
//! `vpdpbusd` on |w| and x * sign(w); scaled sums accumulate in f32 lanes. Elsewhere the scalar
//! twin runs. Tests compare the two.
//! Activations must lie in [-127, 127] (as `quantize_q8_row` makes them): x * sign(w) of -128
//! would wrap. Weights may take any int8 value.

/// How far ahead of the weight bytes being read the decode kernels (here and in `fdot`) ask for
/// the next ones (`prefetcht0`): a row and the rows after it stream from memory, and the
/// hardware prefetcher alone kept decoding at about half of the read bandwidth. 4 KiB ahead
/// measured best among 0.5-8 KiB (OLMoE Q8_0: about 45 -> 55-70 tokens/s).
pub const PREFETCH: usize = 4096;

fn f16(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// The 32 values (q - 8) of a Q4_0 block's 16 nibble bytes (value j in the low nibble of byte
/// j, value j + 16 in its high nibble).
#[inline(always)]
pub fn q4_values(nibbles: &[u8]) -> [i8; 32] {
    let mut q = [0i8; 32];
    for j in 0..16 {
        q[j] = (nibbles[j] & 15) as i8 - 8;
        q[j + 16] = (nibbles[j] >> 4) as i8 - 8;
    }
    q
}

/// One activation row quantised to Q8_0 blocks: values, one scale per 32, block sums.
#[derive(Clone, Copy)]
pub struct Q8Row<'a> {
    pub xq: &'a [i8],
    pub xd: &'a [f32],
    pub xs: &'a [i32],
}

/// Sums of each block of 32 activation values (the Q4_0 kernel subtracts 8 x these instead of
/// re-centring every weight).
pub fn block_sums(xq: &[i8]) -> Vec<i32> {
    xq.chunks_exact(32).map(|b| b.iter().map(|&v| v as i32).sum()).collect()
}

/// The scalar twins.
pub mod scalar {
    use super::{f16, q4_values};

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

    /// Q6_K super-blocks (210 bytes) against 8 Q8_0 activation blocks each: per 16 values
    /// scale_s * sum_j q_j qx_j in integers, times d * dx per 32. Panics when the activations
    /// are shorter than the row (as the SIMD kernel does).
    pub fn dot_q8_0_n<const N: usize>(row: &[u8], x: [super::Q8Row; N]) -> [f32; N] {
        x.map(|r| dot_q8_0(row, r.xq, r.xd, r.xs))
    }

    pub fn dot_q4_0_n<const N: usize>(row: &[u8], x: [super::Q8Row; N]) -> [f32; N] {
        x.map(|r| dot_q4_0(row, r.xq, r.xd, r.xs))
    }

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
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx512vnni", target_feature = "avx512vl"))]
mod vnni {
    use super::{f16, Q8Row, PREFETCH};
    use std::arch::x86_64::*;

    /// 8 partial i32 sums of w[j] * x[j] for 32 int8 pairs.
    #[inline(always)]
    fn block(w: __m256i, x: __m256i) -> __m256i {
        // SAFETY (of every intrinsic here): the cfg of this module guarantees the features.
        unsafe {
            let (aw, sx) = (_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, sx)
        }
    }

    #[inline(always)]
    fn hsum(v: __m256) -> f32 {
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_hadd_ps(s, s);
            _mm_cvtss_f32(_mm_hadd_ps(s, s))
        }
    }

    #[inline(always)]
    fn dot(blk_bytes: usize, row: &[u8], xq: &[i8], xd: &[f32], load: impl Fn(&[u8]) -> __m256i) -> f32 {
        let mut acc = unsafe { _mm256_setzero_ps() };
        for ((blk, qx), &dx) in row.chunks_exact(blk_bytes).zip(xq.chunks_exact(32)).zip(xd) {
            // SAFETY: qx holds 32 bytes (chunks_exact); unaligned loads.
            let x = unsafe { _mm256_loadu_si256(qx.as_ptr() as *const __m256i) };
            let s = unsafe { _mm256_cvtepi32_ps(block(load(&blk[2..]), x)) };
            acc = unsafe { _mm256_fmadd_ps(_mm256_set1_ps(f16(blk) * dx), s, acc) };
        }
        hsum(acc)
    }

    pub fn dot_q6_k(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        let nb = row.len() / 210;
        // The activation loads below are unchecked: a short activation row must stop here.
        assert!(xq.len() >= 256 * nb && xd.len() >= 8 * nb, "Q6_K row of {nb} super-blocks and activations differ");
        // SAFETY: every load reads 32 bytes inside a 210-byte super-block (chunks_exact) or a
        // 32-value activation block of xq (at most 256 * nb values, checked above); the cfg of
        // this module guarantees the features.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let (m4, m3, m32) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(3), _mm256_set1_epi8(32));
            for (b, blk) in row.chunks_exact(210).enumerate() {
                for line in 0..4 {
                    _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH + 64 * line) as *const i8);
                }
                let d = f16(&blk[208..210]);
                for h in 0..2 {
                    let qh = _mm256_loadu_si256(blk.as_ptr().add(128 + 32 * h) as *const __m256i);
                    for c in 0..4 {
                        let ql = _mm256_loadu_si256(blk.as_ptr().add(64 * h + 32 * (c % 2)) as *const __m256i);
                        let nib = if c < 2 {
                            _mm256_and_si256(ql, m4)
                        } else {
                            _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4)
                        };
                        let hb = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c as i32)), m3);
                        let w = _mm256_sub_epi8(_mm256_or_si256(nib, _mm256_slli_epi16(hb, 4)), m32);
                        let chunk = 8 * b + 4 * h + c;
                        let x = _mm256_loadu_si256(xq.as_ptr().add(32 * chunk) as *const __m256i);
                        let s = block(w, x);
                        let (s0, s1) = (blk[192 + 8 * h + 2 * c] as i8 as i32, blk[193 + 8 * h + 2 * c] as i8 as i32);
                        let sc = _mm256_setr_epi32(s0, s0, s0, s0, s1, s1, s1, s1);
                        let s = _mm256_cvtepi32_ps(_mm256_mullo_epi32(s, sc));
                        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * xd[chunk]), s, acc);
                    }
                }
            }
            hsum(acc)
        }
    }

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
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
            let w = load(p);
            let (d0, d1) =
                (u16::from_le_bytes([*p, *p.add(1)]), u16::from_le_bytes([*p.add(blk_bytes), *p.add(blk_bytes + 1)]));
            let d = _mm_cvtph_ps(_mm_cvtsi32_si128((d0 as u32 | (d1 as u32) << 16) as i32));
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
    /// An odd last block runs alone.
    pub fn dot_q8_0_n<const N: usize>(row: &[u8], x: [Q8Row; N]) -> [f32; N] {
        // SAFETY: the loads read the 32 value bytes after each block's scale (34-byte blocks);
        // the cfg of this module guarantees the features.
        unsafe {
            let idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
            let flip = _mm512_set1_epi8(-128);
            let (mut total, b) = pairs::<0b11_10_01_00, N>(34, row, x, idx, -16, |p| {
                let (w0, w1) =
                    (_mm256_loadu_si256(p.add(2) as *const __m256i), _mm256_loadu_si256(p.add(36) as *const __m256i));
                _mm512_xor_si512(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(w0), w1), flip)
            });
            for (t, r) in total.iter_mut().zip(&x) {
                *t += dot(34, &row[34 * b..], &r.xq[32 * b..], &r.xd[b..], |b| {
                    _mm256_loadu_si256(b.as_ptr() as *const __m256i)
                });
            }
            total
        }
    }

    /// Q4_0: the unsigned nibbles of the pair as [lo_b, lo_b+1, hi_b, hi_b+1] against x in the
    /// same order, so sum q x - 8 sum x = sum (q - 8) x. An odd last block runs alone.
    pub fn dot_q4_0_n<const N: usize>(row: &[u8], x: [Q8Row; N]) -> [f32; N] {
        // SAFETY: the loads read the 16 nibble bytes after each block's scale (18-byte blocks);
        // the cfg of this module guarantees the features.
        unsafe {
            let m = _mm256_set1_epi8(15);
            let idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
            let (mut total, b) = pairs::<0b11_01_10_00, N>(18, row, x, idx, -1, |p| {
                let w0 = _mm_loadu_si128(p.add(2) as *const __m128i);
                let w1 = _mm_loadu_si128(p.add(20) as *const __m128i);
                let w = _mm256_set_m128i(w1, w0);
                let (lo, hi) = (_mm256_and_si256(w, m), _mm256_and_si256(_mm256_srli_epi16(w, 4), m));
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
            });
            let nb = x[0].xd.len();
            if b < nb {
                let blk = &row[18 * b..18 * b + 18];
                let bytes = _mm_loadu_si128(blk.as_ptr().add(2) as *const __m128i);
                let m = _mm_set1_epi8(15);
                let (lo, hi) = (_mm_and_si128(bytes, m), _mm_and_si128(_mm_srli_epi16(bytes, 4), m));
                for (t, r) in total.iter_mut().zip(&x) {
                    let xv = _mm256_loadu_si256(r.xq.as_ptr().add(32 * b) as *const __m256i);
                    let p = _mm256_dpbusd_epi32(_mm256_set1_epi32(-r.xs[b]), _mm256_set_m128i(hi, lo), xv);
                    *t += f16(blk) * r.xd[b] * hsum(_mm256_cvtepi32_ps(p));
                }
            }
            total
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx512vnni", target_feature = "avx512vl"))]
pub use vnni::{dot_q4_0_n, dot_q6_k, dot_q8_0_n};

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx512vnni", target_feature = "avx512vl")))]
pub use scalar::{dot_q4_0_n, dot_q6_k, dot_q8_0_n};

/// Q8_0 row dotted with one activation row.
pub fn dot_q8_0(row: &[u8], xq: &[i8], xd: &[f32], xs: &[i32]) -> f32 {
    dot_q8_0_n(row, [Q8Row { xq, xd, xs }])[0]
}

/// Q4_0 row dotted with one activation row.
pub fn dot_q4_0(row: &[u8], xq: &[i8], xd: &[f32], xs: &[i32]) -> f32 {
    dot_q4_0_n(row, [Q8Row { xq, xd, xs }])[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: &mut u64) -> u8 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 33) as u8
    }

    /// A row of `blocks` blocks of `bytes` bytes with finite f16 scales, and Q8_0 activations.
    fn data(blocks: usize, bytes: usize, seed: &mut u64) -> (Vec<u8>, Vec<i8>, Vec<f32>) {
        let mut row: Vec<u8> = (0..blocks * bytes).map(|_| rng(seed)).collect();
        for b in row.chunks_exact_mut(bytes) {
            let d = half::f16::from_f32(0.001 + rng(seed) as f32 / 1000.0).to_bits().to_le_bytes();
            b[..2].copy_from_slice(&d);
        }
        let xq = (0..blocks * 32).map(|_| (rng(seed) as i8).max(-127)).collect();
        let xd = (0..blocks).map(|_| rng(seed) as f32 / 500.0).collect();
        (row, xq, xd)
    }

    #[test]
    #[should_panic(expected = "activations differ")]
    fn a_q6_k_row_longer_than_its_activations_is_refused() {
        let row = vec![0u8; 2 * 210];
        // One super-block of activations for two of weights.
        dot_q6_k(&row, &[0i8; 256], &[0.0; 8]);
    }

    #[test]
    fn four_rows_at_once_equal_one_at_a_time() {
        let mut seed = 11;
        for blocks in [1, 2, 7, 32] {
            for bytes in [34, 18] {
                let (row, _, _) = data(blocks, bytes, &mut seed);
                let acts: Vec<(Vec<i8>, Vec<f32>)> = (0..4)
                    .map(|_| {
                        let (_, xq, xd) = data(blocks, bytes, &mut seed);
                        (xq, xd)
                    })
                    .collect();
                let sums: Vec<Vec<i32>> = acts.iter().map(|a| block_sums(&a.0)).collect();
                let x: [Q8Row; 4] = std::array::from_fn(|k| Q8Row { xq: &acts[k].0, xd: &acts[k].1, xs: &sums[k] });
                let (four, one): ([f32; 4], [f32; 4]) = if bytes == 34 {
                    (dot_q8_0_n(&row, x), x.map(|r| dot_q8_0(&row, r.xq, r.xd, r.xs)))
                } else {
                    (dot_q4_0_n(&row, x), x.map(|r| dot_q4_0(&row, r.xq, r.xd, r.xs)))
                };
                assert_eq!(four, one, "{blocks} blocks of {bytes} bytes");
                let scalar = if bytes == 34 { scalar::dot_q8_0_n(&row, x) } else { scalar::dot_q4_0_n(&row, x) };
                for (a, b) in four.iter().zip(scalar) {
                    assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{blocks} x {bytes}: {a} vs scalar {b}");
                }
            }
        }
    }

    #[test]
    fn kernels_equal_their_scalar_twins() {
        let mut seed = 7;
        for blocks in [1, 2, 7, 32, 113] {
            let (row, xq, xd) = data(blocks, 34, &mut seed);
            let xs = block_sums(&xq);
            let (a, b) = (dot_q8_0(&row, &xq, &xd, &xs), scalar::dot_q8_0(&row, &xq, &xd, &xs));
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "Q8_0 x{blocks}: {a} vs {b}");
            let (row, xq, xd) = data(blocks, 18, &mut seed);
            let xs = block_sums(&xq);
            let (a, b) = (dot_q4_0(&row, &xq, &xd, &xs), scalar::dot_q4_0(&row, &xq, &xd, &xs));
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "Q4_0 x{blocks}: {a} vs {b}");
        }
        for supers in [1, 3, 8] {
            // Q6_K: super-blocks of 210 bytes (d last) against 8 activation blocks each.
            let (mut row, xq, xd) = data(8 * supers, 32, &mut seed);
            row.truncate(210 * supers);
            for blk in row.chunks_exact_mut(210) {
                blk[208..].copy_from_slice(&half::f16::from_f32(0.01).to_bits().to_le_bytes());
            }
            let (a, b) = (dot_q6_k(&row, &xq, &xd), scalar::dot_q6_k(&row, &xq, &xd));
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "Q6_K x{supers}: {a} vs {b}");
        }
    }

    #[test]
    fn extreme_values_are_exact_in_integers() {
        // w = -128 and x = -127 in every lane, then w = 127 and x = 127: 32 * 128 * 127 and
        // 32 * 127 * 127 per block, for one block alone and for pairs of blocks.
        for (w, x) in [(0x80u8, -127i8), (0x7f, 127)] {
            let want = 32.0 * (w as i8 as f32) * x as f32;
            for blocks in [1, 2, 3] {
                let mut row = vec![w; 34 * blocks];
                for b in row.chunks_exact_mut(34) {
                    b[..2].copy_from_slice(&half::f16::from_f32(1.0).to_bits().to_le_bytes());
                }
                let (xq, xd) = (vec![x; 32 * blocks], vec![1.0f32; blocks]);
                let xs = block_sums(&xq);
                assert_eq!(dot_q8_0(&row, &xq, &xd, &xs), want * blocks as f32, "{blocks} blocks of {w}, {x}");
                assert_eq!(scalar::dot_q8_0(&row, &xq, &xd, &xs), want * blocks as f32);
            }
        }
    }
}
