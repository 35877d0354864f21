//! A checkpoint trained by moe, written as one GGUF file (`moe export --gguf`) with f32 tensors
//! and the checkpoint's byte-level BPE tokenizer embedded, so that llama.cpp and `moe serve
//! --model FILE.gguf` need nothing beside it. What `from_moe` writes as Mixtral becomes
//! llama.cpp's `llama` architecture with experts (query and key rows permuted as its converter
//! does); what it writes as Qwen2-MoE becomes `qwen2moe` when every layer is MoE and the routing
//! weights are not renormalised (llama.cpp's qwen2moe does not renormalise): the shared expert as
//! `*_shexp` tensors (a zero one of width 1 when the model has none; an ungated one with a zero
//! gate and a doubled down projection, as in `from_moe`), the query/key/value biases if any.
//! The OLMoE form becomes `olmoe` (weights not renormalised, as llama.cpp's olmoe computes) and
//! the Qwen3-MoE form `qwen3moe` (renormalised, every layer MoE), their query/key norms as
//! `attn_{q,k}_norm`. The GraniteMoE form becomes `granitemoe` (queries and keys permuted as for
//! `llama`, the four multipliers as `embedding_scale`, `attention.scale`, `residual_scale` and
//! `logit_scale`). The DeepSeek-V3 form becomes `deepseek2` as llama.cpp's converter writes it
//! (sigmoid gating, latent attention as MQA over the latent with `kv_b_proj` split per head into
//! `attn_k_b` (transposed) and `attn_v_b`, YaRN if any); its RoPE rotates adjacent pairs, so a
//! model trained without `rope_interleave` has its rotary rows permuted as for `llama`.

use crate::error::{io, Error, Result};
use crate::from_moe::{hf_form, HfForm};
use crate::gguf_write::{GgufWriter, Meta};
use moe_engine::checkpoint::{self, Checkpoint};
use moe_engine::config::ModelConfig;
use moe_engine::params::Layout;
use std::path::Path;

/// The GGUF name of tensor `name` of our layout in GGUF architecture `arch` (the reader's table
/// inverted, through the hub's names: our router is `mlp.gate`, GraniteMoE's
/// `block_sparse_moe.router.layer`, our selection bias DeepSeek's `e_score_correction_bias`),
/// and the head count its rows are permuted over (the queries and keys of `llama` and
/// `granitemoe`, whose converter permutes them), if any.
fn gguf_name(cfg: &ModelConfig, name: &str, arch: &str) -> Option<(String, Option<usize>)> {
    let hf = match arch {
        "granitemoe" => name
            .replace(".mlp.router.weight", ".block_sparse_moe.router.layer.weight")
            .replace(".mlp.experts.", ".block_sparse_moe.experts."),
        // DeepSeek names its shared experts in the plural
        "deepseek2" => name.replace(".mlp.shared_expert.", ".mlp.shared_experts."),
        _ => name.to_string(),
    };
    let hf = hf
        .replace(".mlp.router.weight", ".mlp.gate.weight")
        .replace(".mlp.router.selection_bias", ".mlp.gate.e_score_correction_bias");
    let g = crate::gguf_model::gguf_name(arch, &hf)?;
    let permuted = arch == "llama" || arch == "granitemoe";
    let heads = match g.rsplit('.').nth(1) {
        Some("attn_q") if permuted => Some(cfg.num_attention_heads),
        Some("attn_k") if permuted => Some(cfg.num_key_value_heads),
        _ => None,
    };
    Some((g, heads))
}

/// Query or key rows [heads * d, C] reordered as llama.cpp's converter does, so that its RoPE
/// over adjacent pairs (2i, 2i+1) computes what ours over (i, i + d/2) does: within a head, row
/// 2i + j takes row j * d/2 + i.
fn permute_rope_rows(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let d = w.len() / cols / heads;
    permute_rotary(w, heads, d, 0, d, cols)
}

/// [`permute_rope_rows`] for rows [blocks * width, C] whose rotary part is the `rope` rows from
/// `start` of each block (latent attention: after each head's unrotated rows, or after the latent).
fn permute_rotary(w: &[f32], blocks: usize, width: usize, start: usize, rope: usize, cols: usize) -> Vec<f32> {
    let mut out = w.to_vec();
    for b in 0..blocks {
        let base = b * width + start;
        for i in 0..rope / 2 {
            for j in 0..2 {
                let (to, from) = (base + 2 * i + j, base + j * rope / 2 + i);
                out[to * cols..(to + 1) * cols].copy_from_slice(&w[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

fn unnamed(name: &str) -> Error {
    Error::Input(format!("tensor {name} has no GGUF name; report this as a bug"))
}

/// Why DeepSeek-V3's RoPE scaling has no `deepseek2` form, if it has none: only YaRN, and with
/// mscale equal to mscale_all_dim (llama.cpp keeps only the latter).
fn deepseek_rope(cfg: &ModelConfig) -> std::result::Result<(), String> {
    let Some(p) = &cfg.rope_scaling else { return Ok(()) };
    let kind = p["rope_type"].as_str().or(p["type"].as_str()).unwrap_or("default");
    let (m, m_all) = (p["mscale"].as_f64().unwrap_or(0.0), p["mscale_all_dim"].as_f64().unwrap_or(0.0));
    match kind {
        "default" => Ok(()),
        "yarn" if m == m_all => Ok(()),
        "yarn" => Err(format!("llama.cpp's deepseek2 keeps one YaRN mscale, and this model's mscale {m} differs from its mscale_all_dim {m_all}; export a Hugging Face directory instead")),
        _ => Err(format!("llama.cpp's deepseek2 scales RoPE only with YaRN, not `{kind}`; export a Hugging Face directory instead")),
    }
}

/// Sets `key` to `v` in `keys`, replacing its value if it is there.
fn set(keys: &mut Vec<(&'static str, Meta)>, key: &'static str, v: Meta) {
    match keys.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 = v,
        None => keys.push((key, v)),
    }
}

/// The `deepseek2.*` keys of `cfg` (the DeepSeek-V3 form) over the common ones, as llama.cpp's
/// converter writes them: latent attention as MQA over the latent (key_length = kv_lora + rope,
/// value_length = kv_lora), the per-head sizes as *_mla, sigmoid gating (2).
fn deepseek_keys(cfg: &ModelConfig, keys: &mut Vec<(&'static str, Meta)>) {
    let a = cfg.mla.expect("the DeepSeek-V3 form has latent attention");
    let u = |x: usize| Meta::U32(x as u32);
    let mut ours = vec![
        ("feed_forward_length", u(cfg.intermediate_size)),
        ("attention.head_count_kv", u(1)),
        ("rope.dimension_count", u(a.qk_rope_head_dim)),
        ("expert_group_count", u(cfg.n_group)),
        ("expert_group_used_count", u(cfg.topk_group)),
        ("expert_gating_func", u(2)),
        ("expert_feed_forward_length", u(cfg.moe_intermediate_size)),
        ("expert_shared_count", u(cfg.shared_expert_intermediate_size / cfg.moe_intermediate_size)),
        ("expert_weights_scale", Meta::F32(cfg.routed_scaling_factor as f32)),
        ("expert_weights_norm", Meta::Bool(cfg.norm_topk_prob)),
        ("leading_dense_block_count", u(cfg.first_k_dense_replace)),
        ("attention.kv_lora_rank", u(a.kv_lora_rank)),
        ("attention.key_length", u(a.kv_lora_rank + a.qk_rope_head_dim)),
        ("attention.value_length", u(a.kv_lora_rank)),
        ("attention.key_length_mla", u(a.qk_nope_head_dim + a.qk_rope_head_dim)),
        ("attention.value_length_mla", u(a.v_head_dim)),
    ];
    if a.q_lora_rank > 0 {
        ours.push(("attention.q_lora_rank", u(a.q_lora_rank)));
    }
    if let Some(p) =
        cfg.rope_scaling.as_ref().filter(|p| p["rope_type"].as_str().or(p["type"].as_str()) == Some("yarn"))
    {
        let f = |k: &str, default: f64| Meta::F32(p[k].as_f64().unwrap_or(default) as f32);
        ours.push(("rope.scaling.type", Meta::Str("yarn".into())));
        ours.push(("rope.scaling.factor", f("factor", 1.0)));
        ours.push((
            "rope.scaling.original_context_length",
            u(p["original_max_position_embeddings"].as_u64().unwrap_or(0) as usize),
        ));
        ours.push(("rope.scaling.yarn_beta_fast", f("beta_fast", 32.0)));
        ours.push(("rope.scaling.yarn_beta_slow", f("beta_slow", 1.0)));
        // llama.cpp's converter writes 0.1 * mscale_all_dim here
        ours.push((
            "rope.scaling.yarn_log_multiplier",
            Meta::F32((0.1 * p["mscale_all_dim"].as_f64().unwrap_or(0.0)) as f32),
        ));
    }
    for (k, v) in ours {
        set(keys, k, v);
    }
}

/// One tensor of the DeepSeek-V3 form under its `deepseek2` name(s): `kv_b_proj` [H*(nope+v),
/// kv_lora] split per head into k_b [H, kv_lora, nope] (transposed) and v_b [H, v, kv_lora]; the
/// rotary rows of the queries and of the shared key permuted unless trained interleaved.
fn deepseek_tensor(w: &mut GgufWriter, cfg: &ModelConfig, name: &str, shape: &[usize], data: &[f32]) -> Result<()> {
    let a = cfg.mla.expect("the DeepSeek-V3 form has latent attention");
    let (h, kv, nope, rope, v) =
        (cfg.num_attention_heads, a.kv_lora_rank, a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim);
    if let Some(prefix) = name.strip_suffix("self_attn.kv_b_proj.weight") {
        let norm = format!("{prefix}self_attn.kv_a_layernorm.weight");
        let (g, _) = gguf_name(cfg, &norm, "deepseek2").ok_or_else(|| unnamed(name))?;
        let blk = g.trim_end_matches("attn_kv_a_norm.weight");
        let (mut kb, mut vb) = (vec![0.0; h * kv * nope], vec![0.0; h * v * kv]);
        for head in 0..h {
            let rows = &data[head * (nope + v) * kv..(head + 1) * (nope + v) * kv];
            for n in 0..nope {
                for j in 0..kv {
                    kb[(head * kv + j) * nope + n] = rows[n * kv + j];
                }
            }
            vb[head * v * kv..(head + 1) * v * kv].copy_from_slice(&rows[nope * kv..]);
        }
        w.tensor(&format!("{blk}attn_k_b.weight"), &[h, kv, nope], kb);
        w.tensor(&format!("{blk}attn_v_b.weight"), &[h, v, kv], vb);
        return Ok(());
    }
    let (g, _) = gguf_name(cfg, name, "deepseek2").ok_or_else(|| unnamed(name))?;
    let cols = shape.last().copied().unwrap_or(1);
    let q = name.ends_with("self_attn.q_b_proj.weight") || name.ends_with("self_attn.q_proj.weight");
    let shared_key = name.ends_with("self_attn.kv_a_proj_with_mqa.weight");
    let data = if a.rope_interleave || !(q || shared_key) {
        data.to_vec()
    } else if q {
        permute_rotary(data, h, nope + rope, nope, rope, cols) // each head: nope rows, then rope rows
    } else {
        permute_rotary(data, 1, kv + rope, kv, rope, cols) // the latent rows, then the shared rope key
    };
    w.tensor(&g, shape, data);
    Ok(())
}

/// The tokenizer.json of a checkpoint (byte-level BPE, as moe trains them) as GGUF metadata:
/// tokens by id, their types (control for special added tokens), merges, and the
/// end-of-text token as BOS and EOS (no BOS is added).
fn gguf_tokenizer(w: &mut GgufWriter, tk: &serde_json::Value, vocab_size: usize) -> Result<()> {
    let bad = |what: &str| Error::Input(format!("tokenizer.json: {what}; a byte-level BPE written by moe is expected"));
    let model = &tk["model"];
    if model["type"] != "BPE" {
        return Err(bad("its model is not BPE"));
    }
    let mut tokens = vec![None; vocab_size];
    let mut types = vec![1i32; vocab_size];
    let vocab = model["vocab"].as_object().ok_or_else(|| bad("no model.vocab"))?;
    let entries = vocab.iter().map(|(t, id)| (t.as_str(), id, false));
    let added = tk["added_tokens"].as_array().into_iter().flatten();
    let added = added.map(|a| (a["content"].as_str().unwrap_or(""), &a["id"], a["special"] == true));
    for (text, id, special) in entries.chain(added) {
        let id = id
            .as_u64()
            .map(|i| i as usize)
            .filter(|&i| i < vocab_size)
            .ok_or_else(|| bad("a token id beyond the vocabulary"))?;
        tokens[id] = Some(text.to_string());
        if special {
            types[id] = 3; // control
        }
    }
    // ids the tokenizer never produces (the model's vocabulary may be larger): unused tokens
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = 5;
                format!("[PAD{i}]")
            })
        })
        .collect();
    let merges: Vec<String> = model["merges"]
        .as_array()
        .ok_or_else(|| bad("no model.merges"))?
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(p) => Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?)),
            _ => None,
        })
        .collect::<Option<_>>()
        .ok_or_else(|| bad("a merge that is neither \"a b\" nor [a, b]"))?;
    let eos = tokens.iter().position(|t| t == moe_engine::tokenizer::EOS);
    w.meta("tokenizer.ggml.model", Meta::Str("gpt2".into()));
    w.meta("tokenizer.ggml.pre", Meta::Str("gpt-2".into()));
    w.meta("tokenizer.ggml.tokens", Meta::Strs(tokens));
    w.meta("tokenizer.ggml.token_type", Meta::I32s(types));
    w.meta("tokenizer.ggml.merges", Meta::Strs(merges));
    if let Some(id) = eos {
        w.meta("tokenizer.ggml.bos_token_id", Meta::U32(id as u32));
        w.meta("tokenizer.ggml.eos_token_id", Meta::U32(id as u32));
    }
    w.meta("tokenizer.ggml.add_bos_token", Meta::Bool(false));
    Ok(())
}

/// Writes `ck` as a GGUF file at `out` (see the module). Returns the parameter count and the
/// GGUF architecture.
pub fn write_gguf(ck: &Checkpoint, out: &Path) -> Result<(usize, &'static str)> {
    let cfg = &ck.config;
    let form = hf_form(cfg, false);
    let renormalised = cfg.norm_topk_prob || cfg.router == moe_engine::config::RouterKind::TopkSoftmax;
    let all_moe = cfg.num_moe_layers() == cfg.num_hidden_layers;
    let arch = match form {
        _ if cfg.sliding_window > 0 => {
            Err("its sliding window is not written as GGUF yet; export a Hugging Face directory instead".into())
        }
        _ if cfg.clip_qkv > 0.0 => {
            Err("its clip_qkv is not written as GGUF yet; export a Hugging Face directory instead".into())
        }
        Ok(HfForm::DeepseekV3) if cfg.mla.is_some_and(|a| a.q_lora_rank == 0) && ![26, 27].contains(&cfg.num_hidden_layers) => Err(
            "it has no query rank (a plain q_proj), which llama.cpp's deepseek2 takes only at DeepSeek-V2-Lite's 26 or 27 layers; export a Hugging Face directory instead".into(),
        ),
        Ok(HfForm::DeepseekV3) => deepseek_rope(cfg).map(|_| "deepseek2"),
        _ if cfg.rope_scaling.is_some() => Err(
            "its RoPE scaling is not written as GGUF yet; export a Hugging Face directory (llama.cpp's convert_hf_to_gguf.py converts it)".into(),
        ),
        Ok(HfForm::Mixtral) => Ok("llama"),
        Ok(HfForm::Qwen2Moe) if !all_moe => {
            Err("it has dense layers, which llama.cpp's qwen2moe does not; export a Hugging Face directory instead".into())
        }
        Ok(HfForm::Qwen2Moe) if renormalised => {
            Err("llama.cpp's qwen2moe does not renormalise the top-k weights, and this model needs it with its shared expert or biases; export a Hugging Face directory instead".into())
        }
        Ok(HfForm::Qwen2Moe) => Ok("qwen2moe"),
        Ok(HfForm::Olmoe) if renormalised => {
            Err("llama.cpp's olmoe does not renormalise the top-k weights; train with norm_topk_prob false or export a Hugging Face directory".into())
        }
        Ok(HfForm::Olmoe) if cfg.num_key_value_heads != cfg.num_attention_heads => {
            Err("llama.cpp's olmoe has no grouped-query attention (its key norm spans the hidden width); export a Hugging Face directory instead".into())
        }
        Ok(HfForm::Olmoe) => Ok("olmoe"),
        Ok(HfForm::Qwen3Moe) if !all_moe => {
            Err("it has dense layers, which llama.cpp's qwen3moe does not; export a Hugging Face directory instead".into())
        }
        Ok(HfForm::Qwen3Moe) if !renormalised => {
            Err("llama.cpp's qwen3moe renormalises the top-k weights, and this model does not; export a Hugging Face directory instead".into())
        }
        Ok(HfForm::Qwen3Moe) => Ok("qwen3moe"),
        Ok(HfForm::Llama | HfForm::Qwen2) => Err(
            "dense models are not written as GGUF yet; export a Hugging Face directory (llama.cpp's convert_hf_to_gguf.py converts it)".into(),
        ),
        Ok(HfForm::GraniteMoe) if cfg.head_dim() * cfg.num_attention_heads != cfg.hidden_size => Err(
            "its heads are not hidden_size / heads wide, which llama.cpp's granitemoe assumes; export a Hugging Face directory instead".into(),
        ),
        Ok(HfForm::GraniteMoe) => Ok("granitemoe"),
        Ok(HfForm::Phimoe) => Err(
            "PhiMoE's form is not written as GGUF yet; export a Hugging Face directory (llama.cpp's convert_hf_to_gguf.py converts it)".into(),
        ),
        Ok(HfForm::GptOss) => Err(
            "gpt-oss's form is not written as GGUF yet; export a Hugging Face directory (llama.cpp's convert_hf_to_gguf.py converts it)".into(),
        ),
        Err(why) => Err(why),
    };
    let arch: &'static str = arch.map_err(|why: String| {
        Error::Input(format!("{}: cannot be written as a GGUF file: {why}", ck.dir.display()))
    })?;
    if out.exists() {
        return Err(Error::Input(format!("{} exists; choose another file name", out.display())));
    }
    let qwen2 = arch == "qwen2moe";
    let mut w = GgufWriter::default();
    w.meta("general.architecture", Meta::Str(arch.into()));
    w.meta("general.name", Meta::Str(format!("moe export of {}", ck.dir.display())));
    w.meta("general.file_type", Meta::U32(0)); // all f32
    let u = |x: usize| Meta::U32(x as u32);
    let shared = cfg.shared_expert_intermediate_size.max(1);
    let mut keys = vec![
        ("block_count", u(cfg.num_hidden_layers)),
        ("context_length", u(cfg.max_position_embeddings)),
        ("embedding_length", u(cfg.hidden_size)),
        ("feed_forward_length", u(cfg.moe_intermediate_size)),
        ("attention.head_count", u(cfg.num_attention_heads)),
        ("attention.head_count_kv", u(cfg.num_key_value_heads)),
        ("attention.layer_norm_rms_epsilon", Meta::F32(cfg.rms_norm_eps as f32)),
        ("rope.freq_base", Meta::F32(cfg.rope_theta as f32)),
        ("rope.dimension_count", u(cfg.head_dim())),
        ("expert_count", u(cfg.num_local_experts)),
        ("expert_used_count", u(cfg.num_experts_per_tok)),
        ("vocab_size", u(cfg.vocab_size)),
    ];
    if cfg.head_dim() * cfg.num_attention_heads != cfg.hidden_size {
        keys.push(("attention.key_length", u(cfg.head_dim())));
        keys.push(("attention.value_length", u(cfg.head_dim())));
    }
    if qwen2 || arch == "qwen3moe" {
        keys.push(("expert_feed_forward_length", u(cfg.moe_intermediate_size)));
    }
    if qwen2 {
        keys.push(("expert_shared_feed_forward_length", u(shared)));
    }
    if arch == "deepseek2" {
        deepseek_keys(cfg, &mut keys);
    }
    if arch == "granitemoe" {
        // as llama.cpp's converter names Granite's multipliers
        keys.push(("embedding_scale", Meta::F32(cfg.embedding_multiplier as f32)));
        keys.push(("attention.scale", Meta::F32(cfg.attention_scale() as f32)));
        keys.push(("residual_scale", Meta::F32(cfg.residual_multiplier as f32)));
        keys.push(("logit_scale", Meta::F32(cfg.logits_scaling as f32)));
    }
    for (key, v) in keys {
        w.meta(&format!("{arch}.{key}"), v);
    }
    let tk = ck.dir.join("tokenizer.json");
    if tk.is_file() {
        let text = std::fs::read(&tk).map_err(io(&tk))?;
        let json = serde_json::from_slice(&text).map_err(|e| Error::Input(format!("{}: {e}", tk.display())))?;
        gguf_tokenizer(&mut w, &json, cfg.vocab_size)?;
    }
    let layout = Layout::new(cfg);
    let c = cfg.hidden_size;
    for t in &layout.tensors {
        if arch == "deepseek2" {
            deepseek_tensor(&mut w, cfg, &t.name, &t.shape, t.span.of(&ck.params))?;
            continue;
        }
        let (name, heads) = gguf_name(cfg, &t.name, arch).ok_or_else(|| unnamed(&t.name))?;
        let mut data = match heads {
            Some(h) => permute_rope_rows(t.span.of(&ck.params), h, c),
            None => t.span.of(&ck.params).to_vec(),
        };
        let mut shape = t.shape.clone();
        if name.ends_with("ffn_down_shexp.weight") && !cfg.shared_expert_gate {
            data.iter_mut().for_each(|v| *v *= 2.0); // sigmoid(0) = 1/2 from the zero gate below
        }
        if name.ends_with("ffn_gate_inp_shexp.weight") {
            shape = vec![c]; // [1, C] in transformers, [C] in GGUF
        }
        w.tensor(&name, &shape, data);
        if qwen2 && name.ends_with("ffn_gate_inp.weight") {
            let blk = name.trim_end_matches("ffn_gate_inp.weight");
            if cfg.shared_expert_intermediate_size == 0 {
                w.tensor(&format!("{blk}ffn_gate_shexp.weight"), &[1, c], vec![0.0; c]);
                w.tensor(&format!("{blk}ffn_up_shexp.weight"), &[1, c], vec![0.0; c]);
                w.tensor(&format!("{blk}ffn_down_shexp.weight"), &[c, 1], vec![0.0; c]);
            }
            if !cfg.shared_expert_gate {
                w.tensor(&format!("{blk}ffn_gate_inp_shexp.weight"), &[c], vec![0.0; c]);
            }
        }
    }
    checkpoint::write_atomic(out, &w.bytes()).map_err(|e| Error::Input(format!("writing {}: {e}", out.display())))?;
    Ok((layout.total, arch))
}
