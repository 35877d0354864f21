//! Dense matrix products through the `gemm` crate (fast) and a triple loop (naive twin).
//!
//! Row-major everywhere. A `Mat` is a read-only view with explicit row/column strides, so
//! transposes are free. `linear_*` are the `nn.Linear` layout used by all weights:
//! y[N,O] = x[N,I] @ w[O,I]^T.

use crate::Float;
use std::sync::atomic::{AtomicBool, Ordering};

static BF16: AtomicBool = AtomicBool::new(false);

/// Whether f32 matrix products run in bf16 (f32 accumulation, [`crate::bf16`]).
pub fn bf16_matmul() -> bool {
    BF16.load(Ordering::Relaxed)
}

/// Switches every f32 matrix product of the process to bf16 inputs with f32 accumulation on
/// AMX or AVX512-BF16 (like PyTorch's bf16 autocast for matmuls), or back. Returns false, and
/// stays in f32, when the CPU has neither.
pub fn set_bf16_matmul(on: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    let ok = !on || crate::bf16::kernel().is_some();
    #[cfg(not(target_arch = "x86_64"))]
    let ok = !on;
    BF16.store(on && ok, Ordering::Relaxed);
    ok
}

/// Read-only strided matrix view: element (i, j) is `data[i*rs + j*cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major (rows, cols) matrix.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        debug_assert!(data.len() >= rows * cols);
        Mat { data, rows, cols, rs: cols, cs: 1 }
    }
    /// The transpose view (no copy).
    pub fn t(self) -> Self {
        Mat { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// dst[M,N] (row-major) = (accumulate ? dst : 0) + a[M,K] @ b[K,N].
/// `parallel` lets gemm use all rayon threads; pass false inside an outer parallel loop.
pub fn matmul<T: Float>(dst: &mut [T], a: Mat<T>, b: Mat<T>, accumulate: bool, parallel: bool) {
    matmul_strided(dst, b.cols, a, b, accumulate, parallel);
}

/// Like [`matmul`], but row i of dst starts at `i * dst_rs` (dst_rs >= N).
pub fn matmul_strided<T: Float>(dst: &mut [T], dst_rs: usize, a: Mat<T>, b: Mat<T>, accumulate: bool, parallel: bool) {
    let (m, n) = (a.rows, b.cols);
    assert!(dst_rs >= n && (m == 0 || dst.len() >= (m - 1) * dst_rs + n), "dst too small");
    // SAFETY: dst was checked to hold M rows of stride dst_rs; it is a distinct &mut borrow, so
    // no other thread can touch it and it cannot alias a or b.
    unsafe { matmul_raw(dst.as_mut_ptr(), dst_rs, a, b, accumulate, parallel) }
}

/// [`matmul_strided`] into a raw destination, for kernels whose parallel jobs write
/// interleaved but disjoint rows of one buffer.
///
/// # Safety
/// `dst` must be valid for writes of rows `0..M` (`i * dst_rs .. i * dst_rs + N`), and no other
/// thread may touch those elements during the call.
pub unsafe fn matmul_raw<T: Float>(dst: *mut T, dst_rs: usize, a: Mat<T>, b: Mat<T>, accumulate: bool, parallel: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ");
    a.check();
    b.check();
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::slice::from_raw_parts_mut(dst.add(i * dst_rs), n).fill(T::ZERO);
            }
        }
        return;
    }
    // f32 products on x86: bf16 when asked and the CPU has it, the few-row kernel where it
    // applies (single-threaded, against a transposed weight).
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: T is f32 (checked above).
        let (a32, b32, d32) = (as_f32(a), as_f32(b), dst as *mut f32);
        if let Some(kernel) = crate::bf16::kernel().filter(|_| bf16_matmul()) {
            return crate::bf16::matmul_bf16(kernel, d32, dst_rs, a32, b32, accumulate);
        }
        if !parallel && crate::small_gemm::takes(&a32, &b32) {
            return crate::small_gemm::matmul_small(d32, dst_rs, a32, b32, accumulate);
        }
    }
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    gemm_rows(dst, dst_rs, a, b, accumulate, threads);
}

/// The same view with T = f32.
///
/// # Safety
/// T must be f32.
#[cfg(target_arch = "x86_64")]
unsafe fn as_f32<T>(x: Mat<'_, T>) -> Mat<'_, f32> {
    Mat {
        data: std::slice::from_raw_parts(x.data.as_ptr() as *const f32, x.data.len()),
        rows: x.rows,
        cols: x.cols,
        rs: x.rs,
        cs: x.cs,
    }
}

/// Rows per piece below which [`gemm_rows`] stops cutting a product.
const SPLIT_ROWS: usize = 128;

/// The `gemm` product on up to `threads` threads. A product of many rows is cut into row
/// halves, recursively, each a single-threaded GEMM with the same sums element by element:
/// a thread runs both halves unless another thread is idle and steals one. So a product called
/// from each of two busy threads (the training replicas) stays on its thread, cut in two, and
/// a thread that runs out of work takes half of the other's. Few rows (decoding) use gemm's
/// own threads.
///
/// # Safety
/// As [`matmul_raw`], with the checks of `a` and `b` done.
unsafe fn gemm_rows<T: Float>(dst: *mut T, dst_rs: usize, a: Mat<T>, b: Mat<T>, accumulate: bool, threads: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if threads > 1 && m >= 2 * SPLIT_ROWS {
        let h = m / 2;
        let (a0, a1) = (Mat { rows: h, ..a }, Mat { data: &a.data[h * a.rs..], rows: m - h, ..a });
        let (d, t0) = (crate::SendPtr(dst), threads / 2);
        // SAFETY: the halves write the disjoint row ranges 0..h and h..m of dst.
        rayon::join(
            || gemm_rows(d.at(0), dst_rs, a0, b, accumulate, t0),
            || gemm_rows(d.at(h * dst_rs), dst_rs, a1, b, accumulate, threads - t0),
        );
        return;
    }
    T::gemm_raw(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        a.data.as_ptr(),
        a.cs as isize,
        a.rs as isize,
        b.data.as_ptr(),
        b.cs as isize,
        b.rs as isize,
        threads,
    );
}

/// Naive twin of [`matmul`].
pub fn matmul_naive<T: Float>(dst: &mut [T], a: Mat<T>, b: Mat<T>, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k);
    for i in 0..m {
        for j in 0..n {
            let mut s = T::ZERO;
            for p in 0..k {
                s += a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs];
            }
            let d = &mut dst[i * n + j];
            *d = if accumulate { *d + s } else { s };
        }
    }
}

/// y[N,O] = x[N,I] @ w[O,I]^T (overwrites y).
pub fn linear_forward<T: Float>(y: &mut [T], x: &[T], w: &[T], n: usize, i: usize, o: usize, par: bool) {
    matmul(y, Mat::new(x, n, i), Mat::new(w, o, i).t(), false, par);
}

/// dx[N,I] (+)= dy[N,O] @ w[O,I] (accumulated when `dx_acc`, else overwritten);
/// dw[O,I] += dy^T @ x[N,I].
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<T: Float>(
    dx: &mut [T],
    dw: &mut [T],
    dy: &[T],
    x: &[T],
    w: &[T],
    n: usize,
    i: usize,
    o: usize,
    dx_acc: bool,
    par: bool,
) {
    matmul(dx, Mat::new(dy, n, o), Mat::new(w, o, i), dx_acc, par);
    matmul(dw, Mat::new(dy, n, o).t(), Mat::new(x, n, i), true, par);
}

/// y[N,O] += b[O] on every row.
pub fn add_bias<T: Float>(y: &mut [T], b: &[T]) {
    for row in y.chunks_exact_mut(b.len()) {
        row.iter_mut().zip(b).for_each(|(v, &bv)| *v += bv);
    }
}

/// db[O] += the sum of dy[N,O]'s rows (the gradient of [`add_bias`]).
pub fn bias_backward<T: Float>(db: &mut [T], dy: &[T]) {
    for row in dy.chunks_exact(db.len()) {
        db.iter_mut().zip(row).for_each(|(g, &d)| *g += d);
    }
}
