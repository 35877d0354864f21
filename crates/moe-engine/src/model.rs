//! The decoder-only transformer: embedding, L x (RMSNorm, GQA attention with RoPE, RMSNorm,
//! dense or MoE SwiGLU block), final RMSNorm, LM head. `forward` and `backward` read like a
//! recipe over the kernels; all buffers live in `Acts` and `KvCache`, allocated once.
//! The same forward serves training (pos0 = 0, the cache holds the whole window) and KV-cache
//! decoding (new tokens appended at pos0).

use crate::config::{BalanceScope, ModelConfig};
use crate::dist::{Comm, ExpertParallel, Shard};
use crate::error::Result;
pub use crate::layer::{FfnActs, LayerActs};
use crate::layer::{Kv, LayerStep, Scratch};
use crate::linear::{GradCursor, Lin};
use crate::moe::MoeStats;
use crate::norm::{norm_backward, norm_forward};
use crate::packed::{PackedBase, Weights};
use crate::params::Layout;
use moe_kernels::cross_entropy::{cross_entropy_backward_inplace, cross_entropy_forward};
use moe_kernels::embedding::{embedding_backward, embedding_forward};
use moe_kernels::matmul::{add_bias, bias_backward};
use moe_kernels::rope::rope_tables;
use moe_kernels::Float;

/// A model: config, parameter layout and RoPE tables. Parameters are passed separately.
pub struct Model<T> {
    pub cfg: ModelConfig,
    /// Which experts this process holds (all of them unless expert-parallel).
    pub shard: Shard,
    pub layout: Layout,
    /// The frozen base's weight matrices, packed (LoRA over a bf16 or Q8_0 base); their spans
    /// in the parameter buffer are then unused.
    pub packed: Option<PackedBase>,
    /// [T_max, rope/2]
    pub(crate) cos: Vec<T>,
    pub(crate) sin: Vec<T>,
}

/// Keys and values of every layer: [B, Tcap, G, D] and [B, Tcap, G, Dv].
pub struct KvCache<T> {
    pub k: Vec<Vec<T>>,
    pub v: Vec<Vec<T>>,
    pub b: usize,
    pub cap: usize,
}

impl<T: Float> KvCache<T> {
    pub fn new(cfg: &ModelConfig, b: usize, cap: usize) -> Self {
        let s = cfg.attn_shape();
        let layers = cfg.num_hidden_layers;
        let (nk, nv) = (b * cap * s.g * s.d, b * cap * s.g * s.dv);
        KvCache { k: vec![vec![T::ZERO; nk]; layers], v: vec![vec![T::ZERO; nv]; layers], b, cap }
    }
}

/// All activations and backward scratch of one forward over B sequences of up to Tq tokens.
pub struct Acts<T> {
    pub b: usize,
    pub tq_max: usize,
    /// Tokens in the last forward (B * tq).
    pub n: usize,
    /// Seed of the router jitter noise for the next forward (training); None = no jitter.
    pub noise_seed: Option<u64>,
    /// L+1 residual streams [N, C]: the input of each layer, then the output of the last.
    pub resid: Vec<Vec<T>>,
    /// Each layer's activations, or under recomputation one set per kind of layer (MoE,
    /// dense) that the layers of that kind reuse.
    pub layers: Vec<LayerActs<T>>,
    /// [L] the set of `layers` each layer uses.
    slots: Vec<usize>,
    pub lnf: Vec<T>,
    pub rstdf: Vec<T>,
    /// [N, V] logits; the backward overwrites them with their gradient.
    pub logits: Vec<T>,
    /// [N] per-token cross-entropy.
    pub losses: Vec<T>,
    /// Activation recomputation: only the layers' inputs are kept; the backward runs each
    /// layer's forward again before its backward (`--recompute`).
    pub recompute: bool,
    /// Under recomputation, each MoE layer's routing statistics of the forward.
    saved_stats: Vec<MoeStats>,
    pub(crate) sc: Scratch<T>,
}

impl<T: Float> Acts<T> {
    pub fn new(cfg: &ModelConfig, b: usize, tq_max: usize, tcap: usize) -> Self {
        Self::build(cfg, b, tq_max, tcap, false)
    }

    /// Buffers for training with activation recomputation: one layer's activations, every
    /// layer's input.
    pub fn recomputing(cfg: &ModelConfig, b: usize, tq_max: usize, tcap: usize) -> Self {
        Self::build(cfg, b, tq_max, tcap, true)
    }

    fn build(cfg: &ModelConfig, b: usize, tq_max: usize, tcap: usize, recompute: bool) -> Self {
        let n = b * tq_max;
        let (c, v) = (cfg.hidden_size, cfg.vocab_size);
        let z = moe_kernels::buffer::zeroed::<T>;
        // under recomputation one set per kind of layer (MoE, dense) that the layers reuse
        let (layers, slots) = match recompute {
            false => {
                let all = (0..cfg.num_hidden_layers).map(|l| LayerActs::new(cfg, l, b, tq_max, tcap)).collect();
                (all, (0..cfg.num_hidden_layers).collect())
            }
            true => {
                let moe = (0..cfg.num_hidden_layers).find(|&l| cfg.is_moe_layer(l));
                let dense = (0..cfg.num_hidden_layers).find(|&l| !cfg.is_moe_layer(l));
                let kinds: Vec<usize> = moe.into_iter().chain(dense).collect();
                let sets = kinds.iter().map(|&l| LayerActs::new(cfg, l, b, tq_max, tcap)).collect();
                let slot = |l: usize| usize::from(moe.is_some() && !cfg.is_moe_layer(l));
                (sets, (0..cfg.num_hidden_layers).map(slot).collect())
            }
        };
        Acts {
            b,
            tq_max,
            n: 0,
            noise_seed: None,
            resid: (0..=cfg.num_hidden_layers).map(|_| z(n * c)).collect(),
            layers,
            slots,
            lnf: z(n * c),
            rstdf: z(2 * n),
            logits: z(n * v),
            losses: z(n),
            recompute,
            saved_stats: vec![MoeStats::default(); if recompute { cfg.num_moe_layers() } else { 0 }],
            sc: Scratch::new(cfg, b, tq_max, tcap),
        }
    }

    /// Runs every MoE layer's expert stage on the ranks of `comm` that host its experts
    /// (placements of `shard`); a layer that had a placement keeps its traffic counters.
    pub fn attach_expert_parallel(&mut self, cfg: &ModelConfig, comm: std::sync::Arc<dyn Comm>, shard: &Shard) {
        let (e, c, f) = (cfg.num_local_experts, cfg.hidden_size, cfg.moe_intermediate_size);
        let moe = self.layers.iter_mut().filter_map(|l| match &mut l.ffn {
            FfnActs::Moe(m) => Some(m),
            FfnActs::Dense { .. } => None,
        });
        for (i, m) in moe.enumerate() {
            let mut ep = ExpertParallel::new(comm.clone(), &shard.placement(i, e), c, f);
            if let Some(old) = &m.ep {
                ep.carry_counters(old);
            }
            m.ep = Some(ep);
        }
    }

    /// Mutable routing statistics of the MoE layers (expert parallelism pools them over ranks).
    pub fn moe_stats_mut(&mut self) -> Vec<&mut MoeStats> {
        if self.recompute {
            return self.saved_stats.iter_mut().collect();
        }
        self.layers
            .iter_mut()
            .filter_map(|l| match &mut l.ffn {
                FfnActs::Moe(m) => Some(&mut m.stats),
                FfnActs::Dense { .. } => None,
            })
            .collect()
    }

    /// Counters of the expert-parallel stages so far, summed over layers.
    pub fn expert_parallel_counters(&self) -> EpCounters {
        let mut c = EpCounters::default();
        for l in &self.layers {
            if let FfnActs::Moe(m) = &l.ffn {
                if let Some(ep) = &m.ep {
                    c.bytes += ep.bytes_sent;
                    c.bytes_remote += ep.bytes_sent_remote;
                    c.rows += ep.rows_processed;
                    c.comm_seconds += ep.comm_seconds;
                }
            }
        }
        c
    }

    /// Routing statistics of the MoE layers of the last forward, in layer order.
    pub fn moe_stats(&self) -> Vec<&MoeStats> {
        if self.recompute {
            return self.saved_stats.iter().collect();
        }
        self.layers
            .iter()
            .filter_map(|l| match &l.ffn {
                FfnActs::Moe(m) => Some(&m.stats),
                FfnActs::Dense { .. } => None,
            })
            .collect()
    }
}

/// What this rank's expert-parallel stages did: bytes sent in all-to-alls (all, to other
/// ranks), rows its experts processed, seconds in all-to-alls (waiting included).
#[derive(Clone, Copy, Debug, Default)]
pub struct EpCounters {
    pub bytes: u64,
    pub bytes_remote: u64,
    pub rows: u64,
    pub comm_seconds: f64,
}

/// The loss of one forward, split into its terms.
#[derive(Clone, Copy, Debug, Default)]
pub struct LossParts {
    /// Mean token cross-entropy.
    pub ce: f64,
    /// Switch load-balancing loss (before its coefficient).
    pub aux: f64,
    /// Router z-loss averaged over MoE layers (before its coefficient).
    pub z: f64,
    /// ce + aux_coef * aux + z_coef * z
    pub total: f64,
}

impl<T: Float> Model<T> {
    pub fn new(cfg: ModelConfig) -> Result<Self> {
        Self::sharded(cfg, Shard::single())
    }

    /// The model of one rank of an expert-parallel job: its layout holds the rank's experts.
    pub fn sharded(cfg: ModelConfig, shard: Shard) -> Result<Self> {
        cfg.validate()?;
        if cfg.num_local_experts > 0 {
            shard.validate(cfg.num_moe_layers(), cfg.num_local_experts)?;
        }
        let layout = Layout::sharded(&cfg, &shard);
        // over the rotated dims of a head (all of them, or MLA's rope part); a scaled schedule's
        // frequencies and cos/sin factor from `rope::Rope`
        let (t, rope) = (cfg.max_position_embeddings, cfg.attn_shape().rope);
        let (mut cos, mut sin) = (vec![T::ZERO; t * rope / 2], vec![T::ZERO; t * rope / 2]);
        match cfg.rope()? {
            None => rope_tables(&mut cos, &mut sin, t, rope, cfg.rope_theta),
            Some(r) => {
                for (p, (c, s)) in cos.chunks_exact_mut(rope / 2).zip(sin.chunks_exact_mut(rope / 2)).enumerate() {
                    for ((c, s), &fr) in c.iter_mut().zip(s.iter_mut()).zip(&r.inv_freq) {
                        let a = p as f64 * fr;
                        (*c, *s) = (T::from_f64(a.cos() * r.factor), T::from_f64(a.sin() * r.factor));
                    }
                }
            }
        }
        Ok(Model { cfg, shard, layout, packed: None, cos, sin })
    }

    /// The weights of parameters `p` (with the packed base, if any).
    pub fn weights<'a>(&'a self, p: &'a [T]) -> Weights<'a, T> {
        Weights { p, packed: self.packed.as_ref() }
    }

    /// The index of MoE layer `l` among the MoE layers.
    fn moe_index(&self, l: usize) -> usize {
        (0..l).filter(|&i| self.cfg.is_moe_layer(i)).count()
    }

    /// A fresh cursor over the gradient buffer `gr`.
    pub(crate) fn grads<'a>(&self, gr: &'a mut [T]) -> GradCursor<'a, T> {
        GradCursor::new(gr, self.layout.base_total, self.cfg.lora.is_some())
    }

    /// Runs tokens[B * tq] (B = a.b) at positions pos0.. through the model; logits land in
    /// `a.logits[..N*V]`. Keys/values are appended to `cache` at pos0.
    pub fn forward(&self, p: &[T], a: &mut Acts<T>, cache: &mut KvCache<T>, tokens: &[u32], pos0: usize) {
        let cfg = &self.cfg;
        let (b, c, v) = (a.b, cfg.hidden_size, cfg.vocab_size);
        let tq = tokens.len() / b;
        let n = b * tq;
        assert!(tq <= a.tq_max && pos0 + tq <= cache.cap && cache.b == b, "forward beyond the allocated buffers");
        let ws = self.weights(p);
        a.n = n;
        embedding_forward(&mut a.resid[0][..n * c], self.layout.embed.of(p), tokens, c);
        let em = T::from_f64(cfg.embedding_multiplier);
        if em != T::ONE {
            a.resid[0][..n * c].iter_mut().for_each(|v| *v *= em);
        }
        for l in 0..cfg.num_hidden_layers {
            let (before, after) = a.resid.split_at_mut(l + 1);
            let (x, out) = (&before[l][..n * c], &mut after[0][..n * c]);
            let la = &mut a.layers[a.slots[l]];
            let kv = Kv::Write(&mut cache.k[l], &mut cache.v[l]);
            let step = LayerStep { b, tq, pos0, cap: cache.cap, noise_seed: a.noise_seed };
            self.layer_forward(l, ws, la, x, out, kv, step);
            if a.recompute {
                if let FfnActs::Moe(m) = &la.ffn {
                    let i = self.moe_index(l);
                    a.saved_stats[i] = m.stats.clone();
                }
            }
        }
        let last = &a.resid[cfg.num_hidden_layers][..n * c];
        let (w, b) = (self.layout.norm.of(p), self.layout.norm_bias.map(|s| s.of(p)));
        norm_forward(&mut a.lnf[..n * c], &mut a.rstdf[..2 * n], last, w, b, c, cfg.rms_norm_eps);
        let head = Lin::at(ws, self.layout.lm_head, None);
        head.forward(&mut a.logits[..n * v], &a.lnf[..n * c], n, c, v, true);
        if let Some(bias) = self.layout.lm_head_bias {
            add_bias(&mut a.logits[..n * v], bias.of(p));
        }
        if cfg.logits_scaling != 1.0 {
            let inv = T::from_f64(1.0 / cfg.logits_scaling);
            a.logits[..n * v].iter_mut().for_each(|x| *x *= inv);
        }
    }

    /// Cross-entropy against targets[N] plus the auxiliary losses of the last forward.
    pub fn loss(&self, a: &mut Acts<T>, targets: &[u32]) -> LossParts {
        let (n, v) = (a.n, self.cfg.vocab_size);
        cross_entropy_forward(&mut a.losses[..n], &a.logits[..n * v], targets, v);
        let ce = a.losses[..n].iter().map(|l| l.to_f64()).sum::<f64>() / targets_counted(&targets[..n]);
        let (aux, z) = self.aux_losses(&a.moe_stats());
        let total = ce + self.cfg.router_aux_loss_coef * aux + self.cfg.router_z_loss_coef * z;
        LossParts { ce, aux, z, total }
    }

    /// (balancing loss, z-loss) from the MoE layers' statistics; (0, 0) for a dense model.
    pub fn aux_losses(&self, stats: &[&MoeStats]) -> (f64, f64) {
        if stats.is_empty() {
            return (0.0, 0.0);
        }
        let lm = stats.len() as f64;
        let z = stats.iter().map(|s| s.z_loss).sum::<f64>() / lm;
        let aux = match self.cfg.aux_loss_scope {
            BalanceScope::Layer => stats.iter().map(|s| s.switch_loss()).sum::<f64>() / lm,
            BalanceScope::Sequence => stats.iter().map(|s| s.sequence_switch_loss()).sum::<f64>() / lm,
            BalanceScope::Global => {
                let (counts, probs, rows) = pooled(stats);
                crate::moe::losses::switch_loss(&counts, &probs, rows)
            }
        };
        (aux, z)
    }

    /// dLoss/dP[s,e] of each MoE layer (coefficient included), P the per-sequence mean affinity.
    fn balance_grads(&self, stats: &[&MoeStats]) -> Vec<Vec<f64>> {
        use crate::moe::losses::switch_loss_grad;
        if stats.is_empty() {
            return vec![];
        }
        let lm = stats.len() as f64;
        let coef = self.cfg.router_aux_loss_coef;
        // A batch-level gradient g[E] on P_e = mean_s P[s,e] spreads as g / S over sequences.
        let per_seq =
            |g: &[f64], seqs: usize| (0..seqs).flat_map(|_| g.iter().map(move |v| v / seqs as f64)).collect::<Vec<_>>();
        match self.cfg.aux_loss_scope {
            BalanceScope::Layer => stats
                .iter()
                .map(|s| {
                    per_seq(
                        &switch_loss_grad(&s.tokens_per_expert, s.tokens)
                            .iter()
                            .map(|g| g * coef / lm)
                            .collect::<Vec<_>>(),
                        s.seqs,
                    )
                })
                .collect(),
            BalanceScope::Sequence => stats
                .iter()
                .map(|s| {
                    let e = s.mean_probs.len();
                    let t = s.tokens / s.seqs;
                    let scale = coef / (lm * s.seqs as f64);
                    s.seq_counts
                        .chunks(e)
                        .flat_map(|cnt| switch_loss_grad(cnt, t).into_iter().map(move |g| g * scale))
                        .collect()
                })
                .collect(),
            BalanceScope::Global => {
                // P_global = mean_l P_l, so dL/dP_l = dL/dP_global / L.
                let (counts, _, rows) = pooled(stats);
                let g: Vec<f64> = switch_loss_grad(&counts, rows).iter().map(|g| g * coef / lm).collect();
                stats.iter().map(|s| per_seq(&g, s.seqs)).collect()
            }
        }
    }

    /// Gradients of `loss` (the total) into `gr` (accumulated, layout of the parameters).
    /// `loss` must have run on `a`; the logits are overwritten.
    pub fn backward(
        &self,
        p: &[T],
        gr: &mut [T],
        a: &mut Acts<T>,
        cache: &KvCache<T>,
        tokens: &[u32],
        targets: &[u32],
    ) {
        let cfg = &self.cfg;
        let (b, n, c, v) = (a.b, a.n, cfg.hidden_size, cfg.vocab_size);
        let t = n / b;
        assert_eq!(t, cache.cap, "backward needs the training shape");
        let bal = self.balance_grads(&a.moe_stats());
        let z_scale = if bal.is_empty() { 0.0 } else { cfg.router_z_loss_coef / bal.len() as f64 };
        let scale = T::from_f64(1.0 / targets_counted(&targets[..n]));
        cross_entropy_backward_inplace(&mut a.logits[..n * v], &a.losses[..n], targets, v, scale);
        if cfg.logits_scaling != 1.0 {
            let inv = T::from_f64(1.0 / cfg.logits_scaling);
            a.logits[..n * v].iter_mut().for_each(|x| *x *= inv);
        }
        let ws = self.weights(p);
        let head = Lin::at(ws, self.layout.lm_head, None);
        let mut gc = self.grads(gr);
        let g_norm = (gc.take(self.layout.norm), gc.opt(self.layout.norm_bias));
        let (g_head, g_bias) = (gc.lin(self.layout.lm_head, None), gc.opt(self.layout.lm_head_bias));
        head.backward(&mut a.sc.dln[..n * c], g_head, &a.logits[..n * v], &a.lnf[..n * c], n, c, v, false, true);
        if let Some(db) = g_bias {
            bias_backward(db, &a.logits[..n * v]);
        }
        a.sc.dres[..n * c].fill(T::ZERO);
        let last = &a.resid[cfg.num_hidden_layers][..n * c];
        let (dres, dln, w) = (&mut a.sc.dres[..n * c], &a.sc.dln[..n * c], self.layout.norm.of(p));
        norm_backward(dres, g_norm.0, g_norm.1, dln, last, w, &a.rstdf[..2 * n], c);
        for l in (0..cfg.num_hidden_layers).rev() {
            let x = &a.resid[l][..n * c];
            let la = &mut a.layers[a.slots[l]];
            if a.recompute {
                // this layer's activations again, from its saved input (the cache holds its k, v)
                let step = LayerStep { b, tq: t, pos0: 0, cap: t, noise_seed: a.noise_seed };
                let mut out = std::mem::take(&mut a.sc.dln);
                self.layer_forward(l, ws, la, x, &mut out[..n * c], Kv::Read(&cache.k[l], &cache.v[l]), step);
                a.sc.dln = out;
            }
            let moe = self.cfg.is_moe_layer(l).then(|| (&bal[self.moe_index(l)][..], z_scale));
            self.layer_backward(l, ws, gr, la, &mut a.sc, x, (&cache.k[l], &cache.v[l]), t, moe);
        }
        // (a frozen base under LoRA has no gradient: the backward wrote only the adapters')
        if self.cfg.lora.is_none() {
            let em = T::from_f64(cfg.embedding_multiplier);
            if em != T::ONE {
                a.sc.dres[..n * c].iter_mut().for_each(|v| *v *= em);
            }
            embedding_backward(self.layout.embed.of_mut(gr), &a.sc.dres[..n * c], tokens, c);
        }
    }
}

/// Pooled (counts[E], mean probs[E], rows) over MoE layers: Hugging Face's global form.
fn pooled(stats: &[&MoeStats]) -> (Vec<u32>, Vec<f64>, usize) {
    let e = stats[0].tokens_per_expert.len();
    let (mut counts, mut probs, mut rows) = (vec![0u32; e], vec![0.0; e], 0);
    for s in stats {
        counts.iter_mut().zip(&s.tokens_per_expert).for_each(|(a, &b)| *a += b);
        probs.iter_mut().zip(&s.mean_probs).for_each(|(a, &b)| *a += b * s.tokens as f64);
        rows += s.tokens;
    }
    probs.iter_mut().for_each(|p| *p /= rows as f64);
    (counts, probs, rows)
}

/// The positions whose targets count in the mean cross-entropy (not IGNORE; at least 1, so a
/// window of prompt tokens only has loss and gradient 0).
fn targets_counted(targets: &[u32]) -> f64 {
    targets.iter().filter(|&&t| t != moe_kernels::cross_entropy::IGNORE).count().max(1) as f64
}
