//! A Hugging Face dense checkpoint (LlamaForCausalLM, MistralForCausalLM; safetensors in any
//! float dtype) as a model of the training engine: its config as a `ModelConfig` and its weights
//! as f32 parameters in our layout, whose names are the same. `moe upcycle --from DIR` turns it
//! into an MoE the way Qwen1.5-MoE was made from Qwen-1.8B. What the training model cannot
//! express is refused with the reason (biases, RoPE scaling, a head width other than
//! hidden / heads, activations other than SiLU); tied embeddings are copied into the LM head
//! (the same function; training then unties them); Mistral's sliding window caps the context,
//! so that attention over it equals the full attention the training model computes.

use crate::config::read_config;
use crate::error::{Error, Result};
use crate::store::TensorStore;
use moe_engine::config::ModelConfig;
use moe_engine::params::Layout;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A dense checkpoint read for training.
pub struct DenseHf {
    pub config: ModelConfig,
    pub params: Vec<f32>,
    /// The model's tokenizer.json, if it has one.
    pub tokenizer: Option<PathBuf>,
}

/// Whether `dir` holds a Hugging Face checkpoint (a config.json with `architectures`).
pub fn is_hf_dir(dir: &Path) -> bool {
    read_config(dir).is_ok_and(|c| c.get("architectures").is_some())
}

/// The training config of the dense Hugging Face config `c` (read from `path`).
pub fn dense_config(c: &Value, path: &Path) -> Result<ModelConfig> {
    let bad = |msg: String| Error::Config { path: path.to_path_buf(), msg };
    let arch = c["architectures"][0].as_str().unwrap_or("");
    if !matches!(arch, "LlamaForCausalLM" | "MistralForCausalLM") {
        return Err(bad(format!(
            "`{arch}`: moe trains and upcycles LlamaForCausalLM and MistralForCausalLM dense checkpoints"
        )));
    }
    let num = |k: &str| c.get(k).and_then(Value::as_u64).map(|x| x as usize);
    let need = |k: &str| num(k).filter(|&x| x > 0).ok_or_else(|| bad(format!("missing or zero `{k}`")));
    let (hidden, heads) = (need("hidden_size")?, need("num_attention_heads")?);
    if let Some(d) = num("head_dim").filter(|&d| d * heads != hidden) {
        return Err(bad(format!(
            "head_dim {d} times {heads} heads is not hidden_size {hidden}; the training model has hidden / heads"
        )));
    }
    for flag in ["attention_bias", "mlp_bias"] {
        if c.get(flag).and_then(Value::as_bool) == Some(true) {
            return Err(bad(format!("`{flag}` is true; the training model has no biases")));
        }
    }
    if c.get("hidden_act").and_then(Value::as_str).is_some_and(|a| a != "silu") {
        return Err(bad(format!("hidden_act {}: the training model's MLP is SwiGLU (silu)", c["hidden_act"])));
    }
    // transformers 5 keeps theta and scaling in rope_parameters, 4.x in rope_theta and rope_scaling
    let rope = c.get("rope_parameters").filter(|v| v.is_object());
    let kind = rope.and_then(|r| r["rope_type"].as_str()).or(c["rope_scaling"]["rope_type"].as_str());
    if let Some(k) = kind.filter(|k| *k != "default") {
        return Err(bad(format!("RoPE scaling `{k}`: the training model has plain RoPE")));
    }
    let theta = rope.and_then(|r| r["rope_theta"].as_f64()).or(c["rope_theta"].as_f64()).unwrap_or(10000.0);
    let mut context = need("max_position_embeddings")?;
    if let Some(w) = num("sliding_window") {
        context = context.min(w);
    }
    let cfg = ModelConfig {
        vocab_size: need("vocab_size")?,
        hidden_size: hidden,
        num_hidden_layers: need("num_hidden_layers")?,
        num_attention_heads: heads,
        num_key_value_heads: num("num_key_value_heads").unwrap_or(heads),
        intermediate_size: need("intermediate_size")?,
        max_position_embeddings: context,
        rms_norm_eps: c["rms_norm_eps"].as_f64().unwrap_or(1e-6),
        rope_theta: theta,
        num_local_experts: 0,
        ..ModelConfig::bench_dense()
    };
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    Ok(cfg)
}

/// Reads the dense checkpoint in `dir`.
pub fn load_dense(dir: &Path) -> Result<DenseHf> {
    let config = dense_config(&read_config(dir)?, &dir.join("config.json"))?;
    let store = TensorStore::open(dir)?;
    let layout = Layout::new(&config);
    let mut params = vec![0.0f32; layout.total];
    for t in &layout.tensors {
        let name = if t.name == "lm_head.weight" && !store.contains(&t.name) {
            "model.embed_tokens.weight" // tied embeddings
        } else {
            t.name.as_str()
        };
        store.weight(name, &t.shape)?.rows_f32(0, t.span.of_mut(&mut params));
    }
    let tk = dir.join("tokenizer.json");
    Ok(DenseHf { config, params, tokenizer: tk.is_file().then_some(tk) })
}
