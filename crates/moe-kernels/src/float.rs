//! The scalar type every kernel is generic over: `f32` for training and inference, `f64` for
//! finite-difference gradient checks. Owns only arithmetic and the GEMM entry point per type.

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// Seals [`Float`]: kernels reinterpret its slices as f32 or f64 bytes, so no other type may
/// implement it.
mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A real scalar usable by the kernels: `f32` or `f64` only (sealed).
pub trait Float:
    sealed::Sealed
    + Copy
    + Send
    + Sync
    + Debug
    + Default
    + PartialOrd
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + Sum
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    fn abs(self) -> Self;
    fn max(self, other: Self) -> Self;
    fn powf(self, e: Self) -> Self;
    fn is_finite(self) -> bool;

    /// dst[m,n] = alpha * dst + beta * lhs[m,k] @ rhs[k,n], arbitrary strides (in elements).
    ///
    /// # Safety
    /// Pointers must be valid for the given shapes and strides; dst must not alias lhs or rhs.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut Self,
        dst_cs: isize,
        dst_rs: isize,
        accumulate: bool,
        lhs: *const Self,
        lhs_cs: isize,
        lhs_rs: isize,
        rhs: *const Self,
        rhs_cs: isize,
        rhs_rs: isize,
        threads: usize,
    );
}

/// Lanes of the partial sums of [`sum`] and [`dot`]: enough independent chains for the
/// compiler to vectorise (AVX-512: one register of f32).
const LANES: usize = 16;

/// x[0] + x[1] + ... with LANES interleaved partial sums (so the loop vectorises; the rounding
/// differs from a strictly sequential sum).
#[inline]
pub fn sum<T: Float>(x: &[T]) -> T {
    let mut acc = [T::ZERO; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().copied().chain(tail.iter().copied()).fold(T::ZERO, |a, b| a + b)
}

/// sum_i x[i]^2 in f64, with LANES interleaved partial sums (so the loop vectorises; a
/// strictly sequential f64 sum waits on each add). Deterministic for a given slice.
#[inline]
pub fn sum_sq_f64(x: &[f32]) -> f64 {
    let mut acc = [0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|&v| v as f64 * v as f64).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v as f64 * v as f64;
        }
    }
    acc.iter().fold(tail, |a, b| a + b)
}

/// sum_i a[i] * b[i], vectorised like [`sum`].
#[inline]
pub fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::ZERO; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: T = ca.remainder().iter().zip(cb.remainder()).fold(T::ZERO, |s, (&x, &y)| s + x * y);
    for (x, y) in ca.zip(cb) {
        for ((s, &u), &v) in acc.iter_mut().zip(x).zip(y) {
            *s += u * v;
        }
    }
    acc.iter().copied().fold(tail, |a, b| a + b)
}

/// Largest element (the first of a NaN-free slice); -inf for an empty one.
#[inline]
pub fn max<T: Float>(x: &[T]) -> T {
    let mut acc = [T::from_f64(f64::NEG_INFINITY); LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    acc.iter().copied().chain(tail.iter().copied()).fold(T::from_f64(f64::NEG_INFINITY), |a, b| a.max(b))
}

/// e^x in f32 without a libm call, so loops over slices vectorise (AVX-512: 16 lanes). Cephes'
/// expf: x = n ln2 + r with |r| <= ln2/2, a degree-6 polynomial for e^r, 2^n through the exponent
/// bits; within 2 ulp of `f32::exp` on [-87.3, 88]. Below -87.3 (including -inf) it returns 0;
/// above 88 it saturates at e^88 (our callers only exponentiate values <= 0, or sigmoid arguments).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.336_55, 88.0);
    let n = (xc * LOG2E + 0.5).floor();
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n through the exponent bits without a float-to-int conversion (Rust's `as i32`
    // saturates lane by lane, which kept the loop scalar): n + 127 is in [1, 254], so adding
    // 1.5 * 2^23 puts it in the low mantissa bits and the shift moves it into the exponent.
    let scale = f32::from_bits((n + (127.0 + 12_582_912.0)).to_bits() << 23);
    if x < -87.336_55 {
        0.0
    } else {
        y * scale
    }
}

macro_rules! impl_float {
    ($t:ty, $exp:path) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            #[inline(always)]
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn max(self, o: Self) -> Self {
                <$t>::max(self, o)
            }
            #[inline(always)]
            fn powf(self, e: Self) -> Self {
                <$t>::powf(self, e)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            unsafe fn gemm_raw(
                m: usize,
                n: usize,
                k: usize,
                dst: *mut Self,
                dst_cs: isize,
                dst_rs: isize,
                accumulate: bool,
                lhs: *const Self,
                lhs_cs: isize,
                lhs_rs: isize,
                rhs: *const Self,
                rhs_cs: isize,
                rhs_rs: isize,
                threads: usize,
            ) {
                let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
                // gemm computes dst = alpha*dst + beta*lhs@rhs; alpha is read only if read_dst.
                gemm::gemm(
                    m, n, k, dst, dst_cs, dst_rs, accumulate, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs, 1.0, 1.0,
                    false, false, false, par,
                );
            }
        }
    };
}
impl_float!(f32, exp_f32);
impl_float!(f64, f64::exp);
