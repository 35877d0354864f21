//! The bf16 decode kernel: a bf16 weight row dotted with f32 activations in place. Each
//! 16-value chunk is widened to f32 in registers (bf16 is the top half of an f32) and
//! multiplied into one of four independent accumulators, so the loop is bound by loads, not by
//! the latency of one FMA chain; the bytes `qdot::prefetch_distance()` ahead are requested as
//! it goes. AVX-512 where the build targets it, else AVX2 (8-value chunks), else a portable
//! loop. Tests compare them.

/// sum_j bf16(b[2j..2j+2]) * x[j], portable.
pub fn dot_bf16_scalar(b: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (cb, cx) = (b.chunks_exact(32), x.chunks_exact(16));
    let w = |c: &[u8]| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
    let tail: f32 = cb.remainder().chunks_exact(2).zip(cx.remainder()).map(|(c, &xv)| w(c) * xv).sum();
    for (c, xs) in cb.zip(cx) {
        for ((a, c), &xv) in acc.iter_mut().zip(c.chunks_exact(2)).zip(xs) {
            *a += w(c) * xv;
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
pub fn dot_bf16(b: &[u8], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len().min(b.len() / 2);
    let main = n / 64 * 64;
    // SAFETY: avx512f is enabled for this build (cfg); every load reads 32 bytes of b or 16
    // floats of x below `main`, which is within both slices.
    let head = unsafe {
        let mut acc = [_mm512_setzero_ps(); 4];
        let widen = |p: *const u8| {
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)), 16))
        };
        let (mut j, dist) = (0, crate::qdot::prefetch_distance());
        while j < main {
            crate::qdot::x86::ask_ahead(b.as_ptr().wrapping_add(2 * j), dist, 2);
            for (k, a) in acc.iter_mut().enumerate() {
                let o = j + 16 * k;
                *a = _mm512_fmadd_ps(widen(b.as_ptr().add(2 * o)), _mm512_loadu_ps(x.as_ptr().add(o)), *a);
            }
            j += 64;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    };
    head + dot_bf16_scalar(&b[2 * main..2 * n], &x[main..n])
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", not(target_feature = "avx512f")))]
pub fn dot_bf16(b: &[u8], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len().min(b.len() / 2);
    let main = n / 32 * 32;
    // SAFETY: avx2 and fma are enabled for this build (cfg); every load reads 16 bytes of b or
    // 8 floats of x below `main`, which is within both slices.
    let head = unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        let widen = |p: *const u8| {
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)), 16))
        };
        let (mut j, dist) = (0, crate::qdot::prefetch_distance());
        while j < main {
            crate::qdot::x86::ask_ahead(b.as_ptr().wrapping_add(2 * j), dist, 1);
            for (k, a) in acc.iter_mut().enumerate() {
                let o = j + 8 * k;
                *a = _mm256_fmadd_ps(widen(b.as_ptr().add(2 * o)), _mm256_loadu_ps(x.as_ptr().add(o)), *a);
            }
            j += 32;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let s = _mm_hadd_ps(s, s);
        _mm_cvtss_f32(_mm_hadd_ps(s, s))
    };
    head + dot_bf16_scalar(&b[2 * main..2 * n], &x[main..n])
}

#[cfg(not(all(
    target_arch = "x86_64",
    any(target_feature = "avx512f", all(target_feature = "avx2", target_feature = "fma"))
)))]
pub use dot_bf16_scalar as dot_bf16;

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_equals_its_scalar_twin() {
        for n in [1, 15, 16, 63, 64, 65, 200, 1024, 3584] {
            let x: Vec<f32> = (0..n).map(|j| ((j * 37) % 101) as f32 / 50.0 - 1.0).collect();
            let b: Vec<u8> = (0..n)
                .flat_map(|j| half::bf16::from_f32(((j * 13) % 29) as f32 / 7.0 - 2.0).to_bits().to_le_bytes())
                .collect();
            let (a, s) = (super::dot_bf16(&b, &x), super::dot_bf16_scalar(&b, &x));
            let exact: f64 =
                (0..n).map(|j| half::bf16::from_le_bytes([b[2 * j], b[2 * j + 1]]).to_f32() as f64 * x[j] as f64).sum();
            assert!((a as f64 - exact).abs() <= 1e-4 * exact.abs().max(1.0), "n {n}: {a} vs {exact}");
            assert!((s as f64 - exact).abs() <= 1e-4 * exact.abs().max(1.0), "n {n}: scalar {s} vs {exact}");
        }
    }
}
