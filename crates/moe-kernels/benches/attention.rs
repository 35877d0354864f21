//! Causal attention of the bench presets (GUIDE section 6: batch 16, T 256, 6 heads of 64),
//! forward and backward, 2 threads: milliseconds and GFLOP/s of the causal products
//! (4 T^2/2 D per head forward, 8 T^2/2 D backward). `cargo bench -p moe-kernels --bench attention`.

use moe_kernels::attention::{attention_backward, attention_forward, AttnDims};
use std::time::Instant;

mod common;
use common::median;

fn main() {
    let (b, t, h, d) = (16, 256, 6, 64);
    let s = AttnDims::causal(b, t, h, h, d);
    let fill = |n: usize, seed: usize| -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed) % 1000) as f32 / 500.0 - 1.0) * 0.5).collect()
    };
    let (q, k, v, dout) =
        (fill(b * t * h * d, 1), fill(b * t * h * d, 2), fill(b * t * h * d, 3), fill(b * t * h * d, 4));
    let (mut out, mut att) = (vec![0f32; b * t * h * d], vec![0f32; b * h * t * t]);
    let (mut dq, mut dk, mut dv) = (vec![0f32; q.len()], vec![0f32; k.len()], vec![0f32; v.len()]);
    let mut scratch = vec![0f32; b * h * t * t];
    let (mut fwd, mut bwd) = (vec![], vec![]);
    for _ in 0..21 {
        let t0 = Instant::now();
        attention_forward(&mut out, &mut att, &q, &k, &v, None, s);
        fwd.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        attention_backward(&mut dq, &mut dk, &mut dv, None, &mut scratch, &dout, &att, &q, &k, &v, s);
        bwd.push(t0.elapsed().as_secs_f64());
    }
    let causal = (b * h * t * t / 2 * d) as f64;
    let (f, bw) = (median(fwd), median(bwd));
    println!(
        "attention B={b} T={t} H={h} D={d}: forward {:.2} ms ({:.1} GFLOP/s), backward {:.2} ms ({:.1} GFLOP/s)",
        f * 1e3,
        4.0 * causal / f / 1e9,
        bw * 1e3,
        8.0 * causal / bw / 1e9
    );
}
