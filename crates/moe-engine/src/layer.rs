//! One decoder layer, forward and backward: x -> RMSNorm (or LayerNorm, `norm`) -> q, k, v (`qkv`, or `mla`) -> attention
//! (keys and values through the KV cache) -> o_proj -> + x = mid -> RMSNorm -> dense or MoE
//! feed-forward -> + mid = out. `Model` runs the layers in order (`model`); under activation
//! recomputation (`Acts::recompute`) the backward runs a layer's forward again from its saved
//! input before its backward, so only one layer's activations are held at a time.

use crate::config::ModelConfig;
use crate::ffn::{mlp_backward, mlp_forward, MlpActs, MlpGrads, MlpWeights};
use crate::linear::{GradCursor, Lin};
use crate::mla::{mla_backward, mla_forward, MlaActs, MlaStep};
use crate::model::Model;
use crate::moe::router::{RouterGrads, RouterWeights};
use crate::moe::shared::{SharedGrads, SharedWeights};
use crate::moe::{moe_backward, moe_forward, MoeActs, MoeGrads, MoeSpec, MoeWeights};
use crate::norm::{norm_backward, norm_forward};
use crate::packed::Weights;
use crate::params::{FfnSpans, MoeSpans};
use crate::qkv::{qkv_backward, qkv_forward, QkNormActs, Qkv};
use moe_kernels::attention::{attention_backward, attention_forward, AttnDims};
use moe_kernels::matmul::{add_bias, bias_backward};
use moe_kernels::Float;

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
    /// [N, G*D] new rotated keys and [N, G*Dv] values before they enter the cache.
    pub k_new: Vec<T>,
    pub v_new: Vec<T>,
    /// [B, H, Tq, Tcap] attention probabilities.
    pub att: Vec<T>,
    /// [N, H*Dv] attention output before o_proj.
    pub attn: Vec<T>,
    /// [N, C] residual stream after attention.
    pub mid: Vec<T>,
    pub ln2: Vec<T>,
    pub rstd2: Vec<T>,
    pub ffn: FfnActs<T>,
    /// The q/k norms' saved values (empty without them).
    pub qk_norm: QkNormActs<T>,
    /// Latent attention's saved values (empty without it).
    pub mla: MlaActs<T>,
}

impl<T: Float> LayerActs<T> {
    /// Buffers of layer `l` for N = b * tq_max tokens against a cache of `tcap` positions.
    pub fn new(cfg: &ModelConfig, l: usize, b: usize, tq_max: usize, tcap: usize) -> Self {
        let n = b * tq_max;
        let (c, s) = (cfg.hidden_size, cfg.attn_shape());
        let (hd, gd, hdv, gdv) = (s.h * s.d, s.g * s.d, s.h * s.dv, s.g * s.dv);
        let z = moe_kernels::buffer::zeroed::<T>;
        LayerActs {
            ln1: z(n * c),
            rstd1: z(2 * n),
            q: z(n * hd),
            k_new: z(n * gd),
            v_new: z(n * gdv),
            att: z(b * s.h * tq_max * tcap),
            attn: z(n * hdv),
            mid: z(n * c),
            ln2: z(n * c),
            rstd2: z(2 * n),
            qk_norm: QkNormActs::new(cfg, n),
            mla: MlaActs::new(cfg, n),
            ffn: if cfg.is_moe_layer(l) {
                FfnActs::Moe(Box::new(MoeActs::new(MoeSpec::new(cfg, n, tq_max))))
            } else {
                let f = cfg.intermediate_size;
                FfnActs::Dense { g: z(n * f), u: z(n * f), h: z(n * f) }
            },
        }
    }
}

/// The backward's scratch, shared by all layers.
pub struct Scratch<T> {
    /// [N, C] gradient of the residual stream, and of a norm's output.
    pub dres: Vec<T>,
    pub dln: Vec<T>,
    pub dq: Vec<T>,
    pub dk: Vec<T>,
    pub dv: Vec<T>,
    pub dattn: Vec<T>,
    /// [B, G, T, T] attention backward scratch.
    pub datt: Vec<T>,
    pub dense_scratch: [Vec<T>; 3],
    /// [N, C] a block output's gradient under Granite's residual multiplier (else empty).
    pub dy: Vec<T>,
}

impl<T: Float> Scratch<T> {
    pub fn new(cfg: &ModelConfig, b: usize, tq_max: usize, tcap: usize) -> Self {
        let n = b * tq_max;
        let (c, s) = (cfg.hidden_size, cfg.attn_shape());
        let (hd, gd, hdv, gdv) = (s.h * s.d, s.g * s.d, s.h * s.dv, s.g * s.dv);
        let z = moe_kernels::buffer::zeroed::<T>;
        let fd = if (0..cfg.num_hidden_layers).any(|l| !cfg.is_moe_layer(l)) { n * cfg.intermediate_size } else { 0 };
        Scratch {
            dres: z(n * c),
            dln: z(n * c),
            dq: z(n * hd),
            dk: z(n * gd),
            dv: z(n * gdv),
            dattn: z(n * hdv),
            datt: z(b * s.g * tq_max * tcap),
            dense_scratch: [z(fd), z(fd), z(fd)],
            dy: z(if cfg.residual_multiplier != 1.0 { n * c } else { 0 }),
        }
    }
}

/// The layer's keys [B, cap, G, D] and values [B, cap, G, Dv] in the cache: appended by this forward, or
/// (a recomputed forward) already there.
pub enum Kv<'a, T> {
    Write(&'a mut [T], &'a mut [T]),
    Read(&'a [T], &'a [T]),
}

/// Sizes of one layer call: B sequences of tq new tokens at positions pos0.. of a cache of
/// `cap`; the router jitter's seed (training).
#[derive(Clone, Copy)]
pub struct LayerStep {
    pub b: usize,
    pub tq: usize,
    pub pos0: usize,
    pub cap: usize,
    pub noise_seed: Option<u64>,
}

/// Views of an MoE block's weights.
fn moe_weights<'a, T: Float>(ws: Weights<'a, T>, sp: &MoeSpans, act: crate::ffn::Act) -> MoeWeights<'a, T> {
    let p = ws.p;
    MoeWeights {
        router: RouterWeights {
            weight: Lin::at(ws, sp.router, sp.router_lora),
            bias: sp.router_bias.map(|s| s.of(p)),
            selection_bias: sp.selection_bias.map(|s| s.of(p)),
        },
        experts: MlpWeights {
            bias: sp.expert_bias.map(|b| b.map(|s| s.of(p))),
            act,
            ..MlpWeights::at(ws, [sp.gate, sp.up, sp.down], sp.experts_lora)
        },
        shared: sp.shared.map(|w| SharedWeights {
            mlp: MlpWeights::at(ws, w, sp.shared_lora),
            gate: sp.shared_gate.map(|s| s.of(p)),
        }),
    }
}

/// Views of an MoE block's gradients (the selection bias has none).
fn moe_grads<'a, T>(mut gc: GradCursor<'a, T>, sp: &MoeSpans) -> MoeGrads<'a, T> {
    let weight = gc.lin(sp.router, sp.router_lora);
    let bias = gc.opt(sp.router_bias);
    let experts = MlpGrads::take(&mut gc, [sp.gate, sp.up, sp.down], sp.experts_lora, sp.expert_bias);
    let shared = sp.shared.map(|w| {
        let mlp = MlpGrads::take(&mut gc, w, sp.shared_lora, None);
        SharedGrads { mlp, gate: gc.opt(sp.shared_gate) }
    });
    MoeGrads { router: RouterGrads { weight, bias }, experts, shared }
}

impl<T: Float> Model<T> {
    /// The factor on the rotated queries that turns the kernel's 1/sqrt(D) into the config's
    /// attention scale (1 unless Granite's `attention_multiplier` is set).
    fn q_scale(&self) -> T {
        T::from_f64(self.cfg.attention_scale() * (self.cfg.attn_shape().d as f64).sqrt())
    }

    /// q, k, v of the normed input through the layer's projections (or latent attention).
    fn project(&self, l: usize, ws: Weights<T>, la: &mut LayerActs<T>, n: usize, t: usize, pos0: usize) {
        let (cfg, ls) = (&self.cfg, &self.layout.layers[l]);
        let (c, sh) = (cfg.hidden_size, cfg.attn_shape());
        let (q, k, v) =
            (&mut la.q[..n * sh.h * sh.d], &mut la.k_new[..n * sh.g * sh.d], &mut la.v_new[..n * sh.g * sh.dv]);
        if ls.mla.is_some() {
            let s = MlaStep { t, pos0, c, shape: sh, cos: &self.cos, sin: &self.sin, q_scale: self.q_scale() };
            mla_forward(q, k, v, &la.ln1[..n * c], ls, ws, &mut la.mla, s);
        } else {
            let (h, g, d) = (sh.h, sh.g, sh.d);
            let (q_scale, clip) = (self.q_scale(), T::from_f64(cfg.clip_qkv));
            let s = Qkv { t, pos0, c, h, g, d, cos: &self.cos, sin: &self.sin, q_scale, clip };
            qkv_forward(q, k, v, &la.ln1[..n * c], ls, ws, &mut la.qk_norm, s);
        }
    }

    /// out[N,C] = layer l of x[N,C] (N = B * tq), its activations saved in `la`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layer_forward(
        &self,
        l: usize,
        ws: Weights<T>,
        la: &mut LayerActs<T>,
        x: &[T],
        out: &mut [T],
        kv: Kv<T>,
        step: LayerStep,
    ) {
        let cfg = &self.cfg;
        let LayerStep { b, tq, pos0, cap, noise_seed } = step;
        let (n, c, sh) = (b * tq, cfg.hidden_size, cfg.attn_shape());
        let (h, g, d, dv) = (sh.h, sh.g, sh.d, sh.dv);
        let (hd, gd, hdv, gdv) = (h * d, g * d, h * dv, g * dv);
        let (ls, p) = (&self.layout.layers[l], ws.p);
        let b1 = ls.ln1_bias.map(|s| s.of(p));
        norm_forward(&mut la.ln1[..n * c], &mut la.rstd1[..2 * n], x, ls.ln1.of(p), b1, c, cfg.rms_norm_eps);
        self.project(l, ws, la, n, tq, pos0);
        let (ck, cv): (&[T], &[T]) = match kv {
            Kv::Write(ck, cv) => {
                for bi in 0..b {
                    let (dk, dvv) = ((bi * cap + pos0) * gd, (bi * cap + pos0) * gdv);
                    ck[dk..dk + tq * gd].copy_from_slice(&la.k_new[bi * tq * gd..(bi + 1) * tq * gd]);
                    cv[dvv..dvv + tq * gdv].copy_from_slice(&la.v_new[bi * tq * gdv..(bi + 1) * tq * gdv]);
                }
                (ck, cv)
            }
            Kv::Read(ck, cv) => (ck, cv),
        };
        let dims = AttnDims { b, tq, tk: pos0 + tq, tcap: cap, h, g, d, dv, window: cfg.window(l) };
        let sinks = ls.sinks.map(|s| s.of(p));
        attention_forward(&mut la.attn[..n * hdv], &mut la.att, &la.q[..n * hd], ck, cv, sinks, dims);
        let wo = Lin::at(ws, ls.wo, ls.attn_lora.map(|l| l[3]));
        wo.forward(&mut la.mid[..n * c], &la.attn[..n * hdv], n, hdv, c, true);
        if let Some(bo) = ls.o_bias {
            add_bias(&mut la.mid[..n * c], bo.of(p));
        }
        let r = T::from_f64(cfg.residual_multiplier);
        la.mid[..n * c].iter_mut().zip(x).for_each(|(m, &xv)| *m = *m * r + xv);
        let (b2, eps) = (ls.ln2_bias.map(|s| s.of(p)), cfg.rms_norm_eps);
        norm_forward(&mut la.ln2[..n * c], &mut la.rstd2[..2 * n], &la.mid[..n * c], ls.ln2.of(p), b2, c, eps);
        match (&ls.ffn, &mut la.ffn) {
            (FfnSpans::Dense { gate, up, down, lora }, FfnActs::Dense { g, u, h }) => {
                let f = cfg.intermediate_size;
                let acts = MlpActs { g: &mut g[..n * f], u: &mut u[..n * f], h: &mut h[..n * f] };
                let w = MlpWeights::at(ws, [*gate, *up, *down], *lora);
                mlp_forward(out, acts, &la.ln2[..n * c], w, n, c, f, true);
            }
            (FfnSpans::Moe(sp), FfnActs::Moe(m)) => {
                let seed = noise_seed.map(|s| s ^ (l as u64 + 1).wrapping_mul(0x9E3779B97F4A7C15));
                let spec = MoeSpec::new(cfg, n, tq);
                moe_forward(out, &la.ln2[..n * c], moe_weights(ws, sp, cfg.expert_act()), m, spec, seed);
            }
            _ => unreachable!("activations are built from the same config as the layout"),
        }
        out.iter_mut().zip(&la.mid[..n * c]).for_each(|(o, &m)| *o = *o * r + m);
    }

    /// Backward of layer l: `sc.dres` holds dL/d(out) on entry and dL/dx on return; weight
    /// gradients accumulate into `gr`. `moe`: the MoE layer's balancing gradient and z-loss scale.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layer_backward(
        &self,
        l: usize,
        ws: Weights<T>,
        gr: &mut [T],
        la: &mut LayerActs<T>,
        sc: &mut Scratch<T>,
        x: &[T],
        kv: (&[T], &[T]),
        t: usize,
        moe: Option<(&[f64], f64)>,
    ) {
        let cfg = &self.cfg;
        let (n, c, sh) = (x.len() / cfg.hidden_size, cfg.hidden_size, cfg.attn_shape());
        let b = n / t;
        let (h, g, d, dv) = (sh.h, sh.g, sh.d, sh.dv);
        let (hd, gd, hdv, gdv) = (h * d, g * d, h * dv, g * dv);
        let (ls, p) = (&self.layout.layers[l], ws.p);
        // out = mid + r ffn(ln2(mid)): the FFN's output gradient is r dres
        let scaled = cfg.residual_multiplier != 1.0;
        let r = T::from_f64(cfg.residual_multiplier);
        if scaled {
            sc.dy[..n * c].iter_mut().zip(&sc.dres[..n * c]).for_each(|(y, &d)| *y = r * d);
        }
        sc.dln[..n * c].fill(T::ZERO);
        match (&ls.ffn, &mut la.ffn) {
            (FfnSpans::Dense { gate, up, down, lora }, FfnActs::Dense { g, u, h }) => {
                let f = cfg.intermediate_size;
                let w = MlpWeights::at(ws, [*gate, *up, *down], *lora);
                let [s0, s1, s2] = &mut sc.dense_scratch;
                let grads = MlpGrads::take(&mut self.grads(gr), [*gate, *up, *down], *lora, None);
                let scratch = [&mut s0[..n * f], &mut s1[..n * f], &mut s2[..n * f]];
                mlp_backward(
                    &mut sc.dln[..n * c],
                    grads,
                    if scaled { &sc.dy[..n * c] } else { &sc.dres[..n * c] },
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
                let (bal, z_scale) = moe.expect("an MoE layer has its balancing gradient");
                let (w, grads) = (moe_weights(ws, sp, cfg.expert_act()), moe_grads(self.grads(gr), sp));
                moe_backward(
                    &mut sc.dln[..n * c],
                    grads,
                    if scaled { &sc.dy[..n * c] } else { &sc.dres[..n * c] },
                    &la.ln2[..n * c],
                    w,
                    m,
                    MoeSpec::new(cfg, n, t),
                    bal,
                    z_scale,
                );
            }
            _ => unreachable!("activations are built from the same config as the layout"),
        }
        let mut gc = self.grads(gr);
        let (g2, gb2) = (gc.take(ls.ln2), gc.opt(ls.ln2_bias));
        let (mid, w2) = (&la.mid[..n * c], ls.ln2.of(p));
        norm_backward(&mut sc.dres[..n * c], g2, gb2, &sc.dln[..n * c], mid, w2, &la.rstd2[..2 * n], c);
        // mid = x + r o_proj(attn)
        if scaled {
            sc.dy[..n * c].iter_mut().zip(&sc.dres[..n * c]).for_each(|(y, &d)| *y = r * d);
        }
        let dmid = if scaled { &sc.dy[..n * c] } else { &sc.dres[..n * c] };
        let lora_o = ls.attn_lora.map(|l| l[3]);
        let mut gc = self.grads(gr);
        let (wo, g_wo) = (Lin::at(ws, ls.wo, lora_o), gc.lin(ls.wo, lora_o));
        let (g_ob, g_sinks) = (gc.opt(ls.o_bias), gc.opt(ls.sinks));
        wo.backward(&mut sc.dattn[..n * hdv], g_wo, dmid, &la.attn[..n * hdv], n, hdv, c, false, true);
        if let Some(db) = g_ob {
            bias_backward(db, dmid);
        }
        sc.dq[..n * hd].fill(T::ZERO);
        sc.dk[..n * gd].fill(T::ZERO);
        sc.dv[..n * gdv].fill(T::ZERO);
        let dims = AttnDims { dv, window: cfg.window(l), ..AttnDims::causal(b, t, h, g, d) };
        attention_backward(
            &mut sc.dq[..n * hd],
            &mut sc.dk[..n * gd],
            &mut sc.dv[..n * gdv],
            g_sinks,
            &mut sc.datt,
            &sc.dattn[..n * hdv],
            &la.att,
            &la.q[..n * hd],
            kv.0,
            kv.1,
            dims,
        );
        let (dq, dk, dvs) = (&mut sc.dq[..n * hd], &mut sc.dk[..n * gd], &mut sc.dv[..n * gdv]);
        let (gc, xn) = (self.grads(gr), &la.ln1[..n * c]);
        if ls.mla.is_some() {
            let s = MlaStep { t, pos0: 0, c, shape: sh, cos: &self.cos, sin: &self.sin, q_scale: self.q_scale() };
            mla_backward(&mut sc.dln[..n * c], gc, dq, dk, dvs, xn, ls, ws, &mut la.mla, s);
        } else {
            let (q_scale, clip) = (self.q_scale(), T::from_f64(cfg.clip_qkv));
            let s = Qkv { t, pos0: 0, c, h, g, d, cos: &self.cos, sin: &self.sin, q_scale, clip };
            qkv_backward(&mut sc.dln[..n * c], gc, dq, dk, dvs, xn, ls, ws, &mut la.qk_norm, s);
        }
        let mut gc = self.grads(gr);
        let (g1, gb1) = (gc.take(ls.ln1), gc.opt(ls.ln1_bias));
        norm_backward(&mut sc.dres[..n * c], g1, gb1, &sc.dln[..n * c], x, ls.ln1.of(p), &la.rstd1[..2 * n], c);
    }
}
