//! Model configuration as typed data: Hugging Face field names where one exists, presets as
//! functions, derived sizes in one place, validation with fixable messages. Training settings
//! live in `train::TrainConfig`, not here.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// How the Switch load-balancing loss pools its statistics (see `moe::losses`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BalanceScope {
    /// Hugging Face's form: token fractions and mean probabilities pooled over all MoE layers.
    #[default]
    Global,
    /// One loss per MoE layer, averaged over the MoE layers.
    Layer,
    /// One loss per sequence and MoE layer, averaged (DeepSeek-V3's sequence-wise form).
    Sequence,
}

fn is_zero(x: &usize) -> bool {
    *x == 0
}

/// RMSNorm of the queries and keys before RoPE (see `qkv`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QkNorm {
    #[default]
    None,
    /// Over each head's D values, one weight [D] for all heads (Qwen3).
    PerHead,
    /// Over all of q [H*D] and all of k [G*D] (OLMoE).
    Whole,
}

/// DeepSeek's multi-head latent attention (MLA, DeepSeek-V2/V3) in place of the q/k/v
/// projections (see `mla`): queries from x (through a rank-`q_lora_rank` bottleneck with its
/// RMSNorm, or one projection when 0), keys and values of every head up-projected from one
/// normed latent of `kv_lora_rank` per position, plus one rotated key of `qk_rope_head_dim`
/// shared by all heads. Query/key heads are `qk_nope_head_dim + qk_rope_head_dim` wide, value
/// heads `v_head_dim`; Hugging Face's DeepseekV3Config field names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlaConfig {
    #[serde(default)]
    pub q_lora_rank: usize,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    /// RoPE on adjacent pairs of the rope dims, written de-interleaved (DeepSeek-V3's
    /// `rope_interleave`); else on pairs (i, i + rope/2).
    #[serde(default = "yes")]
    pub rope_interleave: bool,
}

fn yes() -> bool {
    true
}

/// A layer's attention span (Hugging Face's `layer_types` entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerType {
    FullAttention,
    SlidingAttention,
}

/// The attention's head geometry: H query heads and G key/value heads, query/key heads of
/// width `d` (of which the last `rope` dims are rotated), value heads of width `dv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub h: usize,
    pub g: usize,
    pub d: usize,
    pub dv: usize,
    pub rope: usize,
}

/// How the router scores experts and picks them (see `moe::router`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RouterKind {
    /// Softmax over all experts, top-k, weights renormalised when `norm_topk_prob` (Mixtral, Qwen, OLMoE).
    #[default]
    SoftmaxTopk,
    /// Top-k of the logits, then softmax over the k (gpt-oss, the Mixtral paper's form).
    TopkSoftmax,
    /// Switch Transformer: softmax, top-1, weight = its probability (needs top-k = 1).
    Switch,
    /// DeepSeek-V3: sigmoid scores, top-k of score + selection bias within the best `topk_group`
    /// of `n_group` groups, weights = unbiased scores (normalised if `norm_topk_prob`) times
    /// `routed_scaling_factor`.
    SigmoidGroup,
    /// Expert choice (Zhou et al. 2022): each expert takes its top tokens by softmax probability,
    /// capacity = N * K / E * capacity_factor.
    ExpertChoice,
    /// PhiMoE's sparsemixer as transformers runs it at inference (top-2): the first expert is the
    /// largest logit, weighted by its softmax over the logits within `sparse_mixer_eps` of it
    /// (relative); the second the largest of the rest, weighted the same way among them. Its
    /// training-time estimator (sampled experts) is not used: the gradient is the exact one of
    /// this deterministic routing.
    SparseMixer,
}

/// Which routed assignments survive when an expert is over capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DropPolicy {
    /// Keep the assignments with the highest routing weight.
    #[default]
    Probability,
    /// Keep the earliest tokens of the batch.
    Position,
}

/// The most layers a config may name (the largest released models have under 200).
pub const MAX_LAYERS: usize = 4096;

/// The most parameters a config may describe (an upper bound, see `ModelConfig::validate`):
/// 10^12, past any CPU's memory.
pub const MAX_PARAMS: u128 = 1_000_000_000_000;

/// The most values the model's RoPE tables (cos and sin, max_position_embeddings x head_dim / 2
/// each) may hold: 2^28 (1 GiB of f32), 2 M positions at head dim 128. A config of 1.8 x 10^9
/// positions asked for 14 GB (the config_json fuzz target's third find).
pub const MAX_ROPE_VALUES: u128 = 1 << 28;

/// A decoder-only LLaMA-style transformer whose feed-forward block is dense or MoE per layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// V
    pub vocab_size: usize,
    /// C
    pub hidden_size: usize,
    /// L
    pub num_hidden_layers: usize,
    /// H
    pub num_attention_heads: usize,
    /// G (grouped-query attention when < H)
    pub num_key_value_heads: usize,
    /// F of the dense SwiGLU MLP layers.
    pub intermediate_size: usize,
    /// Longest sequence (context, T).
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// E; 0 means a dense model.
    pub num_local_experts: usize,
    /// K
    pub num_experts_per_tok: usize,
    /// F of each expert.
    pub moe_intermediate_size: usize,
    /// Renormalise the top-k routing weights to sum to 1 (Mixtral: true; Qwen/OLMoE: config).
    pub norm_topk_prob: bool,
    /// Coefficient of the Switch load-balancing loss.
    pub router_aux_loss_coef: f64,
    /// Coefficient of the router z-loss.
    pub router_z_loss_coef: f64,
    #[serde(default)]
    pub aux_loss_scope: BalanceScope,
    /// The first k layers stay dense (DeepSeek's `first_k_dense_replace`).
    #[serde(default)]
    pub first_k_dense_replace: usize,
    /// Layer l (0-based) is MoE when (l + 1) % step == 0 (Qwen's `decoder_sparse_step`).
    #[serde(default = "one")]
    pub decoder_sparse_step: usize,
    /// Layers that stay dense wherever they are (Qwen2-MoE's and Qwen3-MoE's `mlp_only_layers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mlp_only_layers: Vec<usize>,
    #[serde(default)]
    pub router: RouterKind,
    /// A trainable router bias (gpt-oss).
    #[serde(default)]
    pub router_bias: bool,
    /// Biases on the query, key and value projections (Qwen2).
    #[serde(default)]
    pub qkv_bias: bool,
    /// RMSNorm of queries and keys (Qwen3, OLMoE).
    #[serde(default)]
    pub qk_norm: QkNorm,
    /// The attention head width when it is not hidden_size / num_attention_heads (Qwen3); 0 =
    /// that quotient.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub head_dim: usize,
    /// Expert groups for group-limited routing (`sigmoid_group`).
    #[serde(default = "one")]
    pub n_group: usize,
    /// Groups a token may use (`sigmoid_group`).
    #[serde(default = "one")]
    pub topk_group: usize,
    /// Routing weights are multiplied by this (`sigmoid_group`).
    #[serde(default = "one_f")]
    pub routed_scaling_factor: f64,
    /// Multiplicative uniform noise on the router input during training: x * U(1-j, 1+j).
    #[serde(default)]
    pub router_jitter_noise: f64,
    /// Expert capacity ceil(K * N / E * factor) with token dropping; 0 = dropless.
    /// Expert choice uses it for its capacity (0 means 1).
    #[serde(default)]
    pub capacity_factor: f64,
    #[serde(default)]
    pub drop_policy: DropPolicy,
    /// Width of the shared expert every token goes through (0 = none).
    #[serde(default)]
    pub shared_expert_intermediate_size: usize,
    /// Scale the shared expert by sigmoid(x . w) (Qwen2-MoE's `shared_expert_gate`).
    #[serde(default)]
    pub shared_expert_gate: bool,
    /// Aux-loss-free balancing: after each step, bias_e += rate * sign(mean load - load_e);
    /// the bias is used for selection only. 0 = off.
    #[serde(default)]
    pub bias_update_rate: f64,
    /// LoRA adapters on the chosen linear layers; the base weights are then frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<crate::lora::LoraConfig>,
    /// Granite's multipliers: the embeddings are scaled by `embedding_multiplier`, attention
    /// scores by `attention_multiplier` instead of 1/sqrt(head dim) (0 = that), each block's
    /// output by `residual_multiplier` before it joins the residual stream, and the logits are
    /// divided by `logits_scaling`.
    #[serde(default = "one_f", skip_serializing_if = "is_one")]
    pub embedding_multiplier: f64,
    #[serde(default, skip_serializing_if = "is_zero_f")]
    pub attention_multiplier: f64,
    #[serde(default = "one_f", skip_serializing_if = "is_one")]
    pub residual_multiplier: f64,
    #[serde(default = "one_f", skip_serializing_if = "is_one")]
    pub logits_scaling: f64,
    /// Latent attention instead of q/k/v projections (DeepSeek); None = the usual attention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mla: Option<MlaConfig>,
    /// Sliding-window attention: a key at j is seen from position p when p - j < window (0 =
    /// none), in the layers `layer_types` names `sliding_attention` (every layer when it is empty).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sliding_window: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_types: Vec<LayerType>,
    /// A learned logit per head that joins each softmax denominator (gpt-oss's `sinks`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attention_sinks: bool,
    /// A bias on the attention's output projection (gpt-oss).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub o_proj_bias: bool,
    /// q, k and v clamped to [-clip_qkv, clip_qkv] after the query/key norms (OLMoE; 0 = none).
    #[serde(default, skip_serializing_if = "is_zero_f")]
    pub clip_qkv: f64,
    /// The sparsemixer's relative threshold (PhiMoE's `router_jitter_noise`).
    #[serde(default, skip_serializing_if = "is_zero_f")]
    pub sparse_mixer_eps: f64,
    /// LayerNorm (with biases) instead of RMSNorm everywhere (PhiMoE); `rms_norm_eps` is its eps.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub layer_norm: bool,
    /// A bias on the LM head (PhiMoE).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lm_head_bias: bool,
    /// Biases on the experts' gate, up and down projections (gpt-oss).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expert_bias: bool,
    /// The experts' activation: gpt-oss's clamped SwiGLU with this limit (its `swiglu_limit`;
    /// alpha 1.702 and up + 1, `ffn::Act::Clamped`), or SwiGLU when 0.
    #[serde(default, skip_serializing_if = "is_zero_f")]
    pub swiglu_limit: f64,
    /// RoPE scaling as Hugging Face writes it (`rope_type` linear, llama3 or yarn with its
    /// fields; `rope::Rope` computes the schedule); None = plain RoPE of `rope_theta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
}

fn one() -> usize {
    1
}

fn one_f() -> f64 {
    1.0
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

fn is_zero_f(x: &f64) -> bool {
    *x == 0.0
}

/// gpt-oss's clamped SwiGLU slope (transformers hard-codes 1.702).
pub const GPT_OSS_ALPHA: f64 = 1.702;

/// Names of the presets, in the order `--help` lists them.
pub const PRESETS: &[&str] = &["default", "small", "mini", "tiny", "bench-dense", "bench-moe8x2", "bench-moe16x4"];

impl ModelConfig {
    /// The reference architecture of GUIDE section 6 with a dense MLP of width 1024.
    pub fn bench_dense() -> Self {
        ModelConfig {
            vocab_size: 4096,
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 6,
            num_key_value_heads: 6,
            intermediate_size: 1024,
            max_position_embeddings: 256,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            num_local_experts: 0,
            num_experts_per_tok: 0,
            moe_intermediate_size: 0,
            norm_topk_prob: true,
            router_aux_loss_coef: 0.01,
            router_z_loss_coef: 0.001,
            aux_loss_scope: BalanceScope::Global,
            first_k_dense_replace: 0,
            decoder_sparse_step: 1,
            mlp_only_layers: vec![],
            router: RouterKind::SoftmaxTopk,
            router_bias: false,
            qkv_bias: false,
            qk_norm: QkNorm::None,
            head_dim: 0,
            n_group: 1,
            topk_group: 1,
            routed_scaling_factor: 1.0,
            router_jitter_noise: 0.0,
            capacity_factor: 0.0,
            drop_policy: DropPolicy::Probability,
            shared_expert_intermediate_size: 0,
            shared_expert_gate: false,
            bias_update_rate: 0.0,
            lora: None,
            embedding_multiplier: 1.0,
            attention_multiplier: 0.0,
            residual_multiplier: 1.0,
            logits_scaling: 1.0,
            mla: None,
            rope_scaling: None,
            sliding_window: 0,
            layer_types: vec![],
            attention_sinks: false,
            o_proj_bias: false,
            expert_bias: false,
            swiglu_limit: 0.0,
            layer_norm: false,
            lm_head_bias: false,
            sparse_mixer_eps: 0.0,
            clip_qkv: 0.0,
        }
    }
    /// 8 experts, top-2, expert width 512: the active compute of `bench_dense`.
    pub fn bench_moe8x2() -> Self {
        ModelConfig { num_local_experts: 8, num_experts_per_tok: 2, moe_intermediate_size: 512, ..Self::bench_dense() }
    }
    /// 16 fine-grained experts, top-4, width 256: the same active compute again.
    pub fn bench_moe16x4() -> Self {
        ModelConfig { num_local_experts: 16, num_experts_per_tok: 4, moe_intermediate_size: 256, ..Self::bench_dense() }
    }
    /// A small MoE that learns visibly on the default corpus within the main job's budget, in
    /// the recipe RESULTS.md found best: 16 fine-grained experts, top-3, plus a shared expert
    /// (16x3+1, DeepSeekMoE's shape; it beat 8x2 and the dense model of the same active
    /// compute at every size measured), balanced by the pooled Switch loss plus the aux-loss-free
    /// selection bias (rate 0.001; "The balancing recipe").
    pub fn default_moe() -> Self {
        ModelConfig {
            vocab_size: 4096,
            hidden_size: 256,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 4,
            intermediate_size: 1024,
            max_position_embeddings: 128,
            num_local_experts: 16,
            num_experts_per_tok: 3,
            moe_intermediate_size: 256,
            shared_expert_intermediate_size: 256,
            bias_update_rate: 0.001,
            ..Self::bench_dense()
        }
    }
    /// The default at half the width (128, dense width 512: 1.6 M active parameters), the same
    /// 16x3+1 shape: the size at which `moe compare` trains the dense model and
    /// this MoE on one epoch of the default corpus in about 45 minutes on 2 cores.
    pub fn small() -> Self {
        ModelConfig {
            hidden_size: 128,
            intermediate_size: 512,
            moe_intermediate_size: 128,
            shared_expert_intermediate_size: 128,
            ..Self::default_moe()
        }
    }
    /// `small` at half the width again (64, dense width 256: 0.5 M active parameters), the
    /// smallest of the three sizes RESULTS.md compares; one epoch of the default corpus is 35
    /// tokens per active parameter.
    pub fn mini() -> Self {
        ModelConfig {
            hidden_size: 64,
            intermediate_size: 256,
            moe_intermediate_size: 64,
            shared_expert_intermediate_size: 64,
            ..Self::small()
        }
    }
    /// About 25 thousand parameters, for tests; its vocabulary fits a byte-level BPE.
    pub fn tiny() -> Self {
        ModelConfig {
            vocab_size: 320,
            hidden_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            intermediate_size: 24,
            max_position_embeddings: 16,
            num_local_experts: 4,
            num_experts_per_tok: 2,
            moe_intermediate_size: 12,
            ..Self::bench_dense()
        }
    }

    /// Looks a preset up by name.
    pub fn preset(name: &str) -> Result<Self> {
        Ok(match name {
            "default" => Self::default_moe(),
            "small" => Self::small(),
            "mini" => Self::mini(),
            "tiny" => Self::tiny(),
            "bench-dense" => Self::bench_dense(),
            "bench-moe8x2" => Self::bench_moe8x2(),
            "bench-moe16x4" => Self::bench_moe16x4(),
            _ => return Err(Error::UnknownPreset { name: name.into(), choices: PRESETS.join(", ") }),
        })
    }

    /// The factor of the attention scores: `attention_multiplier`, or 1/sqrt(D).
    pub fn attention_scale(&self) -> f64 {
        if self.attention_multiplier > 0.0 {
            self.attention_multiplier
        } else {
            1.0 / (self.attn_shape().d as f64).sqrt()
        }
    }
    /// The RoPE schedule of a scaled config (None for plain RoPE), or what is wrong with it.
    pub fn rope(&self) -> Result<Option<crate::rope::Rope>> {
        let Some(scaling) = &self.rope_scaling else { return Ok(None) };
        let params = serde_json::json!({ "rope_theta": self.rope_theta, "rope_scaling": scaling });
        let dim = self.attn_shape().rope;
        let rope = crate::rope::Rope::from_config(&params, dim, self.max_position_embeddings, false, false)
            .map_err(|e| Error::config(format!("rope_scaling: {e}"), "fix rope_scaling or leave it out"))?;
        if rope.long.is_some() && self.max_position_embeddings > rope.original {
            return Err(Error::config(
                format!(
                    "rope_scaling: LongRoPE switches its schedule past {} positions, which training does not",
                    rope.original
                ),
                "set max_position_embeddings to at most original_max_position_embeddings (its short schedule), or use default, linear, llama3 or yarn RoPE",
            ));
        }
        Ok(Some(rope))
    }
    /// The head geometry: D = head_dim() for q, k and v and G key/value heads, or MLA's.
    pub fn attn_shape(&self) -> AttnShape {
        let h = self.num_attention_heads;
        match self.mla {
            Some(m) => AttnShape {
                h,
                g: h,
                d: m.qk_nope_head_dim + m.qk_rope_head_dim,
                dv: m.v_head_dim,
                rope: m.qk_rope_head_dim,
            },
            None => {
                let d = self.head_dim();
                AttnShape { h, g: self.num_key_value_heads, d, dv: d, rope: d }
            }
        }
    }
    /// D
    pub fn head_dim(&self) -> usize {
        if self.head_dim > 0 {
            self.head_dim
        } else {
            self.hidden_size / self.num_attention_heads
        }
    }
    /// The experts' activation.
    pub fn expert_act(&self) -> crate::ffn::Act {
        if self.swiglu_limit > 0.0 {
            crate::ffn::Act::Clamped { alpha: GPT_OSS_ALPHA, limit: self.swiglu_limit }
        } else {
            crate::ffn::Act::Swiglu
        }
    }
    /// The sliding window of layer `l` (0 = it sees every earlier position).
    pub fn window(&self, l: usize) -> usize {
        match self.layer_types.get(l) {
            Some(LayerType::FullAttention) => 0,
            _ => self.sliding_window,
        }
    }
    /// Whether layer `l` has an MoE feed-forward block.
    pub fn is_moe_layer(&self, l: usize) -> bool {
        self.num_local_experts > 0
            && l >= self.first_k_dense_replace
            && (l + 1).is_multiple_of(self.decoder_sparse_step)
            && !self.mlp_only_layers.contains(&l)
    }
    /// Number of MoE layers.
    pub fn num_moe_layers(&self) -> usize {
        (0..self.num_hidden_layers).filter(|&l| self.is_moe_layer(l)).count()
    }

    /// Whether MoE layers carry a selection bias (DeepSeek's `e_score_correction_bias`).
    pub fn has_selection_bias(&self) -> bool {
        self.router == RouterKind::SigmoidGroup || self.bias_update_rate > 0.0
    }

    /// Routed rows (assignments) of an MoE layer for `n` tokens: N*K for token choice, E times
    /// the capacity for expert choice.
    pub fn routed_rows(&self, n: usize) -> usize {
        let (e, k) = (self.num_local_experts, self.num_experts_per_tok);
        match self.router {
            RouterKind::ExpertChoice => e * self.expert_capacity(n).min(n),
            _ => n * k,
        }
    }

    /// Tokens an expert may take for a batch of `n` tokens, or usize::MAX when dropless.
    pub fn expert_capacity(&self, n: usize) -> usize {
        let (e, k) = (self.num_local_experts.max(1), self.num_experts_per_tok);
        let cf = if self.router == RouterKind::ExpertChoice && self.capacity_factor == 0.0 {
            1.0
        } else {
            self.capacity_factor
        };
        if cf == 0.0 {
            usize::MAX
        } else {
            ((k * n) as f64 / e as f64 * cf).ceil() as usize
        }
    }

    /// An upper bound of the parameters (and position tables) the config describes, every
    /// product checked in u128 (None: beyond it): hostile sizes stop here, before any size
    /// arithmetic of the engine can overflow or any table is allocated.
    fn param_bound(&self) -> Option<u128> {
        let m = |f: &[usize]| f.iter().try_fold(1u128, |a, &x| a.checked_mul(x as u128));
        let (c, d) = (self.hidden_size, self.head_dim());
        let attn = m(&[2, c, self.num_attention_heads, d])?.checked_add(m(&[2, c, self.num_key_value_heads, d])?)?;
        let experts = m(&[3, self.num_local_experts, c, self.moe_intermediate_size])?
            .checked_add(m(&[self.num_local_experts, c])?)?
            .checked_add(m(&[3, c, self.shared_expert_intermediate_size])?)?;
        let mla = match self.mla {
            Some(a) => {
                let (h, dqk) = (self.num_attention_heads, a.qk_nope_head_dim.checked_add(a.qk_rope_head_dim)?);
                m(&[a.q_lora_rank.checked_add(c)?, h, dqk])?
                    .checked_add(m(&[a.q_lora_rank, c])?)?
                    .checked_add(m(&[c, a.kv_lora_rank.checked_add(a.qk_rope_head_dim)?])?)?
                    .checked_add(m(&[a.kv_lora_rank, h, a.qk_nope_head_dim.checked_add(a.v_head_dim)?])?)?
                    .checked_add(m(&[c, h, a.v_head_dim])?)?
            }
            None => 0,
        };
        let layer = attn.checked_add(mla)?.checked_add(experts)?.checked_add(m(&[3, c, self.intermediate_size])?)?;
        m(&[self.num_hidden_layers])?
            .checked_mul(layer)?
            .checked_add(m(&[2, self.vocab_size, c])?)?
            .checked_add(m(&[self.max_position_embeddings, d])?)
    }

    /// Checks every constraint the engine relies on.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
            ("decoder_sparse_step", self.decoder_sparse_step),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::config(format!("{name} is 0"), format!("set {name} to a positive value")));
            }
        }
        if self.num_hidden_layers > MAX_LAYERS {
            // a hostile count (the config_json fuzz target's 5 x 10^13) would be walked layer
            // by layer below and in the model's tables
            return Err(Error::config(
                format!("num_hidden_layers is {}", self.num_hidden_layers),
                format!("num_hidden_layers must be at most {MAX_LAYERS}"),
            ));
        }
        match self.param_bound() {
            Some(n) if n <= MAX_PARAMS => {}
            n => {
                let n = n.map_or("more than 10^38".into(), |n| format!("up to {n:.3e}", n = n as f64));
                return Err(Error::config(
                    format!("the config describes {n} parameters"),
                    "at most 10^12 (past any CPU's memory): check hidden_size, intermediate_size, \
                     moe_intermediate_size, num_local_experts, vocab_size and max_position_embeddings",
                ));
            }
        }
        let rope = self.max_position_embeddings as u128 * self.head_dim() as u128;
        if rope > MAX_ROPE_VALUES {
            // the model holds cos and sin tables of max_position_embeddings x head_dim / 2 each
            return Err(Error::config(
                format!(
                    "max_position_embeddings {} x head dim {} is {rope} RoPE table values",
                    self.max_position_embeddings,
                    self.head_dim()
                ),
                format!("at most {MAX_ROPE_VALUES} (1 GiB of f32 tables): lower max_position_embeddings"),
            ));
        }
        if self.head_dim == 0 && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::config(
                format!(
                    "hidden_size {} is not divisible by num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
                "pick a head count that divides hidden_size",
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(Error::config(format!("head dim {} is odd", self.head_dim()), "RoPE needs an even head dim"));
        }
        if let Some(a) = self.mla {
            self.validate_mla(a)?;
        }
        self.rope()?;
        if !self.layer_types.is_empty() && self.layer_types.len() != self.num_hidden_layers {
            return Err(Error::config(
                format!(
                    "layer_types lists {} layers, the model has {}",
                    self.layer_types.len(),
                    self.num_hidden_layers
                ),
                "give one entry per layer or leave layer_types out",
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(Error::config(
                format!(
                    "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                    self.num_attention_heads, self.num_key_value_heads
                ),
                "use a key/value head count that divides the query head count",
            ));
        }
        let dense_layers = (0..self.num_hidden_layers).any(|l| !self.is_moe_layer(l));
        if dense_layers && self.intermediate_size == 0 {
            return Err(Error::config("intermediate_size is 0 but some layers are dense", "set intermediate_size"));
        }
        if self.num_local_experts > 0 {
            if self.num_experts_per_tok == 0 || self.num_experts_per_tok > self.num_local_experts {
                return Err(Error::config(
                    format!(
                        "num_experts_per_tok (top-k) {} must be in 1..={} (num_local_experts)",
                        self.num_experts_per_tok, self.num_local_experts
                    ),
                    "lower top-k or add experts",
                ));
            }
            if self.moe_intermediate_size == 0 {
                return Err(Error::config("moe_intermediate_size is 0", "set the expert hidden width"));
            }
            self.validate_routing()?;
        }
        for (name, v) in [
            ("embedding_multiplier", self.embedding_multiplier),
            ("residual_multiplier", self.residual_multiplier),
            ("logits_scaling", self.logits_scaling),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(Error::config(format!("{name} is {v}"), format!("{name} must be a finite number > 0")));
            }
        }
        for (name, v) in [
            ("attention_multiplier", self.attention_multiplier),
            ("router_aux_loss_coef", self.router_aux_loss_coef),
            ("router_z_loss_coef", self.router_z_loss_coef),
            ("rms_norm_eps", self.rms_norm_eps),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(Error::config(format!("{name} is {v}"), format!("{name} must be a finite number >= 0")));
            }
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(Error::config(format!("rope_theta is {}", self.rope_theta), "rope_theta must be > 0"));
        }
        if let Some(l) = &self.lora {
            l.validate(self)?;
        }
        Ok(())
    }

    fn validate_mla(&self, a: MlaConfig) -> Result<()> {
        for (name, v) in
            [("kv_lora_rank", a.kv_lora_rank), ("qk_rope_head_dim", a.qk_rope_head_dim), ("v_head_dim", a.v_head_dim)]
        {
            if v == 0 {
                return Err(Error::config(format!("mla.{name} is 0"), format!("set mla.{name} to a positive value")));
            }
        }
        if !a.qk_rope_head_dim.is_multiple_of(2) {
            return Err(Error::config(
                format!("mla.qk_rope_head_dim {} is odd", a.qk_rope_head_dim),
                "RoPE needs an even number of rotated dims",
            ));
        }
        if self.qkv_bias || self.qk_norm != QkNorm::None {
            return Err(Error::config(
                "latent attention (mla) has no query/key/value biases or query/key norms",
                "leave qkv_bias and qk_norm unset with mla",
            ));
        }
        Ok(())
    }

    fn validate_routing(&self) -> Result<()> {
        let (e, k) = (self.num_local_experts, self.num_experts_per_tok);
        if self.router == RouterKind::SparseMixer && k != 2 {
            return Err(Error::config(
                format!("the sparse_mixer router picks 2 experts, not {k}"),
                "set num_experts_per_tok to 2",
            ));
        }
        if self.router == RouterKind::Switch && k != 1 {
            return Err(Error::config(
                format!("the switch router needs num_experts_per_tok = 1, not {k}"),
                "set top-k to 1 or use softmax_topk",
            ));
        }
        if self.n_group == 0 || e % self.n_group != 0 {
            return Err(Error::config(
                format!("n_group {} does not divide num_local_experts {e}", self.n_group),
                "pick a group count that divides the experts",
            ));
        }
        if self.topk_group == 0 || self.topk_group > self.n_group {
            return Err(Error::config(
                format!("topk_group {} must be in 1..={} (n_group)", self.topk_group, self.n_group),
                "lower topk_group or raise n_group",
            ));
        }
        if self.n_group > 1 && self.router != RouterKind::SigmoidGroup {
            return Err(Error::config(
                "n_group > 1 needs the sigmoid_group router",
                "set router to sigmoid_group or n_group to 1",
            ));
        }
        if k > self.topk_group * (e / self.n_group) {
            return Err(Error::config(
                format!(
                    "top-k {k} exceeds the {} experts of the {} allowed groups",
                    self.topk_group * (e / self.n_group),
                    self.topk_group
                ),
                "raise topk_group or lower top-k",
            ));
        }
        if !(self.capacity_factor >= 0.0 && self.capacity_factor.is_finite()) {
            return Err(Error::config(
                format!("capacity_factor is {}", self.capacity_factor),
                "use 0 (dropless) or a positive factor such as 1.25",
            ));
        }
        if !(0.0..1.0).contains(&self.router_jitter_noise) {
            return Err(Error::config(
                format!("router_jitter_noise is {}", self.router_jitter_noise),
                "use a value in [0, 1), e.g. 0.01",
            ));
        }
        if !(self.routed_scaling_factor > 0.0 && self.routed_scaling_factor.is_finite()) {
            return Err(Error::config(
                format!("routed_scaling_factor is {}", self.routed_scaling_factor),
                "use a positive factor",
            ));
        }
        if !(self.bias_update_rate >= 0.0 && self.bias_update_rate.is_finite()) {
            return Err(Error::config(
                format!("bias_update_rate is {}", self.bias_update_rate),
                "use 0 (off) or a small positive rate such as 0.001",
            ));
        }
        Ok(())
    }
}
