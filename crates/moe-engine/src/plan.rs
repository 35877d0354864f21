//! Capacity planning: parameter counts of a model (total, per routed expert, active per token),
//! the memory of training and inference (weights, gradients, optimizer state, activations, KV
//! cache), and the fewest devices of a given memory that hold it, with a placement: S pipeline
//! stages (consecutive layers) times N expert-parallel devices per stage (each holding 1/N of
//! every routed expert tensor of its stage's layers, the rest replicated). Formulas, stated once:
//! - training, mixed precision: 16 bytes per parameter (bf16 weights and gradients, fp32
//!   master weights, AdamW m and v), or with `zero` the fp32 part (12 bytes) of replicated
//!   parameters sharded over the N devices of a stage (ZeRO-1);
//! - training activations, bf16, fused attention (no T x T scores kept), no recomputation:
//!   per token and layer 2 * (10 C + 2 * active FFN width * 3 / 2) bytes, i.e. the saved inputs
//!   of the norms, projections and SwiGLU;
//! - inference: `weight_bytes` per parameter, KV cache 2 bytes per cached element.

use crate::config::ModelConfig;

/// One decoder layer's parameter counts.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerPlan {
    /// Attention and norms.
    pub attn: u64,
    /// Dense MLP, or the MoE layer's router, gate and shared experts.
    pub dense: u64,
    /// One routed expert (0 for a dense layer), E experts, K active.
    pub expert: u64,
    pub experts: usize,
    pub top_k: usize,
    /// Active FFN width of a token (dense width, or K x expert width + shared width).
    pub active_width: u64,
    /// KV-cache elements per token.
    pub kv_per_token: u64,
}

/// What the planner needs of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanModel {
    pub name: String,
    pub hidden: u64,
    /// Embedding, LM head (once if tied) and final norm.
    pub embed: u64,
    pub layers: Vec<LayerPlan>,
}

/// Workload and hardware of a plan.
#[derive(Clone, Debug)]
pub struct Hardware {
    /// Bytes of memory per device.
    pub memory: f64,
    /// Memory bandwidth per device (bytes/s), for the decode bound.
    pub bandwidth: f64,
    /// Training tokens per device per micro-batch.
    pub train_tokens: u64,
    /// Inference: sequences and context per sequence (KV cache).
    pub batch: u64,
    pub context: u64,
    /// Bytes per weight at inference (2 = bf16, 1 = 8-bit, 0.5 = 4-bit).
    pub weight_bytes: f64,
    /// Shard the fp32 optimizer state of replicated parameters over a stage's devices.
    pub zero: bool,
}

impl PlanModel {
    /// From a config of ours.
    pub fn from_config(name: &str, cfg: &ModelConfig) -> Self {
        let c = cfg.hidden_size as u64;
        let sh = cfg.attn_shape();
        let layout = crate::params::Layout::new(cfg);
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| {
                // the attention's matrices and the layer's two norms (latent attention's norms too)
                let sp = &layout.layers[l];
                let mla = sp.mla.map_or(0, |m| m.q_a.map_or(0, |[w, n]| w.len + n.len) + m.kv_a_norm.len);
                let attn = (sp.wq.len + sp.wk.len + sp.wv.len + sp.wo.len + mla) as u64 + 2 * c;
                let kv_per_token = (sh.g * (sh.d + sh.dv)) as u64;
                if cfg.is_moe_layer(l) {
                    let (e, fe, fs) = (
                        cfg.num_local_experts as u64,
                        cfg.moe_intermediate_size as u64,
                        cfg.shared_expert_intermediate_size as u64,
                    );
                    let k = cfg.num_experts_per_tok as u64;
                    // Router weight, its bias and selection bias if any, shared expert and gate.
                    let router = e * (c + u64::from(cfg.router_bias) + u64::from(cfg.has_selection_bias()));
                    let dense = router + 3 * c * fs + u64::from(cfg.shared_expert_gate) * c;
                    LayerPlan {
                        attn,
                        dense,
                        expert: 3 * c * fe,
                        experts: e as usize,
                        top_k: k as usize,
                        active_width: k * fe + fs,
                        kv_per_token,
                    }
                } else {
                    let f = cfg.intermediate_size as u64;
                    LayerPlan { attn, dense: 3 * c * f, expert: 0, experts: 0, top_k: 0, active_width: f, kv_per_token }
                }
            })
            .collect();
        PlanModel { name: name.into(), hidden: c, embed: 2 * cfg.vocab_size as u64 * c + c, layers }
    }

    pub fn total(&self) -> u64 {
        self.embed + self.layers.iter().map(|l| l.attn + l.dense + l.expert * l.experts as u64).sum::<u64>()
    }
    /// Parameters in routed experts.
    pub fn routed(&self) -> u64 {
        self.layers.iter().map(|l| l.expert * l.experts as u64).sum()
    }
    /// Parameters a token uses (the input embedding row aside, the LM head included).
    pub fn active(&self) -> u64 {
        self.embed + self.layers.iter().map(|l| l.attn + l.dense + l.expert * l.top_k as u64).sum::<u64>()
    }
    fn kv_per_token(&self, layers: &[LayerPlan]) -> u64 {
        layers.iter().map(|l| l.kv_per_token).sum()
    }
    fn act_per_token(&self, layers: &[LayerPlan]) -> f64 {
        layers.iter().map(|l| 2.0 * (10.0 * self.hidden as f64 + 3.0 * l.active_width as f64)).sum()
    }
    fn max_experts(&self) -> usize {
        self.layers.iter().map(|l| l.experts).max().unwrap_or(0)
    }
}

/// Memory of one device (bytes).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceMemory {
    pub weights: f64,
    pub grads: f64,
    pub optimizer: f64,
    pub activations: f64,
    pub kv_cache: f64,
}

impl DeviceMemory {
    pub fn total(&self) -> f64 {
        self.weights + self.grads + self.optimizer + self.activations + self.kv_cache
    }
}

/// A placement: `stages` x `expert_parallel` devices.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    pub stages: usize,
    pub expert_parallel: usize,
    pub layers_per_stage: usize,
    /// Routed experts per device in each MoE layer (ceil(E / N)).
    pub experts_per_device: usize,
    /// The fullest device.
    pub device: DeviceMemory,
}

impl Placement {
    pub fn devices(&self) -> usize {
        self.stages * self.expert_parallel
    }
}

/// The fullest device of S stages x N expert-parallel devices, for training or inference.
pub fn device_memory(m: &PlanModel, hw: &Hardware, s: usize, n: usize, training: bool) -> Placement {
    let per = m.layers.len().div_ceil(s);
    let mut worst = DeviceMemory::default();
    let mut experts_per_device = 0;
    for (i, stage) in m.layers.chunks(per).enumerate() {
        let edge = if i == 0 || (i + 1) * per >= m.layers.len() { m.embed as f64 } else { 0.0 };
        let replicated = edge + stage.iter().map(|l| (l.attn + l.dense) as f64).sum::<f64>();
        let sharded: f64 = stage.iter().map(|l| (l.expert * l.experts.div_ceil(n) as u64) as f64).sum();
        experts_per_device = experts_per_device.max(stage.iter().map(|l| l.experts.div_ceil(n)).max().unwrap_or(0));
        let p = replicated + sharded;
        let mem = if training {
            let fp32 = if hw.zero { replicated / n as f64 + sharded } else { p };
            DeviceMemory {
                weights: 2.0 * p,
                grads: 2.0 * p,
                optimizer: 12.0 * fp32,
                activations: hw.train_tokens as f64 * m.act_per_token(stage),
                kv_cache: 0.0,
            }
        } else {
            DeviceMemory {
                weights: hw.weight_bytes * p,
                kv_cache: 2.0 * (hw.batch * hw.context * m.kv_per_token(stage)) as f64,
                activations: 2.0 * (hw.batch * hw.context) as f64 * 4.0 * m.hidden as f64,
                ..Default::default()
            }
        };
        if mem.total() > worst.total() {
            worst = mem;
        }
    }
    Placement { stages: s, expert_parallel: n, layers_per_stage: per, experts_per_device, device: worst }
}

/// The placement with the fewest devices whose fullest device fits `hw.memory` (stages up to
/// the layer count, expert parallelism up to the expert count), or None.
pub fn fewest_devices(m: &PlanModel, hw: &Hardware, training: bool) -> Option<Placement> {
    let e = m.max_experts().max(1);
    let mut best: Option<Placement> = None;
    for s in 1..=m.layers.len() {
        for n in (1..=e).filter(|n| e.is_multiple_of(*n)) {
            let p = device_memory(m, hw, s, n, training);
            let better = best
                .as_ref()
                .is_none_or(|b| p.devices() < b.devices() || (p.devices() == b.devices() && p.stages < b.stages));
            if p.device.total() <= hw.memory && better {
                best = Some(p);
            }
        }
    }
    best
}
