//! A Hugging Face checkpoint (safetensors in any float dtype) as a model of the training
//! engine: its config as a `ModelConfig` and its weights as f32 parameters in our layout, for
//! `moe train --init DIR` (fine-tuning) and `moe upcycle --from DIR`.
//! - Dense LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM (query/key/value biases),
//!   read directly (our names are theirs);
//! - MoE checkpoints through the inference loader (`load`: per-expert or fused expert tensors,
//!   every dtype it reads), of the families whose blocks the training model has: Mixtral,
//!   Qwen2-MoE whose dense layers come first (Qwen1.5-MoE has none), OLMoE without clipping
//!   (q/k norms over whole projections), Qwen3-MoE (q/k norms per head, wide heads),
//!   GraniteMoE (multipliers), DeepSeek-V3 (latent attention, sigmoid group-limited routing
//!   with its score bias as the selection bias, shared experts, dense first layers) and gpt-oss
//!   (sinks, sliding windows, biases everywhere, the clamped SwiGLU, MXFP4 experts decoded).
//!
//! RoPE scaling (linear, Llama 3, YaRN) is kept; what the training model cannot express is
//! refused with the reason (biases, LongRoPE, activations other than SiLU, ...); tied
//! embeddings are copied into the LM head (the same function; training then unties them); the
//! MoE families' sliding windows are the training model's (gpt-oss: alternate layers), and a
//! dense Mistral's window caps its context instead.

use crate::config::{read_config, Act, Ffn, Norm, QkNorm, Router, Spec};
use crate::error::{Error, Result};
use crate::load::{Attn, FfnW};
use crate::moe::{Expert, GateUp};
use crate::store::TensorStore;
use crate::weight::Weight;
use moe_engine::config::ModelConfig;
use moe_engine::params::Layout;
use moe_engine::params::{FfnSpans, Span};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A Hugging Face checkpoint read for training.
pub struct HfCheckpoint {
    pub config: ModelConfig,
    pub params: Vec<f32>,
    /// The model's tokenizer.json, if it has one.
    pub tokenizer: Option<PathBuf>,
}

/// Whether `dir` holds a Hugging Face checkpoint (a config.json naming `architectures` or a
/// `model_type`).
pub fn is_hf_dir(dir: &Path) -> bool {
    read_config(dir).is_ok_and(|c| c.get("architectures").is_some() || c.get("model_type").is_some())
}

/// The training config of the dense Hugging Face config `c` (read from `path`).
pub fn dense_config(c: &Value, path: &Path) -> Result<ModelConfig> {
    let bad = |msg: String| Error::Config { path: path.to_path_buf(), msg };
    let arch = c["architectures"][0].as_str().unwrap_or("");
    if !matches!(arch, "LlamaForCausalLM" | "MistralForCausalLM" | "Qwen2ForCausalLM") {
        return Err(bad(format!(
            "`{arch}`: moe trains LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, MixtralForCausalLM and Qwen2MoeForCausalLM checkpoints"
        )));
    }
    let qwen2 = arch == "Qwen2ForCausalLM";
    let num = |k: &str| c.get(k).and_then(Value::as_u64).map(|x| x as usize);
    let need = |k: &str| num(k).filter(|&x| x > 0).ok_or_else(|| bad(format!("missing or zero `{k}`")));
    let (hidden, heads) = (need("hidden_size")?, need("num_attention_heads")?);
    let head_dim = num("head_dim").filter(|&d| d * heads != hidden).unwrap_or(0);
    for flag in ["attention_bias", "mlp_bias"].into_iter().filter(|_| !qwen2) {
        if c.get(flag).and_then(Value::as_bool) == Some(true) {
            return Err(bad(format!("`{flag}` is true; the training model has no biases")));
        }
    }
    if c.get("hidden_act").and_then(Value::as_str).is_some_and(|a| a != "silu") {
        return Err(bad(format!("hidden_act {}: the training model's MLP is SwiGLU (silu)", c["hidden_act"])));
    }
    let (theta, rope_scaling) = rope_of(c);
    let mut context = need("max_position_embeddings")?;
    // Qwen2 names a window it does not use unless use_sliding_window
    let windowed = !qwen2 || c.get("use_sliding_window").and_then(Value::as_bool) == Some(true);
    if let Some(w) = num("sliding_window").filter(|_| windowed) {
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
        rope_scaling,
        num_local_experts: 0,
        qkv_bias: qwen2,
        head_dim,
        ..ModelConfig::bench_dense()
    };
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    Ok(cfg)
}

/// RoPE's theta and scaling (the parameters besides theta; None when plain) of config.json
/// `c`: transformers 5 keeps both in rope_parameters, 4.x in rope_theta and rope_scaling.
fn rope_of(c: &Value) -> (f64, Option<Value>) {
    let params = c.get("rope_parameters").filter(|v| v.is_object()).or(c.get("rope_scaling").filter(|v| v.is_object()));
    let theta = params.and_then(|r| r["rope_theta"].as_f64()).or(c["rope_theta"].as_f64()).unwrap_or(10000.0);
    let scaling = params.cloned().map(|mut p| {
        p.as_object_mut().map(|o| o.remove("rope_theta"));
        p
    });
    let scaled =
        |p: &Value| p.get("rope_type").or(p.get("type")).and_then(Value::as_str).is_some_and(|k| k != "default");
    (theta, scaling.filter(scaled))
}

/// Whether a checkpoint's config goes through the inference loader (the MoE families it
/// reads), not the dense reader.
fn through_loader(dir: &Path, raw: &Value) -> bool {
    let arch = raw["architectures"][0].as_str().unwrap_or("");
    !matches!(arch, "LlamaForCausalLM" | "MistralForCausalLM") && Spec::from_dir(dir).is_ok()
}

/// The training config of the checkpoint in `dir` without reading its weights, or what the
/// training model lacks to hold it.
pub fn training_config(dir: &Path) -> Result<ModelConfig> {
    let raw = read_config(dir)?;
    let path = dir.join("config.json");
    if through_loader(dir, &raw) {
        return moe_config(&Spec::from_dir(dir)?, &raw, &path);
    }
    dense_config(&raw, &path)
}

/// Reads the checkpoint in `dir` (dense or MoE).
pub fn read_checkpoint(dir: &Path) -> Result<HfCheckpoint> {
    let raw = read_config(dir)?;
    // the MoE families the inference engine reads go through its loader (and are refused there
    // with what the training model lacks)
    if through_loader(dir, &raw) {
        return load_moe(dir, &raw);
    }
    let config = dense_config(&raw, &dir.join("config.json"))?;
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
    Ok(HfCheckpoint { config, params, tokenizer: tk.is_file().then_some(tk) })
}

/// An MoE checkpoint through the inference loader.
fn load_moe(dir: &Path, raw: &Value) -> Result<HfCheckpoint> {
    let m = crate::Model::load(dir)?;
    let s = &m.spec;
    let config = moe_config(s, raw, &dir.join("config.json"))?;
    let layout = Layout::new(&config);
    let mut p = vec![0.0f32; layout.total];
    let rows = |w: &Weight, span: Span, p: &mut [f32]| w.rows_f32(0, span.of_mut(p));
    rows(&m.w.embed, layout.embed, &mut p);
    // a weight, and a bias where the layout has one (LayerNorm, the LM head's)
    let copy = |v: &[f32], span: Span, p: &mut [f32]| span.of_mut(p).copy_from_slice(v);
    let bias = |b: &Option<Vec<f32>>, span: Option<Span>, p: &mut [f32]| -> Result<()> {
        if let Some(span) = span {
            copy(b.as_deref().ok_or_else(|| Error::Input("a bias is missing".into()))?, span, p);
        }
        Ok(())
    };
    copy(&m.w.norm.w, layout.norm, &mut p);
    bias(&m.w.norm.b, layout.norm_bias, &mut p)?;
    let head = if s.tie { &m.w.embed } else { &m.w.lm_head.w };
    rows(head, layout.lm_head, &mut p);
    bias(&m.w.lm_head.bias, layout.lm_head_bias, &mut p)?;
    for (l, sp) in m.w.layers.iter().zip(&layout.layers) {
        copy(&l.in_norm.w, sp.ln1, &mut p);
        copy(&l.post_norm.w, sp.ln2, &mut p);
        bias(&l.in_norm.b, sp.ln1_bias, &mut p)?;
        bias(&l.post_norm.b, sp.ln2_bias, &mut p)?;
        match (&l.attn, sp.mla) {
            (Attn::Std { q, k, v, o, q_norm, k_norm, sinks }, None) => {
                if let (Some(b), Some(span)) = (&o.bias, sp.o_bias) {
                    span.of_mut(&mut p).copy_from_slice(b);
                }
                if let (Some(z), Some(span)) = (sinks, sp.sinks) {
                    span.of_mut(&mut p).copy_from_slice(z);
                }
                if let (Some([sq, sk]), Some(nq), Some(nk)) = (sp.qk_norm, q_norm, k_norm) {
                    sq.of_mut(&mut p).copy_from_slice(&nq.w);
                    sk.of_mut(&mut p).copy_from_slice(&nk.w);
                }
                for (lin, span) in [(q, sp.wq), (k, sp.wk), (v, sp.wv), (o, sp.wo)] {
                    rows(&lin.w, span, &mut p);
                }
                if let Some(spans) = sp.qkv_bias {
                    for (lin, span) in [q, k, v].into_iter().zip(spans) {
                        let b = lin.bias.as_ref().ok_or_else(|| Error::Input("a projection bias is missing".into()))?;
                        span.of_mut(&mut p).copy_from_slice(b);
                    }
                }
            }
            (Attn::Mla { q_a, q, kv_a, kv_norm, kv_b, o }, Some(ms)) => {
                if let (Some((qa, qa_norm)), Some([wa, na])) = (q_a, ms.q_a) {
                    rows(&qa.w, wa, &mut p);
                    na.of_mut(&mut p).copy_from_slice(&qa_norm.w);
                }
                for (lin, span) in [(q, sp.wq), (kv_a, sp.wk), (kv_b, sp.wv), (o, sp.wo)] {
                    rows(&lin.w, span, &mut p);
                }
                ms.kv_a_norm.of_mut(&mut p).copy_from_slice(&kv_norm.w);
            }
            _ => unreachable!("checked by moe_config"),
        }
        match (&l.ffn, &sp.ffn) {
            (FfnW::Dense(e), FfnSpans::Dense { gate, up, down, .. }) => expert(e, [*gate, *up, *down], None, &mut p)?,
            (FfnW::Moe(mw), FfnSpans::Moe(ms)) => {
                rows(&mw.router.w, ms.router, &mut p);
                if let (Some(b), Some(span)) = (&mw.router.bias, ms.router_bias) {
                    span.of_mut(&mut p).copy_from_slice(b);
                }
                if let (Some(b), Some(span)) = (&mw.score_bias, ms.selection_bias) {
                    span.of_mut(&mut p).copy_from_slice(b);
                }
                let n = [ms.gate, ms.up, ms.down].map(|s| s.len / config.num_local_experts);
                for (e, ex) in mw.experts.iter().enumerate() {
                    let ex = ex.as_ref().ok_or_else(|| Error::Input("an expert is missing".into()))?;
                    let slot = |s: Span, n: usize| Span { off: s.off + e * n, len: n };
                    let bias = ms.expert_bias.map(|b| {
                        let nb = b.map(|s| s.len / config.num_local_experts);
                        [slot(b[0], nb[0]), slot(b[1], nb[1]), slot(b[2], nb[2])]
                    });
                    expert(ex, [slot(ms.gate, n[0]), slot(ms.up, n[1]), slot(ms.down, n[2])], bias, &mut p)?;
                }
                if let (Some(sh), Some(spans)) = (&mw.shared, &ms.shared) {
                    expert(sh, *spans, None, &mut p)?;
                }
                if let (Some(g), Some(span)) = (&mw.shared_gate, ms.shared_gate) {
                    rows(&g.w, span, &mut p);
                }
            }
            _ => unreachable!("the layout follows the config made from the spec"),
        }
    }
    let tk = dir.join("tokenizer.json");
    Ok(HfCheckpoint { config, params: p, tokenizer: tk.is_file().then_some(tk) })
}

/// A linear layer's weight as [out, in] f32 rows (transposing gpt-oss's [in, out] experts).
fn rows_of(l: &crate::linear::Linear) -> Vec<f32> {
    let (r, c) = (l.w.rows, l.w.cols);
    let mut m = vec![0.0f32; r * c];
    l.w.rows_f32(0, &mut m);
    if !l.transposed {
        return m;
    }
    let mut t = vec![0.0f32; r * c];
    for (i, row) in m.chunks_exact(c).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            t[j * r + i] = v;
        }
    }
    t
}

/// An expert's gate [F, C], up [F, C] and down [C, F] into `spans`, and its biases (gate [F],
/// up [F], down [C]) into `bias` when the model has them. Fused gate/up rows are all gate rows
/// then all up rows, or alternating (gpt-oss, whose matrices are stored [in, out]).
fn expert(e: &Expert, spans: [Span; 3], bias: Option<[Span; 3]>, p: &mut [f32]) -> Result<()> {
    let [g, u, d] = spans;
    let missing = || Error::Input("an expert bias is missing".into());
    match &e.gate_up {
        GateUp::Split(gate, up) => {
            g.of_mut(p).copy_from_slice(&rows_of(gate));
            u.of_mut(p).copy_from_slice(&rows_of(up));
            if let Some([bg, bu, _]) = bias {
                bg.of_mut(p).copy_from_slice(gate.bias.as_ref().ok_or_else(missing)?);
                bu.of_mut(p).copy_from_slice(up.bias.as_ref().ok_or_else(missing)?);
            }
        }
        GateUp::Fused { lin, interleaved } => {
            let c = lin.inp;
            let (both, f) = (rows_of(lin), g.len / c);
            // fused row r: gate or up, and which of its rows
            let split = |r: usize| if *interleaved { (r.is_multiple_of(2), r / 2) } else { (r < f, r % f) };
            for (r, row) in both.chunks_exact(c).enumerate() {
                let (to_gate, i) = split(r);
                let at = if to_gate { g.off } else { u.off } + i * c;
                p[at..at + c].copy_from_slice(row);
            }
            if let Some([bg, bu, _]) = bias {
                for (r, &v) in lin.bias.as_ref().ok_or_else(missing)?.iter().enumerate() {
                    let (to_gate, i) = split(r);
                    p[if to_gate { bg.off } else { bu.off } + i] = v;
                }
            }
        }
    }
    d.of_mut(p).copy_from_slice(&rows_of(&e.down));
    if let Some([_, _, bd]) = bias {
        bd.of_mut(p).copy_from_slice(e.down.bias.as_ref().ok_or_else(missing)?);
    }
    Ok(())
}

/// The training config of an MoE spec, or what the training model lacks.
fn moe_config(s: &Spec, raw: &Value, path: &Path) -> Result<ModelConfig> {
    let bad = |msg: &str| {
        Err(Error::Config { path: path.to_path_buf(), msg: format!("{msg}; the training model cannot hold it") })
    };
    let (theta, rope_scaling) = rope_of(raw);
    let d = s.head_dim;
    // RoPE over the whole head, or over latent attention's rotated part
    let rd = s.mla.map_or(d, |m| m.rope);
    // interleaved RoPE only as latent attention's (a GGUF file's permuted rows are not read here)
    let interleave_ok = !s.rope.interleave || s.mla.is_some();
    if s.rope.dim != rd || !interleave_ok {
        return bad("partial or interleaved RoPE");
    }
    // LongRoPE (PhiMoE): its short schedule, within the original context it holds for, with the
    // schedule's cos/sin factor (PhiMoE's short_mscale) written out
    let mut rope_scaling = rope_scaling;
    let mut context = s.max_pos;
    if s.rope.long.is_some() {
        context = context.min(s.rope.original);
        if let Some(o) = rope_scaling.as_mut().and_then(|r| r.as_object_mut()) {
            o.insert("attention_factor".into(), serde_json::json!(s.rope.factor));
        }
    }
    if s.v_dim != d && s.mla.is_none() {
        return bad("value heads of another width than the query heads");
    }
    let swiglu_limit = match s.moe.act {
        Act::Swiglu => 0.0,
        Act::ClampedSwiglu { alpha, limit } if (alpha as f64 - moe_engine::config::GPT_OSS_ALPHA).abs() < 1e-6 => {
            limit as f64
        }
        Act::ClampedSwiglu { .. } => return bad("a clamped SwiGLU of another slope than gpt-oss's 1.702"),
    };
    // sliding windows: one width, in the layers that have one
    let windows: Vec<usize> = s.windows.iter().flatten().copied().collect();
    if windows.windows(2).any(|w| w[0] != w[1]) {
        return bad("sliding windows of different widths");
    }
    let layer_types = if windows.is_empty() || windows.len() == s.layers {
        vec![]
    } else {
        use moe_engine::config::LayerType;
        s.windows
            .iter()
            .map(|w| if w.is_some() { LayerType::SlidingAttention } else { LayerType::FullAttention })
            .collect()
    };
    use moe_engine::config::RouterKind;
    let (mut n_group, mut topk_group, mut scale, mut mixer_eps) = (1, 1, 1.0, 0.0);
    let (router, renorm) = match s.moe.router {
        Router::SoftmaxTopk { renorm } => (RouterKind::SoftmaxTopk, renorm),
        // GraniteMoE: softmax over the k largest logits
        Router::TopkSoftmax => (RouterKind::TopkSoftmax, true),
        // DeepSeek-V3: sigmoid scores, group-limited selection with the score bias
        Router::SigmoidGroup { n_group: g, topk_group: k, renorm, scale: f } => {
            (n_group, topk_group, scale) = (g, k, f as f64);
            (RouterKind::SigmoidGroup, renorm)
        }
        // PhiMoE: the sparsemixer, as transformers runs it at inference
        Router::SparseMixer { eps } => {
            mixer_eps = eps as f64;
            (RouterKind::SparseMixer, true)
        }
    };
    let mla = s.mla.map(|m| moe_engine::config::MlaConfig {
        q_lora_rank: m.q_lora.unwrap_or(0),
        kv_lora_rank: m.kv_lora,
        qk_nope_head_dim: m.nope,
        qk_rope_head_dim: m.rope,
        v_head_dim: m.v,
        rope_interleave: s.rope.interleave,
    });
    // GraniteMoE's multipliers (1 and 1/sqrt(D) elsewhere)
    let default_scale = (s.attn_scale - 1.0 / (d as f32).sqrt()).abs() <= 1e-6;
    // dense layers: the first k, and any others by index (one width for all)
    let moe_at: Vec<bool> = s.ffn.iter().map(|f| *f == Ffn::Moe).collect();
    let first_dense = moe_at.iter().take_while(|m| !**m).count();
    let mlp_only_layers: Vec<usize> = (first_dense..s.layers).filter(|&l| !moe_at[l]).collect();
    let dense_width = s.ffn.iter().find_map(|f| if let Ffn::Dense(w) = f { Some(*w) } else { None });
    if s.ffn.iter().any(|f| matches!(f, Ffn::Dense(w) if Some(*w) != dense_width)) {
        return bad("dense layers of different widths");
    }

    let (shared, gate) = s.moe.shared.unwrap_or((0, false));
    let cfg = ModelConfig {
        vocab_size: s.vocab,
        hidden_size: s.hidden,
        num_hidden_layers: s.layers,
        num_attention_heads: s.heads,
        // latent attention has a key and a value per query head
        num_key_value_heads: if mla.is_some() { s.heads } else { s.kv_heads },
        intermediate_size: dense_width.unwrap_or(s.moe.inter),
        max_position_embeddings: context,
        rms_norm_eps: s.eps,
        rope_theta: theta,
        rope_scaling,
        num_local_experts: s.moe.experts,
        num_experts_per_tok: s.moe.top_k,
        moe_intermediate_size: s.moe.inter,
        norm_topk_prob: renorm,
        router,
        n_group,
        topk_group,
        routed_scaling_factor: scale,
        mla,
        embedding_multiplier: s.embed_mult as f64,
        attention_multiplier: if default_scale { 0.0 } else { s.attn_scale as f64 },
        residual_multiplier: s.residual_mult as f64,
        logits_scaling: s.logits_div as f64,
        first_k_dense_replace: first_dense,
        mlp_only_layers,
        decoder_sparse_step: 1,
        shared_expert_intermediate_size: shared,
        shared_expert_gate: gate,
        bias_update_rate: 0.0,
        router_bias: s.moe.router_bias,
        sparse_mixer_eps: mixer_eps,
        clip_qkv: s.clip_qkv.map_or(0.0, |c| c as f64),
        layer_norm: s.norm != Norm::Rms,
        lm_head_bias: s.lm_head_bias,
        o_proj_bias: s.o_bias,
        expert_bias: s.moe.expert_bias,
        attention_sinks: s.sinks,
        swiglu_limit,
        sliding_window: windows.first().copied().unwrap_or(0),
        layer_types,
        qkv_bias: s.qkv_bias,
        head_dim: if d * s.heads == s.hidden || mla.is_some() { 0 } else { d },
        qk_norm: match s.qk_norm {
            QkNorm::None => moe_engine::config::QkNorm::None,
            QkNorm::PerHead => moe_engine::config::QkNorm::PerHead,
            QkNorm::Whole => moe_engine::config::QkNorm::Whole,
        },
        ..ModelConfig::bench_dense()
    };
    cfg.validate().map_err(|e| Error::Config { path: path.to_path_buf(), msg: e.to_string() })?;
    Ok(cfg)
}
