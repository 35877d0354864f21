//! Parameter layout: every tensor of a model lives in one flat buffer, viewed by name through
//! spans computed once from the config. Gradients and optimizer moments share the layout.
//! Names follow Hugging Face LLaMA; MoE experts are stacked 3-D tensors. Under expert
//! parallelism a rank's layout holds only its shard of every expert tensor.

use crate::config::{ModelConfig, QkNorm};
use crate::dist::Shard;
use crate::linear::LoraSpans;
use crate::lora::LoraTarget;
use crate::rng::Rng;
use moe_kernels::Float;

/// A contiguous region of a flat buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub off: usize,
    pub len: usize,
}

impl Span {
    pub fn of<'a, T>(&self, buf: &'a [T]) -> &'a [T] {
        &buf[self.off..self.off + self.len]
    }
    pub fn of_mut<'a, T>(&self, buf: &'a mut [T]) -> &'a mut [T] {
        &mut buf[self.off..self.off + self.len]
    }
}

/// Hands out disjoint mutable views of a buffer for spans taken in increasing offset order.
pub struct SpanCursor<'a, T> {
    rest: &'a mut [T],
    base: usize,
}

impl<'a, T> SpanCursor<'a, T> {
    pub fn new(buf: &'a mut [T]) -> Self {
        SpanCursor { rest: buf, base: 0 }
    }
    /// A cursor over `buf`, which holds the buffer's elements from offset `base` on.
    pub fn at(buf: &'a mut [T], base: usize) -> Self {
        SpanCursor { rest: buf, base }
    }
    /// The view of `s`, which must start at or after the end of the previous one.
    pub fn take(&mut self, s: Span) -> &'a mut [T] {
        assert!(s.off >= self.base, "spans must be taken in increasing order");
        let tail = std::mem::take(&mut self.rest);
        let (mine, tail) = tail[s.off - self.base..].split_at_mut(s.len);
        self.rest = tail;
        self.base = s.off + s.len;
        mine
    }
}

/// Disjoint mutable views of `spans`, which must be in increasing offset order.
pub fn spans_mut<T, const M: usize>(buf: &mut [T], spans: [Span; M]) -> [&mut [T]; M] {
    let mut cur = SpanCursor::new(buf);
    spans.map(|s| cur.take(s))
}

/// One named tensor of the layout.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub span: Span,
    /// Weight decay applies (matrices yes, norms and biases no).
    pub decay: bool,
    /// Updated by the optimizer (false for the aux-loss-free selection bias).
    pub trainable: bool,
    /// How to initialise it.
    pub init: Init,
    /// A stacked expert tensor [S, ...] (one slot per expert this rank holds; its gradient
    /// is all-reduced only between replicas of an expert).
    pub experts: Option<ExpertSlots>,
}

/// The slots of a rank's expert tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertSlots {
    /// Which MoE layer (0 = the first MoE layer).
    pub moe_layer: usize,
    /// E: experts of the whole tensor.
    pub total: usize,
    /// [S] the expert each slot holds.
    pub slots: Vec<usize>,
    /// [S] whether the slot holds its expert's first replica (the one a checkpoint and the
    /// gradient norm take).
    pub primary: Vec<bool>,
    /// The experts of this layer with several replicas, in id order (the same on every rank).
    pub replicated: Vec<usize>,
}

impl TensorInfo {
    /// Elements of one expert (one slot) of an expert tensor.
    pub fn per_expert(&self) -> usize {
        self.shape[1..].iter().product()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Ones,
    Zeros,
    Normal(f64),
}

/// Spans of an MoE block. Offsets increase in field order (see `spans_mut`).
#[derive(Clone, Debug)]
pub struct MoeSpans {
    /// [E,C]
    pub router: Span,
    /// [E] trainable router bias (gpt-oss).
    pub router_bias: Option<Span>,
    /// [E] selection-only bias (aux-loss-free balancing, DeepSeek-V3), not trained.
    pub selection_bias: Option<Span>,
    /// [E,F,C], [E,F,C], [E,C,F]
    pub gate: Span,
    pub up: Span,
    pub down: Span,
    /// The experts' biases [E,F], [E,F], [E,C] (gpt-oss), after `down`.
    pub expert_bias: Option<[Span; 3]>,
    /// Shared expert gate[Fs,C], up[Fs,C], down[C,Fs].
    pub shared: Option<[Span; 3]>,
    /// [1,C] sigmoid gate of the shared expert (Qwen2-MoE).
    pub shared_gate: Option<Span>,
    /// LoRA adapters of the router, the experts (gate, up, down; [E,R,I] and [E,O,R]) and the
    /// shared expert (gate, up, down).
    pub router_lora: Option<LoraSpans>,
    pub experts_lora: Option<[LoraSpans; 3]>,
    pub shared_lora: Option<[LoraSpans; 3]>,
}

/// Spans of a feed-forward block.
#[derive(Clone, Debug)]
pub enum FfnSpans {
    /// gate[F,C], up[F,C], down[C,F]
    Dense {
        gate: Span,
        up: Span,
        down: Span,
        /// LoRA adapters of gate, up, down.
        lora: Option<[LoraSpans; 3]>,
    },
    Moe(Box<MoeSpans>),
}

/// Spans of one decoder layer.
#[derive(Clone, Debug)]
pub struct LayerSpans {
    pub ln1: Span,
    /// The norms' biases (LayerNorm), each right after its weight.
    pub ln1_bias: Option<Span>,
    pub ln2_bias: Option<Span>,
    pub wq: Span,
    pub wk: Span,
    pub wv: Span,
    /// Query, key and value biases [H*D], [G*D], [G*D] (`qkv_bias`).
    pub qkv_bias: Option<[Span; 3]>,
    /// Query and key RMSNorm weights: [D] and [D] per head, or [H*D] and [G*D] (`qk_norm`).
    pub qk_norm: Option<[Span; 2]>,
    pub wo: Span,
    pub ln2: Span,
    pub ffn: FfnSpans,
    /// LoRA adapters of q, k, v, o.
    pub attn_lora: Option<[LoraSpans; 4]>,
    /// The output projection's bias [C] and the attention sinks [H] (gpt-oss).
    pub o_bias: Option<Span>,
    pub sinks: Option<Span>,
    /// Latent attention's other tensors (`mla`); then wq is q_proj, or q_b_proj [H*D, q_lora]
    /// after `q_a`; wk is kv_a_proj_with_mqa [kv_lora + rope, C]; wv is kv_b_proj
    /// [H*(nope + v), kv_lora].
    pub mla: Option<MlaSpans>,
}

/// Latent attention's tensors besides wq, wk, wv, in layout order: q_a_proj [q_lora, C] and
/// q_a_layernorm [q_lora] before wq (with a query rank), kv_a_layernorm [kv_lora] between wk and wv.
#[derive(Clone, Copy, Debug)]
pub struct MlaSpans {
    pub q_a: Option<[Span; 2]>,
    pub kv_a_norm: Span,
}

/// The whole layout.
#[derive(Clone, Debug)]
pub struct Layout {
    pub tensors: Vec<TensorInfo>,
    pub total: usize,
    pub embed: Span,
    pub layers: Vec<LayerSpans>,
    pub norm: Span,
    pub lm_head: Span,
    /// The final norm's bias (LayerNorm) and the LM head's bias.
    pub norm_bias: Option<Span>,
    pub lm_head_bias: Option<Span>,
    /// Where the LoRA adapters start: the base model is `[..base_total]` (= total without LoRA).
    pub base_total: usize,
}

struct Builder {
    tensors: Vec<TensorInfo>,
    total: usize,
    /// Base tensors are frozen (LoRA fine-tuning).
    frozen: bool,
}

impl Builder {
    fn push(&mut self, name: String, shape: &[usize], init: Init) -> Span {
        self.push_with(name, shape, init, !self.frozen)
    }
    fn push_with(&mut self, name: String, shape: &[usize], init: Init, trainable: bool) -> Span {
        let len = shape.iter().product();
        let span = Span { off: self.total, len };
        let decay = shape.len() > 1;
        self.tensors.push(TensorInfo { name, shape: shape.to_vec(), span, decay, trainable, init, experts: None });
        self.total += len;
        span
    }
    /// The rank's slots of a stacked expert tensor of shape [E, ...] in MoE layer `moe_layer`.
    fn push_experts(&mut self, name: String, shape: &[usize], init: Init, shard: &Shard, moe_layer: usize) -> Span {
        let pl = shard.placement(moe_layer, shape[0]);
        let slots = pl.ranks[shard.rank].clone();
        let first = pl.first_hosts();
        let primary = (0..slots.len()).map(|j| first[slots[j]] == Some((shard.rank, j))).collect();
        let replicated = (0..shape[0]).filter(|&x| pl.replicas[x] > 1).collect();
        let local: Vec<usize> = std::iter::once(slots.len()).chain(shape[1..].iter().copied()).collect();
        let span = self.push(name, &local, init);
        let last = self.tensors.len() - 1;
        self.tensors[last].experts = Some(ExpertSlots { moe_layer, total: shape[0], slots, primary, replicated });
        span
    }
    /// The adapter of `base`: A[R,I] (Normal with the variance of PEFT's uniform init) and
    /// B[O,R] zero, so the adapted layer starts as the base; stacked per expert when `base`
    /// is an expert tensor.
    fn push_lora(&mut self, base: Span, rank: usize, scale: f64) -> LoraSpans {
        let t = self.tensors.iter().find(|t| t.span == base).cloned().expect("the base tensor was pushed");
        let (stem, suffix) = match t.name.strip_suffix(".weight") {
            Some(stem) => (stem.to_string(), ".weight"),
            None => (t.name.clone(), ""),
        };
        let [o, i] = [t.shape[t.shape.len() - 2], t.shape[t.shape.len() - 1]];
        let std = 1.0 / (3.0 * i as f64).sqrt();
        let lead: Vec<usize> = t.shape[..t.shape.len() - 2].to_vec();
        let shape = |x: usize, y: usize| lead.iter().copied().chain([x, y]).collect::<Vec<_>>();
        let (frozen, was) = (self.frozen, self.tensors.len());
        self.frozen = false;
        let a = self.push(format!("{stem}.lora_A{suffix}"), &shape(rank, i), Init::Normal(std));
        let b = self.push(format!("{stem}.lora_B{suffix}"), &shape(o, rank), Init::Zeros);
        self.frozen = frozen;
        for n in [was, was + 1] {
            self.tensors[n].experts = t.experts.clone();
        }
        LoraSpans { a, b, scale }
    }
}

impl Layout {
    pub fn new(cfg: &ModelConfig) -> Self {
        Self::sharded(cfg, &Shard::single())
    }

    /// The layout of one rank: all tensors, but only the rank's experts of each expert tensor.
    pub fn sharded(cfg: &ModelConfig, shard: &Shard) -> Self {
        let (c, v, d) = (cfg.hidden_size, cfg.vocab_size, cfg.head_dim());
        let (h, g) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let shape = cfg.attn_shape();
        let std = 0.02;
        // Residual projections scaled down with depth (GPT-2).
        let std_out = std / (2.0 * cfg.num_hidden_layers as f64).sqrt();
        let mut b = Builder { tensors: vec![], total: 0, frozen: cfg.lora.is_some() };
        let embed = b.push("model.embed_tokens.weight".into(), &[v, c], Init::Normal(std));
        let mut layers = vec![];
        let mut moe_layer = 0;
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let ln1 = b.push(format!("{p}.input_layernorm.weight"), &[c], Init::Ones);
            let ln1_bias = cfg.layer_norm.then(|| b.push(format!("{p}.input_layernorm.bias"), &[c], Init::Zeros));
            let (wq, wk, wv, mla) = match cfg.mla {
                Some(a) => {
                    let (ql, kvl) = (a.q_lora_rank, a.kv_lora_rank);
                    let name = |x: &str| format!("{p}.self_attn.{x}");
                    let q_a = (ql > 0).then(|| {
                        [
                            b.push(name("q_a_proj.weight"), &[ql, c], Init::Normal(std)),
                            b.push(name("q_a_layernorm.weight"), &[ql], Init::Ones),
                        ]
                    });
                    let (q_in, q_name) = if ql > 0 { (ql, "q_b_proj.weight") } else { (c, "q_proj.weight") };
                    let wq = b.push(name(q_name), &[h * shape.d, q_in], Init::Normal(std));
                    let wk = b.push(name("kv_a_proj_with_mqa.weight"), &[kvl + shape.rope, c], Init::Normal(std));
                    let kv_a_norm = b.push(name("kv_a_layernorm.weight"), &[kvl], Init::Ones);
                    let kv_b = &[h * (a.qk_nope_head_dim + shape.dv), kvl];
                    let wv = b.push(name("kv_b_proj.weight"), kv_b, Init::Normal(std));
                    (wq, wk, wv, Some(MlaSpans { q_a, kv_a_norm }))
                }
                None => (
                    b.push(format!("{p}.self_attn.q_proj.weight"), &[h * d, c], Init::Normal(std)),
                    b.push(format!("{p}.self_attn.k_proj.weight"), &[g * d, c], Init::Normal(std)),
                    b.push(format!("{p}.self_attn.v_proj.weight"), &[g * d, c], Init::Normal(std)),
                    None,
                ),
            };
            let qkv_bias = cfg.qkv_bias.then(|| {
                [("q", h * d), ("k", g * d), ("v", g * d)]
                    .map(|(x, n)| b.push(format!("{p}.self_attn.{x}_proj.bias"), &[n], Init::Zeros))
            });
            let qk_widths = match cfg.qk_norm {
                QkNorm::None => None,
                QkNorm::PerHead => Some([d, d]),
                QkNorm::Whole => Some([h * d, g * d]),
            };
            let qk_norm = qk_widths.map(|[wq, wk]| {
                [("q", wq), ("k", wk)].map(|(x, n)| b.push(format!("{p}.self_attn.{x}_norm.weight"), &[n], Init::Ones))
            });
            let wo = b.push(format!("{p}.self_attn.o_proj.weight"), &[c, h * shape.dv], Init::Normal(std_out));
            let o_bias = cfg.o_proj_bias.then(|| b.push(format!("{p}.self_attn.o_proj.bias"), &[c], Init::Zeros));
            let sinks = cfg.attention_sinks.then(|| b.push(format!("{p}.self_attn.sinks"), &[h], Init::Zeros));
            let ln2 = b.push(format!("{p}.post_attention_layernorm.weight"), &[c], Init::Ones);
            let ln2_bias =
                cfg.layer_norm.then(|| b.push(format!("{p}.post_attention_layernorm.bias"), &[c], Init::Zeros));
            let ffn = if cfg.is_moe_layer(l) {
                let (e, f, fs) =
                    (cfg.num_local_experts, cfg.moe_intermediate_size, cfg.shared_expert_intermediate_size);
                let router = b.push(format!("{p}.mlp.router.weight"), &[e, c], Init::Normal(std));
                let router_bias = cfg.router_bias.then(|| b.push(format!("{p}.mlp.router.bias"), &[e], Init::Zeros));
                let selection_bias = cfg
                    .has_selection_bias()
                    .then(|| b.push_with(format!("{p}.mlp.router.selection_bias"), &[e], Init::Zeros, false));
                let (gate, up, down) = (
                    b.push_experts(
                        format!("{p}.mlp.experts.gate_proj"),
                        &[e, f, c],
                        Init::Normal(std),
                        shard,
                        moe_layer,
                    ),
                    b.push_experts(format!("{p}.mlp.experts.up_proj"), &[e, f, c], Init::Normal(std), shard, moe_layer),
                    b.push_experts(
                        format!("{p}.mlp.experts.down_proj"),
                        &[e, c, f],
                        Init::Normal(std_out),
                        shard,
                        moe_layer,
                    ),
                );
                let expert_bias = cfg.expert_bias.then(|| {
                    let bias = |b: &mut Builder, x: &str, n: usize| {
                        b.push_experts(format!("{p}.mlp.experts.{x}_proj_bias"), &[e, n], Init::Zeros, shard, moe_layer)
                    };
                    [bias(&mut b, "gate", f), bias(&mut b, "up", f), bias(&mut b, "down", c)]
                });
                moe_layer += 1;
                let shared = (fs > 0).then(|| {
                    [
                        b.push(format!("{p}.mlp.shared_expert.gate_proj.weight"), &[fs, c], Init::Normal(std)),
                        b.push(format!("{p}.mlp.shared_expert.up_proj.weight"), &[fs, c], Init::Normal(std)),
                        b.push(format!("{p}.mlp.shared_expert.down_proj.weight"), &[c, fs], Init::Normal(std_out)),
                    ]
                });
                let shared_gate = (fs > 0 && cfg.shared_expert_gate)
                    .then(|| b.push(format!("{p}.mlp.shared_expert_gate.weight"), &[1, c], Init::Normal(std)));
                FfnSpans::Moe(Box::new(MoeSpans {
                    router,
                    router_bias,
                    selection_bias,
                    gate,
                    up,
                    down,
                    expert_bias,
                    shared,
                    shared_gate,
                    router_lora: None,
                    experts_lora: None,
                    shared_lora: None,
                }))
            } else {
                let f = cfg.intermediate_size;
                FfnSpans::Dense {
                    gate: b.push(format!("{p}.mlp.gate_proj.weight"), &[f, c], Init::Normal(std)),
                    up: b.push(format!("{p}.mlp.up_proj.weight"), &[f, c], Init::Normal(std)),
                    down: b.push(format!("{p}.mlp.down_proj.weight"), &[c, f], Init::Normal(std_out)),
                    lora: None,
                }
            };
            layers.push(LayerSpans {
                ln1,
                ln1_bias,
                ln2_bias,
                wq,
                wk,
                wv,
                qkv_bias,
                qk_norm,
                wo,
                o_bias,
                sinks,
                ln2,
                ffn,
                attn_lora: None,
                mla,
            });
        }
        let norm = b.push("model.norm.weight".into(), &[c], Init::Ones);
        let norm_bias = cfg.layer_norm.then(|| b.push("model.norm.bias".into(), &[c], Init::Zeros));
        let lm_head = b.push("lm_head.weight".into(), &[v, c], Init::Normal(std));
        let lm_head_bias = cfg.lm_head_bias.then(|| b.push("lm_head.bias".into(), &[v], Init::Zeros));
        let base_total = b.total;
        if let Some(lc) = &cfg.lora {
            for ls in &mut layers {
                add_adapters(&mut b, ls, lc);
            }
        }
        Layout { tensors: b.tensors, total: b.total, embed, layers, norm, lm_head, norm_bias, lm_head_bias, base_total }
    }

    /// Fresh parameters drawn from the init of each tensor (the adapters from a stream of
    /// their own, as `init_adapters` draws them).
    pub fn init<T: Float>(&self, seed: u64) -> Vec<T> {
        let mut rng = Rng::new(seed);
        let mut p = moe_kernels::buffer::zeroed::<T>(self.base_total);
        for t in self.tensors.iter().filter(|t| t.span.off < self.base_total) {
            init_tensor(t, t.span.of_mut(&mut p), &mut rng);
        }
        self.init_adapters(&mut p, seed);
        p
    }

    /// Extends the base parameters `p` ([base_total]) with freshly drawn adapters.
    pub fn init_adapters<T: Float>(&self, p: &mut Vec<T>, seed: u64) {
        assert_eq!(p.len(), self.base_total, "the base model's parameters");
        let mut rng = Rng::new(seed ^ 0x4C6F_5241);
        p.resize(self.total, T::ZERO);
        for t in self.tensors.iter().filter(|t| t.span.off >= self.base_total) {
            init_tensor(t, t.span.of_mut(p), &mut rng);
        }
    }

    pub fn find(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The part of the buffer that has gradients (and optimizer moments): everything, or
    /// under LoRA the adapters alone (they follow the frozen base).
    pub fn grad_range(&self) -> std::ops::Range<usize> {
        let adapters = self.base_total < self.total;
        if adapters {
            self.base_total..self.total
        } else {
            0..self.total
        }
    }

    /// Every adapted weight with its adapter, in layer order.
    pub fn adapters(&self) -> Vec<(Span, LoraSpans)> {
        let mut out = vec![];
        let mut add = |w: &[Span], l: Option<&[LoraSpans]>| {
            if let Some(l) = l {
                out.extend(w.iter().copied().zip(l.iter().copied()));
            }
        };
        for ls in &self.layers {
            add(&[ls.wq, ls.wk, ls.wv, ls.wo], ls.attn_lora.as_ref().map(|l| &l[..]));
            match &ls.ffn {
                FfnSpans::Dense { gate, up, down, lora } => add(&[*gate, *up, *down], lora.as_ref().map(|l| &l[..])),
                FfnSpans::Moe(m) => {
                    add(&[m.router], m.router_lora.as_ref().map(std::slice::from_ref));
                    add(&[m.gate, m.up, m.down], m.experts_lora.as_ref().map(|l| &l[..]));
                    if let Some(sh) = m.shared {
                        add(&sh, m.shared_lora.as_ref().map(|l| &l[..]));
                    }
                }
            }
        }
        out
    }
}

/// Adds the adapters `lc` asks for to the layer's linear layers.
fn add_adapters(b: &mut Builder, ls: &mut LayerSpans, lc: &crate::lora::LoraConfig) {
    let (r, s) = (lc.rank, lc.scale());
    if lc.has(LoraTarget::Attn) {
        ls.attn_lora = Some([ls.wq, ls.wk, ls.wv, ls.wo].map(|w| b.push_lora(w, r, s)));
    }
    match &mut ls.ffn {
        FfnSpans::Dense { gate, up, down, lora } => {
            if lc.has(LoraTarget::Mlp) {
                *lora = Some([*gate, *up, *down].map(|w| b.push_lora(w, r, s)));
            }
        }
        FfnSpans::Moe(m) => {
            if lc.has(LoraTarget::Router) {
                m.router_lora = Some(b.push_lora(m.router, r, s));
            }
            if lc.has(LoraTarget::Experts) {
                m.experts_lora = Some([m.gate, m.up, m.down].map(|w| b.push_lora(w, r, s)));
            }
            if let (true, Some(sh)) = (lc.has(LoraTarget::Mlp), m.shared) {
                m.shared_lora = Some(sh.map(|w| b.push_lora(w, r, s)));
            }
        }
    }
}

/// Draws tensor `t` into `dst` from its init.
fn init_tensor<T: Float>(t: &TensorInfo, dst: &mut [T], rng: &mut Rng) {
    match t.init {
        Init::Ones => dst.fill(T::ONE),
        Init::Zeros => dst.fill(T::ZERO),
        Init::Normal(std) => match &t.experts {
            None => dst.iter_mut().for_each(|x| *x = T::from_f64(rng.normal() * std)),
            // A rank draws the whole expert tensor and keeps its slots' experts: every
            // rank count and placement starts from the same weights.
            Some(ex) => {
                let n = t.per_expert();
                let whole: Vec<f64> = (0..ex.total * n).map(|_| rng.normal() * std).collect();
                for (slot, &x) in dst.chunks_exact_mut(n).zip(&ex.slots) {
                    slot.iter_mut().zip(&whole[x * n..]).for_each(|(d, &w)| *d = T::from_f64(w));
                }
            }
        },
    }
}
