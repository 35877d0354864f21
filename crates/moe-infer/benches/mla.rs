//! Decode attention of one MLA layer at a long context, from the latent cache against the
//! expanded per-head cache that moe kept before (2026-12-07): DeepSeek-V3's head sizes (kv rank
//! 512, rope 64, nope 128, v 128) with 16 and 128 heads, one new query after L cached positions.
//! Expanded: keys [L, H, 192] and values [L, H, 128], the usual attention, plus the new
//! position's up-projection (every decode step ran it). Latent: rows
//! [L, 576], the up-projections absorbed (`moe_infer::mla`). Prints the median time of each, the
//! ratio, and the cache bytes per layer. Both run on all threads, as decode does.
//! `cargo bench -p moe-infer --bench mla`.

use moe_engine::rng::Rng;
use moe_infer::attention::{attend, Dims};
use moe_infer::config::Mla;
use moe_infer::linear::Linear;
use moe_infer::mla::attend_latent;
use moe_infer::weight::{Dtype, Weight};

fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// Median seconds of 9 calls after one warm-up call.
fn time(f: impl FnMut()) -> f64 {
    moe_engine::bench::median_secs(1, 9, f)
}

fn main() {
    let m = Mla { q_lora: Some(1536), kv_lora: 512, nope: 128, rope: 64, v: 128 };
    let (dq, dl) = (m.nope + m.rope, m.kv_lora + m.rope);
    let scale = 1.0 / (dq as f32).sqrt();
    let mut rng = Rng::new(1);
    println!(
        "| heads | context | expanded cache MB/layer | latent cache MB/layer | expanded ms | latent ms | speed-up |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for h in [16, 128] {
        let wb = randn(&mut rng, h * (m.nope + m.v) * m.kv_lora);
        let bytes: Vec<u8> = wb.iter().flat_map(|v| v.to_le_bytes()).collect();
        let kv_b = Linear::new(Weight::from_bytes(bytes, Dtype::F32, h * (m.nope + m.v), m.kv_lora).unwrap(), None);
        for l in [1024, 4096] {
            let q = randn(&mut rng, h * dq);
            let (k, v) = (randn(&mut rng, l * h * dq), randn(&mut rng, l * h * m.v));
            let lat = randn(&mut rng, l * dl);
            let mut out = vec![0.0f32; h * m.v];
            let d = Dims { t: 1, pos0: l - 1, h, g: h, dk: dq, dv: m.v };
            // The expanded decode also up-projected the new position's latent every step.
            let mut kv_new = vec![0.0f32; h * (m.nope + m.v)];
            let expanded = time(|| {
                kv_b.forward(&lat[..m.kv_lora], 1, &mut kv_new);
                attend(&mut out, &q, &k, &v, d, scale, None, None)
            });
            let latent = time(|| attend_latent(&mut out, &q, &lat, l - 1, 1, h, &m, &kv_b, scale));
            let mb = |floats: usize| floats as f64 * 4.0 / 1e6;
            println!(
                "| {h} | {l} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2}x |",
                mb(l * h * (dq + m.v)),
                mb(l * dl),
                expanded * 1e3,
                latent * 1e3,
                expanded / latent
            );
        }
    }
}
