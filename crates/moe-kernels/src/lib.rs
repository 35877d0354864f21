//! CPU kernels for moe: pure functions over slices, forward and backward side by side.
//!
//! Dimension vocabulary (used in every shape comment of the workspace):
//! B batch, T time (sequence), C model width, V vocabulary, L layers, H query heads,
//! G key/value heads, D head dim, E experts, K experts per token, F feed-forward hidden,
//! N = B*T tokens, R = N*K routed rows.
//!
//! Kernels own no model types and do not allocate in their hot loops. Backward kernels
//! accumulate (`+=`) into gradient buffers. Every fast kernel has a naive reference twin
//! (`*_naive`) that the tests compare against.

pub mod adamw;
#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod attention;
#[cfg(target_arch = "x86_64")]
pub mod bf16;
pub mod buffer;
pub mod cross_entropy;
#[cfg(target_arch = "x86_64")]
pub mod dpbf16;
pub mod embedding;
pub mod float;
pub mod layernorm;
pub mod matmul;
pub mod peak;
pub mod q8_0;
pub mod rmsnorm;
pub mod rope;
#[cfg(target_arch = "x86_64")]
pub mod small_gemm;
pub mod softmax;
pub mod swiglu;

pub use float::Float;

/// A raw pointer that may cross threads; used only where each thread writes a disjoint region.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// # Safety
    /// The caller guarantees `off` is in bounds and no other thread touches that element.
    #[inline(always)]
    pub(crate) unsafe fn at(self, off: usize) -> *mut T {
        self.0.add(off)
    }
}
