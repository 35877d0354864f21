//! Inference benchmark pieces: prefill and decode timings of a model, the bytes of weights a
//! decoded token reads (every shared matrix, the top-k experts of each MoE layer, one
//! embedding row), and the machine's memory read bandwidth, to say how close decoding comes to
//! its bound (bytes per token x tokens/s / bandwidth).

use crate::load::{Attn, FfnW};
use crate::model::{Cache, Model};
use crate::weight::Weight;
use crate::Result;
use rayon::prelude::*;
use std::time::Instant;

/// Bytes of weights one decoded token reads.
pub fn active_bytes_per_token(m: &Model) -> u64 {
    let b = |w: &Weight| w.bytes() as u64;
    let k = m.spec.moe.top_k as u64;
    let mut total = b(&m.w.lm_head.w) + (b(&m.w.embed) / m.spec.vocab.max(1) as u64);
    for l in &m.w.layers {
        total += match &l.attn {
            Attn::Std { q, k, v, o, .. } => [q, k, v, o].iter().map(|x| b(&x.w)).sum::<u64>(),
            Attn::Mla { q_a, q, kv_a, kv_b, o, .. } => {
                q_a.as_ref().map_or(0, |(x, _)| b(&x.w)) + [q, kv_a, kv_b, o].iter().map(|x| b(&x.w)).sum::<u64>()
            }
        };
        total += match &l.ffn {
            FfnW::Dense(e) => e.weights().iter().map(|w| b(w)).sum::<u64>(),
            FfnW::Moe(m) => {
                let experts: Vec<u64> =
                    m.experts.iter().flatten().map(|e| e.weights().iter().map(|w| b(w)).sum()).collect();
                let mean = experts.iter().sum::<u64>() / experts.len().max(1) as u64;
                let shared = m.shared.as_ref().map_or(0, |e| e.weights().iter().map(|w| b(w)).sum::<u64>());
                b(&m.router.w) + shared + k * mean
            }
        };
    }
    total
}

/// Makes every weight resident (one read per page), so timings do not include page faults.
pub fn touch_weights(m: &Model) {
    for (name, e) in &m.store.entries {
        if let Ok(w) = m.store.weight(name, &e.shape) {
            w.touch();
        }
    }
    for l in &m.w.layers {
        if let FfnW::Moe(moe) = &l.ffn {
            moe.experts.iter().flatten().flat_map(|e| e.weights()).for_each(|w| {
                w.touch();
            });
        }
    }
}

/// Memory read bandwidth in GB/s: the median of 5 passes summing a 1 GiB buffer on all threads.
pub fn read_bandwidth_gbs() -> f64 {
    let buf: Vec<u64> = (0..(1u64 << 27)).collect();
    let mut rates: Vec<f64> = (0..5)
        .map(|_| {
            let t0 = Instant::now();
            let s: u64 = buf.par_chunks(1 << 16).map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x))).sum();
            std::hint::black_box(s);
            (buf.len() * 8) as f64 / t0.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[2]
}

/// Deterministic token ids below `vocab`.
fn ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = moe_engine::rng::Rng::new(seed);
    (0..n).map(|_| rng.below(vocab) as u32).collect()
}

/// Seconds of one prefill of `n` tokens (logits of the last position only).
pub fn time_prefill(m: &Model, n: usize, seed: u64) -> Result<f64> {
    let prompt = ids(n, m.spec.vocab, seed);
    let t0 = Instant::now();
    m.forward(&prompt, &mut Cache::new(&m.spec), false)?;
    Ok(t0.elapsed().as_secs_f64())
}

/// Seconds per token of decoding `n` tokens greedily after a prompt of `depth` tokens (at
/// least one; prefilled in chunks of 512, as a server does), the prompt not timed.
pub fn time_decode(m: &Model, n: usize, seed: u64, depth: usize) -> Result<f64> {
    let mut cache = Cache::new(&m.spec);
    let mut logits = vec![];
    for chunk in ids(depth.max(1), m.spec.vocab, seed).chunks(512) {
        logits = m.forward(chunk, &mut cache, false)?;
    }
    let t0 = Instant::now();
    for _ in 0..n {
        let next = moe_engine::generate::argmax(&logits);
        logits = m.forward(&[next], &mut cache, false)?;
    }
    Ok(t0.elapsed().as_secs_f64() / n.max(1) as f64)
}
