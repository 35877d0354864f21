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
//! `attn_{q,k}_norm`.

use crate::error::{io, Error, Result};
use crate::from_moe::{hf_form, HfForm};
use crate::gguf_write::{GgufWriter, Meta};
use moe_engine::checkpoint::{self, Checkpoint};
use moe_engine::config::ModelConfig;
use moe_engine::params::Layout;
use std::path::Path;

/// The GGUF name of tensor `name` of our layout in GGUF architecture `arch` (the reader's table
/// inverted; our router is the hub's `mlp.gate`), and the head count its rows are permuted over
/// (the `llama` architecture's queries and keys), if any.
fn gguf_name(cfg: &ModelConfig, name: &str, arch: &str) -> Option<(String, Option<usize>)> {
    let hf = name.replace(".mlp.router.weight", ".mlp.gate.weight");
    let g = crate::gguf_model::gguf_name(arch, &hf)?;
    let heads = match g.rsplit('.').nth(1) {
        Some("attn_q") if arch == "llama" => Some(cfg.num_attention_heads),
        Some("attn_k") if arch == "llama" => Some(cfg.num_key_value_heads),
        _ => None,
    };
    Some((g, heads))
}

/// Query or key rows [heads * d, C] reordered as llama.cpp's converter does, so that its RoPE
/// over adjacent pairs (2i, 2i+1) computes what ours over (i, i + d/2) does: within a head, row
/// 2i + j takes row j * d/2 + i.
fn permute_rope_rows(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let d = w.len() / cols / heads;
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let (to, from) = (h * d + 2 * i + j, h * d + j * d / 2 + i);
                out[to * cols..(to + 1) * cols].copy_from_slice(&w[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
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
        Ok(HfForm::GraniteMoe) => {
            Err("Granite's multipliers are not written as GGUF yet; export a Hugging Face directory instead".into())
        }
        Ok(HfForm::Phimoe) => Err(
            "PhiMoE's form is not written as GGUF yet; export a Hugging Face directory (llama.cpp's convert_hf_to_gguf.py converts it)".into(),
        ),
        Ok(HfForm::GptOss) => Err(
            "gpt-oss's form is not written as GGUF yet; export a Hugging Face directory (llama.cpp's convert_hf_to_gguf.py converts it)".into(),
        ),
        Ok(HfForm::DeepseekV3) => Err(
            "DeepSeek-V3's form is not written as GGUF yet; export a Hugging Face directory (llama.cpp's convert_hf_to_gguf.py converts it)".into(),
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
        let (name, heads) = gguf_name(cfg, &t.name, arch)
            .ok_or_else(|| Error::Input(format!("tensor {} has no GGUF name; report this as a bug", t.name)))?;
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
