//! Per-architecture tensor names: where each weight of a `Spec` lives in a checkpoint, in the
//! hub's per-expert layout or a fused 3-D expert layout, with every shape checked.

use crate::config::{Arch, Mla, Norm, QkNorm, Spec};
use crate::error::{Error, Result};
use crate::linear::Linear;
use crate::moe::{Expert, GateUp};
use crate::store::TensorStore;
use crate::weight::Weight;

/// Norm weight and, for LayerNorm, bias.
pub struct NormW {
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
}

pub enum Attn {
    Std {
        q: Linear,
        k: Linear,
        v: Linear,
        o: Linear,
        q_norm: Option<NormW>,
        k_norm: Option<NormW>,
        sinks: Option<Vec<f32>>,
    },
    Mla {
        q_a: Option<(Linear, NormW)>,
        q: Linear,
        kv_a: Linear,
        kv_norm: NormW,
        kv_b: Linear,
        o: Linear,
    },
}

pub struct MoeW {
    pub router: Linear,
    pub score_bias: Option<Vec<f32>>,
    /// [E] the routed experts; None for those another rank holds (expert parallelism).
    pub experts: Vec<Option<Expert>>,
    pub shared: Option<Expert>,
    pub shared_gate: Option<Linear>,
}

pub enum FfnW {
    Dense(Box<Expert>),
    Moe(Box<MoeW>),
}

pub struct Layer {
    pub in_norm: NormW,
    pub post_norm: NormW,
    pub attn: Attn,
    pub ffn: FfnW,
}

pub struct Weights {
    pub embed: Weight,
    pub norm: NormW,
    pub lm_head: Linear,
    pub layers: Vec<Layer>,
}

impl Expert {
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = match &mut self.gate_up {
            GateUp::Split(g, u) => vec![g, u],
            GateUp::Fused { lin, .. } => vec![lin],
        };
        v.push(&mut self.down);
        v
    }
}

impl Weights {
    /// Every matrix that quantisation applies to: attention projections, experts, shared experts,
    /// dense MLPs and the LM head (not the embedding, routers or gates, which are small and
    /// decide routing).
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v: Vec<&mut Linear> = vec![&mut self.lm_head];
        for l in &mut self.layers {
            match &mut l.attn {
                Attn::Std { q, k, v: vp, o, .. } => v.extend([q, k, vp, o]),
                Attn::Mla { q_a, q, kv_a, kv_b, o, .. } => {
                    v.extend(q_a.as_mut().map(|(l, _)| l));
                    v.extend([q, kv_a, kv_b, o]);
                }
            }
            match &mut l.ffn {
                FfnW::Dense(m) => v.extend(m.linears_mut()),
                FfnW::Moe(m) => {
                    for e in m.experts.iter_mut().flatten().chain(m.shared.as_mut()) {
                        v.extend(e.linears_mut());
                    }
                }
            }
        }
        v
    }
}

struct L<'a> {
    st: &'a TensorStore,
    s: &'a Spec,
}

impl L<'_> {
    fn lin(&self, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let w = self.st.weight(&format!("{name}.weight"), &[out, inp])?;
        let b = if bias { Some(self.st.vector(&format!("{name}.bias"), out)?) } else { None };
        Ok(Linear::new(w, b))
    }
    fn norm(&self, name: &str, n: usize, layer_norm: bool) -> Result<NormW> {
        let b = if layer_norm { Some(self.st.vector(&format!("{name}.bias"), n)?) } else { None };
        Ok(NormW { w: self.st.vector(&format!("{name}.weight"), n)?, b })
    }
    /// A SwiGLU MLP (dense layer or shared expert).
    fn mlp(&self, p: &str, inter: usize) -> Result<Expert> {
        let h = self.s.hidden;
        let gate = self.lin(&format!("{p}gate_proj"), inter, h, false)?;
        let up = self.lin(&format!("{p}up_proj"), inter, h, false)?;
        Ok(Expert { gate_up: GateUp::Split(gate, up), down: self.lin(&format!("{p}down_proj"), h, inter, false)? })
    }

    fn attn(&self, p: &str) -> Result<Attn> {
        let s = self.s;
        let (h, nh, g, d) = (s.hidden, s.heads, s.kv_heads, s.head_dim);
        if let Some(Mla { q_lora, kv_lora, nope, rope, v }) = s.mla {
            let q_a = match q_lora {
                Some(r) => Some((
                    self.lin(&format!("{p}q_a_proj"), r, h, false)?,
                    self.norm(&format!("{p}q_a_layernorm"), r, false)?,
                )),
                None => None,
            };
            let q = match q_lora {
                Some(r) => self.lin(&format!("{p}q_b_proj"), nh * d, r, false)?,
                None => self.lin(&format!("{p}q_proj"), nh * d, h, false)?,
            };
            return Ok(Attn::Mla {
                q_a,
                q,
                kv_a: self.lin(&format!("{p}kv_a_proj_with_mqa"), kv_lora + rope, h, false)?,
                kv_norm: self.norm(&format!("{p}kv_a_layernorm"), kv_lora, false)?,
                kv_b: self.lin(&format!("{p}kv_b_proj"), nh * (nope + v), kv_lora, false)?,
                o: self.lin(&format!("{p}o_proj"), h, nh * v, false)?,
            });
        }
        let (qn, kn) = match s.qk_norm {
            QkNorm::None => (None, None),
            QkNorm::PerHead => (Some(d), Some(d)),
            QkNorm::Whole => (Some(nh * d), Some(g * d)),
        };
        let opt_norm = |name: &str, n: Option<usize>| n.map(|n| self.norm(&format!("{p}{name}"), n, false)).transpose();
        Ok(Attn::Std {
            q: self.lin(&format!("{p}q_proj"), nh * d, h, s.qkv_bias)?,
            k: self.lin(&format!("{p}k_proj"), g * d, h, s.qkv_bias)?,
            v: self.lin(&format!("{p}v_proj"), g * d, h, s.qkv_bias)?,
            o: self.lin(&format!("{p}o_proj"), h, nh * d, s.o_bias)?,
            q_norm: opt_norm("q_norm", qn)?,
            k_norm: opt_norm("k_norm", kn)?,
            sinks: if s.sinks { Some(self.st.vector(&format!("{p}sinks"), nh)?) } else { None },
        })
    }

    /// The MoE block of layer prefix `p` (".../layers.{l}.").
    fn moe(&self, p: &str) -> Result<MoeW> {
        let s = self.s;
        let m = &s.moe;
        let (h, e) = (s.hidden, m.experts);
        // block prefix: the hub's name first, then transformers 5's in-memory name
        let blk = match s.arch {
            Arch::Mixtral | Arch::Phimoe => {
                let hub = format!("{p}block_sparse_moe.");
                if self.st.contains(&format!("{hub}gate.weight")) {
                    hub
                } else {
                    format!("{p}mlp.")
                }
            }
            Arch::GraniteMoe => format!("{p}block_sparse_moe."),
            _ => format!("{p}mlp."),
        };
        let router_name = match s.arch {
            Arch::GraniteMoe => format!("{blk}router.layer"),
            Arch::GptOss => format!("{blk}router"),
            _ => format!("{blk}gate"),
        };
        let router = self.lin(&router_name, e, h, m.router_bias)?;
        let score_bias = match s.arch {
            Arch::DeepseekV3 => Some(self.st.vector(&format!("{blk}gate.e_score_correction_bias"), e)?),
            // a model trained by moe with aux-loss-free balancing (see `from_moe`)
            Arch::Mixtral | Arch::Qwen2Moe if self.st.contains(&format!("{blk}gate.e_score_correction_bias")) => {
                Some(self.st.vector(&format!("{blk}gate.e_score_correction_bias"), e)?)
            }
            _ => None,
        };
        let experts = self.experts(&blk)?.into_iter().map(Some).collect();
        let (shared, shared_gate) = match (s.arch, m.shared) {
            (Arch::Qwen2Moe, Some((w, _))) => (
                Some(self.mlp(&format!("{blk}shared_expert."), w)?),
                Some(self.lin(&format!("{blk}shared_expert_gate"), 1, h, false)?),
            ),
            (Arch::DeepseekV3, Some((w, _))) => (Some(self.mlp(&format!("{blk}shared_experts."), w)?), None),
            _ => (None, None),
        };
        Ok(MoeW { router, score_bias, experts, shared, shared_gate })
    }

    fn experts(&self, blk: &str) -> Result<Vec<Expert>> {
        let s = self.s;
        let (h, e, i) = (s.hidden, s.moe.experts, s.moe.inter);
        let x = format!("{blk}experts.");
        if s.arch == Arch::GptOss {
            // [E, in, out] with gate/up interleaved in the output; MXFP4 blocks are [E, out, in]
            let (gu, down) = if s.mxfp4 {
                let gu = self.st.mxfp4(&format!("{x}gate_up_proj"), &[e, 2 * i], h)?;
                let dn = self.st.mxfp4(&format!("{x}down_proj"), &[e, h], i)?;
                (
                    (0..e).map(|k| Linear::new(gu.rows(k * 2 * i, 2 * i), None)).collect::<Vec<_>>(),
                    (0..e).map(|k| Linear::new(dn.rows(k * h, h), None)).collect::<Vec<_>>(),
                )
            } else {
                let gu = self.st.weight(&format!("{x}gate_up_proj"), &[e, h, 2 * i])?;
                let dn = self.st.weight(&format!("{x}down_proj"), &[e, i, h])?;
                (
                    (0..e).map(|k| Linear::transposed(gu.rows(k * h, h), None)).collect(),
                    (0..e).map(|k| Linear::transposed(dn.rows(k * i, i), None)).collect(),
                )
            };
            let gub = self.st.weight(&format!("{x}gate_up_proj_bias"), &[e, 2 * i])?;
            let dnb = self.st.weight(&format!("{x}down_proj_bias"), &[e, h])?;
            return Ok(gu
                .into_iter()
                .zip(down)
                .enumerate()
                .map(|(k, (mut g, mut d))| {
                    let (mut b1, mut b2) = (vec![0.0; 2 * i], vec![0.0; h]);
                    gub.row_f32(k, &mut b1);
                    dnb.row_f32(k, &mut b2);
                    g.bias = Some(b1);
                    d.bias = Some(b2);
                    Expert { gate_up: GateUp::Fused { lin: g, interleaved: true }, down: d }
                })
                .collect());
        }
        let (gu_name, dn_name) = match s.arch {
            Arch::GraniteMoe => (format!("{blk}input_linear.weight"), format!("{blk}output_linear.weight")),
            _ => (format!("{x}gate_up_proj"), format!("{x}down_proj")),
        };
        if self.st.contains(&gu_name) {
            // fused [E, 2I, H] (gate rows then up rows) and [E, H, I]
            let gu = self.st.weight(&gu_name, &[e, 2 * i, h])?;
            let dn = self.st.weight(&dn_name, &[e, h, i])?;
            return Ok((0..e)
                .map(|k| Expert {
                    gate_up: GateUp::Fused { lin: Linear::new(gu.rows(k * 2 * i, 2 * i), None), interleaved: false },
                    down: Linear::new(dn.rows(k * h, h), None),
                })
                .collect());
        }
        if self.st.contains(&format!("{x}gate_proj")) {
            // stacked [E, I, H], [E, I, H] and [E, H, I] (GGUF's ffn_{gate,up,down}_exps)
            let g = self.st.weight(&format!("{x}gate_proj"), &[e, i, h])?;
            let u = self.st.weight(&format!("{x}up_proj"), &[e, i, h])?;
            let d = self.st.weight(&format!("{x}down_proj"), &[e, h, i])?;
            return Ok((0..e)
                .map(|k| Expert {
                    gate_up: GateUp::Split(Linear::new(g.rows(k * i, i), None), Linear::new(u.rows(k * i, i), None)),
                    down: Linear::new(d.rows(k * h, h), None),
                })
                .collect());
        }
        let names = match s.arch {
            Arch::Mixtral | Arch::Phimoe => ["w1", "w3", "w2"],
            _ => ["gate_proj", "up_proj", "down_proj"],
        };
        if !self.st.contains(&format!("{x}0.{}.weight", names[0])) {
            return Err(Error::MissingTensor {
                dir: self.st.dir.clone(),
                name: format!("{x}0.{}.weight (or fused {gu_name})", names[0]),
            });
        }
        (0..e)
            .map(|k| {
                let g = self.lin(&format!("{x}{k}.{}", names[0]), i, h, false)?;
                let u = self.lin(&format!("{x}{k}.{}", names[1]), i, h, false)?;
                Ok(Expert {
                    gate_up: GateUp::Split(g, u),
                    down: self.lin(&format!("{x}{k}.{}", names[2]), h, i, false)?,
                })
            })
            .collect()
    }
}

/// Every weight of `spec` from `st`.
pub fn load(st: &TensorStore, spec: &Spec) -> Result<Weights> {
    let l = L { st, s: spec };
    let h = spec.hidden;
    let ln = spec.norm == Norm::Layer;
    let embed = st.weight("model.embed_tokens.weight", &[spec.vocab, h])?;
    let lm_head = if st.contains("lm_head.weight") || !spec.tie {
        l.lin("lm_head", spec.vocab, h, spec.lm_head_bias)?
    } else {
        Linear::new(embed.clone(), None)
    };
    let layers = (0..spec.layers)
        .map(|li| {
            let p = format!("model.layers.{li}.");
            Ok(Layer {
                in_norm: l.norm(&format!("{p}input_layernorm"), h, ln)?,
                post_norm: l.norm(&format!("{p}post_attention_layernorm"), h, ln)?,
                attn: l.attn(&format!("{p}self_attn."))?,
                ffn: match spec.ffn[li] {
                    crate::config::Ffn::Dense(inter) => FfnW::Dense(Box::new(l.mlp(&format!("{p}mlp."), inter)?)),
                    crate::config::Ffn::Moe => FfnW::Moe(Box::new(l.moe(&p)?)),
                },
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Weights { embed, norm: l.norm("model.norm", h, ln)?, lm_head, layers })
}
