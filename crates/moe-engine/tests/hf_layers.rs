//! Parity of single MoE layers with Hugging Face transformers (fixtures by
//! `scripts/hf_fixtures.py`): DeepSeek-V3 (sigmoid scores, `e_score_correction_bias` for
//! selection only, group-limited top-k, `routed_scaling_factor`, normalised weights, a shared
//! expert) and Qwen2-MoE (softmax, `norm_topk_prob` false, shared expert with sigmoid gate).
//! Router logits, the chosen experts and their weights, the layer output and the gradients of
//! sum(output * r) into the input and every weight match to 1e-5.

use moe_engine::config::ModelConfig;
use moe_engine::ffn::{MlpGrads, MlpWeights};
use moe_engine::linear::{Lin, LinGrad};
use moe_engine::moe::router::{RouterGrads, RouterWeights};
use moe_engine::moe::shared::{SharedGrads, SharedWeights};
use moe_engine::moe::{moe_backward, moe_forward, MoeActs, MoeGrads, MoeSpec, MoeWeights};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn read(dir: &Path, file: &str) -> HashMap<String, Vec<f64>> {
    let bytes = std::fs::read(dir.join(file)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, t)| {
            let v = match t.dtype() {
                safetensors::Dtype::I64 => {
                    t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64).collect()
                }
                _ => t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
            };
            (name, v)
        })
        .collect()
}

fn close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    let err = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(err <= tol * scale.max(1.0), "{what}: max error {err:e} (scale {scale:e})");
}

fn check(kind: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf").join(format!("layer_{kind}"));
    let cfg: ModelConfig = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg.validate().unwrap();
    let w = read(&dir, "layer.safetensors");
    let r = read(&dir, "reference.safetensors");
    let (c, e, k) = (cfg.hidden_size, cfg.num_local_experts, cfg.num_experts_per_tok);
    let n = r["x"].len() / c;
    let spec = MoeSpec::new(&cfg, n, n);
    let get = |name: &str| w.get(name).map(|v| &v[..]);
    let weights = MoeWeights {
        router: RouterWeights {
            weight: Lin::from(&w["router.weight"][..]),
            bias: None,
            selection_bias: get("router.selection_bias"),
        },
        experts: MlpWeights::plain(&w["experts.gate_proj"], &w["experts.up_proj"], &w["experts.down_proj"]),
        shared: Some(SharedWeights {
            mlp: MlpWeights::plain(
                &w["shared_expert.gate_proj"],
                &w["shared_expert.up_proj"],
                &w["shared_expert.down_proj"],
            ),
            gate: get("shared_expert_gate"),
        }),
    };
    let mut a = MoeActs::<f64>::new(spec);
    let mut out = vec![0.0; n * c];
    moe_forward(&mut out, &r["x"], weights, &mut a, spec, None);
    close("router logits", &a.router.logits[..n * e], &r["router_logits"], 1e-5);
    // Chosen experts and weights, per token sorted by expert id.
    for t in 0..n {
        let mut ours: Vec<(u32, f64)> =
            (0..k).map(|j| (a.router.expert[t * k + j], a.router.weight[t * k + j])).collect();
        ours.sort_by_key(|p| p.0);
        let ids: Vec<u32> = ours.iter().map(|p| p.0).collect();
        let want_ids: Vec<u32> = r["topk_indices"][t * k..(t + 1) * k].iter().map(|&v| v as u32).collect();
        assert_eq!(ids, want_ids, "{kind}: experts of token {t}");
        let wts: Vec<f64> = ours.iter().map(|p| p.1).collect();
        close(&format!("{kind}: weights of token {t}"), &wts, &r["topk_weights"][t * k..(t + 1) * k], 1e-5);
    }
    close(&format!("{kind}: layer output"), &out, &r["output"], 1e-5);
    // Gradients of sum(out * r).
    let mut g: HashMap<String, Vec<f64>> = w.iter().map(|(k, v)| (k.clone(), vec![0.0; v.len()])).collect();
    let mut dx = vec![0.0; n * c];
    {
        let mut take = |name: &str| g.remove(name);
        let (mut rw, mut eg, mut eu, mut ed) = (
            take("router.weight").unwrap(),
            take("experts.gate_proj").unwrap(),
            take("experts.up_proj").unwrap(),
            take("experts.down_proj").unwrap(),
        );
        let (mut sg, mut su, mut sd) = (
            take("shared_expert.gate_proj").unwrap(),
            take("shared_expert.up_proj").unwrap(),
            take("shared_expert.down_proj").unwrap(),
        );
        let mut sgate = take("shared_expert_gate");
        let grads = MoeGrads {
            router: RouterGrads { weight: LinGrad::from(&mut rw[..]), bias: None },
            experts: MlpGrads::plain(&mut eg, &mut eu, &mut ed),
            shared: Some(SharedGrads { mlp: MlpGrads::plain(&mut sg, &mut su, &mut sd), gate: sgate.as_deref_mut() }),
        };
        let dp = vec![0.0; e];
        moe_backward(&mut dx, grads, &r["r"], &r["x"], weights, &mut a, spec, &dp, 0.0);
        for (name, v) in [
            ("router.weight", rw),
            ("experts.gate_proj", eg),
            ("experts.up_proj", eu),
            ("experts.down_proj", ed),
            ("shared_expert.gate_proj", sg),
            ("shared_expert.up_proj", su),
            ("shared_expert.down_proj", sd),
        ] {
            close(&format!("{kind}: gradient of {name}"), &v, &r[&format!("grad.{name}")], 1e-5);
        }
        if let Some(v) = sgate {
            close(&format!("{kind}: gradient of shared_expert_gate"), &v, &r["grad.shared_expert_gate"], 1e-5);
        }
    }
    close(&format!("{kind}: gradient of the input"), &dx, &r["grad.x"], 1e-5);
}

#[test]
fn deepseek_v3_layer_matches_transformers() {
    check("deepseek_v3");
}

#[test]
fn qwen2_moe_layer_matches_transformers() {
    check("qwen2_moe");
}
