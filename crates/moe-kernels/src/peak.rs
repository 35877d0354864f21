//! The fp32 FMA throughput the machine gives right now: every rayon thread runs 24 independent
//! chains of fused multiply-adds on registers (16 lanes on AVX-512), with no memory traffic.
//! Benchmarks divide their FLOP rate by it (MFU against the measured peak), so a core that the
//! host shares with other work at that moment shows up in the peak too.

use std::hint::black_box;
use std::time::Instant;

/// Independent FMA chains: enough to cover the FMA latency on two ports.
const CHAINS: usize = 24;

/// FLOP/s of `iters` rounds of CHAINS FMAs on one thread (one FMA of 16 lanes = 32 FLOPs).
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
fn thread_flops(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    // SAFETY: the cfg above guarantees AVX-512F; only register intrinsics are used.
    unsafe {
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        let m = black_box(_mm512_set1_ps(0.999_999));
        let c = black_box(_mm512_set1_ps(1e-7));
        let t = Instant::now();
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, m, c);
            }
        }
        black_box(acc);
        (iters * CHAINS * 32) as f64 / t.elapsed().as_secs_f64()
    }
}

/// Portable fallback: the compiler vectorises the lanes as wide as the target allows.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
fn thread_flops(iters: usize) -> f64 {
    let mut acc = [[1.0f32; 16]; CHAINS];
    let (m, c) = (black_box(0.999_999f32), black_box(1e-7f32));
    let t = Instant::now();
    for _ in 0..iters {
        for a in acc.iter_mut() {
            for x in a.iter_mut() {
                *x = x.mul_add(m, c);
            }
        }
    }
    black_box(acc);
    (iters * CHAINS * 32) as f64 / t.elapsed().as_secs_f64()
}

/// fp32 GFLOP/s of all rayon threads running FMA chains at once (about `seconds` long on a
/// machine near 165 GFLOP/s per core; the rate, not the duration, is what counts).
pub fn fma_peak_gflops(seconds: f64) -> f64 {
    let iters = (seconds * 165e9 / (CHAINS * 32) as f64).max(1.0) as usize;
    rayon::broadcast(|_| thread_flops(iters)).iter().sum::<f64>() / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_rates_are_positive_and_finite() {
        let one = thread_flops(10_000);
        assert!(one.is_finite() && one > 0.0);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let all = pool.install(|| fma_peak_gflops(0.002));
        assert!(all.is_finite() && all > 0.0);
    }
}
