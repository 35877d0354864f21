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
    /// Model FLOPs of a training token: 3x the forward's (the active matrix products, and the
    /// causal half of the attention products).
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
    /// Peak resident memory (MB) of the process over the config's setup and training steps:
    /// weights, gradients, AdamW moments and activations of one batch (Linux, where the peak is
    /// reset before each config; one config at a time; None otherwise).
    pub train_rss_mb: Option<f64>,
    /// The precision of the matrix products, and why (`Trainer::precision_line`).
    pub precision: String,
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

/// Resets the peak resident memory of this process to the current one (Linux 4.0+); false when
/// it cannot.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident memory (VmHWM) of this process in MB.
fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
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

/// Median seconds of `reps` calls of `f` after `warmup` untimed ones (micro-benchmarks).
pub fn median_secs(warmup: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    (0..warmup).for_each(|_| f());
    median(
        (0..reps.max(1))
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// How to run a training benchmark.
#[derive(Clone, Copy, Debug)]
pub struct BenchSpec {
    /// Batch of sequences and sequence length.
    pub b: usize,
    pub t: usize,
    /// Untimed steps, then timed ones (training, then forward passes).
    pub warmup: usize,
    pub steps: usize,
    pub precision: Precision,
    pub replicas: usize,
}

/// One config under measurement: its trainer, random tokens and the times so far.
struct Run {
    name: String,
    cfg: ModelConfig,
    tr: Trainer,
    data: Vec<u32>,
    times: Vec<f64>,
    peaks: Vec<f64>,
    busy: Vec<f64>,
    ftimes: Vec<f64>,
}

impl Run {
    fn new(name: &str, cfg: ModelConfig, s: &BenchSpec) -> Result<Self> {
        let tc = TrainConfig {
            batch_size: s.b,
            seq_len: s.t,
            steps: (s.warmup + s.steps) as u64 + 1,
            warmup_steps: 1,
            precision: s.precision,
            replicas: s.replicas,
            ..TrainConfig::default()
        };
        let v = cfg.vocab_size;
        let tr = Trainer::new(cfg.clone(), tc, "bench".into())?;
        let mut rng = Rng::new(7);
        let data: Vec<u32> = (0..s.b * s.t * 64).map(|_| rng.below(v) as u32).collect();
        let (times, peaks, busy, ftimes) = (vec![], vec![], vec![], vec![]);
        Ok(Run { name: name.into(), cfg, tr, data, times, peaks, busy, ftimes })
    }

    /// One optimizer step; when `timed`, its time, the busy share of the cores and then the FMA
    /// peak probe are recorded.
    fn train_step(&mut self, timed: bool) -> Result<()> {
        let (t0, c0) = (Instant::now(), cpu_seconds());
        self.tr.step(&self.data)?;
        if timed {
            let wall = t0.elapsed().as_secs_f64();
            self.times.push(wall);
            if let (Some(c0), Some(c1)) = (c0, cpu_seconds()) {
                self.busy.push((c1 - c0) / (wall * rayon::current_num_threads() as f64));
            }
            self.peaks.push(moe_kernels::peak::fma_peak_gflops(PROBE_S));
        }
        Ok(())
    }

    /// One forward pass with loss (no gradients) on the first b x t tokens.
    fn forward(&mut self, timed: bool, s: &BenchSpec) {
        let n = s.b * s.t;
        let t0 = Instant::now();
        self.tr.forward_loss(&self.data[..n], &self.data[1..n + 1]);
        if timed {
            self.ftimes.push(t0.elapsed().as_secs_f64());
        }
    }

    fn finish(self, s: &BenchSpec, train_rss_mb: Option<f64>) -> TrainBench {
        let z = sizes(&self.cfg, s.b, s.t);
        TrainBench {
            name: self.name,
            tokens_per_step: s.b * s.t,
            step_s: median(self.times),
            forward_s: median(self.ftimes),
            train_flops_per_token: z.train_flops_per_token,
            total_params: z.total_params,
            active_params: z.active_params,
            peak_gflops: median(self.peaks),
            replicas: self.tr.replicas(),
            busy: (self.busy.len() == s.steps).then(|| median(self.busy)),
            train_rss_mb,
            precision: self.tr.precision_line(),
        }
    }
}

/// Benchmarks each (name, config) at batch b x t: `warmup` untimed steps, then `steps` timed
/// ones, then as many forward passes. One config after the other, each alone in memory (its
/// resident memory is its own), or with `interleave` all at once, one step of each in turn, so
/// that every config sees the same minutes of a shared machine (their step times compare;
/// resident memory is then the sum and not reported).
pub fn bench_train(configs: Vec<(String, ModelConfig)>, s: BenchSpec, interleave: bool) -> Result<Vec<TrainBench>> {
    if s.steps == 0 {
        return Err(Error::config("the benchmark has no timed steps", "pass --steps 1 or more"));
    }
    // The configs that share the process: each alone, or all of them.
    let groups: Vec<Vec<_>> = if interleave { vec![configs] } else { configs.into_iter().map(|c| vec![c]).collect() };
    let mut out = vec![];
    for group in groups {
        // the previous group's buffers are freed: its peak must not count for this one
        let reset = !interleave && reset_peak_rss();
        let mut runs = group.into_iter().map(|(n, c)| Run::new(&n, c, &s)).collect::<Result<Vec<_>>>()?;
        for i in 0..s.warmup + s.steps {
            for r in &mut runs {
                r.train_step(i >= s.warmup)?;
            }
        }
        let rss = if reset { peak_rss_mb() } else { None };
        for i in 0..s.warmup + s.steps {
            for r in &mut runs {
                r.forward(i >= s.warmup, &s);
            }
        }
        out.extend(runs.into_iter().map(|r| r.finish(&s, rss)));
    }
    Ok(out)
}
