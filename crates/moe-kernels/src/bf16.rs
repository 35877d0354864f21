//! bf16 matrix products with f32 accumulation, like PyTorch's bf16 autocast for matmuls:
//! dst[M,N] (+)= bf16(a)[M,K] @ bf16(b)[K,N]. Operands are rounded to bf16 (nearest even) while
//! packing: A into row-major [Mp, Kp], B into k-pairs (one u32 per pair of k, the even k in the
//! low half) in blocks of 32 columns, both zero-padded to multiples of 32; packing works on whole
//! rows or 32 x 32 tiles so that the conversion vectorises. Two block kernels take the packed
//! operands: AMX tiles ([`crate::amx`], Intel Sapphire Rapids and newer) and AVX512-BF16 dot
//! products ([`crate::dpbf16`], AMD Zen 4 and newer, Intel Cooper Lake); [`kernel`] picks the
//! first the CPU has. Panels of B blocks stay in cache while the blocks of 32 rows of A stream
//! past them, in parallel.

use crate::matmul::Mat;
use crate::SendPtr;
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

/// The instructions that run the bf16 products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AMX tiles (`tdpbf16ps`).
    Amx,
    /// AVX512-BF16 dot products (`vdpbf16ps`).
    Dpbf16,
}

impl Kernel {
    /// Whether this CPU (and OS) can run the kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::Amx => crate::amx::available(),
            Kernel::Dpbf16 => crate::dpbf16::available(),
        }
    }
}

/// The fastest bf16 kernel this CPU (and OS) supports, or None.
pub fn kernel() -> Option<Kernel> {
    static K: OnceLock<Option<Kernel>> = OnceLock::new();
    *K.get_or_init(|| [Kernel::Amx, Kernel::Dpbf16].into_iter().find(|k| k.available()))
}

/// One block of a packed product: C (`rows` x `cols`, row stride `sc` floats; read first when
/// `accumulate`) (+)= A (32 packed rows of `kp` bf16, zero past `rows`) @ B (one block: `kp / 2`
/// pair-rows of 32 u32, 64-byte aligned).
pub(crate) struct Block {
    pub a: *const u16,
    pub kp: usize,
    pub b: *const u32,
    pub c: *mut f32,
    pub sc: usize,
    pub rows: usize,
    pub cols: usize,
    pub accumulate: bool,
}

/// One kernel's part of a packed product: blocks of C of up to 32 x 32.
pub(crate) trait BlockKernel: Sync {
    /// Called on a thread before it runs blocks (AMX loads its tile configuration).
    ///
    /// # Safety
    /// The kernel's instructions are available.
    unsafe fn begin(&self) {}
    /// Called on the thread after its blocks.
    ///
    /// # Safety
    /// As [`BlockKernel::begin`], which ran before on this thread.
    unsafe fn end(&self) {}
    /// Computes one [`Block`].
    ///
    /// # Safety
    /// [`BlockKernel::begin`] ran on this thread; the block's a, b, c valid for its extents; rows
    /// and cols in 1..=32; no other thread touches the C block.
    unsafe fn block(&self, blk: &Block);
}

/// f32 -> bf16 bits, round to nearest even.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// bf16 bits -> f32.
#[inline(always)]
pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

fn pad32(x: usize) -> usize {
    x.div_ceil(32) * 32
}

thread_local! {
    static PACK: RefCell<(Vec<u16>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `len` elements of `buf` starting on a 64-byte boundary (the buffer grows as needed). They
/// hold whatever the last product left: the packers write every element, padding included.
/// AMX tile rows that straddle two cache lines load about 5x slower (a `tileloadd` took 24 ns
/// instead of 4-5 ns here), and malloc returns 16-byte aligned memory.
fn aligned<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    let extra = 64 / std::mem::size_of::<T>();
    if buf.len() < len + extra {
        buf.resize(len + extra, T::default());
    }
    let off = buf.as_ptr().align_offset(64).min(extra);
    &mut buf[off..off + len]
}

/// A[M,K] -> bf16 row-major [Mp, Kp] (rows of the padded tail zero), 64-byte aligned.
fn pack_a<'p>(buf: &'p mut Vec<u16>, a: Mat<f32>, mp: usize, kp: usize) -> &'p [u16] {
    let out = aligned(buf, mp * kp);
    out.par_chunks_mut(32 * kp).enumerate().for_each(|(bi, blk)| {
        let rows = 32.min(a.rows.saturating_sub(bi * 32));
        // padding: columns K..Kp of the real rows, whole rows past M
        for (i, row) in blk.chunks_exact_mut(kp).enumerate() {
            row[if i < rows { a.cols } else { 0 }..].fill(0);
        }
        if a.cs == 1 {
            for (i, row) in blk.chunks_exact_mut(kp).take(rows).enumerate() {
                let src = &a.data[(bi * 32 + i) * a.rs..][..a.cols];
                row.iter_mut().zip(src).for_each(|(o, &v)| *o = to_bf16(v));
            }
        } else if a.rs == 1 && rows == 32 {
            // A = X^T: columns of A are contiguous. 16 x 16 blocks are transposed in registers
            // and rounded 16 at a time.
            let full = a.cols / 16 * 16;
            for p0 in (0..full).step_by(16) {
                for i0 in [0, 16] {
                    let src = &a.data[p0 * a.cs + bi * 32 + i0..][..15 * a.cs + 16];
                    // SAFETY: AVX-512 F/BW come with both kernels ([`kernel`]); src holds 16 rows of 16
                    // at stride a.cs, and rows i0..i0+16 of blk hold columns p0..p0+16.
                    unsafe { transpose16_bf16(src.as_ptr(), a.cs, blk[i0 * kp + p0..].as_mut_ptr(), kp) };
                }
            }
            for p in full..a.cols {
                let src = &a.data[p * a.cs + bi * 32..];
                for i in 0..32 {
                    blk[i * kp + p] = to_bf16(src[i]);
                }
            }
        } else {
            // strided rows: element by element
            for p in 0..a.cols {
                let src = &a.data[p * a.cs + bi * 32 * a.rs..];
                for i in 0..rows {
                    blk[i * kp + p] = to_bf16(src[i * a.rs]);
                }
            }
        }
    });
    out
}

/// The 16 x 16 transpose of 32-bit lanes in registers (unpack, then 128-bit lane shuffles):
/// out[j] lane i = r[i] lane j.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // t: rows paired and interleaved per 128-bit lane; u[4g+e]: lane L holds element 4L+e of
    // rows 4g..4g+4; the last two rounds gather the lanes.
    let mut t = [_mm512_setzero_ps(); 16];
    for g in 0..8 {
        t[2 * g] = _mm512_unpacklo_ps(r[2 * g], r[2 * g + 1]);
        t[2 * g + 1] = _mm512_unpackhi_ps(r[2 * g], r[2 * g + 1]);
    }
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let (t0, t1, t2, t3) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        u[4 * g] = _mm512_shuffle_ps::<0x44>(t0, t2);
        u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(t0, t2);
        u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(t1, t3);
        u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(t1, t3);
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for e in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[e], u[4 + e]);
        let v1 = _mm512_shuffle_f32x4::<0xDD>(u[e], u[4 + e]);
        let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + e], u[12 + e]);
        let v3 = _mm512_shuffle_f32x4::<0xDD>(u[8 + e], u[12 + e]);
        out[e] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
        out[4 + e] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
        out[8 + e] = _mm512_shuffle_f32x4::<0xDD>(v0, v2);
        out[12 + e] = _mm512_shuffle_f32x4::<0xDD>(v1, v3);
    }
    out
}

/// 16 f32 rounded to bf16 (nearest even, like [`to_bf16`]), as 16 u16.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn round16(x: __m512) -> __m256i {
    let x = _mm512_castps_si512(x);
    let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(x), _mm512_set1_epi32(1));
    let rounded = _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), odd);
    _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(rounded))
}

/// out[i*ors + q] = bf16(src[q*rs + i]) for i, q in 0..16: a 16 x 16 transpose in registers,
/// rounded like [`to_bf16`].
///
/// # Safety
/// AVX-512 F and BW available; src valid for 16 rows of 16 at stride rs, out for 16 rows of 16
/// at stride ors.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn transpose16_bf16(src: *const f32, rs: usize, out: *mut u16, ors: usize) {
    let mut r = [_mm512_setzero_ps(); 16];
    for (q, v) in r.iter_mut().enumerate() {
        *v = _mm512_loadu_ps(src.add(q * rs));
    }
    for (i, col) in transpose16(r).into_iter().enumerate() {
        _mm256_storeu_si256(out.add(i * ors) as *mut __m256i, round16(col));
    }
}

/// Pair-rows 0..16 (32 u32 apart at `out`) of a 32-column block of B = W^T, from k0..k0+32 of
/// its 32 columns (column c at src + c*cs, contiguous along k): each column's 32 values round to
/// 16 k-pairs, and two 16 x 16 transposes turn columns into pair-rows.
///
/// # Safety
/// AVX-512 F and BW available; src valid for 32 columns of 32 at stride cs; out for 16 rows of
/// 32 u32.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_wt_tile(src: *const f32, cs: usize, out: *mut u32) {
    for h in 0..2 {
        let mut cols = [_mm512_setzero_ps(); 16];
        for (c, v) in cols.iter_mut().enumerate() {
            let col = src.add((16 * h + c) * cs);
            let (lo, hi) = (round16(_mm512_loadu_ps(col)), round16(_mm512_loadu_ps(col.add(16))));
            // the 32 bf16 of the column in order: u32 lane pr holds the pair (2pr, 2pr+1)
            *v = _mm512_castsi512_ps(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi));
        }
        for (pr, row) in transpose16(cols).into_iter().enumerate() {
            _mm512_storeu_ps(out.add(pr * 32 + 16 * h) as *mut f32, row);
        }
    }
}

/// Two f32 rounded to bf16 and packed as AMX's k-pair: `lo` (even k) in the low half.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | (to_bf16(hi) as u32) << 16
}

/// B[K,N] -> bf16 k-pairs in blocks of 32 columns, each [Kp/2, 32] of u32 (the low half holds
/// the even k): pair (k/2, n) at (n/32)*(Kp/2)*32 + (k/2)*32 + n%32, so a block's 16 x 32 tiles
/// are contiguous rows of 128 bytes; 64-byte aligned.
fn pack_b<'p>(buf: &'p mut Vec<u32>, b: Mat<f32>, kp: usize, np: usize) -> &'p [u32] {
    let out = aligned(buf, kp / 2 * np);
    let (k, n) = (b.rows, b.cols);
    let at = |r: usize, c: usize| if r < k { b.data[r * b.rs + c * b.cs] } else { 0.0 };
    // pair-rows `prs` of block jb, first `cols` columns, element by element (any strides, tails)
    let generic = |blk: &mut [u32], jb: usize, prs: std::ops::Range<usize>, cols: usize| {
        for pr in prs {
            for (c, o) in blk[pr * 32..pr * 32 + cols].iter_mut().enumerate() {
                *o = pair(at(2 * pr, jb * 32 + c), at(2 * pr + 1, jb * 32 + c));
            }
        }
    };
    out.par_chunks_mut(kp / 2 * 32).enumerate().for_each(|(jb, blk)| {
        let cols = 32.min(n.saturating_sub(jb * 32));
        // padding: pair-rows past K/2, columns past N of the others
        let prs = k.div_ceil(2);
        blk[prs * 32..].fill(0);
        if cols < 32 {
            blk[..prs * 32].chunks_exact_mut(32).for_each(|row| row[cols..].fill(0));
        }
        if b.rs == 1 && cols == 32 {
            // B = W^T: columns of B are contiguous. Per 32 k, each column's values round to
            // k-pairs (contiguous reads), then transpose into the 16 pair-rows.
            let full = k / 32 * 32;
            for k0 in (0..full).step_by(32) {
                let src = &b.data[jb * 32 * b.cs + k0..][..31 * b.cs + 32];
                let out = &mut blk[k0 / 2 * 32..(k0 / 2 + 16) * 32];
                // SAFETY: AVX-512 F/BW come with both kernels ([`kernel`]); src holds 32 columns
                // of 32 at stride b.cs, out 16 pair-rows of 32.
                unsafe { pack_wt_tile(src.as_ptr(), b.cs, out.as_mut_ptr()) };
            }
            generic(blk, jb, full / 2..k.div_ceil(2), 32);
        } else if b.cs == 1 && cols == 32 {
            // row-major B: rows 2pr and 2pr+1 interleave into pair-row pr (contiguous reads)
            for (pr, row) in blk.chunks_exact_mut(32).take(k / 2).enumerate() {
                let r0: &[f32; 32] = b.data[2 * pr * b.rs + jb * 32..][..32].try_into().expect("32 values");
                let r1: &[f32; 32] = b.data[(2 * pr + 1) * b.rs + jb * 32..][..32].try_into().expect("32 values");
                for c in 0..32 {
                    row[c] = pair(r0[c], r1[c]);
                }
            }
            generic(blk, jb, k / 2..k.div_ceil(2), 32);
        } else {
            generic(blk, jb, 0..k.div_ceil(2), cols);
        }
    });
    out
}

/// dst (row i at dst + i*dst_rs) (+)= bf16(a) @ bf16(b), accumulated in f32, on `kernel`.
///
/// # Safety
/// `kernel.available()`; dst valid for writes of M rows of N at stride dst_rs, touched by no
/// other thread during the call.
pub unsafe fn matmul_bf16(kernel: Kernel, dst: *mut f32, dst_rs: usize, a: Mat<f32>, b: Mat<f32>, accumulate: bool) {
    match kernel {
        Kernel::Amx => run(&crate::amx::Tiles, dst, dst_rs, a, b, accumulate),
        Kernel::Dpbf16 => run(&crate::dpbf16::Dots, dst, dst_rs, a, b, accumulate),
    }
}

/// Packs both operands and runs `k` over every 32 x 32 block of dst.
///
/// # Safety
/// As [`matmul_bf16`], with `k`'s instructions available.
unsafe fn run(k: &impl BlockKernel, dst: *mut f32, dst_rs: usize, a: Mat<f32>, b: Mat<f32>, accumulate: bool) {
    let (m, kk, n) = (a.rows, a.cols, b.cols);
    let (mp, kp, np) = (pad32(m), pad32(kk), pad32(n));
    let (mut pa, mut pb) = PACK.with(|p| std::mem::take(&mut *p.borrow_mut()));
    let (pa_ref, pb_ref) = rayon::join(|| pack_a(&mut pa, a, mp, kp), || pack_b(&mut pb, b, kp, np));
    let dst = SendPtr(dst);
    // panels of PANEL column blocks of B stay in L2 while every row block streams past them
    const PANEL: usize = 8;
    let nb = np / 32;
    for jp in (0..nb).step_by(PANEL) {
        (0..mp / 32).into_par_iter().for_each(|bi| {
            k.begin();
            let ap = pa_ref.as_ptr().add(bi * 32 * kp);
            for bj in jp..nb.min(jp + PANEL) {
                let bp = pb_ref.as_ptr().add(bj * 16 * kp);
                let (rows, cols) = (32.min(m - bi * 32), 32.min(n - bj * 32));
                // SAFETY: the block's rows and columns lie inside dst, and each row block
                // belongs to one task.
                let c = dst.at(bi * 32 * dst_rs + bj * 32);
                k.block(&Block { a: ap, kp, b: bp, c, sc: dst_rs, rows, cols, accumulate });
            }
            k.end();
        });
    }
    PACK.with(|p| *p.borrow_mut() = (pa, pb));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The register transpose rounds exactly like `to_bf16`, ties included, and transposes.
    #[test]
    fn transpose16_bf16_matches_scalar_rounding() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")) {
            eprintln!("no AVX-512 BW on this machine: skipped");
            return;
        }
        let rs = 19;
        let src: Vec<f32> = (0..16 * rs)
            .map(|i| match i % 5 {
                0 => 1.0 + (i % 7) as f32 / 256.0, // exact ties and neighbours
                1 => f32::from_bits(0x3f80_7fff + (i as u32 % 3)),
                2 => -(i as f32) * 0.013,
                3 => f32::from_bits(0x0000_8000 + i as u32), // subnormals
                _ => 3.0e38,
            })
            .collect();
        let ors = 21;
        let mut out = vec![0u16; 16 * ors];
        // SAFETY: AVX-512 F/BW detected above; the buffers hold the 16 x 16 extents.
        unsafe { transpose16_bf16(src.as_ptr(), rs, out.as_mut_ptr(), ors) };
        for i in 0..16 {
            for q in 0..16 {
                assert_eq!(out[i * ors + q], to_bf16(src[q * rs + i]), "element ({i}, {q})");
            }
        }
    }
}
