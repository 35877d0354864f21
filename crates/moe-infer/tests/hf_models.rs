//! Every supported architecture against transformers: tiny random-weight checkpoints written by
//! `scripts/hf_checkpoints.py` (save_pretrained, some sharded, in f32/f16/bf16, fused and
//! per-expert layouts, MXFP4 gpt-oss). The logits of every prompt position must match
//! transformers' to 1e-4 (max abs), and greedy generation of 8 tokens must equal
//! transformers' `generate(do_sample=False)`.

use moe_infer::{Cache, Model};
use safetensors::SafeTensors;
use std::path::PathBuf;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

struct Reference(Vec<u8>);

impl Reference {
    fn load(name: &str) -> Self {
        Reference(std::fs::read(dir(name).join("reference.safetensors")).unwrap())
    }
    fn ids(&self, key: &str) -> Vec<u32> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        st.tensor(key)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
            .collect()
    }
    fn f32s(&self, key: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        st.tensor(key).unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }
}

fn check(name: &str) {
    let m = Model::load(&dir(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let r = Reference::load(name);
    let ids = r.ids("input_ids");
    let want = r.f32s("logits");
    let mut cache = Cache::new(&m.spec);
    let got = m.forward(&ids, &mut cache, true).unwrap();
    assert_eq!(got.len(), want.len(), "{name}: logits size");
    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(err < 1e-4, "{name}: logits differ from transformers by {err:e} (max abs)");

    // the second half of the prompt one token at a time through the cache (the decode path,
    // MLA's absorbed attention over the latent cache): the same logits
    let (v, half) = (m.spec.vocab, ids.len() / 2);
    let mut cache = Cache::new(&m.spec);
    m.forward(&ids[..half], &mut cache, false).unwrap();
    for (p, &id) in ids.iter().enumerate().skip(half) {
        let got = m.forward(&[id], &mut cache, false).unwrap();
        let err = got.iter().zip(&want[p * v..(p + 1) * v]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(err < 1e-4, "{name}: decode logits at position {p} differ from transformers by {err:e}");
    }

    // greedy: prefill the prompt, then one token at a time through the cache
    let mut cache = Cache::new(&m.spec);
    let mut logits = m.forward(&ids, &mut cache, false).unwrap();
    let mut out = vec![];
    for _ in 0..8 {
        let next = moe_engine::generate::argmax(&logits);
        out.push(next);
        logits = m.forward(&[next], &mut cache, false).unwrap();
    }
    assert_eq!(out, r.ids("greedy"), "{name}: greedy generation differs from transformers");
}

#[test]
fn mixtral_sharded_bf16() {
    check("mixtral");
}
/// A model trained and exported by moe (`scripts/export_check.py --fixture`), against
/// transformers' outputs on it.
#[test]
fn moe_export_as_loaded_by_transformers() {
    check("moe_export");
}
/// The same in Qwen2-MoE's form (a shared expert, a dense first layer, unnormalised weights).
#[test]
fn moe_export_qwen2_form_as_loaded_by_transformers() {
    check("moe_export_qwen2");
}
/// Qwen2-MoE's form with Switch routing, a gated shared expert and query/key/value biases.
#[test]
fn moe_export_qwen2_switch_biases_as_loaded_by_transformers() {
    check("moe_export_qwen2_switch");
}
/// OLMoE's form (query/key norms over the projections) and Qwen3-MoE's (per head, wide heads).
#[test]
fn moe_export_olmoe_qwen3_and_granite_forms_as_loaded_by_transformers() {
    check("moe_export_olmoe");
    check("moe_export_qwen3");
    check("moe_export_granite");
}

#[test]
fn moe_export_deepseek_v3_form_as_loaded_by_transformers() {
    // latent attention, sigmoid group-limited routing with a trained selection bias, shared experts
    check("moe_export_deepseek");
}

#[test]
fn moe_export_gpt_oss_form_as_loaded_by_transformers() {
    // sinks, alternating sliding windows, biases everywhere, the clamped SwiGLU; plain RoPE
    // written explicitly (gpt-oss's class would apply its YaRN default)
    check("moe_export_gpt_oss");
}

#[test]
fn moe_export_phimoe_form_as_loaded_by_transformers() {
    // the sparsemixer router, LayerNorms, biases on attention and the LM head
    check("moe_export_phimoe");
    check("moe_export_qwen3_moe_only");
}
#[test]
fn mixtral_fused_experts() {
    check("mixtral_fused");
}
#[test]
fn qwen2_moe_f16_shared_expert_dense_layer() {
    check("qwen2_moe");
}
#[test]
fn qwen3_moe_tied_head_dim() {
    check("qwen3_moe");
}
#[test]
fn olmoe_qk_norm_clip() {
    check("olmoe");
}
#[test]
fn deepseek_v3_mla_group_routing_yarn() {
    check("deepseek_v3");
    // no RoPE scaling, a plain q_proj, a config eps (1e-5) that the latent norms do not use
    check("deepseek_v3_plain");
}

/// MLA caches one latent row per position and layer: the compressed KV and the rope key.
#[test]
fn deepseek_v3_caches_latents_not_expanded_heads() {
    let m = Model::load(&dir("deepseek_v3")).unwrap();
    let mla = m.spec.mla.unwrap();
    let per_token = (mla.kv_lora + mla.rope) * m.spec.layers * 4;
    assert_eq!(Cache::bytes_per_token(&m.spec), per_token);
    let mut cache = Cache::new(&m.spec);
    m.forward(&[3, 1, 4, 1, 5], &mut cache, false).unwrap();
    m.forward(&[9], &mut cache, false).unwrap();
    assert_eq!(cache.bytes(), 6 * per_token);
    // The expanded cache would hold H x (nope + rope + v) floats per position and layer.
    let expanded = m.spec.heads * (mla.nope + mla.rope + mla.v) * m.spec.layers * 4;
    assert!(per_token < expanded);
}
#[test]
fn granitemoe_multipliers() {
    check("granitemoe");
}
#[test]
fn phimoe_sparsemixer_layernorm_longrope() {
    check("phimoe");
}
#[test]
fn gpt_oss_sinks_window_yarn_bf16() {
    check("gpt_oss");
}
#[test]
fn gpt_oss_mxfp4_experts() {
    check("gpt_oss_mxfp4");
}
