//! In-process data parallelism: a micro-batch of B sequences is cut into R equal slices, one
//! per core. The replicas run at once on the global rayon pool, each on its slice against the
//! shared weights, into its own activations, KV window and gradient buffer. Between forward
//! and backward the replicas' routing statistics are pooled, as the ranks of a distributed job
//! pool theirs, so the balancing losses see the whole batch; afterwards the gradients are
//! summed and divided by R (the loss is the mean of the replicas' losses).
//!
//! Why: one GEMM split over two cores runs the step's shapes at 60-75% of their fp32 peak and
//! makes the cores wait for each other at every product; two independent replicas run their
//! GEMMs at 65-85% of each core's peak. Their work is still cut into stealable pieces (GEMM
//! row halves, attention heads, experts) that a thread runs itself unless the other is idle:
//! a core that finishes its replica first (the host slows one vCPU down, often by 10-40%)
//! takes over pieces of the other's instead of waiting. With a one-thread pool per replica the
//! cores were busy 78-99% of a step; on the shared pool, 98-100% (BENCHMARKS.md).
//! Capacity limits and expert-choice routing apply per replica, like GShard's groups.
//! The trainer's forward, loss and backward passes over its replicas are at the end.

use crate::config::{BalanceScope, ModelConfig};
use crate::dist::{pack_stats, unpack_stats};
use crate::model::{Acts, KvCache, LossParts};
use crate::train::{Trainer, NORM_CHUNK};
use rayon::prelude::*;

/// One replica's buffers.
pub(crate) struct Replica {
    pub acts: Acts<f32>,
    /// The training window's keys and values, [B/R, T] per layer.
    pub cache: KvCache<f32>,
    /// This replica's slice of the micro-batch: inputs and targets [B/R * T].
    pub x: Vec<u32>,
    pub y: Vec<u32>,
    /// Gradient buffer (layout of the parameters). Replica 0's is empty outside
    /// [`Replicas::with_grads`]: it borrows the trainer's buffer.
    pub grads: Vec<f32>,
}

/// The replicas of one training process.
pub(crate) struct Replicas {
    pub reps: Vec<Replica>,
    /// The gradient buffers of replicas after the first are all zero (they are zeroed as
    /// [`Replicas::sum_grads`] reads them; a step that stopped before that leaves them dirty).
    others_zero: bool,
}

/// The replica count used when none is asked for: the most replicas, up to one per thread of
/// the global pool, that divide the batch into equal slices.
pub fn auto_replicas(batch: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (1..=threads.min(batch)).rev().find(|&r| batch.is_multiple_of(r)).unwrap_or(1)
}

/// Seed of replica i's router jitter: replica 0 keeps the step's seed (one replica is the
/// plain single-process run); the others get their own noise.
fn replica_seed(seed: u64, i: usize) -> u64 {
    seed ^ (i as u64).wrapping_mul(0xA24BAED4963EE407)
}

impl Replicas {
    /// `r` replicas of b / r sequences of t tokens (r divides b), with gradient buffers of
    /// `params` values for replicas after the first; `recompute`: activation recomputation.
    pub fn new(cfg: &ModelConfig, b: usize, t: usize, r: usize, params: usize, recompute: bool) -> Self {
        debug_assert!(r >= 1 && b.is_multiple_of(r), "replicas must divide the batch");
        let rb = b / r;
        let reps = (0..r)
            .map(|i| Replica {
                acts: if recompute { Acts::recomputing(cfg, rb, t, t) } else { Acts::new(cfg, rb, t, t) },
                cache: KvCache::new(cfg, rb, t),
                x: vec![0; rb * t],
                y: vec![0; rb * t],
                grads: if i == 0 { vec![] } else { moe_kernels::buffer::zeroed(params) },
            })
            .collect();
        Replicas { reps, others_zero: true }
    }

    pub fn len(&self) -> usize {
        self.reps.len()
    }

    /// Runs `f` on every replica at once on the global pool; results in replica order.
    pub fn map<R: Send>(&mut self, f: impl Fn(usize, &mut Replica) -> R + Sync + Send) -> Vec<R> {
        self.reps.par_iter_mut().enumerate().map(|(i, r)| f(i, r)).collect()
    }

    /// Copies each replica's slice of the micro-batch x, y [B * T].
    pub fn load(&mut self, x: &[u32], y: &[u32]) {
        let n = x.len() / self.reps.len();
        for (i, r) in self.reps.iter_mut().enumerate() {
            r.x.copy_from_slice(&x[i * n..(i + 1) * n]);
            r.y.copy_from_slice(&y[i * n..(i + 1) * n]);
        }
    }

    /// Sets the router jitter of the next forward: `Some(seed)` in training, None otherwise.
    pub fn set_noise(&mut self, seed: Option<u64>) {
        for (i, r) in self.reps.iter_mut().enumerate() {
            r.acts.noise_seed = seed.map(|s| replica_seed(s, i));
        }
    }

    /// Pools the routing statistics of every MoE layer over the replicas (the same pooling as
    /// over ranks), so every replica sees the whole micro-batch's.
    pub fn pool_stats(&mut self, scope: BalanceScope) {
        let r = self.reps.len();
        if r == 1 {
            return;
        }
        let mut sum: Vec<f64> = vec![];
        for rep in &mut self.reps {
            let part = pack_stats(&rep.acts.moe_stats_mut(), r);
            if sum.is_empty() {
                sum = part;
            } else {
                sum.iter_mut().zip(part).for_each(|(s, p)| *s += p);
            }
        }
        for rep in &mut self.reps {
            unpack_stats(&sum, rep.acts.moe_stats_mut(), scope);
        }
    }

    /// Runs `f` with replica 0 holding `grads` (the trainer's buffer) as its gradient buffer.
    pub fn with_grads<R>(&mut self, grads: &mut Vec<f32>, f: impl FnOnce(&mut Self) -> R) -> R {
        std::mem::swap(grads, &mut self.reps[0].grads);
        let out = f(self);
        std::mem::swap(grads, &mut self.reps[0].grads);
        out
    }

    /// Zeroes the gradient buffer of replica 0, `grads` (the trainer's), and the others' unless
    /// [`Replicas::sum_grads`] already did as it read them. Only `range` is touched: the part
    /// the backward writes (`Layout::grad_range`; under LoRA the rest is never even paged in).
    pub fn zero_grads(&mut self, grads: &mut [f32], range: std::ops::Range<usize>) {
        grads[range.clone()].par_chunks_mut(NORM_CHUNK).for_each(|g| g.fill(0.0));
        if !self.others_zero {
            self.reps[1..].par_iter_mut().for_each(|r| r.grads[range.clone()].fill(0.0));
            self.others_zero = true;
        }
    }

    /// Adds the other replicas' gradients into `grads` (replica 0's; the written range), in replica order, and
    /// zeroes theirs for the next step, in one pass over chunks of NORM_CHUNK; with `norm_parts`
    /// (one per chunk), also each chunk's sum of squares of the summed gradient (the same
    /// chunks as a separate pass would use, so the norm is bitwise the same).
    pub fn sum_grads(&mut self, grads: &mut [f32], range: std::ops::Range<usize>, norm_parts: Option<&mut [f64]>) {
        let grads = &mut grads[range.clone()];
        let chunks = grads.len().div_ceil(NORM_CHUNK);
        // others[c] = the other replicas' chunk c.
        let mut others: Vec<Vec<&mut [f32]>> = (0..chunks).map(|_| vec![]).collect();
        for r in &mut self.reps[1..] {
            for (c, g) in r.grads[range.clone()].chunks_mut(NORM_CHUNK).enumerate() {
                others[c].push(g);
            }
        }
        let want_norm = norm_parts.is_some();
        let sum = |(g, others): (&mut [f32], Vec<&mut [f32]>)| -> f64 {
            for o in others {
                g.iter_mut().zip(o.iter_mut()).for_each(|(a, b)| {
                    *a += *b;
                    *b = 0.0;
                });
            }
            if want_norm {
                moe_kernels::float::sum_sq_f64(g)
            } else {
                0.0
            }
        };
        let work = grads.par_chunks_mut(NORM_CHUNK).zip(others);
        self.others_zero = true;
        match norm_parts {
            Some(parts) => work.zip(parts).for_each(|(job, part)| *part = sum(job)),
            None => work.for_each(|job| {
                sum(job);
            }),
        }
    }
}

/// A trainer's passes over its replicas.
impl Trainer {
    /// Forward of every replica on its slice of the loaded micro-batch; `noise` seeds the
    /// router jitter (training).
    pub(crate) fn forward(&mut self, noise: Option<u64>) {
        self.reps.set_noise(noise);
        let (model, params) = (&self.model, &self.params);
        self.reps.map(|_, r| model.forward(params, &mut r.acts, &mut r.cache, &r.x, 0));
    }

    /// Loss terms of the last forward, pooled over replicas and ranks; with `backward`, every
    /// replica then accumulates its gradients (replica 0 into `self.grads`).
    pub(crate) fn loss(&mut self, backward: bool) -> LossParts {
        let scope = self.model.cfg.aux_loss_scope;
        self.reps.pool_stats(scope);
        if let Some(d) = &self.dist {
            d.pool_stats(self.reps.reps[0].acts.moe_stats_mut(), scope);
        }
        let (model, params) = (&self.model, &self.params);
        self.reps.others_zero &= !backward;
        let parts = self.reps.with_grads(&mut self.grads, |reps| {
            reps.map(|_, r| {
                let parts = model.loss(&mut r.acts, &r.y);
                if backward {
                    model.backward(params, &mut r.grads, &mut r.acts, &r.cache, &r.x, &r.y);
                }
                parts
            })
        });
        // Equal slices: the micro-batch's loss is the mean of the replicas' and ranks'.
        let mut v = [0.0; 4];
        for p in &parts {
            for (a, x) in v.iter_mut().zip([p.ce, p.aux, p.z, p.total]) {
                *a += x / parts.len() as f64;
            }
        }
        if let Some(d) = &self.dist {
            d.mean(&mut v);
        }
        LossParts { ce: v[0], aux: v[1], z: v[2], total: v[3] }
    }

    /// Mean loss terms of one micro-batch of B sequences x, y [B * T] (no gradients, no jitter).
    pub fn forward_loss(&mut self, x: &[u32], y: &[u32]) -> LossParts {
        self.use_precision();
        self.reps.load(x, y);
        self.forward(None);
        self.loss(false)
    }
}
