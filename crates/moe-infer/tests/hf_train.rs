//! Hugging Face checkpoints read by the training engine: dense Llama (bf16), Mistral (f16,
//! tied embeddings, sliding window) and Qwen2 (query/key/value biases, tied), OLMoE (q/k norms,
//! bf16), Qwen3-MoE (per-head q/k norms, heads wider than hidden / heads, tied), GraniteMoE
//! (embedding, attention, residual and logit multipliers, top-k softmax router), Mixtral (sharded bf16, and fused experts), and moe's own
//! Mixtral, Qwen2-MoE, Llama and Qwen2 exports. The training engine's forward gives transformers' logits
//! (1e-4); the MoE upcycled from a dense one (every expert a copy of the MLP, renormalised
//! top-2) computes the same function at step 0; families with blocks the training model lacks
//! are refused with the reason.

use moe_engine::compare::upcycle::upcycle;
use moe_engine::config::ModelConfig;
use moe_engine::model::{Acts, KvCache, Model};
use moe_infer::hf_train::read_checkpoint;
use safetensors::SafeTensors;
use std::path::PathBuf;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn logits(cfg: &ModelConfig, params: &[f32], ids: &[u32]) -> Vec<f32> {
    let m = Model::<f32>::new(cfg.clone()).unwrap();
    let mut a = Acts::new(&m.cfg, 1, ids.len(), ids.len());
    let mut kv = KvCache::new(&m.cfg, 1, ids.len());
    m.forward(params, &mut a, &mut kv, ids, 0);
    a.logits[..ids.len() * cfg.vocab_size].to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn checkpoints_give_transformers_logits_and_dense_ones_upcycle_exactly() {
    for name in [
        "llama_dense",
        "llama3_dense",
        "mistral_dense",
        "qwen2_dense",
        "mixtral",
        "mixtral_fused",
        "moe_export",
        "moe_export_qwen2",
        "qwen2_moe",
        "olmoe",
        "olmoe_noclip",
        "qwen3_moe",
        "granitemoe",
        "deepseek_v3_plain",
        "deepseek_v3",
        "gpt_oss",
        "gpt_oss_mxfp4",
        "phimoe",
        "moe_export_deepseek",
        "moe_export_gpt_oss",
        "moe_export_phimoe",
        "moe_export_llama",
        "moe_export_qwen2_dense",
    ] {
        let d = read_checkpoint(&dir(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(d.tokenizer.is_some());
        let bytes = std::fs::read(dir(name).join("reference.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let ids: Vec<u32> = st
            .tensor("input_ids")
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
            .collect();
        let want: Vec<f32> = st
            .tensor("logits")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let got = logits(&d.config, &d.params, &ids);
        let err = max_diff(&got, &want);
        assert!(err < 1e-4, "{name}: logits differ from transformers by {err:e}");
        if d.config.num_local_experts > 0 {
            continue;
        }

        let moe = ModelConfig {
            num_local_experts: 4,
            num_experts_per_tok: 2,
            moe_intermediate_size: d.config.intermediate_size,
            norm_topk_prob: true,
            ..d.config.clone()
        };
        let p = upcycle(&d.config, &d.params, &moe, 1, 1e-3, 7).unwrap();
        let err = max_diff(&logits(&moe, &p, &ids), &got);
        assert!(err < 1e-4, "{name}: the upcycled MoE differs from the dense model by {err:e} at step 0");
    }
}

/// Every family's fixture is read (above); what the training model still lacks is refused with
/// the reason: here a partial rotary dimension, in a copy of the OLMoE fixture.
#[test]
fn what_a_family_checkpoint_needs_beyond_the_training_model_is_refused() {
    let d = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(dir("olmoe")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, d.path().join(f.file_name().unwrap())).unwrap();
    }
    let mut c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("config.json")).unwrap()).unwrap();
    c["partial_rotary_factor"] = serde_json::json!(0.5);
    std::fs::write(d.path().join("config.json"), c.to_string()).unwrap();
    let e = read_checkpoint(d.path()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("partial or interleaved RoPE"), "{e}");
}

#[test]
fn what_the_training_model_cannot_express_is_refused() {
    let base: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir("llama_dense").join("config.json")).unwrap()).unwrap();
    let path = std::path::Path::new("config.json");
    for (key, value, says) in [
        ("attention_bias", serde_json::json!(true), "no biases"),
        ("rope_parameters", serde_json::json!({"rope_type": "llama3", "rope_theta": 5e5}), "original_max_position"),
        (
            "rope_parameters",
            serde_json::json!({"rope_type": "longrope", "rope_theta": 1e4, "original_max_position_embeddings": 16,
                "short_factor": [1.0, 1.0, 1.0, 1.0], "long_factor": [2.0, 2.0, 2.0, 2.0]}),
            "LongRoPE switches its schedule past",
        ),
        ("architectures", serde_json::json!(["Qwen3ForCausalLM"]), "LlamaForCausalLM"),
    ] {
        let mut c = base.clone();
        c[key] = value;
        let e = moe_infer::hf_train::dense_config(&c, path).expect_err(key).to_string();
        assert!(e.contains(says), "{key}: {e}");
    }
}
