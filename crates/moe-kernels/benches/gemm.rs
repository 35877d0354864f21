//! GEMM candidates on the MoE training shapes of bench-moe8x2 (GUIDE section 6): the `gemm`
//! crate (with its x86-v4 AVX-512 kernels, 1 and 2 threads) against `matrixmultiply` and our
//! naive twin, and the bf16 product (AMX or AVX512-BF16, when the CPU has one); then the expert
//! bins of a small MoE (tens to hundreds of rows, width 128) on one thread: the `gemm` crate
//! against what single-threaded products use (the few-row kernel, `small_gemm`, for the forward
//! x@W^T on AVX-512; the `gemm` crate otherwise). Prints GFLOP/s (median of repetitions) and the measured fp32 FMA peak.
//! `cargo bench -p moe-kernels --bench gemm`.

use moe_kernels::matmul::{matmul, matmul_naive, Mat};
use std::time::Instant;

mod common;
use common::median;

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() {
    // (name, M, K, N, a transposed, b transposed): dst[M,N] = op(a) @ op(b).
    let shapes = [
        ("expert up/gate x@W^T", 1024, 384, 512, false, true),
        ("expert down h@W^T", 1024, 512, 384, false, true),
        ("expert dW = dY^T@X", 512, 1024, 384, true, false),
        ("expert dX = dY@W", 1024, 512, 384, false, false),
        ("attn proj x@W^T", 4096, 384, 384, false, true),
        ("lm head x@W^T", 4096, 384, 4096, false, true),
    ];
    let pool1 = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let pool2 = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    println!(
        "{:<22} {:>16} {:>12} {:>12} {:>16} {:>8}",
        "shape (M,K,N)", "", "gemm 1T", "gemm 2T", "matrixmultiply", "naive"
    );
    for (name, m, k, n, ta, tb) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1).collect();
        let av = if ta { Mat::new(&a, k, m).t() } else { Mat::new(&a, m, k) };
        let bv = if tb { Mat::new(&b, n, k).t() } else { Mat::new(&b, k, n) };
        let mut c = vec![0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        let g1 = pool1.install(|| time(9, || matmul(&mut c, av, bv, false, true)));
        let g2 = pool2.install(|| time(9, || matmul(&mut c, av, bv, false, true)));
        // two single-threaded GEMMs on the halves of M (or of N when M is small)
        let split = pool2.install(|| {
            time(9, || {
                let h = m / 2;
                let (c0, c1) = c.split_at_mut(h * n);
                let a0 = Mat { rows: h, ..av };
                let a1 = Mat { data: &av.data[h * av.rs..], rows: m - h, ..av };
                rayon::join(|| matmul(c0, a0, bv, false, false), || matmul(c1, a1, bv, false, false));
            })
        });
        let bf16 = if moe_kernels::matmul::set_bf16_matmul(true) {
            let t = pool2.install(|| time(9, || matmul(&mut c, av, bv, false, true)));
            moe_kernels::matmul::set_bf16_matmul(false);
            flops / t / 1e9
        } else {
            f64::NAN
        };
        println!("  split-M 2T: {:.1}   bf16 2T: {:.1}", flops / split / 1e9, bf16);
        let mm = time(9, || unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                av.data.as_ptr(),
                av.rs as isize,
                av.cs as isize,
                bv.data.as_ptr(),
                bv.rs as isize,
                bv.cs as isize,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            )
        });
        let nv = if m * k * n <= 1024 * 512 * 384 { time(1, || matmul_naive(&mut c, av, bv, false)) } else { f64::NAN };
        let gf = |s: f64| flops / s / 1e9;
        println!(
            "{:<22} {:>16} {:>12.1} {:>12.1} {:>16.1} {:>8.1}",
            name,
            format!("({m},{k},{n})"),
            gf(g1),
            gf(g2),
            gf(mm),
            gf(nv)
        );
    }
    println!(
        "\n{:<22} {:>16} {:>12} {:>12} {:>8}",
        "expert bin, 1 thread", "(M,K,N)", "gemm crate", "few-row", "ratio"
    );
    for rows in [8, 48, 96, 192, 384] {
        let (c, f) = (128, 128);
        let x: Vec<f32> = (0..rows * c).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
        let w: Vec<f32> = (0..f * c).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1).collect();
        let dy: Vec<f32> = (0..rows * f).map(|i| ((i * 3 % 7) as f32 - 3.0) * 0.1).collect();
        // (name, a, b, M, K, N) of the forward and the two backward products
        let forms = [
            ("x@W^T", Mat::new(&x, rows, c), Mat::new(&w, f, c).t(), rows, c, f),
            ("dY@W", Mat::new(&dy, rows, f), Mat::new(&w, f, c), rows, f, c),
            ("dW = dY^T@X", Mat::new(&dy, rows, f).t(), Mat::new(&x, rows, c), f, rows, c),
        ];
        for (name, av, bv, m, k, n) in forms {
            let mut out = vec![0f32; m * n];
            let flops = 2.0 * (m * k * n) as f64;
            // matmul(.., parallel = true) on one thread is the gemm crate; parallel = false
            // takes the few-row kernel where it applies.
            let crate_s = pool1.install(|| time(301, || matmul(&mut out, av, bv, false, true)));
            let small_s = pool1.install(|| time(301, || matmul(&mut out, av, bv, false, false)));
            let gf = |s: f64| flops / s / 1e9;
            let shape = format!("({m},{k},{n})");
            println!("{name:<22} {shape:>16} {:>12.1} {:>12.1} {:>7.2}x", gf(crate_s), gf(small_s), crate_s / small_s);
        }
    }
    let peak = |pool: &rayon::ThreadPool| pool.install(|| moe_kernels::peak::fma_peak_gflops(0.2));
    println!(
        "GFLOP/s; measured fp32 FMA peak now: {:.0} on 1 thread, {:.0} on 2 (bf16 dot products: up to 2x on AVX512-BF16)",
        peak(&pool1),
        peak(&pool2)
    );
}
