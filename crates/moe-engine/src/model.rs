//! The decoder-only transformer: embedding, L x (RMSNorm, GQA attention with RoPE, RMSNorm,
//! dense or MoE SwiGLU block), final RMSNorm, LM head. `forward` and `backward` read like a
//! recipe over the kernels; all buffers live in `Acts` and `KvCache`, allocated once.
//! The same forward serves training (pos0 = 0, the cache holds the whole window) and KV-cache
//! decoding (new tokens appended at pos0).

use crate::config::{BalanceScope, ModelConfig};
use crate::dist::{Comm, ExpertParallel, Shard};
use crate::error::Result;
use crate::ffn::{mlp_backward, mlp_forward, MlpActs, MlpGrads, MlpWeights};
use crate::linear::{GradCursor, Lin};
use crate::packed::{PackedBase, Weights};
use crate::moe::router::{RouterGrads, RouterWeights};
use crate::moe::shared::{SharedGrads, SharedWeights};
use crate::moe::{moe_backward, moe_forward, MoeActs, MoeGrads, MoeSpec, MoeStats, MoeWeights};
use crate::params::{FfnSpans, Layout, MoeSpans};
use crate::qkv::{qkv_backward, qkv_forward, QkNormActs, Qkv};
use moe_kernels::attention::{attention_backward, attention_forward, AttnDims};
use moe_kernels::cross_entropy::{cross_entropy_backward_inplace, cross_entropy_forward};
use moe_kernels::embedding::{embedding_backward, embedding_forward};
use moe_kernels::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
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
    /// [T_max, D/2]
    cos: Vec<T>,
    sin: Vec<T>,
}

/// Keys and values of every layer: [B, Tcap, G, D] each.
pub struct KvCache<T> {
    pub k: Vec<Vec<T>>,
    pub v: Vec<Vec<T>>,
    pub b: usize,
    pub cap: usize,
}

impl<T: Float> KvCache<T> {
    pub fn new(cfg: &ModelConfig, b: usize, cap: usize) -> Self {
        let n = b * cap * cfg.num_key_value_heads * cfg.head_dim();
        let layers = cfg.num_hidden_layers;
        KvCache { k: vec![vec![T::ZERO; n]; layers], v: vec![vec![T::ZERO; n]; layers], b, cap }
    }
}

/// Feed-forward activations of one layer.
pub enum FfnActs<T> {
    /// g, u, h [N,F]
    Dense {
        g: Vec<T>,
        u: Vec<T>,
        h: Vec<T>,
    },
    Moe(Box<MoeActs<T>>),
}

/// Saved activations of one layer for up to N = B * Tq tokens.
pub struct LayerActs<T> {
    pub ln1: Vec<T>,
    pub rstd1: Vec<T>,
    /// [N, H*D] rotated queries.
    pub q: Vec<T>,
    /// [N, G*D] new rotated keys / values before they enter the cache.
    pub k_new: Vec<T>,
    pub v_new: Vec<T>,
    /// [B, H, Tq, Tcap] attention probabilities.
    pub att: Vec<T>,
    /// [N, H*D] attention output before o_proj.
    pub attn: Vec<T>,
    /// [N, C] residual stream after attention.
    pub mid: Vec<T>,
    pub ln2: Vec<T>,
    pub rstd2: Vec<T>,
    pub ffn: FfnActs<T>,
    /// The q/k norms' saved values (empty without them).
    pub qk_norm: QkNormActs<T>,
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
    pub layers: Vec<LayerActs<T>>,
    pub lnf: Vec<T>,
    pub rstdf: Vec<T>,
    /// [N, V] logits; the backward overwrites them with their gradient.
    pub logits: Vec<T>,
    /// [N] per-token cross-entropy.
    pub losses: Vec<T>,
    // Backward scratch.
    dres: Vec<T>,
    dln: Vec<T>,
    dq: Vec<T>,
    dk: Vec<T>,
    dv: Vec<T>,
    dattn: Vec<T>,
    /// [B, G, T, T] attention backward scratch.
    datt: Vec<T>,
    dense_scratch: [Vec<T>; 3],
}

impl<T: Float> Acts<T> {
    pub fn new(cfg: &ModelConfig, b: usize, tq_max: usize, tcap: usize) -> Self {
        let n = b * tq_max;
        let (c, v, d) = (cfg.hidden_size, cfg.vocab_size, cfg.head_dim());
        let (hd, gd) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
        let z = moe_kernels::buffer::zeroed::<T>;
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| LayerActs {
                ln1: z(n * c),
                rstd1: z(n),
                q: z(n * hd),
                k_new: z(n * gd),
                v_new: z(n * gd),
                att: z(b * cfg.num_attention_heads * tq_max * tcap),
                attn: z(n * hd),
                mid: z(n * c),
                ln2: z(n * c),
                rstd2: z(n),
                qk_norm: QkNormActs::new(cfg, n),
                ffn: if cfg.is_moe_layer(l) {
                    FfnActs::Moe(Box::new(MoeActs::new(MoeSpec::new(cfg, n, tq_max))))
                } else {
                    let f = cfg.intermediate_size;
                    FfnActs::Dense { g: z(n * f), u: z(n * f), h: z(n * f) }
                },
            })
            .collect();
        let fd = if (0..cfg.num_hidden_layers).any(|l| !cfg.is_moe_layer(l)) { n * cfg.intermediate_size } else { 0 };
        Acts {
            b,
            tq_max,
            n: 0,
            noise_seed: None,
            resid: (0..=cfg.num_hidden_layers).map(|_| z(n * c)).collect(),
            layers,
            lnf: z(n * c),
            rstdf: z(n),
            logits: z(n * v),
            losses: z(n),
            dres: z(n * c),
            dln: z(n * c),
            dq: z(n * hd),
            dk: z(n * gd),
            dv: z(n * gd),
            dattn: z(n * hd),
            datt: z(b * cfg.num_key_value_heads * tq_max * tcap),
            dense_scratch: [z(fd), z(fd), z(fd)],
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
        let (t, half) = (cfg.max_position_embeddings, cfg.head_dim() / 2);
        let (mut cos, mut sin) = (vec![T::ZERO; t * half], vec![T::ZERO; t * half]);
        rope_tables(&mut cos, &mut sin, t, cfg.head_dim(), cfg.rope_theta);
        Ok(Model { cfg, shard, layout, packed: None, cos, sin })
    }

    /// The weights of parameters `p` (with the packed base, if any).
    pub fn weights<'a>(&'a self, p: &'a [T]) -> Weights<'a, T> {
        Weights { p, packed: self.packed.as_ref() }
    }

    /// Views of an MoE block's weights.
    fn moe_weights<'a>(ws: Weights<'a, T>, sp: &MoeSpans) -> MoeWeights<'a, T> {
        let p = ws.p;
        MoeWeights {
            router: RouterWeights {
                weight: Lin::at(ws, sp.router, sp.router_lora),
                bias: sp.router_bias.map(|s| s.of(p)),
                selection_bias: sp.selection_bias.map(|s| s.of(p)),
            },
            experts: MlpWeights::at(ws, [sp.gate, sp.up, sp.down], sp.experts_lora),
            shared: sp.shared.map(|w| SharedWeights {
                mlp: MlpWeights::at(ws, w, sp.shared_lora),
                gate: sp.shared_gate.map(|s| s.of(p)),
            }),
        }
    }

    /// Views of an MoE block's gradients (the selection bias has none).
    fn moe_grads<'a>(mut gc: GradCursor<'a, T>, sp: &MoeSpans) -> MoeGrads<'a, T> {
        let weight = gc.lin(sp.router, sp.router_lora);
        let bias = gc.opt(sp.router_bias);
        let experts = MlpGrads::take(&mut gc, [sp.gate, sp.up, sp.down], sp.experts_lora);
        let shared = sp.shared.map(|w| {
            let mlp = MlpGrads::take(&mut gc, w, sp.shared_lora);
            SharedGrads { mlp, gate: gc.opt(sp.shared_gate) }
        });
        MoeGrads { router: RouterGrads { weight, bias }, experts, shared }
    }

    /// A fresh cursor over the gradient buffer `gr`.
    fn grads<'a>(&self, gr: &'a mut [T]) -> GradCursor<'a, T> {
        GradCursor::new(gr, self.layout.base_total, self.cfg.lora.is_some())
    }

    /// Runs tokens[B * tq] (B = a.b) at positions pos0.. through the model; logits land in
    /// `a.logits[..N*V]`. Keys/values are appended to `cache` at pos0.
    pub fn forward(&self, p: &[T], a: &mut Acts<T>, cache: &mut KvCache<T>, tokens: &[u32], pos0: usize) {
        let cfg = &self.cfg;
        let (b, c, v, d) = (a.b, cfg.hidden_size, cfg.vocab_size, cfg.head_dim());
        let (h, g) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let tq = tokens.len() / b;
        let n = b * tq;
        assert!(tq <= a.tq_max && pos0 + tq <= cache.cap && cache.b == b, "forward beyond the allocated buffers");
        let (hd, gd) = (h * d, g * d);
        let ws = self.weights(p);
        a.n = n;
        embedding_forward(&mut a.resid[0][..n * c], self.layout.embed.of(p), tokens, c);
        for (l, ls) in self.layout.layers.iter().enumerate() {
            let la = &mut a.layers[l];
            let (before, after) = a.resid.split_at_mut(l + 1);
            let (x, out) = (&before[l][..n * c], &mut after[0][..n * c]);
            rmsnorm_forward(&mut la.ln1[..n * c], &mut la.rstd1[..n], x, ls.ln1.of(p), c, cfg.rms_norm_eps);
            let s = Qkv { t: tq, pos0, c, h, g, d, cos: &self.cos, sin: &self.sin };
            let (q, k, v) = (&mut la.q[..n * hd], &mut la.k_new[..n * gd], &mut la.v_new[..n * gd]);
            qkv_forward(q, k, v, &la.ln1[..n * c], ls, ws, &mut la.qk_norm, s);
            for bi in 0..b {
                let dst = (bi * cache.cap + pos0) * gd;
                cache.k[l][dst..dst + tq * gd].copy_from_slice(&la.k_new[bi * tq * gd..(bi + 1) * tq * gd]);
                cache.v[l][dst..dst + tq * gd].copy_from_slice(&la.v_new[bi * tq * gd..(bi + 1) * tq * gd]);
            }
            let dims = AttnDims { b, tq, tk: pos0 + tq, tcap: cache.cap, h, g, d };
            attention_forward(&mut la.attn[..n * hd], &mut la.att, &la.q[..n * hd], &cache.k[l], &cache.v[l], dims);
            let wo = Lin::at(ws, ls.wo, ls.attn_lora.map(|l| l[3]));
            wo.forward(&mut la.mid[..n * c], &la.attn[..n * hd], n, hd, c, true);
            la.mid[..n * c].iter_mut().zip(x).for_each(|(m, &xv)| *m += xv);
            rmsnorm_forward(
                &mut la.ln2[..n * c],
                &mut la.rstd2[..n],
                &la.mid[..n * c],
                ls.ln2.of(p),
                c,
                cfg.rms_norm_eps,
            );
            match (&ls.ffn, &mut la.ffn) {
                (FfnSpans::Dense { gate, up, down, lora }, FfnActs::Dense { g, u, h }) => {
                    let f = cfg.intermediate_size;
                    let acts = MlpActs { g: &mut g[..n * f], u: &mut u[..n * f], h: &mut h[..n * f] };
                    let w = MlpWeights::at(ws, [*gate, *up, *down], *lora);
                    mlp_forward(out, acts, &la.ln2[..n * c], w, n, c, f, true);
                }
                (FfnSpans::Moe(sp), FfnActs::Moe(m)) => {
                    let seed = a.noise_seed.map(|s| s ^ (l as u64 + 1).wrapping_mul(0x9E3779B97F4A7C15));
                    let spec = MoeSpec::new(cfg, n, tq);
                    moe_forward(out, &la.ln2[..n * c], Self::moe_weights(ws, sp), m, spec, seed);
                }
                _ => unreachable!("activations are built from the same config as the layout"),
            }
            out.iter_mut().zip(&la.mid[..n * c]).for_each(|(o, &m)| *o += m);
        }
        let last = &a.resid[cfg.num_hidden_layers][..n * c];
        rmsnorm_forward(&mut a.lnf[..n * c], &mut a.rstdf[..n], last, self.layout.norm.of(p), c, cfg.rms_norm_eps);
        let head = Lin::at(ws, self.layout.lm_head, None);
        head.forward(&mut a.logits[..n * v], &a.lnf[..n * c], n, c, v, true);
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
        let (b, n, c, v, d) = (a.b, a.n, cfg.hidden_size, cfg.vocab_size, cfg.head_dim());
        let t = n / b;
        assert_eq!(t, cache.cap, "backward needs the training shape");
        let (h, g) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let (hd, gd) = (h * d, g * d);
        let bal = self.balance_grads(&a.moe_stats());
        let z_scale = if bal.is_empty() { 0.0 } else { cfg.router_z_loss_coef / bal.len() as f64 };
        let scale = T::from_f64(1.0 / targets_counted(&targets[..n]));
        cross_entropy_backward_inplace(&mut a.logits[..n * v], &a.losses[..n], targets, v, scale);
        let ws = self.weights(p);
        let head = Lin::at(ws, self.layout.lm_head, None);
        let g_head = self.grads(gr).lin(self.layout.lm_head, None);
        head.backward(&mut a.dln[..n * c], g_head, &a.logits[..n * v], &a.lnf[..n * c], n, c, v, false, true);
        a.dres[..n * c].fill(T::ZERO);
        let last = &a.resid[cfg.num_hidden_layers][..n * c];
        rmsnorm_backward(
            &mut a.dres[..n * c],
            self.grads(gr).take(self.layout.norm),
            &a.dln[..n * c],
            last,
            self.layout.norm.of(p),
            &a.rstdf[..n],
            c,
        );
        let mut moe_idx = bal.len();
        for (l, ls) in self.layout.layers.iter().enumerate().rev() {
            let la = &mut a.layers[l];
            let x = &a.resid[l][..n * c];
            // out = mid + ffn(ln2(mid))
            a.dln[..n * c].fill(T::ZERO);
            match (&ls.ffn, &mut la.ffn) {
                (FfnSpans::Dense { gate, up, down, lora }, FfnActs::Dense { g, u, h }) => {
                    let f = cfg.intermediate_size;
                    let w = MlpWeights::at(ws, [*gate, *up, *down], *lora);
                    let [s0, s1, s2] = &mut a.dense_scratch;
                    let grads = MlpGrads::take(&mut self.grads(gr), [*gate, *up, *down], *lora);
                    let scratch = [&mut s0[..n * f], &mut s1[..n * f], &mut s2[..n * f]];
                    mlp_backward(
                        &mut a.dln[..n * c],
                        grads,
                        &a.dres[..n * c],
                        &la.ln2[..n * c],
                        w,
                        &g[..n * f],
                        &u[..n * f],
                        &h[..n * f],
                        scratch,
                        n,
                        c,
                        f,
                        true,
                    );
                }
                (FfnSpans::Moe(sp), FfnActs::Moe(m)) => {
                    moe_idx -= 1;
                    let (w, grads) = (Self::moe_weights(ws, sp), Self::moe_grads(self.grads(gr), sp));
                    moe_backward(
                        &mut a.dln[..n * c],
                        grads,
                        &a.dres[..n * c],
                        &la.ln2[..n * c],
                        w,
                        m,
                        MoeSpec::new(cfg, n, t),
                        &bal[moe_idx],
                        z_scale,
                    );
                }
                _ => unreachable!("activations are built from the same config as the layout"),
            }
            rmsnorm_backward(
                &mut a.dres[..n * c],
                self.grads(gr).take(ls.ln2),
                &a.dln[..n * c],
                &la.mid[..n * c],
                ls.ln2.of(p),
                &la.rstd2[..n],
                c,
            );
            // mid = x + o_proj(attn)
            let lora_o = ls.attn_lora.map(|l| l[3]);
            let (wo, g_wo) = (Lin::at(ws, ls.wo, lora_o), self.grads(gr).lin(ls.wo, lora_o));
            wo.backward(&mut a.dattn[..n * hd], g_wo, &a.dres[..n * c], &la.attn[..n * hd], n, hd, c, false, true);
            a.dq[..n * hd].fill(T::ZERO);
            a.dk[..n * gd].fill(T::ZERO);
            a.dv[..n * gd].fill(T::ZERO);
            let dims = AttnDims::causal(b, t, h, g, d);
            attention_backward(
                &mut a.dq[..n * hd],
                &mut a.dk[..n * gd],
                &mut a.dv[..n * gd],
                &mut a.datt,
                &a.dattn[..n * hd],
                &la.att,
                &la.q[..n * hd],
                &cache.k[l],
                &cache.v[l],
                dims,
            );
            let s = Qkv { t, pos0: 0, c, h, g, d, cos: &self.cos, sin: &self.sin };
            let (dq, dk, dv) = (&mut a.dq[..n * hd], &mut a.dk[..n * gd], &a.dv[..n * gd]);
            let gc = self.grads(gr);
            qkv_backward(&mut a.dln[..n * c], gc, dq, dk, dv, &la.ln1[..n * c], ls, ws, &mut la.qk_norm, s);
            rmsnorm_backward(
                &mut a.dres[..n * c],
                self.grads(gr).take(ls.ln1),
                &a.dln[..n * c],
                x,
                ls.ln1.of(p),
                &la.rstd1[..n],
                c,
            );
        }
        // (a frozen base under LoRA has no gradient: the backward wrote only the adapters')
        if self.cfg.lora.is_none() {
            embedding_backward(self.layout.embed.of_mut(gr), &a.dres[..n * c], tokens, c);
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
