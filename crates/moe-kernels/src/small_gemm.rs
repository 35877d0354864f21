//! f32 matrix products of few rows on AVX-512F: the expert GEMMs of a training step, where each
//! expert multiplies its bin of tens to a few hundred routed rows by a 64-512-wide weight. The
//! `gemm` crate packs both operands on every call, which costs as much as the product at these
//! sizes (`cargo bench -p moe-kernels --bench gemm`, the "expert bin" rows). `matmul` sends
//! single-threaded products against a transposed weight here.
//!
//! dst[M,N] (+)= a[M,K] @ w[N,K]^T, the forward of an nn.Linear weight w, in tiles of up to 12
//! rows x 32 columns held in 24 registers: for each k, two loads of a packed row of w^T and one
//! broadcast of a(i, k) per row, so a may have any strides and is never packed. w is packed per
//! call into [N/32][K][32] panels by 16 x 16 register transposes, a pass over K x N elements
//! against the product's M x K x N. Each element of dst is one k-ordered chain of fused
//! multiply-adds, so a row's result does not depend on the other rows of the call.

use crate::matmul::Mat;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

/// Largest transposed b packed per call (elements, 1 MiB).
const MAX_PACKED: usize = 1 << 18;
const MR: usize = 12;
const NR: usize = 32;

/// Whether the CPU has AVX-512F (detected once).
pub fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx512f"))
}

/// Whether [`matmul_small`] takes a product of these operands: b an nn.Linear weight seen
/// transposed (`rs == 1`) and small enough to pack per call. Any number of rows: a bin of one
/// row pays more for the packing than it saves, but the choice must not depend on the row count,
/// or a row's result would change with the rows that share its call (the bins of two replicas
/// or ranks differ from one process's).
/// (A row-major b, as in the backward's dx = dy w and dW = dy^T x, is read in place by the
/// `gemm` crate's kernels about as fast as by this one: the bench's backward rows.)
pub fn takes(a: &Mat<f32>, b: &Mat<f32>) -> bool {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    b.rs == 1 && b.cs != 1 && m > 0 && k > 0 && n > 0 && k * n <= MAX_PACKED && available()
}

thread_local! {
    static PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// dst[M,N] (row stride `dst_rs`) = (accumulate ? dst : 0) + a @ b, for operands that
/// [`takes`] accepts.
///
/// # Safety
/// As [`crate::matmul::matmul_raw`]: `dst` valid for M rows of N at stride `dst_rs`, untouched by
/// other threads during the call; `a` and `b` checked in bounds; [`takes`] returned true.
pub unsafe fn matmul_small(dst: *mut f32, dst_rs: usize, a: Mat<f32>, b: Mat<f32>, accumulate: bool) {
    debug_assert!(takes(&a, &b));
    PACK.with(|p| {
        let mut buf = p.borrow_mut();
        let (k, n) = (b.rows, b.cols);
        let np = n.div_ceil(NR) * NR;
        // Columns past n of a narrow last panel are never read (masked loads): no zeroing.
        if buf.len() < np * k {
            buf.resize(np * k, 0.0);
        }
        pack_transposed(&mut buf, b);
        product(dst, dst_rs, a, buf.as_ptr(), k, n, accumulate);
    });
}

/// Packs b [K,N] with `rs == 1` (column j contiguous at j * cs) into panels [N/32][K][32]; a
/// narrow last panel's missing columns are left as they were.
fn pack_transposed(out: &mut [f32], b: Mat<f32>) {
    let (k, n, cs) = (b.rows, b.cols, b.cs);
    for j0 in (0..n).step_by(16) {
        let panel = &mut out[(j0 / NR) * k * NR..];
        let half = j0 % NR;
        let mut k0 = 0;
        if j0 + 16 <= n {
            while k0 + 16 <= k {
                // SAFETY: columns j0..j0+16 and rows k0..k0+16 of b are in bounds (checked by
                // the caller's Mat::check), and the 16 x 16 block lands inside the panel.
                unsafe {
                    transpose_block(b.data.as_ptr().add(j0 * cs + k0), cs, panel.as_mut_ptr().add(k0 * NR + half))
                };
                k0 += 16;
            }
        }
        for kk in k0..k {
            for j in j0..n.min(j0 + 16) {
                panel[kk * NR + half + j - j0] = b.data[j * cs + kk];
            }
        }
    }
}

/// out[kk * NR + j] = src[j * cs + kk] for j, kk < 16.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_block(src: *const f32, cs: usize, out: *mut f32) {
    let rows: [__m512; 16] = std::array::from_fn(|j| _mm512_loadu_ps(src.add(j * cs)));
    let t = crate::bf16::transpose16(rows);
    for (kk, v) in t.iter().enumerate() {
        _mm512_storeu_ps(out.add(kk * NR), *v);
    }
}

/// The whole product over the packed panels of b [N/32][K][32] (the last panel may be narrower
/// than 32 columns, `n` says).
#[target_feature(enable = "avx512f")]
unsafe fn product(dst: *mut f32, dst_rs: usize, a: Mat<f32>, b: *const f32, k: usize, n: usize, acc: bool) {
    let m = a.rows;
    let ap = a.data.as_ptr();
    for p in 0..n.div_ceil(NR) {
        let cols = (n - p * NR).min(NR);
        let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
        let bp = b.add(p * k * NR);
        let mut i = 0;
        while i < m {
            let rows = (m - i).min(MR);
            let t = Tile {
                c: dst.add(i * dst_rs + p * NR),
                ldc: dst_rs,
                a: ap.add(i * a.rs),
                ars: a.rs,
                acs: a.cs,
                b: bp,
                k,
                acc,
                m0,
                m1,
            };
            if cols == NR {
                tiles::<true>(rows, &t)
            } else {
                tiles::<false>(rows, &t)
            }
            i += rows;
        }
    }
}

/// One tile of `rows` (1..=12) rows; FULL: all 32 columns (no masks).
#[inline(always)]
unsafe fn tiles<const FULL: bool>(rows: usize, t: &Tile) {
    match rows {
        12 => tile::<12, FULL>(t),
        11 => tile::<11, FULL>(t),
        10 => tile::<10, FULL>(t),
        9 => tile::<9, FULL>(t),
        8 => tile::<8, FULL>(t),
        7 => tile::<7, FULL>(t),
        6 => tile::<6, FULL>(t),
        5 => tile::<5, FULL>(t),
        4 => tile::<4, FULL>(t),
        3 => tile::<3, FULL>(t),
        2 => tile::<2, FULL>(t),
        _ => tile::<1, FULL>(t),
    }
}

/// The low `cols` (<= 16) lanes.
fn mask(cols: usize) -> __mmask16 {
    if cols >= 16 {
        0xFFFF
    } else {
        ((1u32 << cols) - 1) as __mmask16
    }
}

/// One tile's operands: c[M, 32] at row stride ldc; a(i, kk) at a + i * ars + kk * acs; the
/// panel's row kk at b + kk * 32; m0, m1 mask the two 16-column halves (a narrow last panel).
struct Tile {
    c: *mut f32,
    ldc: usize,
    a: *const f32,
    ars: usize,
    acs: usize,
    b: *const f32,
    k: usize,
    acc: bool,
    m0: __mmask16,
    m1: __mmask16,
}

#[target_feature(enable = "avx512f")]
unsafe fn tile<const M: usize, const FULL: bool>(t: &Tile) {
    let (a, b, ars, acs, m0, m1) = (t.a, t.b, t.ars, t.acs, t.m0, t.m1);
    let load = |p: *const f32, m: __mmask16| if FULL { _mm512_loadu_ps(p) } else { _mm512_maskz_loadu_ps(m, p) };
    let mut r0 = [_mm512_setzero_ps(); M];
    let mut r1 = [_mm512_setzero_ps(); M];
    for kk in 0..t.k {
        let bk = b.add(kk * NR);
        let (b0, b1) = (load(bk, m0), load(bk.add(16), m1));
        let ak = a.add(kk * acs);
        for i in 0..M {
            let av = _mm512_set1_ps(*ak.add(i * ars));
            r0[i] = _mm512_fmadd_ps(av, b0, r0[i]);
            r1[i] = _mm512_fmadd_ps(av, b1, r1[i]);
        }
    }
    for i in 0..M {
        let c = t.c.add(i * t.ldc);
        let (mut v0, mut v1) = (r0[i], r1[i]);
        if t.acc {
            v0 = _mm512_add_ps(load(c, m0), v0);
            v1 = _mm512_add_ps(load(c.add(16), m1), v1);
        }
        if FULL {
            _mm512_storeu_ps(c, v0);
            _mm512_storeu_ps(c.add(16), v1);
        } else {
            _mm512_mask_storeu_ps(c, m0, v0);
            _mm512_mask_storeu_ps(c.add(16), m1, v1);
        }
    }
}
