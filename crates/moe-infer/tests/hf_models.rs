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
