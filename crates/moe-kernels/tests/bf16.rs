//! The bf16 matrix product, on each kernel this CPU has (AMX tiles, AVX512-BF16 dot products),
//! against the naive product of the same bf16-rounded operands (f64 sums): shapes that are and
//! are not multiples of the 32-block (and of the AVX512-BF16 kernel's row pieces of 8), odd K,
//! transposed views, strided destinations, accumulation (in place for full 32 x 32 blocks),
//! padding written over a previous product's leftovers. A kernel the CPU lacks is skipped with a
//! message.
#![cfg(target_arch = "x86_64")]

use moe_kernels::bf16::{from_bf16, matmul_bf16, to_bf16, Kernel};
use moe_kernels::matmul::Mat;

fn data(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 / 500.0 - 1.0) * 1.7).collect()
}

#[test]
fn bf16_matmul_matches_naive_on_every_kernel() {
    for kernel in [Kernel::Amx, Kernel::Dpbf16] {
        if kernel.available() {
            check(kernel);
        } else {
            let note = format!("bf16 matmul: the {kernel:?} kernel is not on this CPU, check skipped\n");
            eprint!("{note}");
            record_skip(&note);
        }
    }
}

fn check(kernel: Kernel) {
    // Before each product, one of NaNs: the pack buffers it leaves behind (reused by the next
    // product) hold NaN wherever that product fails to write its padding, and 0 x NaN spoils a sum.
    let nan = vec![f32::NAN; 256 * 384];
    let mut sink = vec![0f32; 256 * 256];
    let (pa, pb) = (Mat::new(&nan, 256, 384), Mat::new(&nan, 384, 256));
    for &(m, k, n, ta, tb, acc) in &[
        (32, 32, 32, false, false, false),
        (64, 96, 64, false, true, false),
        (1, 5, 3, false, false, false),
        (37, 70, 45, true, false, true),
        (100, 384, 77, true, true, true),
        (256, 64, 256, false, true, false),
        // full 32-column blocks of B with an odd K (row-major B) and a K tail past 32 (B = W^T)
        (40, 45, 64, false, false, true),
        (33, 77, 64, false, true, false),
        // row counts ending inside row pieces of a block (pieces of 8), column edges of 1 and 17
        (11, 64, 17, false, false, true),
        (13, 33, 1, false, true, true),
        (25, 64, 48, true, false, false),
        (63, 96, 96, false, false, true),
    ] {
        unsafe { matmul_bf16(kernel, sink.as_mut_ptr(), 256, pa, pb, false) };
        let (a, b) = (data(m * k, 1), data(k * n, 2));
        let av = if ta { Mat::new(&a, k, m).t() } else { Mat::new(&a, m, k) };
        let bv = if tb { Mat::new(&b, n, k).t() } else { Mat::new(&b, k, n) };
        let rs = n + 3;
        let init = data(m * rs, 3);
        let mut dst = init.clone();
        unsafe { matmul_bf16(kernel, dst.as_mut_ptr(), rs, av, bv, acc) };
        let r = |x: f32| from_bf16(to_bf16(x)) as f64;
        for i in 0..m {
            for j in 0..n {
                let mut s: f64 =
                    (0..k).map(|p| r(av.data[i * av.rs + p * av.cs]) * r(bv.data[p * bv.rs + j * bv.cs])).sum();
                if acc {
                    s += init[i * rs + j] as f64;
                }
                let got = dst[i * rs + j] as f64;
                assert!((got - s).abs() <= 1e-4 * (1.0 + s.abs()), "{kernel:?} ({m},{k},{n}) [{i},{j}]: {got} vs {s}");
            }
            // the padding columns of the strided destination are untouched
            assert_eq!(&dst[i * rs + n..i * rs + rs], &init[i * rs + n..i * rs + rs]);
        }
    }
}

#[test]
fn bf16_rounding_is_nearest_even() {
    assert_eq!(to_bf16(1.0), 0x3f80);
    assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0); // tie to even
    assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
    assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
}

/// Appends `note` to target/tmp/skipped-tests.txt, which .ci/run prints after the tests.
fn record_skip(note: &str) {
    use std::io::Write;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped-tests.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = f.write_all(note.as_bytes());
    }
}
