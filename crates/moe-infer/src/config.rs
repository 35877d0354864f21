//! config.json of a Hugging Face MoE checkpoint, read into one architecture-neutral `Spec`:
//! which attention, norm, router, activation and multipliers each supported architecture uses.
//! Defaults are transformers' defaults for fields a config leaves out.

use crate::error::{io, Error, Result};
use moe_engine::rope::Rope;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Mixtral,
    Qwen2Moe,
    Qwen3Moe,
    Olmoe,
    DeepseekV3,
    GraniteMoe,
    Phimoe,
    GptOss,
}

/// (architectures entry, model_type, arch).
pub const ARCHS: [(&str, &str, Arch); 8] = [
    ("MixtralForCausalLM", "mixtral", Arch::Mixtral),
    ("Qwen2MoeForCausalLM", "qwen2_moe", Arch::Qwen2Moe),
    ("Qwen3MoeForCausalLM", "qwen3_moe", Arch::Qwen3Moe),
    ("OlmoeForCausalLM", "olmoe", Arch::Olmoe),
    ("DeepseekV3ForCausalLM", "deepseek_v3", Arch::DeepseekV3),
    ("GraniteMoeForCausalLM", "granitemoe", Arch::GraniteMoe),
    ("PhimoeForCausalLM", "phimoe", Arch::Phimoe),
    ("GptOssForCausalLM", "gpt_oss", Arch::GptOss),
];

impl Arch {
    pub fn name(self) -> &'static str {
        ARCHS.iter().find(|a| a.2 == self).map(|a| a.0).unwrap_or("?")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    Rms,
    /// nn.LayerNorm with bias (PhiMoE).
    Layer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// RMSNorm over each head (Qwen3).
    PerHead,
    /// RMSNorm over the whole q / k projection (OLMoE).
    Whole,
}

/// Multi-head latent attention (DeepSeek-V2/V3).
#[derive(Clone, Copy, Debug)]
pub struct Mla {
    pub q_lora: Option<usize>,
    pub kv_lora: usize,
    pub nope: usize,
    pub rope: usize,
    pub v: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Router {
    /// softmax over all experts, top-k, optionally renormalised (Mixtral, Qwen, OLMoE).
    SoftmaxTopk { renorm: bool },
    /// top-k of the logits (plus router bias), softmax over the k (Granite, gpt-oss).
    TopkSoftmax,
    /// sigmoid scores, selection by score + bias within the best groups, weights renormalised
    /// and scaled (DeepSeek-V3).
    SigmoidGroup { n_group: usize, topk_group: usize, renorm: bool, scale: f32 },
    /// PhiMoE's top-2 sparsemixer at inference: masked softmaxes around each pick.
    SparseMixer { eps: f32 },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    /// silu(gate) * up
    Swiglu,
    /// gpt-oss: gate clamped above, up clamped both sides, gate * sigmoid(alpha gate) * (up + 1).
    ClampedSwiglu { alpha: f32, limit: f32 },
}

#[derive(Clone, Debug)]
pub struct MoeSpec {
    pub experts: usize,
    pub top_k: usize,
    pub inter: usize,
    pub router: Router,
    pub router_bias: bool,
    /// Shared expert width (summed over DeepSeek's n_shared_experts) and whether a sigmoid gate scales it.
    pub shared: Option<(usize, bool)>,
    pub act: Act,
    pub expert_bias: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ffn {
    Dense(usize),
    Moe,
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub arch: Arch,
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// q/k head dim and v head dim (they differ under MLA).
    pub head_dim: usize,
    pub v_dim: usize,
    pub eps: f64,
    pub norm: Norm,
    pub qk_norm: QkNorm,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub clip_qkv: Option<f32>,
    pub sinks: bool,
    pub mla: Option<Mla>,
    pub attn_scale: f32,
    pub rope: Rope,
    pub windows: Vec<Option<usize>>,
    pub ffn: Vec<Ffn>,
    pub moe: MoeSpec,
    pub embed_mult: f32,
    pub residual_mult: f32,
    pub logits_div: f32,
    pub lm_head_bias: bool,
    pub tie: bool,
    pub max_pos: usize,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
    pub mxfp4: bool,
}

struct Cfg<'a> {
    v: &'a Value,
    path: PathBuf,
}

impl Cfg<'_> {
    fn err(&self, msg: String) -> Error {
        Error::Config { path: self.path.clone(), msg }
    }
    fn opt_usize(&self, k: &str) -> Option<usize> {
        self.v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize)
    }
    fn usize(&self, k: &str) -> Result<usize> {
        self.opt_usize(k).ok_or_else(|| self.err(format!("missing or non-integer `{k}`")))
    }
    fn f64_or(&self, k: &str, d: f64) -> f64 {
        self.v.get(k).and_then(|x| x.as_f64()).unwrap_or(d)
    }
    /// `k` as a positive finite number (clamp bounds), or an error naming it.
    fn positive(&self, k: &str, x: f64) -> Result<f32> {
        if x.is_finite() && x > 0.0 {
            Ok(x as f32)
        } else {
            Err(self.err(format!("`{k}` is {x}; it bounds values to [-{k}, {k}] and must be positive")))
        }
    }
    fn bool_or(&self, k: &str, d: bool) -> bool {
        self.v.get(k).and_then(|x| x.as_bool()).unwrap_or(d)
    }
    fn ids(&self, k: &str) -> Vec<u32> {
        match self.v.get(k) {
            Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
            _ => vec![],
        }
    }
}

/// Reads `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<Value> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| Error::Config { path, msg: format!("not valid JSON: {e}") })
}

impl Spec {
    pub fn from_dir(dir: &Path) -> Result<Spec> {
        let v = read_config(dir)?;
        Spec::parse(&v, &dir.join("config.json"))
    }

    pub fn parse(v: &Value, path: &Path) -> Result<Spec> {
        let c = Cfg { v, path: path.to_path_buf() };
        let arch_name = v.get("architectures").and_then(|a| a.get(0)).and_then(|a| a.as_str()).unwrap_or("");
        let mtype = v.get("model_type").and_then(|a| a.as_str()).unwrap_or("");
        let arch = ARCHS.iter().find(|a| a.0 == arch_name || (arch_name.is_empty() && a.1 == mtype)).map(|a| a.2);
        let arch = arch.ok_or_else(|| {
            let known: Vec<&str> = ARCHS.iter().map(|a| a.0).collect();
            c.err(format!(
                "architecture `{}` (model_type `{mtype}`) is not supported; supported: {}",
                if arch_name.is_empty() { "?" } else { arch_name },
                known.join(", ")
            ))
        })?;
        use Arch::*;
        let hidden = c.usize("hidden_size")?;
        let layers = c.usize("num_hidden_layers")?;
        let heads = c.usize("num_attention_heads")?;
        let kv_heads = c.opt_usize("num_key_value_heads").unwrap_or(heads);
        let vocab = c.usize("vocab_size")?;
        let max_pos = c.opt_usize("max_position_embeddings").unwrap_or(4096);
        // a hostile count (10^13) would fill the per-layer tables below until a timeout
        if layers > moe_engine::config::MAX_LAYERS {
            return Err(c.err(format!(
                "num_hidden_layers = {layers} is not a real model's (at most {}); fix the config",
                moe_engine::config::MAX_LAYERS
            )));
        }
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || hidden == 0 || layers == 0 {
            return Err(c.err(format!(
                "bad sizes: hidden {hidden}, layers {layers}, heads {heads}, kv heads {kv_heads} (heads must be a multiple of kv heads)"
            )));
        }
        let mut head_dim = c.opt_usize("head_dim").unwrap_or(hidden / heads);
        let mla = if arch == DeepseekV3 {
            Some(Mla {
                q_lora: c.opt_usize("q_lora_rank"),
                kv_lora: c.usize("kv_lora_rank")?,
                nope: c.usize("qk_nope_head_dim")?,
                rope: c.usize("qk_rope_head_dim")?,
                v: c.usize("v_head_dim")?,
            })
        } else {
            None
        };
        let (v_dim, rope_dim) = match mla {
            Some(m) => {
                head_dim = m.nope + m.rope;
                (m.v, m.rope)
            }
            None => (head_dim, (head_dim as f64 * c.f64_or("partial_rotary_factor", 1.0)) as usize),
        };
        if rope_dim % 2 != 0 || rope_dim > 512 {
            return Err(c.err(format!("rotary dimension {rope_dim} must be even and at most 512")));
        }
        if rope_dim > head_dim {
            return Err(c.err(format!(
                "rotary dimension {rope_dim} exceeds the head dimension {head_dim} (partial_rotary_factor must be at most 1)"
            )));
        }
        // DeepSeek-V3 interleaves; so does a Mixtral or GraniteMoE read from GGUF (its Q/K rows
        // permuted by llama.cpp's converter).
        let interleave =
            matches!(arch, DeepseekV3 | Mixtral | GraniteMoe) && c.bool_or("rope_interleave", arch == DeepseekV3);
        let rope = Rope::from_config(v, rope_dim, max_pos, interleave, arch == Phimoe).map_err(|m| c.err(m))?;
        let mut attn_scale = (head_dim as f64).powf(-0.5);
        if arch == GraniteMoe {
            attn_scale = c.f64_or("attention_multiplier", 1.0);
        }
        if arch == DeepseekV3 {
            let p = v.get("rope_parameters").or(v.get("rope_scaling"));
            attn_scale = moe_engine::rope::deepseek_attention_scale(head_dim, p);
        }
        // sliding windows per layer
        let window = c.opt_usize("sliding_window").filter(|&w| w > 0);
        let types: Vec<String> = v
            .get("layer_types")
            .and_then(|t| t.as_array())
            .map(|a| a.iter().map(|x| x.as_str().unwrap_or("").to_string()).collect())
            .unwrap_or_default();
        let windows = (0..layers)
            .map(|l| {
                if !c.bool_or("use_sliding_window", true) {
                    None
                } else if !types.is_empty() {
                    types.get(l).filter(|t| *t == "sliding_attention").and(window)
                } else {
                    window
                }
            })
            .collect();
        // feed-forward per layer and the MoE block
        let experts = match arch {
            Qwen2Moe | Olmoe => c.usize("num_experts")?,
            DeepseekV3 => c.usize("n_routed_experts")?,
            Qwen3Moe => c.opt_usize("num_experts").or(c.opt_usize("num_local_experts")).unwrap_or(0),
            _ => c.usize("num_local_experts")?,
        };
        let top_k = c.usize("num_experts_per_tok")?;
        let inter = c.opt_usize("intermediate_size").unwrap_or(0);
        let moe_inter = match arch {
            Qwen2Moe | Qwen3Moe | DeepseekV3 => c.usize("moe_intermediate_size")?,
            _ => inter,
        };
        let mlp_only: Vec<usize> = v
            .get("mlp_only_layers")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as usize).collect())
            .unwrap_or_default();
        let step = c.opt_usize("decoder_sparse_step").unwrap_or(1).max(1);
        let first_dense = c.opt_usize("first_k_dense_replace").unwrap_or(0);
        let ffn = (0..layers)
            .map(|l| match arch {
                Qwen2Moe | Qwen3Moe if mlp_only.contains(&l) || experts == 0 || (l + 1) % step != 0 => {
                    Ffn::Dense(inter)
                }
                DeepseekV3 if l < first_dense => Ffn::Dense(inter),
                _ => Ffn::Moe,
            })
            .collect::<Vec<_>>();
        if experts == 0 || top_k == 0 || top_k > experts {
            return Err(c.err(format!("{experts} experts with top-{top_k}: need 1 <= top-k <= experts")));
        }
        let router = match arch {
            Mixtral => Router::SoftmaxTopk { renorm: true },
            Qwen2Moe | Qwen3Moe | Olmoe => Router::SoftmaxTopk { renorm: c.bool_or("norm_topk_prob", false) },
            GraniteMoe | GptOss => Router::TopkSoftmax,
            DeepseekV3 => {
                let n_group = c.opt_usize("n_group").unwrap_or(1).max(1);
                let topk_group = c.opt_usize("topk_group").unwrap_or(n_group);
                if experts % n_group != 0 || topk_group > n_group {
                    return Err(c.err(format!("{experts} experts in {n_group} groups, top {topk_group} groups")));
                }
                Router::SigmoidGroup {
                    n_group,
                    topk_group,
                    renorm: c.bool_or("norm_topk_prob", true),
                    scale: c.f64_or("routed_scaling_factor", 1.0) as f32,
                }
            }
            Phimoe => {
                if top_k != 2 {
                    return Err(c.err(format!("PhiMoE's sparsemixer routes exactly 2 experts, config has {top_k}")));
                }
                Router::SparseMixer { eps: c.f64_or("router_jitter_noise", 0.01) as f32 }
            }
        };
        let shared = match arch {
            Qwen2Moe => c.opt_usize("shared_expert_intermediate_size").filter(|&s| s > 0).map(|s| (s, true)),
            DeepseekV3 => c.opt_usize("n_shared_experts").filter(|&n| n > 0).map(|n| (n * moe_inter, false)),
            _ => None,
        };
        let act = if arch == GptOss {
            Act::ClampedSwiglu {
                alpha: c.f64_or("swiglu_alpha", 1.702) as f32,
                limit: c.positive("swiglu_limit", c.f64_or("swiglu_limit", 7.0))?,
            }
        } else {
            Act::Swiglu
        };
        let hidden_act = v.get("hidden_act").and_then(|x| x.as_str()).unwrap_or("silu");
        if !matches!(hidden_act, "silu" | "swish") {
            return Err(c.err(format!("hidden_act `{hidden_act}` is not supported (silu is)")));
        }
        let moe = MoeSpec {
            experts,
            top_k,
            inter: moe_inter,
            router,
            router_bias: arch == GptOss,
            shared,
            act,
            expert_bias: arch == GptOss,
        };
        let attention_bias = c.bool_or("attention_bias", arch == GptOss);
        let default_eps = if matches!(arch, Qwen2Moe | Qwen3Moe | DeepseekV3 | GraniteMoe) { 1e-6 } else { 1e-5 };
        let quant = v.get("quantization_config").and_then(|q| q.get("quant_method")).and_then(|m| m.as_str());
        let mxfp4 = match quant {
            None => false,
            Some("mxfp4") if arch == GptOss => true,
            Some(m) => {
                return Err(c.err(format!(
                    "quantization `{m}` is not supported for {}; use the unquantized (bf16/f16/f32) checkpoint",
                    arch.name()
                )))
            }
        };
        Ok(Spec {
            arch,
            vocab,
            hidden,
            layers,
            heads,
            kv_heads: if mla.is_some() { heads } else { kv_heads },
            head_dim,
            v_dim,
            eps: c.f64_or("rms_norm_eps", default_eps),
            norm: if arch == Phimoe { Norm::Layer } else { Norm::Rms },
            qk_norm: match arch {
                Qwen3Moe => QkNorm::PerHead,
                Olmoe => QkNorm::Whole,
                _ => QkNorm::None,
            },
            qkv_bias: match arch {
                Qwen2Moe => c.bool_or("qkv_bias", true),
                DeepseekV3 => false,
                _ => attention_bias,
            },
            o_bias: arch != Qwen2Moe && arch != DeepseekV3 && attention_bias,
            clip_qkv: match v.get("clip_qkv").and_then(|x| x.as_f64()).filter(|_| arch == Olmoe) {
                Some(x) => Some(c.positive("clip_qkv", x)?),
                None => None,
            },
            sinks: arch == GptOss,
            mla,
            attn_scale: attn_scale as f32,
            rope,
            windows,
            ffn,
            moe,
            embed_mult: if arch == GraniteMoe { c.f64_or("embedding_multiplier", 1.0) as f32 } else { 1.0 },
            residual_mult: if arch == GraniteMoe { c.f64_or("residual_multiplier", 1.0) as f32 } else { 1.0 },
            logits_div: if arch == GraniteMoe { c.f64_or("logits_scaling", 1.0) as f32 } else { 1.0 },
            lm_head_bias: arch == Phimoe && c.bool_or("lm_head_bias", false),
            tie: c.bool_or("tie_word_embeddings", false),
            max_pos,
            bos: c.ids("bos_token_id").first().copied(),
            eos: c.ids("eos_token_id"),
            mxfp4,
        })
    }
}
