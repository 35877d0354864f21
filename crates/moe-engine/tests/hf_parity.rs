//! Parity with Hugging Face transformers: tiny random MixtralForCausalLM, LlamaForCausalLM,
//! Qwen2MoeForCausalLM (shared expert with its gate, q/k/v biases), OlmoeForCausalLM (q/k norms
//! over the projections), Qwen3MoeForCausalLM (per-head q/k norms, wide heads), GraniteMoeForCausalLM
//! (multipliers, top-k softmax router), DeepseekV3ForCausalLM (latent attention, sigmoid
//! group-limited routing with a selection bias, shared experts, a dense first layer),
//! GptOssForCausalLM (sinks, alternating sliding windows, biases, clamped SwiGLU, YaRN),
//! PhimoeForCausalLM in eval mode (LayerNorm, biases, the sparsemixer) and the Llama with PEFT's
//! LoRA adapters on every linear layer, written by `scripts/hf_fixtures.py` (weights, inputs,
//! and transformers' logits, loss and every trained parameter's gradient, float64). Our model, in f32 and in f64, must match logits, loss
//! and all gradients to 1e-4 relative (max abs error over a tensor / max abs of the reference).
//!
//! Balancing-loss normalisation: transformers' `load_balancing_loss_func` concatenates the router
//! logits of all layers, takes f_e = (top-k assignments to e) / rows (so f sums to k) and P_e = mean
//! softmax probability, and returns E * sum_e f_e P_e: one loss pooled over layers. Ours with
//! `aux_loss_scope: global` is the same formula (`moe::losses`, `Model::aux_losses`); `layer`
//! would instead average per-layer losses. The fixture's loss is
//! cross_entropy + router_aux_loss_coef * aux, and Mixtral has no z-loss (coefficient 0 here).

use moe_engine::checkpoint;
use moe_engine::model::{Acts, KvCache, Model};
use moe_kernels::Float;
use safetensors::SafeTensors;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf").join(name)
}

struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    fn load(name: &str) -> Self {
        Reference { bytes: std::fs::read(fixture(name).join("reference.safetensors")).unwrap() }
    }
    fn f32s(&self, key: &str) -> Vec<f64> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(key).unwrap_or_else(|_| panic!("reference has no {key}"));
        t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect()
    }
    fn ids(&self, key: &str) -> Vec<u32> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(key).unwrap();
        t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect()
    }
}

/// max |a - b| / max |b| over a tensor.
fn rel_err<T: Float>(got: &[T], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    got.iter().zip(want).map(|(a, b)| (a.to_f64() - b).abs()).fold(0.0, f64::max) / scale
}

fn check<T: Float>(name: &str) {
    let ck = checkpoint::load(&fixture(name)).unwrap();
    let r = Reference::load(name);
    let (x, y) = (r.ids("input_ids"), r.ids("targets"));
    let (b, t) = (2, x.len() / 2);
    let m = Model::<T>::new(ck.config.clone()).unwrap();
    let p: Vec<T> = ck.params.iter().map(|&v| T::from_f64(v as f64)).collect();
    let mut a = Acts::new(&m.cfg, b, t, t);
    let mut kv = KvCache::new(&m.cfg, b, t);
    m.forward(&p, &mut a, &mut kv, &x, 0);
    let v = m.cfg.vocab_size;
    let e = rel_err(&a.logits[..b * t * v], &r.f32s("logits"));
    assert!(e < 1e-4, "{name}: logits differ by {e:e}");
    let parts = m.loss(&mut a, &y);
    // DeepSeek-V3 has no balancing loss in transformers (the fixture's coefficient is 0)
    let aux = (m.cfg.router_aux_loss_coef > 0.0).then_some(("aux", parts.aux));
    for (what, got) in [("ce", parts.ce), ("loss", parts.total)].into_iter().chain(aux) {
        let want = r.f32s(what)[0];
        assert!((got - want).abs() <= 1e-4 * want.abs().max(1e-6), "{name}: {what} {got} vs transformers {want}");
    }
    let mut g = vec![T::ZERO; p.len()];
    m.backward(&p, &mut g, &mut a, &kv, &x, &y);
    for tsr in &m.layout.tensors {
        if !tsr.trainable {
            // a frozen base under LoRA (PEFT gives it no gradient)
            assert!(tsr.span.of(&g).iter().all(|v| v.to_f64() == 0.0), "{name}: frozen {} has a gradient", tsr.name);
            continue;
        }
        let e = rel_err(tsr.span.of(&g), &r.f32s(&format!("grad.{}", tsr.name)));
        assert!(e < 1e-4, "{name}: gradient of {} differs by {e:e}", tsr.name);
    }
}

#[test]
fn mixtral_logits_loss_and_gradients_match_transformers_f32() {
    check::<f32>("mixtral");
}

#[test]
fn mixtral_logits_loss_and_gradients_match_transformers_f64() {
    check::<f64>("mixtral");
}

#[test]
fn llama_logits_loss_and_gradients_match_transformers() {
    check::<f32>("llama");
    check::<f64>("llama");
}

#[test]
fn qwen2_moe_logits_loss_and_gradients_match_transformers() {
    check::<f32>("qwen2_moe");
    check::<f64>("qwen2_moe");
}

#[test]
fn llama_with_peft_lora_adapters_matches_f32() {
    check::<f32>("llama_lora");
}

#[test]
fn llama_with_peft_lora_adapters_matches_f64() {
    check::<f64>("llama_lora");
}

#[test]
fn olmoe_logits_loss_and_gradients_match_transformers() {
    check::<f32>("olmoe");
    check::<f64>("olmoe");
}

#[test]
fn qwen3_moe_logits_loss_and_gradients_match_transformers() {
    check::<f32>("qwen3_moe");
    check::<f64>("qwen3_moe");
}

#[test]
fn granitemoe_logits_loss_and_gradients_match_transformers() {
    check::<f32>("granitemoe");
    check::<f64>("granitemoe");
}

#[test]
fn deepseek_v3_latent_attention_logits_loss_and_gradients_match_transformers() {
    check::<f64>("deepseek_v3");
    check::<f32>("deepseek_v3");
}

#[test]
fn gpt_oss_sinks_windows_biases_and_clamped_swiglu_match_transformers() {
    check::<f64>("gpt_oss");
    check::<f32>("gpt_oss");
}

#[test]
fn phimoe_layernorm_biases_and_sparsemixer_match_transformers() {
    check::<f64>("phimoe");
    check::<f32>("phimoe");
}
