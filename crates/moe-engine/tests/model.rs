//! Whole model: every parameter's gradient (total loss with balancing and z-losses) against
//! finite differences in f64, dense and MoE layers mixed, both balancing scopes; KV-cache
//! decoding against recomputing the full sequence.

use moe_engine::config::{BalanceScope, ModelConfig};
use moe_engine::model::{Acts, KvCache, Model};
use moe_engine::rng::Rng;

fn tokens(seed: u64, n: usize, v: usize) -> Vec<u32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.below(v) as u32).collect()
}

fn total_loss(m: &Model<f64>, p: &[f64], b: usize, t: usize, x: &[u32], y: &[u32]) -> f64 {
    let mut a = Acts::new(&m.cfg, b, t, t);
    let mut kv = KvCache::new(&m.cfg, b, t);
    m.forward(p, &mut a, &mut kv, x, 0);
    m.loss(&mut a, y).total
}

fn check_model(cfg: ModelConfig, seed: u64) {
    let (b, t) = (2, 5);
    let m = Model::<f64>::new(cfg).unwrap();
    // Larger weights than training init so every path carries a visible gradient.
    let mut p: Vec<f64> = m.layout.init(seed);
    let mut rng = Rng::new(seed + 1);
    p.iter_mut().for_each(|v| *v = *v * 4.0 + if *v == 1.0 { rng.normal() * 0.1 } else { 0.0 });
    // Projection biases start at zero: random here, so that the forward adds something.
    let biased = |n: &str| {
        n.ends_with("_proj.bias")
            || n.ends_with("_proj_bias")
            || n.ends_with("layernorm.bias")
            || n.ends_with("lm_head.bias")
            || n == "model.norm.bias"
    };
    for t in m.layout.tensors.iter().filter(|t| biased(&t.name)) {
        t.span.of_mut(&mut p).iter_mut().for_each(|v| *v = rng.normal() * 0.3);
    }
    let v = m.cfg.vocab_size;
    let (x, y) = (tokens(seed + 2, b * t, v), tokens(seed + 3, b * t, v));
    let mut a = Acts::new(&m.cfg, b, t, t);
    let mut kv = KvCache::new(&m.cfg, b, t);
    m.forward(&p, &mut a, &mut kv, &x, 0);
    let parts = m.loss(&mut a, &y);
    if m.cfg.num_local_experts > 0 {
        assert!(parts.aux > 0.0 && parts.z > 0.0, "MoE losses are active: {parts:?}");
    }
    let mut g = vec![0.0; p.len()];
    m.backward(&p, &mut g, &mut a, &kv, &x, &y);
    let h = 1e-6;
    let mut pick = Rng::new(seed + 4);
    for tsr in &m.layout.tensors {
        let len = tsr.span.len;
        let idx: Vec<usize> = if len <= 12 { (0..len).collect() } else { (0..12).map(|_| pick.below(len)).collect() };
        for i in idx {
            let j = tsr.span.off + i;
            let orig = p[j];
            p[j] = orig + h;
            let lp = total_loss(&m, &p, b, t, &x, &y);
            p[j] = orig - h;
            let lm = total_loss(&m, &p, b, t, &x, &y);
            p[j] = orig;
            let num = (lp - lm) / (2.0 * h);
            let tol = 1e-5 * (1.0 + num.abs());
            assert!((num - g[j]).abs() < tol, "{}[{i}]: analytic {} numeric {num}", tsr.name, g[j]);
        }
    }
}

fn mixed_config(scope: BalanceScope) -> ModelConfig {
    ModelConfig {
        num_hidden_layers: 3,
        first_k_dense_replace: 1,
        aux_loss_scope: scope,
        router_aux_loss_coef: 0.1,
        router_z_loss_coef: 0.05,
        ..ModelConfig::tiny()
    }
}

#[test]
fn whole_model_gradients_global_balancing() {
    check_model(mixed_config(BalanceScope::Global), 11);
}

#[test]
fn whole_model_gradients_per_layer_balancing_unnormalised_topk() {
    check_model(ModelConfig { norm_topk_prob: false, ..mixed_config(BalanceScope::Layer) }, 12);
}

#[test]
fn whole_model_gradients_sequence_balancing_deepseek_style() {
    use moe_engine::config::RouterKind;
    let cfg = ModelConfig {
        router: RouterKind::SigmoidGroup,
        num_local_experts: 4,
        n_group: 2,
        topk_group: 1,
        routed_scaling_factor: 1.5,
        shared_expert_intermediate_size: 8,
        shared_expert_gate: true,
        router_jitter_noise: 0.0,
        ..mixed_config(BalanceScope::Sequence)
    };
    check_model(cfg, 14);
}

#[test]
fn dense_model_gradients() {
    check_model(ModelConfig { num_local_experts: 0, ..ModelConfig::tiny() }, 13);
}

#[test]
fn query_key_norm_gradients() {
    use moe_engine::config::QkNorm;
    check_model(ModelConfig { num_local_experts: 0, qk_norm: QkNorm::PerHead, ..ModelConfig::tiny() }, 17);
    check_model(ModelConfig { qk_norm: QkNorm::Whole, qkv_bias: true, ..mixed_config(BalanceScope::Layer) }, 18);
}

#[test]
fn wide_heads_gradients() {
    // Qwen3's form: heads wider than hidden / heads (4 heads of 8 at width 16), per-head q/k norms
    use moe_engine::config::QkNorm;
    check_model(ModelConfig { head_dim: 8, qk_norm: QkNorm::PerHead, ..mixed_config(BalanceScope::Global) }, 19);
}

#[test]
fn query_key_value_bias_gradients() {
    check_model(ModelConfig { num_local_experts: 0, qkv_bias: true, ..ModelConfig::tiny() }, 15);
    check_model(ModelConfig { qkv_bias: true, ..mixed_config(BalanceScope::Layer) }, 16);
}

/// Prefilling 4 tokens and decoding the rest one at a time through the KV cache gives the logits
/// of the full pass over all 9 (sinks, when the model has them, drawn at random).
fn check_cached_decoding(cfg: ModelConfig) {
    let m = Model::<f32>::new(cfg).unwrap();
    let mut p: Vec<f32> = m.layout.init(5);
    let mut rng = Rng::new(9);
    for t in m.layout.tensors.iter().filter(|t| t.name.ends_with("sinks")) {
        t.span.of_mut(&mut p).iter_mut().for_each(|v| *v = rng.normal() as f32);
    }
    let (t, v) = (9, m.cfg.vocab_size);
    let x = tokens(6, t, v);
    let mut full = Acts::new(&m.cfg, 1, t, t);
    let mut kv = KvCache::new(&m.cfg, 1, t);
    m.forward(&p, &mut full, &mut kv, &x, 0);
    let cap = m.cfg.max_position_embeddings;
    let (mut a, mut cache) = (Acts::new(&m.cfg, 1, cap, cap), KvCache::new(&m.cfg, 1, cap));
    m.forward(&p, &mut a, &mut cache, &x[..4], 0);
    let mut got: Vec<f32> = a.logits[..4 * v].to_vec();
    for pos in 4..t {
        m.forward(&p, &mut a, &mut cache, &x[pos..pos + 1], pos);
        got.extend_from_slice(&a.logits[..v]);
    }
    let err = got.iter().zip(&full.logits[..t * v]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(err < 1e-5, "cached decoding differs from the full pass by {err}");
}

#[test]
fn kv_cache_decoding_equals_full_recompute() {
    check_cached_decoding(ModelConfig::tiny());
}

/// Targets of IGNORE (prompt tokens in chat fine-tuning) do not count: the loss is the mean over
/// the others, and their positions give no gradient through the logits.
#[test]
fn ignored_targets_do_not_count() {
    use moe_kernels::cross_entropy::IGNORE;
    let (b, t) = (2, 5);
    let m = Model::<f64>::new(ModelConfig { num_local_experts: 0, ..ModelConfig::tiny() }).unwrap();
    let p: Vec<f64> = m.layout.init(3);
    let v = m.cfg.vocab_size;
    let (x, y) = (tokens(5, b * t, v), tokens(6, b * t, v));
    let mut a = Acts::new(&m.cfg, b, t, t);
    let mut kv = KvCache::new(&m.cfg, b, t);
    m.forward(&p, &mut a, &mut kv, &x, 0);
    m.loss(&mut a, &y);
    let per: Vec<f64> = a.losses[..b * t].to_vec();
    let masked: Vec<u32> = y.iter().enumerate().map(|(i, &tg)| if i % 3 == 0 { IGNORE } else { tg }).collect();
    let got = m.loss(&mut a, &masked).ce;
    let kept: Vec<f64> = per.iter().enumerate().filter(|(i, _)| i % 3 != 0).map(|(_, &l)| l).collect();
    let want = kept.iter().sum::<f64>() / kept.len() as f64;
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    // finite differences of the masked loss on a few parameters
    let mut g = vec![0.0; p.len()];
    m.backward(&p, &mut g, &mut a, &kv, &x, &masked);
    let total = |q: &[f64]| {
        let mut a = Acts::new(&m.cfg, b, t, t);
        let mut kv = KvCache::new(&m.cfg, b, t);
        m.forward(q, &mut a, &mut kv, &x, 0);
        m.loss(&mut a, &masked).total
    };
    let mut q = p.clone();
    for j in [m.layout.lm_head.off + 7, m.layout.embed.off + 40, m.layout.norm.off + 1] {
        let h = 1e-6;
        q[j] = p[j] + h;
        let lp = total(&q);
        q[j] = p[j] - h;
        let lm = total(&q);
        q[j] = p[j];
        let num = (lp - lm) / (2.0 * h);
        assert!((num - g[j]).abs() < 1e-6 * (1.0 + num.abs()), "param {j}: analytic {} numeric {num}", g[j]);
    }
}

/// Activation recomputation (`Acts::recomputing`: one set of layer buffers per kind, each
/// layer's forward run again in the backward) gives the same loss and gradients bit for bit:
/// dense and MoE layers, router jitter, capacity drops, a shared expert, q/k norms.
#[test]
fn recomputation_gives_the_same_gradients() {
    let cfg = ModelConfig {
        router_jitter_noise: 0.1,
        capacity_factor: 1.0,
        shared_expert_intermediate_size: 8,
        qk_norm: moe_engine::config::QkNorm::PerHead,
        ..mixed_config(BalanceScope::Layer)
    };
    let m = Model::<f32>::new(cfg).unwrap();
    let p: Vec<f32> = m.layout.init(5);
    let (b, t) = (2, 8);
    let v = m.cfg.vocab_size;
    let (x, y) = (tokens(6, b * t, v), tokens(7, b * t, v));
    let run = |mut a: Acts<f32>| {
        let mut kv = KvCache::new(&m.cfg, b, t);
        a.noise_seed = Some(42);
        m.forward(&p, &mut a, &mut kv, &x, 0);
        let loss = m.loss(&mut a, &y).total;
        let mut g = vec![0.0f32; p.len()];
        m.backward(&p, &mut g, &mut a, &kv, &x, &y);
        let dropped: usize = a.moe_stats().iter().map(|s| s.dropped).sum();
        (loss, g, dropped)
    };
    let (full, re) = (run(Acts::new(&m.cfg, b, t, t)), run(Acts::recomputing(&m.cfg, b, t, t)));
    assert!(full.2 > 0, "capacity drops some assignments");
    assert_eq!(full.0, re.0);
    assert!(full.1 == re.1, "recomputed gradients differ");
    assert!(Acts::<f32>::recomputing(&m.cfg, b, t, t).layers.len() == 2);
}

#[test]
fn granite_multipliers_gradients() {
    // embedding, attention, residual multipliers and the logits' divisor (GraniteMoE), with its
    // top-k-then-softmax router
    let cfg = ModelConfig {
        embedding_multiplier: 3.0,
        attention_multiplier: 0.2,
        residual_multiplier: 0.4,
        logits_scaling: 2.5,
        router: moe_engine::config::RouterKind::TopkSoftmax,
        ..mixed_config(BalanceScope::Global)
    };
    check_model(cfg, 31);
}

fn mla(q_lora_rank: usize, rope_interleave: bool) -> moe_engine::config::MlaConfig {
    moe_engine::config::MlaConfig {
        q_lora_rank,
        kv_lora_rank: 6,
        qk_nope_head_dim: 4,
        qk_rope_head_dim: 4,
        v_head_dim: 3,
        rope_interleave,
    }
}

#[test]
fn latent_attention_gradients() {
    // DeepSeek's MLA: with a query rank and interleaved RoPE, and with a plain q_proj and
    // rotate-half RoPE (value heads narrower than query/key heads in both)
    check_model(ModelConfig { mla: Some(mla(5, true)), ..mixed_config(BalanceScope::Global) }, 41);
    check_model(ModelConfig { num_local_experts: 0, mla: Some(mla(0, false)), ..ModelConfig::tiny() }, 42);
}

#[test]
fn latent_attention_kv_cache_decoding_equals_full_recompute() {
    check_cached_decoding(ModelConfig { mla: Some(mla(5, true)), ..ModelConfig::tiny() });
}

#[test]
fn scaled_rope_gradients() {
    // Llama 3's and YaRN's schedules (scaled frequencies, and YaRN's cos/sin factor); latent
    // attention with an attention scale of its own (DeepSeek's YaRN mscale)
    let llama3 = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 4});
    let yarn = serde_json::json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4,
        "mscale": 1.0, "mscale_all_dim": 0.5});
    check_model(ModelConfig { num_local_experts: 0, rope_scaling: Some(llama3), ..ModelConfig::tiny() }, 51);
    let mla = ModelConfig {
        mla: Some(mla(5, true)),
        attention_multiplier: 0.4,
        rope_scaling: Some(yarn),
        ..mixed_config(BalanceScope::Global)
    };
    check_model(mla, 52);
}

fn gpt_oss_like() -> ModelConfig {
    use moe_engine::config::{LayerType, RouterKind};
    ModelConfig {
        sliding_window: 3,
        layer_types: vec![LayerType::SlidingAttention, LayerType::FullAttention, LayerType::SlidingAttention],
        attention_sinks: true,
        o_proj_bias: true,
        qkv_bias: true,
        router: RouterKind::TopkSoftmax,
        router_bias: true,
        ..mixed_config(BalanceScope::Global)
    }
}

#[test]
fn sliding_window_sink_and_output_bias_gradients() {
    // gpt-oss's attention: windows in alternate layers, a learned sink per head, biases on every
    // projection; its router (bias, softmax over the top-k logits)
    check_model(gpt_oss_like(), 61);
}

#[test]
fn expert_bias_and_clamped_swiglu_gradients() {
    // gpt-oss's experts: biases on the three projections, the clamped SwiGLU (a limit low enough
    // for the model's values to reach it)
    check_model(ModelConfig { expert_bias: true, swiglu_limit: 0.6, ..gpt_oss_like() }, 62);
}

#[test]
fn sliding_window_kv_cache_decoding_equals_full_recompute() {
    check_cached_decoding(ModelConfig { max_position_embeddings: 16, ..gpt_oss_like() });
}

#[test]
fn layer_norm_and_lm_head_bias_gradients() {
    // PhiMoE's LayerNorms (weights and biases) and LM-head bias, with its attention biases
    let cfg = ModelConfig {
        layer_norm: true,
        lm_head_bias: true,
        qkv_bias: true,
        o_proj_bias: true,
        ..mixed_config(BalanceScope::Global)
    };
    check_model(cfg, 71);
}

#[test]
fn sparse_mixer_router_gradients() {
    // PhiMoE's router as transformers runs it at inference, with thresholds that keep a few
    // experts in each softmax (and LayerNorm, biases: the whole PhiMoE block)
    use moe_engine::config::RouterKind;
    let phimoe = ModelConfig {
        router: RouterKind::SparseMixer,
        sparse_mixer_eps: 0.4,
        layer_norm: true,
        lm_head_bias: true,
        qkv_bias: true,
        o_proj_bias: true,
        ..mixed_config(BalanceScope::Global)
    };
    check_model(phimoe, 81);
}

#[test]
fn clipped_qkv_gradients() {
    // OLMoE's clamp of q, k and v after its query/key norms, low enough to clamp some values
    use moe_engine::config::QkNorm;
    let olmoe = ModelConfig { qk_norm: QkNorm::Whole, clip_qkv: 0.9, ..mixed_config(BalanceScope::Global) };
    check_model(olmoe, 91);
}
