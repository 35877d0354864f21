//! Data parallelism around the expert-parallel layers. Every rank trains on its own slice of
//! the global batch with a replica of the non-expert weights and its shard of the experts:
//! the replicated gradients are summed over ranks and every gradient divided by the rank
//! count (the global loss is the mean of the ranks' losses); routing statistics are pooled so
//! the balancing loss sees the global batch; the gradients of an expert with several replicas
//! are summed over its replicas; `take_shard` cuts a rank's part out of a whole-model buffer.

use super::comm::{Comm, CommResult};
use super::placement::Shard;
use crate::config::BalanceScope;
use crate::moe::MoeStats;
use crate::params::Layout;
use std::sync::Arc;

/// This process's place in an expert-parallel job.
#[derive(Clone)]
pub struct Dist {
    pub comm: Arc<dyn Comm>,
    pub shard: Shard,
}

impl std::fmt::Debug for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dist {{ rank: {}, ranks: {} }}", self.shard.rank, self.shard.ranks)
    }
}

impl Dist {
    pub fn new(comm: Arc<dyn Comm>) -> Self {
        let shard = Shard::contiguous(comm.rank(), comm.size());
        Dist { comm, shard }
    }

    /// The value, or the end of the job with the error on every rank.
    fn ok<T>(&self, r: CommResult<T>) -> T {
        r.unwrap_or_else(|e| self.comm.abort(&e.to_string()))
    }

    /// True on every rank if `failed` is true on any rank.
    pub fn any_failed(&self, failed: bool) -> bool {
        let mut v = [f64::from(u8::from(failed))];
        self.mean(&mut v);
        v[0] > 0.0
    }

    /// Element-wise mean over ranks.
    pub fn mean(&self, v: &mut [f64]) {
        self.ok(self.comm.all_reduce_sum_f64(v));
        let p = self.shard.ranks as f64;
        v.iter_mut().for_each(|x| *x /= p);
    }

    /// Sums the replicated tensors' gradients over ranks and those of replicated experts over
    /// their replicas, then divides every gradient by P.
    pub fn sync_grads(&self, layout: &Layout, grads: &mut [f32]) {
        self.sync_expert_replicas(layout, grads);
        let mut run: Option<(usize, usize)> = None;
        let flush = |run: &mut Option<(usize, usize)>, grads: &mut [f32]| {
            if let Some((a, b)) = run.take() {
                self.ok(self.comm.all_reduce_sum_f32(&mut grads[a..b]));
            }
        };
        for t in &layout.tensors {
            let (a, b) = (t.span.off, t.span.off + t.span.len);
            if t.experts.is_some() {
                flush(&mut run, grads);
            } else {
                run = Some(match run {
                    Some((s, e)) if e == a => (s, b),
                    Some(r) => {
                        flush(&mut Some(r), grads);
                        (a, b)
                    }
                    None => (a, b),
                });
            }
        }
        flush(&mut run, grads);
        let inv = 1.0 / self.shard.ranks as f32;
        grads.iter_mut().for_each(|g| *g *= inv);
    }

    /// Sums the gradient of every expert with several replicas over its replicas (all ranks
    /// take part in one all-reduce per expert tensor that has replicated experts).
    fn sync_expert_replicas(&self, layout: &Layout, grads: &mut [f32]) {
        for t in &layout.tensors {
            let Some(ex) = &t.experts else { continue };
            // [X] the replicated experts, in id order; buf [X, per-expert]
            let shared = &ex.replicated;
            if shared.is_empty() {
                continue;
            }
            let n = t.per_expert();
            let mut buf = vec![0.0f32; shared.len() * n];
            let g = t.span.of_mut(grads);
            let mine = || ex.slots.iter().enumerate().filter_map(|(j, x)| Some((j, shared.binary_search(x).ok()?)));
            for (j, i) in mine() {
                buf[i * n..(i + 1) * n].iter_mut().zip(&g[j * n..(j + 1) * n]).for_each(|(b, &v)| *b += v);
            }
            self.ok(self.comm.all_reduce_sum_f32(&mut buf));
            for (j, i) in mine() {
                g[j * n..(j + 1) * n].copy_from_slice(&buf[i * n..(i + 1) * n]);
            }
        }
    }

    /// Squared norm of the whole model's gradient: the replicated part once, the expert
    /// shards summed over ranks (each expert once, from its first replica).
    pub fn grad_norm_sq(&self, layout: &Layout, grads: &[f32]) -> f64 {
        let mut parts = [0.0f64; 2];
        let sq = moe_kernels::float::sum_sq_f64;
        for t in &layout.tensors {
            match &t.experts {
                None => parts[0] += sq(t.span.of(grads)),
                Some(ex) => {
                    let slots = t.span.of(grads).chunks_exact(t.per_expert());
                    parts[1] += slots.zip(&ex.primary).filter(|(_, &p)| p).map(|(g, _)| sq(g)).sum::<f64>();
                }
            }
        }
        let mut ex = [parts[1]];
        self.ok(self.comm.all_reduce_sum_f64(&mut ex));
        parts[0] + ex[0]
    }

    /// Pools the routing statistics of every MoE layer over ranks: expert loads, drops, and the
    /// mean z-loss and entropy always; for the global and per-layer balancing scopes also the
    /// token count and mean affinities, so the Switch loss and its gradient are those of the
    /// global batch (the per-sequence scope is local to each sequence).
    pub fn pool_stats(&self, stats: Vec<&mut MoeStats>, scope: BalanceScope) {
        let mut buf = pack_stats(&stats, self.shard.ranks);
        self.ok(self.comm.all_reduce_sum_f64(&mut buf));
        unpack_stats(&buf, stats, scope);
    }
}

/// The routing statistics of one of `parts` equal parts of a batch (a rank's or a replica's)
/// as numbers whose element-wise sum over the parts is the pooled statistics: counts as they
/// are, mean affinities, z-loss and entropy divided by `parts`.
pub fn pack_stats(stats: &[&mut MoeStats], parts: usize) -> Vec<f64> {
    let p = parts as f64;
    let mut buf = vec![];
    for s in stats {
        buf.extend(s.tokens_per_expert.iter().chain(&s.kept_per_expert).map(|&c| c as f64));
        buf.extend([s.assignments as f64, s.dropped as f64, s.tokens as f64]);
        buf.extend(s.mean_probs.iter().map(|&x| x / p));
        buf.extend([s.z_loss / p, s.entropy / p]);
    }
    buf
}

/// Writes statistics summed by [`pack_stats`] back: expert loads, drops, z-loss and entropy
/// always; the token count and mean affinities for the global and per-layer scopes.
pub fn unpack_stats(buf: &[f64], stats: Vec<&mut MoeStats>, scope: BalanceScope) {
    let pooled = scope != BalanceScope::Sequence;
    let mut it = buf.iter().copied();
    for s in stats {
        let e = s.tokens_per_expert.len();
        for c in s.tokens_per_expert.iter_mut().chain(s.kept_per_expert.iter_mut()) {
            *c = it.next().unwrap_or(0.0) as u32;
        }
        s.assignments = it.next().unwrap_or(0.0) as usize;
        s.dropped = it.next().unwrap_or(0.0) as usize;
        let tokens = it.next().unwrap_or(0.0) as usize;
        let probs: Vec<f64> = it.by_ref().take(e).collect();
        if pooled {
            s.tokens = tokens;
            s.mean_probs = probs;
        }
        s.z_loss = it.next().unwrap_or(0.0);
        s.entropy = it.next().unwrap_or(0.0);
    }
}

/// The shard (layout `local`) of a whole-model buffer (layout `full`).
pub fn take_shard(full: &Layout, local: &Layout, buf: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; local.total];
    for (ft, lt) in full.tensors.iter().zip(&local.tensors) {
        let whole = ft.span.of(buf);
        match &lt.experts {
            None => lt.span.of_mut(&mut out).copy_from_slice(whole),
            Some(ex) => {
                let n = lt.per_expert();
                for (slot, &x) in lt.span.of_mut(&mut out).chunks_exact_mut(n).zip(&ex.slots) {
                    slot.copy_from_slice(&whole[x * n..(x + 1) * n]);
                }
            }
        }
    }
    out
}
