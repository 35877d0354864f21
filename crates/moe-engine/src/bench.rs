//! Training throughput benchmark: a few warm-up steps, then timed optimizer steps and timed
//! forward passes on random tokens; medians reported with FLOP rates.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::inspect::sizes;
use crate::rng::Rng;
use crate::train::{Precision, TrainConfig, Trainer};
use std::time::Instant;

/// Result of benchmarking one config.
#[derive(Clone, Debug)]
pub struct TrainBench {
    pub name: String,
    pub tokens_per_step: usize,
    /// Median seconds of a training step (forward + backward + AdamW).
    pub step_s: f64,
    /// Median seconds of a forward pass with loss.
    pub forward_s: f64,
    pub train_flops_per_token: f64,
    pub total_params: usize,
    pub active_params: usize,
    /// Median fp32 FMA peak of all threads (GFLOP/s), probed right after each timed training step
    /// ([`moe_kernels::peak::fma_peak_gflops`]).
    pub peak_gflops: f64,
    /// In-process data-parallel replicas the steps ran on.
    pub replicas: usize,
    /// Median over the timed training steps of the process's CPU time over wall time times the
    /// threads of the pool: the share of the cores the step kept busy (Linux; None elsewhere).
    pub busy: Option<f64>,
    /// Resident memory (MB) right after the timed training steps: weights, gradients, AdamW
    /// moments and activations of one batch (Linux; None elsewhere).
    pub train_rss_mb: Option<f64>,
}

/// User + system CPU seconds of this process so far, all threads (Linux: /proc/self/stat, in
/// clock ticks of 1/100 s; None elsewhere).
fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name: state is the 1st, utime the 12th, stime the 13th.
    let f: Vec<&str> = s.rsplit(')').next()?.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Length of one FMA peak probe (seconds), small next to a training step.
const PROBE_S: f64 = 0.05;

/// VmRSS of this process in MB.
fn rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

impl TrainBench {
    pub fn train_tokens_per_s(&self) -> f64 {
        self.tokens_per_step as f64 / self.step_s
    }
    pub fn forward_tokens_per_s(&self) -> f64 {
        self.tokens_per_step as f64 / self.forward_s
    }
    pub fn train_gflops(&self) -> f64 {
        self.train_tokens_per_s() * self.train_flops_per_token / 1e9
    }
    /// Model FLOPs utilisation of training against the peak measured in this run.
    pub fn mfu(&self) -> f64 {
        self.train_gflops() / self.peak_gflops
    }
}

/// The median of `v` (the upper one for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Benchmarks `cfg` at batch b x t: `warmup` untimed steps, then `steps` timed ones.
pub fn bench_train(
    name: &str,
    cfg: ModelConfig,
    b: usize,
    t: usize,
    warmup: usize,
    steps: usize,
    precision: Precision,
    replicas: usize,
) -> Result<TrainBench> {
    if steps == 0 {
        return Err(Error::config("the benchmark has no timed steps", "pass --steps 1 or more"));
    }
    let tc = TrainConfig {
        batch_size: b,
        seq_len: t,
        steps: (warmup + steps) as u64 + 1,
        warmup_steps: 1,
        precision,
        replicas,
        ..TrainConfig::default()
    };
    let v = cfg.vocab_size;
    let mut tr = Trainer::new(cfg.clone(), tc, "bench".into())?;
    let mut rng = Rng::new(7);
    let data: Vec<u32> = (0..b * t * 64).map(|_| rng.below(v) as u32).collect();
    let (mut times, mut peaks, mut busy) = (vec![], vec![], vec![]);
    let threads = rayon::current_num_threads() as f64;
    for i in 0..warmup + steps {
        let (t0, c0) = (Instant::now(), cpu_seconds());
        tr.step(&data)?;
        if i >= warmup {
            let wall = t0.elapsed().as_secs_f64();
            times.push(wall);
            if let (Some(c0), Some(c1)) = (c0, cpu_seconds()) {
                busy.push((c1 - c0) / (wall * threads));
            }
            peaks.push(moe_kernels::peak::fma_peak_gflops(PROBE_S));
        }
    }
    let step_s = median(times);
    let train_rss_mb = rss_mb();
    let x = &data[..b * t];
    let y = &data[1..b * t + 1];
    let mut ftimes = vec![];
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        tr.forward_loss(x, y);
        if i >= warmup {
            ftimes.push(t0.elapsed().as_secs_f64());
        }
    }
    let s = sizes(&cfg, b, t);
    Ok(TrainBench {
        name: name.into(),
        tokens_per_step: b * t,
        step_s,
        forward_s: median(ftimes),
        train_flops_per_token: s.train_flops_per_token,
        total_params: s.total_params,
        active_params: s.active_params,
        peak_gflops: median(peaks),
        replicas: tr.replicas(),
        busy: (busy.len() == steps).then(|| median(busy)),
        train_rss_mb,
    })
}
