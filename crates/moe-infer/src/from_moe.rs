//! A checkpoint trained by moe, written as a Hugging Face directory (config.json,
//! model.safetensors under the hub's names, tokenizer.json): what `moe export` hands to
//! transformers and llama.cpp's converter, and what `moe serve --checkpoint` runs.
//!
//! Two transformers classes cover what moe trains with softmax routing ([`hf_form`]):
//! - Mixtral: top-k with renormalised weights (softmax over the k logits is the same), every
//!   layer MoE, no shared expert;
//! - Qwen2-MoE for the rest: a shared expert (ours has no gate unless asked: its gate is written
//!   as zeros, sigmoid(0) = 1/2, and its down projection doubled, both exact in floating point),
//!   dense layers (`mlp_only_layers`), weights not renormalised (`norm_topk_prob` false; Switch
//!   is top-1 of those), query/key/value biases or none (`qkv_bias`); a model without a shared
//!   expert gets one of width 1 with zero weights, which adds exactly nothing.
//!
//! Query/key norms make OLMoE (over the whole projections, every layer MoE) or Qwen3-MoE (per
//! head, heads of any width) when there is no shared expert and no bias. Dense models (a LoRA
//! fine-tune of a Llama or Qwen2, merged) are written as LlamaForCausalLM, or
//! Qwen2ForCausalLM when they have query/key/value biases; our tensor names are theirs.
//! Granite's multipliers make GraniteMoE (every layer MoE, renormalised top-k), its experts
//! fused as the hub's checkpoints hold them.
//!
//! Latent attention with the sigmoid group-limited router, shared experts and dense first layers
//! makes DeepSeek-V3 (its selection bias is DeepSeek's score correction bias). Expert-choice
//! routers, router biases and the sigmoid router without latent attention have no such class
//! and are refused with the reason. Capacity limits apply in training only (both classes are dropless).
//! The aux-loss-free selection bias of moe's default preset is one step further: with
//! `selection_bias`, it is written as `gate.e_score_correction_bias` (DeepSeek-V3's name), which
//! this crate adds to the softmax scores for selection only, as training did; transformers
//! would ignore it, so an export for other tools leaves it out and refuses such models.

use crate::error::{io, Error, Result};
use moe_engine::checkpoint::{self, Checkpoint};
use moe_engine::config::{ModelConfig, QkNorm, RouterKind};
use moe_engine::params::Layout;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;
use std::path::Path;

/// The transformers class a checkpoint is written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfForm {
    Mixtral,
    Qwen2Moe,
    /// Query/key norms over the whole projections, every layer MoE.
    Olmoe,
    /// Query/key norms per head.
    Qwen3Moe,
    /// A dense model (no experts) without biases: LlamaForCausalLM.
    Llama,
    /// A dense model with query/key/value biases: Qwen2ForCausalLM.
    Qwen2,
    /// Granite's embedding, attention, residual and logit multipliers: GraniteMoeForCausalLM.
    GraniteMoe,
    /// Latent attention with sigmoid group-limited routing and shared experts: DeepseekV3ForCausalLM.
    DeepseekV3,
    /// Attention sinks, sliding windows, biases everywhere, the clamped SwiGLU: GptOssForCausalLM.
    GptOss,
    /// LayerNorms, attention and LM-head biases, the sparsemixer router: PhimoeForCausalLM.
    Phimoe,
}

impl HfForm {
    /// The transformers class of the form.
    pub fn class(self) -> &'static str {
        match self {
            HfForm::Mixtral => "MixtralForCausalLM",
            HfForm::Qwen2Moe => "Qwen2MoeForCausalLM",
            HfForm::Olmoe => "OlmoeForCausalLM",
            HfForm::Qwen3Moe => "Qwen3MoeForCausalLM",
            HfForm::Llama => "LlamaForCausalLM",
            HfForm::Qwen2 => "Qwen2ForCausalLM",
            HfForm::GraniteMoe => "GraniteMoeForCausalLM",
            HfForm::DeepseekV3 => "DeepseekV3ForCausalLM",
            HfForm::GptOss => "GptOssForCausalLM",
            HfForm::Phimoe => "PhimoeForCausalLM",
        }
    }
}

/// The form `cfg` is written in, or why it cannot be (with or without the selection bias).
pub fn hf_form(cfg: &ModelConfig, selection_bias: bool) -> std::result::Result<HfForm, String> {
    if cfg.clip_qkv > 0.0 && cfg.qk_norm != QkNorm::Whole {
        return Err(
            "it clamps q, k and v (clip_qkv), which moe exports in OLMoE's form alone (with its query/key norms)"
                .into(),
        );
    }
    if cfg.mla.is_some() || cfg.router == RouterKind::SigmoidGroup {
        return deepseek_form(cfg);
    }
    if cfg.router == RouterKind::SparseMixer || cfg.layer_norm || cfg.lm_head_bias {
        return phimoe_form(cfg);
    }
    if cfg.attention_sinks || cfg.o_proj_bias || cfg.expert_bias || cfg.swiglu_limit > 0.0 {
        return gpt_oss_form(cfg);
    }
    if cfg.sliding_window > 0 && !cfg.layer_types.is_empty() {
        return Err("it has sliding windows in some layers only, which moe exports in gpt-oss's form alone".into());
    }
    if cfg.num_local_experts == 0 {
        return match (cfg.qk_norm, cfg.qkv_bias) {
            (QkNorm::None, false) => Ok(HfForm::Llama),
            (QkNorm::None, true) => Ok(HfForm::Qwen2),
            _ => Err("it is dense with query/key norms (Qwen3's or OLMo2's forms), which are not exported yet".into()),
        };
    }
    let renormalised = match cfg.router {
        RouterKind::SoftmaxTopk => cfg.norm_topk_prob,
        RouterKind::TopkSoftmax => true,
        RouterKind::Switch => false,
        RouterKind::SigmoidGroup | RouterKind::ExpertChoice | RouterKind::SparseMixer => {
            return Err(format!(
                "its router ({:?}) has no transformers class moe writes (softmax top-k, top-k softmax and Switch routers are exported)",
                cfg.router
            ))
        }
    };
    let multipliers = granite_multipliers(cfg);
    let why = if cfg.router_bias {
        "its router has a bias"
    } else if cfg.has_selection_bias() && !selection_bias {
        "its router has a selection bias (the aux-loss-free balancing of the default preset; train with --bias-update-rate 0 to export)"
    } else if cfg.qk_norm != QkNorm::None && (cfg.shared_expert_intermediate_size > 0 || cfg.qkv_bias) {
        "it has query/key norms with a shared expert or biases, which no transformers class holds"
    } else if cfg.qk_norm != QkNorm::None && cfg.has_selection_bias() {
        "its router has a selection bias, which moe runs only in Mixtral's and Qwen2-MoE's forms"
    } else if cfg.qk_norm == QkNorm::Whole && cfg.num_moe_layers() != cfg.num_hidden_layers {
        "it has OLMoE's query/key norms and dense layers, which OLMoE does not have"
    } else if multipliers
        && (!renormalised
            || cfg.num_moe_layers() != cfg.num_hidden_layers
            || cfg.shared_expert_intermediate_size > 0
            || cfg.qkv_bias
            || cfg.qk_norm != QkNorm::None
            || cfg.has_selection_bias())
    {
        "it has Granite's multipliers with blocks GraniteMoE does not have (GraniteMoE: every layer MoE, renormalised top-k, no shared expert, biases, query/key norms or selection bias)"
    } else if cfg.sliding_window > 0 && (multipliers || cfg.qk_norm != QkNorm::None) {
        "it has a sliding window, which moe exports in Mixtral's and gpt-oss's forms"
    } else if multipliers {
        return Ok(HfForm::GraniteMoe);
    } else if cfg.qk_norm == QkNorm::Whole {
        return Ok(HfForm::Olmoe);
    } else if cfg.qk_norm == QkNorm::PerHead {
        return Ok(HfForm::Qwen3Moe);
    } else {
        let mixtral = renormalised
            && cfg.num_moe_layers() == cfg.num_hidden_layers
            && cfg.shared_expert_intermediate_size == 0
            && !cfg.qkv_bias;
        if cfg.sliding_window > 0 && !mixtral {
            return Err("it has a sliding window, which moe exports in Mixtral's and gpt-oss's forms".into());
        }
        return Ok(if mixtral { HfForm::Mixtral } else { HfForm::Qwen2Moe });
    };
    Err(why.to_string())
}

/// Whether `cfg` uses any of Granite's four multipliers (embedding, attention, residual, logits).
fn granite_multipliers(cfg: &ModelConfig) -> bool {
    cfg.embedding_multiplier != 1.0
        || cfg.attention_multiplier != 0.0
        || cfg.residual_multiplier != 1.0
        || cfg.logits_scaling != 1.0
}

/// DeepSeek-V3's form, or why `cfg` (latent attention or sigmoid routing) does not fit it: every
/// layer after the first dense ones MoE, latent attention, the sigmoid group-limited router
/// (its selection bias is DeepSeek's score correction bias, which transformers applies), shared
/// experts a whole number of routed experts wide and without gate, nothing else.
fn deepseek_form(cfg: &ModelConfig) -> std::result::Result<HfForm, String> {
    let (fe, fs) = (cfg.moe_intermediate_size, cfg.shared_expert_intermediate_size);
    let why = if cfg.mla.is_none() {
        "its sigmoid group-limited router is exported only in DeepSeek-V3's form, which has latent attention (mla)"
    } else if cfg.router != RouterKind::SigmoidGroup || cfg.num_local_experts == 0 {
        "latent attention is exported only in DeepSeek-V3's form, an MoE with the sigmoid_group router"
    } else if cfg.decoder_sparse_step != 1 || !cfg.mlp_only_layers.is_empty() {
        "DeepSeek-V3 has dense layers only before its MoE layers (first_k_dense_replace)"
    } else if fs == 0 || !fs.is_multiple_of(fe) || cfg.shared_expert_gate {
        "DeepSeek-V3's shared experts are a whole number of routed experts wide, without gate"
    } else if cfg.router_bias
        || cfg.qkv_bias
        || cfg.qk_norm != QkNorm::None
        || cfg.embedding_multiplier != 1.0
        || cfg.residual_multiplier != 1.0
        || cfg.logits_scaling != 1.0
    {
        "DeepSeek-V3 has no router bias, projection biases, query/key norms or multipliers"
    } else if (cfg.attention_scale() - deepseek_scale(cfg)).abs() > 1e-9 * cfg.attention_scale() {
        "its attention scale is not the one DeepSeek-V3 derives from its RoPE parameters (YaRN's mscale_all_dim)"
    } else {
        return Ok(HfForm::DeepseekV3);
    };
    Err(why.into())
}

/// PhiMoE's form, or why `cfg` (the sparsemixer, LayerNorm or an LM-head bias) does not fit it:
/// all three, with query/key/value and output biases, every layer MoE, and nothing PhiMoE lacks.
fn phimoe_form(cfg: &ModelConfig) -> std::result::Result<HfForm, String> {
    let complete = cfg.router == RouterKind::SparseMixer
        && cfg.layer_norm
        && cfg.lm_head_bias
        && cfg.qkv_bias
        && cfg.o_proj_bias
        && cfg.num_moe_layers() == cfg.num_hidden_layers;
    let extra = cfg.shared_expert_intermediate_size > 0
        || cfg.qk_norm != QkNorm::None
        || cfg.has_selection_bias()
        || cfg.router_bias
        || cfg.expert_bias
        || cfg.attention_sinks
        || cfg.swiglu_limit > 0.0
        || !cfg.layer_types.is_empty()
        || granite_multipliers(cfg);
    if !complete {
        return Err("PhiMoE's form needs all of its blocks (the sparse_mixer router, LayerNorm, biases on attention and the LM head, every layer MoE); this model has only some".into());
    }
    if extra {
        return Err("PhiMoE has no shared expert, query/key norms, router, expert or selection biases, sinks, clamped SwiGLU, per-layer windows or multipliers".into());
    }
    Ok(HfForm::Phimoe)
}

/// gpt-oss's form, or why `cfg` (sinks, output or expert biases, clamped SwiGLU) does not fit
/// it: all of those, query/key/value and router biases, top-k softmax routing in every layer, no
/// shared expert, query/key norms, latent attention, selection bias or multipliers.
fn gpt_oss_form(cfg: &ModelConfig) -> std::result::Result<HfForm, String> {
    let complete = cfg.attention_sinks
        && cfg.o_proj_bias
        && cfg.expert_bias
        && cfg.swiglu_limit > 0.0
        && cfg.qkv_bias
        && cfg.router_bias
        && cfg.router == RouterKind::TopkSoftmax;
    let extra = cfg.num_moe_layers() != cfg.num_hidden_layers
        || cfg.shared_expert_intermediate_size > 0
        || cfg.qk_norm != QkNorm::None
        || cfg.has_selection_bias()
        || granite_multipliers(cfg);
    if !complete {
        return Err("gpt-oss's form needs all of its blocks (sinks, biases on every projection, router and expert, the clamped SwiGLU, the top-k softmax router); this model has only some".into());
    }
    if extra {
        return Err(
            "gpt-oss has every layer MoE and no shared expert, query/key norms, selection bias or multipliers".into()
        );
    }
    Ok(HfForm::GptOss)
}

/// gpt-oss's tensors for tensor `t` of our layout (as its hub checkpoints hold them, [in, out]):
/// `gate_up_proj` [E, C, 2F] with gate and up columns alternating (and its bias [E, 2F]),
/// `down_proj` [E, F, C]; the up projection and its bias are written with the gate (empty
/// lists); the router keeps its name; None for tensors named as ours.
fn gpt_oss_tensor(layout: &Layout, t: &moe_engine::params::TensorInfo, p: &[f32]) -> Option<Vec<TensorBytes>> {
    let bytes = checkpoint::to_bytes;
    let (e, data) = (t.shape[0], t.span.of(p));
    if t.name.ends_with(".mlp.router.weight") || t.name.ends_with(".mlp.router.bias") {
        return Some(vec![(t.name.clone(), t.shape.clone(), bytes(data))]);
    }
    if t.name.ends_with(".mlp.experts.up_proj") || t.name.ends_with(".mlp.experts.up_proj_bias") {
        return Some(vec![]);
    }
    if let Some(prefix) = t.name.strip_suffix(".mlp.experts.down_proj") {
        // ours [E, C, F] -> [E, F, C]
        let (c, f) = (t.shape[1], t.shape[2]);
        let mut out = vec![0.0f32; data.len()];
        for x in 0..e {
            for i in 0..c {
                for j in 0..f {
                    out[(x * f + j) * c + i] = data[(x * c + i) * f + j];
                }
            }
        }
        return Some(vec![(format!("{prefix}.mlp.experts.down_proj"), vec![e, f, c], bytes(&out))]);
    }
    if let Some(prefix) = t.name.strip_suffix(".mlp.experts.gate_proj_bias") {
        let up = layout.find(&format!("{prefix}.mlp.experts.up_proj_bias"))?.span.of(p);
        let f = t.shape[1];
        let fused: Vec<f32> = (0..e * f).flat_map(|i| [data[i], up[i]]).collect();
        return Some(vec![(format!("{prefix}.mlp.experts.gate_up_proj_bias"), vec![e, 2 * f], bytes(&fused))]);
    }
    let prefix = t.name.strip_suffix(".mlp.experts.gate_proj")?;
    let up = layout.find(&format!("{prefix}.mlp.experts.up_proj"))?.span.of(p);
    // ours gate, up [E, F, C] -> [E, C, 2F], column 2j gate row j, column 2j + 1 up row j
    let (f, c) = (t.shape[1], t.shape[2]);
    let mut fused = vec![0.0f32; 2 * data.len()];
    for x in 0..e {
        for j in 0..f {
            for i in 0..c {
                let at = (x * c + i) * 2 * f + 2 * j;
                fused[at] = data[(x * f + j) * c + i];
                fused[at + 1] = up[(x * f + j) * c + i];
            }
        }
    }
    Some(vec![(format!("{prefix}.mlp.experts.gate_up_proj"), vec![e, c, 2 * f], bytes(&fused))])
}

/// The attention scale transformers computes for `cfg` in DeepSeek-V3's form.
fn deepseek_scale(cfg: &ModelConfig) -> f64 {
    moe_engine::rope::deepseek_attention_scale(cfg.attn_shape().d, Some(&rope_parameters(cfg)))
}

/// config.json's `rope_parameters`: theta and the scaling's fields, or the default type (so
/// that a class whose default scales RoPE, as gpt-oss's YaRN, does not apply its own).
fn rope_parameters(cfg: &ModelConfig) -> serde_json::Value {
    let mut p = cfg.rope_scaling.clone().unwrap_or_else(|| json!({"rope_type": "default"}));
    if let Some(o) = p.as_object_mut() {
        o.insert("rope_theta".into(), json!(cfg.rope_theta));
    }
    p
}

/// The Hugging Face name of tensor `name` of our layout in `form`, and whether it is stacked per
/// expert (`{e}` is the expert).
fn hf_name(form: HfForm, name: &str) -> (String, bool) {
    // Mixtral's and PhiMoE's hub names
    let hub = matches!(form, HfForm::Mixtral | HfForm::Phimoe);
    let block = if hub { ".block_sparse_moe" } else { ".mlp" };
    let (gate, up, down) = if hub { ("w1", "w3", "w2") } else { ("gate_proj", "up_proj", "down_proj") };
    let map = [
        (".mlp.router.weight", format!("{block}.gate.weight")),
        (".mlp.router.selection_bias", format!("{block}.gate.e_score_correction_bias")),
        (".mlp.experts.gate_proj", format!("{block}.experts.{{e}}.{gate}.weight")),
        (".mlp.experts.up_proj", format!("{block}.experts.{{e}}.{up}.weight")),
        (".mlp.experts.down_proj", format!("{block}.experts.{{e}}.{down}.weight")),
    ];
    for (ours, hf) in map {
        if let Some(prefix) = name.strip_suffix(ours) {
            return (format!("{prefix}{hf}"), hf.contains("{e}"));
        }
    }
    if form == HfForm::DeepseekV3 {
        return (name.replace(".mlp.shared_expert.", ".mlp.shared_experts."), false);
    }
    (name.to_string(), false)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    checkpoint::write_atomic(path, bytes).map_err(|e| Error::Input(format!("writing {}: {e}", path.display())))
}

/// config.json of `cfg` in `form`.
fn config(cfg: &ModelConfig, form: HfForm) -> serde_json::Value {
    let mut c = json!({
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim(),
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "num_experts_per_tok": cfg.num_experts_per_tok,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
        "sliding_window": null,
        "torch_dtype": "float32",
        "router_aux_loss_coef": cfg.router_aux_loss_coef,
        // the ids live in the tokenizer; a class's defaults (OLMoE's eos 50279) must not apply
        "bos_token_id": null,
        "eos_token_id": null,
        "pad_token_id": null,
    });
    let extra = match form {
        HfForm::Mixtral => json!({
            "architectures": ["MixtralForCausalLM"],
            "model_type": "mixtral",
            "intermediate_size": cfg.moe_intermediate_size,
            "num_local_experts": cfg.num_local_experts,
            "sliding_window": if cfg.sliding_window > 0 { json!(cfg.sliding_window) } else { json!(null) },
        }),
        HfForm::Olmoe => json!({
            "architectures": ["OlmoeForCausalLM"],
            "model_type": "olmoe",
            "intermediate_size": cfg.moe_intermediate_size,
            "num_experts": cfg.num_local_experts,
            "norm_topk_prob": cfg.norm_topk_prob || cfg.router == RouterKind::TopkSoftmax,
            "clip_qkv": if cfg.clip_qkv > 0.0 { json!(cfg.clip_qkv) } else { json!(null) },
            "attention_bias": false,
        }),
        HfForm::Qwen3Moe => json!({
            "architectures": ["Qwen3MoeForCausalLM"],
            "model_type": "qwen3_moe",
            "intermediate_size": cfg.intermediate_size,
            "moe_intermediate_size": cfg.moe_intermediate_size,
            "num_experts": cfg.num_local_experts,
            "norm_topk_prob": cfg.norm_topk_prob || cfg.router == RouterKind::TopkSoftmax,
            "decoder_sparse_step": 1,
            "mlp_only_layers": (0..cfg.num_hidden_layers).filter(|&l| !cfg.is_moe_layer(l)).collect::<Vec<_>>(),
            "attention_bias": false,
            "use_sliding_window": false,
        }),
        HfForm::GraniteMoe => json!({
            "architectures": ["GraniteMoeForCausalLM"],
            "model_type": "granitemoe",
            "intermediate_size": cfg.moe_intermediate_size,
            "num_local_experts": cfg.num_local_experts,
            "embedding_multiplier": cfg.embedding_multiplier,
            "attention_multiplier": cfg.attention_scale(),
            "residual_multiplier": cfg.residual_multiplier,
            "logits_scaling": cfg.logits_scaling,
            "attention_bias": false,
        }),
        HfForm::DeepseekV3 => {
            let a = cfg.mla.expect("the DeepSeek-V3 form has latent attention");
            json!({
                "architectures": ["DeepseekV3ForCausalLM"],
                "model_type": "deepseek_v3",
                // the rotary dims (transformers' DeepseekV3Config sets head_dim to them)
                "head_dim": a.qk_rope_head_dim,
                "intermediate_size": cfg.intermediate_size,
                "moe_intermediate_size": cfg.moe_intermediate_size,
                "n_routed_experts": cfg.num_local_experts,
                "n_shared_experts": cfg.shared_expert_intermediate_size / cfg.moe_intermediate_size,
                "n_group": cfg.n_group,
                "topk_group": cfg.topk_group,
                "routed_scaling_factor": cfg.routed_scaling_factor,
                "norm_topk_prob": cfg.norm_topk_prob,
                "first_k_dense_replace": cfg.first_k_dense_replace,
                "q_lora_rank": if a.q_lora_rank > 0 { json!(a.q_lora_rank) } else { json!(null) },
                "kv_lora_rank": a.kv_lora_rank,
                "qk_nope_head_dim": a.qk_nope_head_dim,
                "qk_rope_head_dim": a.qk_rope_head_dim,
                "v_head_dim": a.v_head_dim,
                "rope_interleave": a.rope_interleave,
                "attention_bias": false,
                // transformers' class always scores with a sigmoid; llama.cpp's converter reads
                // these keys (DeepSeek's released configs have them) and assumes softmax without
                "scoring_func": "sigmoid",
                "topk_method": "noaux_tc",
            })
        }
        HfForm::Phimoe => json!({
            "architectures": ["PhimoeForCausalLM"],
            "model_type": "phimoe",
            "intermediate_size": cfg.moe_intermediate_size,
            "num_local_experts": cfg.num_local_experts,
            "router_jitter_noise": cfg.sparse_mixer_eps,
            "input_jitter_noise": 0.0,
            "attention_bias": true,
            "lm_head_bias": true,
            "sliding_window": if cfg.sliding_window > 0 { json!(cfg.sliding_window) } else { json!(null) },
        }),
        HfForm::GptOss => {
            let window = if cfg.sliding_window > 0 { cfg.sliding_window } else { cfg.max_position_embeddings };
            let types: Vec<&str> = (0..cfg.num_hidden_layers)
                .map(|l| if cfg.window(l) > 0 { "sliding_attention" } else { "full_attention" })
                .collect();
            json!({
                "architectures": ["GptOssForCausalLM"],
                "model_type": "gpt_oss",
                "intermediate_size": cfg.moe_intermediate_size,
                "num_local_experts": cfg.num_local_experts,
                "sliding_window": window,
                "layer_types": types,
                "swiglu_limit": cfg.swiglu_limit,
                "swiglu_alpha": moe_engine::config::GPT_OSS_ALPHA,
                "attention_bias": true,
            })
        }
        HfForm::Llama => json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "intermediate_size": cfg.intermediate_size,
            "attention_bias": false,
            "mlp_bias": false,
        }),
        HfForm::Qwen2 => json!({
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "intermediate_size": cfg.intermediate_size,
            "use_sliding_window": false,
        }),
        HfForm::Qwen2Moe => json!({
            "architectures": ["Qwen2MoeForCausalLM"],
            "model_type": "qwen2_moe",
            "intermediate_size": cfg.intermediate_size,
            "moe_intermediate_size": cfg.moe_intermediate_size,
            "shared_expert_intermediate_size": cfg.shared_expert_intermediate_size.max(1),
            "num_experts": cfg.num_local_experts,
            "norm_topk_prob": cfg.norm_topk_prob || cfg.router == RouterKind::TopkSoftmax,
            "decoder_sparse_step": 1,
            "mlp_only_layers": (0..cfg.num_hidden_layers).filter(|&l| !cfg.is_moe_layer(l)).collect::<Vec<_>>(),
            "qkv_bias": cfg.qkv_bias,
            "use_sliding_window": false,
        }),
    };
    c.as_object_mut().into_iter().zip(extra.as_object()).for_each(|(c, e)| c.extend(e.clone()));
    if let Some(o) = c.as_object_mut() {
        o.insert("rope_parameters".into(), rope_parameters(cfg));
    }
    c
}

/// A tensor to write: name, shape, f32 values.
type Tensor = (String, Vec<usize>, Vec<f32>);

/// A tensor to write as bytes: name, shape, little-endian f32 bytes.
type TensorBytes = (String, Vec<usize>, Vec<u8>);

/// GraniteMoE's stacked expert and router tensors for tensor `t` of our layout (as its hub
/// checkpoints hold them): `input_linear` [E, 2F, C] = each expert's gate rows then its up rows,
/// `output_linear` [E, C, F] = down, `router.layer` = router; the up projection is written with
/// the gate (an empty list); None for the tensors named as in Llama.
fn granite_tensor(layout: &Layout, t: &moe_engine::params::TensorInfo, p: &[f32]) -> Option<Vec<TensorBytes>> {
    let bytes = checkpoint::to_bytes;
    if let Some(prefix) = t.name.strip_suffix(".mlp.router.weight") {
        return Some(vec![(
            format!("{prefix}.block_sparse_moe.router.layer.weight"),
            t.shape.clone(),
            bytes(t.span.of(p)),
        )]);
    }
    if let Some(prefix) = t.name.strip_suffix(".mlp.experts.down_proj") {
        return Some(vec![(
            format!("{prefix}.block_sparse_moe.output_linear.weight"),
            t.shape.clone(),
            bytes(t.span.of(p)),
        )]);
    }
    if t.name.ends_with(".mlp.experts.up_proj") {
        return Some(vec![]);
    }
    let prefix = t.name.strip_suffix(".mlp.experts.gate_proj")?;
    let up = layout.find(&format!("{prefix}.mlp.experts.up_proj"))?;
    let (e, fc) = (t.shape[0], t.per_expert());
    let (gate, up) = (t.span.of(p), up.span.of(p));
    let fused: Vec<f32> =
        (0..e).flat_map(|x| gate[x * fc..(x + 1) * fc].iter().chain(&up[x * fc..(x + 1) * fc]).copied()).collect();
    let shape = vec![e, 2 * t.shape[1], t.shape[2]];
    Some(vec![(format!("{prefix}.block_sparse_moe.input_linear.weight"), shape, bytes(&fused))])
}

/// The shared-expert tensors Qwen2-MoE needs that our layout lacks (name, shape, values) for
/// MoE layer prefix `p` ("model.layers.3"), and the factor for our shared down projection.
fn qwen2_shared(cfg: &ModelConfig, p: &str) -> (Vec<Tensor>, f32) {
    let c = cfg.hidden_size;
    let mut add = vec![];
    if cfg.shared_expert_intermediate_size == 0 {
        for (proj, shape) in [("gate_proj", [1, c]), ("up_proj", [1, c]), ("down_proj", [c, 1])] {
            add.push((format!("{p}.mlp.shared_expert.{proj}.weight"), shape.to_vec(), vec![0.0; c]));
        }
    }
    if cfg.shared_expert_gate {
        return (add, 1.0);
    }
    add.push((format!("{p}.mlp.shared_expert_gate.weight"), vec![1, c], vec![0.0; c]));
    (add, 2.0)
}

/// Writes `ck` into the directory `out` (created; it must not hold a model) in the form
/// [`hf_form`] picks. Returns the parameter count and the form.
pub fn write_hf(ck: &Checkpoint, out: &Path, selection_bias: bool) -> Result<(usize, HfForm)> {
    let cfg = &ck.config;
    let form = hf_form(cfg, selection_bias).map_err(|why| {
        Error::Input(format!("{}: cannot be written as a Hugging Face model: {why}", ck.dir.display()))
    })?;
    if out.join("config.json").exists() {
        return Err(Error::Input(format!("{} already holds a model; choose another directory", out.display())));
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let text = serde_json::to_vec_pretty(&config(cfg, form)).map_err(|e| Error::Input(e.to_string()))?;
    write(&out.join("config.json"), &text)?;
    // Every tensor under its hub name; stacked experts split into one matrix per expert.
    let layout = Layout::new(cfg);
    let mut tensors: Vec<TensorBytes> = vec![];
    for t in &layout.tensors {
        let data = t.span.of(&ck.params);
        if form == HfForm::GraniteMoe {
            if let Some(g) = granite_tensor(&layout, t, &ck.params) {
                tensors.extend(g);
                continue;
            }
        }
        if form == HfForm::GptOss {
            if let Some(g) = gpt_oss_tensor(&layout, t, &ck.params) {
                tensors.extend(g);
                continue;
            }
        }
        let (name, per_expert) = hf_name(form, &t.name);
        if per_expert {
            let n = t.per_expert();
            for (e, chunk) in data.chunks_exact(n).enumerate() {
                tensors.push((name.replace("{e}", &e.to_string()), t.shape[1..].to_vec(), checkpoint::to_bytes(chunk)));
            }
            continue;
        }
        let mut data = data.to_vec();
        if form == HfForm::Qwen2Moe {
            if let Some(p) = name.strip_suffix(".mlp.router.weight").or(name.strip_suffix(".mlp.gate.weight")) {
                let (add, _) = qwen2_shared(cfg, p);
                tensors.extend(add.into_iter().map(|(n, s, v)| (n, s, checkpoint::to_bytes(&v))));
            }
            if let Some(p) = name.strip_suffix(".mlp.shared_expert.down_proj.weight") {
                let (_, factor) = qwen2_shared(cfg, p);
                data.iter_mut().for_each(|v| *v *= factor);
            }
        }
        tensors.push((name, t.shape.clone(), checkpoint::to_bytes(&data)));
    }
    let bad = |e: safetensors::SafeTensorError| Error::Input(format!("serialising the weights: {e}"));
    let views = tensors
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b).map_err(bad)?)))
        .collect::<Result<Vec<_>>>()?;
    write(&out.join("model.safetensors"), &safetensors::serialize(views, None).map_err(bad)?)?;
    let tk = ck.dir.join("tokenizer.json");
    if tk.is_file() {
        std::fs::copy(&tk, out.join("tokenizer.json")).map_err(io(&tk))?;
    }
    write(&out.join("tokenizer_config.json"), b"{}")?;
    Ok((layout.total, form))
}
