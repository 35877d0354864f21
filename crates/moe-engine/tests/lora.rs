//! LoRA: the adapters' gradients against finite differences of the whole model's loss (every
//! target: attention, routed experts, router, dense MLP and shared expert), the frozen base
//! getting no gradient, zero adapters computing the base model exactly, merging adapters into
//! the weights keeping the model's function, and a base packed in bf16 or Q8_0 computing what
//! the same weights in f32 compute.

use moe_engine::config::ModelConfig;
use moe_engine::lora::{merge_model, LoraConfig, LoraTarget};
use moe_engine::model::{Acts, KvCache, Model};
use moe_engine::packed::{pack_base, BaseFormat, PackedBase};
use moe_engine::rng::Rng;

fn tokens(seed: u64, n: usize, v: usize) -> Vec<u32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.below(v) as u32).collect()
}

/// Three layers (the first dense), a gated shared expert, q/k/v biases, with adapters of rank 3
/// on `targets`.
fn config(targets: &[LoraTarget]) -> ModelConfig {
    ModelConfig {
        num_hidden_layers: 3,
        first_k_dense_replace: 1,
        router_aux_loss_coef: 0.1,
        router_z_loss_coef: 0.05,
        shared_expert_intermediate_size: 8,
        shared_expert_gate: true,
        qkv_bias: true,
        lora: Some(LoraConfig { rank: 3, alpha: 5.0, targets: targets.to_vec(), base: BaseFormat::F32 }),
        ..ModelConfig::tiny()
    }
}

const ALL: [LoraTarget; 4] = [LoraTarget::Attn, LoraTarget::Experts, LoraTarget::Router, LoraTarget::Mlp];

/// Parameters with visible gradients everywhere: larger weights than the init, random biases
/// and random (nonzero) B matrices.
fn params(m: &Model<f64>, seed: u64) -> Vec<f64> {
    let mut p: Vec<f64> = m.layout.init(seed);
    let mut rng = Rng::new(seed + 1);
    for t in &m.layout.tensors {
        let random = t.name.contains("lora_B") || t.name.ends_with("_proj.bias");
        for v in t.span.of_mut(&mut p) {
            *v = if random { rng.normal() * 0.3 } else { *v * 4.0 + if *v == 1.0 { rng.normal() * 0.1 } else { 0.0 } };
        }
    }
    p
}

fn logits(m: &Model<f64>, p: &[f64], b: usize, x: &[u32]) -> Vec<f64> {
    let t = x.len() / b;
    let mut a = Acts::new(&m.cfg, b, t, t);
    let mut kv = KvCache::new(&m.cfg, b, t);
    m.forward(p, &mut a, &mut kv, x, 0);
    a.logits[..x.len() * m.cfg.vocab_size].to_vec()
}

fn total_loss(m: &Model<f64>, p: &[f64], b: usize, x: &[u32], y: &[u32]) -> f64 {
    let t = x.len() / b;
    let mut a = Acts::new(&m.cfg, b, t, t);
    let mut kv = KvCache::new(&m.cfg, b, t);
    m.forward(p, &mut a, &mut kv, x, 0);
    m.loss(&mut a, y).total
}

#[test]
fn adapter_gradients_match_finite_differences_and_the_base_gets_none() {
    let (b, t, seed) = (2, 5, 7);
    let m = Model::<f64>::new(config(&ALL)).unwrap();
    let mut p = params(&m, seed);
    let v = m.cfg.vocab_size;
    let (x, y) = (tokens(seed + 2, b * t, v), tokens(seed + 3, b * t, v));
    let mut a = Acts::new(&m.cfg, b, t, t);
    let mut kv = KvCache::new(&m.cfg, b, t);
    m.forward(&p, &mut a, &mut kv, &x, 0);
    m.loss(&mut a, &y);
    let mut g = vec![0.0; p.len()];
    m.backward(&p, &mut g, &mut a, &kv, &x, &y);
    let adapters = m.layout.tensors.iter().filter(|t| t.trainable).count();
    // 3 layers x q,k,v,o + dense gate,up,down + 2 MoE layers x (router + experts 3 + shared 3), A and B each
    assert_eq!(adapters, 2 * (3 * 4 + 3 + 2 * 7));
    for tsr in &m.layout.tensors {
        if !tsr.trainable {
            assert!(tsr.span.of(&g).iter().all(|&v| v == 0.0), "frozen {} has a gradient", tsr.name);
            continue;
        }
        assert!(tsr.name.contains(".lora_"), "only adapters train: {}", tsr.name);
        let mut pick = Rng::new(seed + tsr.span.off as u64);
        for _ in 0..6 {
            let j = tsr.span.off + pick.below(tsr.span.len);
            let orig = p[j];
            let h = 1e-6;
            p[j] = orig + h;
            let lp = total_loss(&m, &p, b, &x, &y);
            p[j] = orig - h;
            let lm = total_loss(&m, &p, b, &x, &y);
            p[j] = orig;
            let num = (lp - lm) / (2.0 * h);
            assert!((num - g[j]).abs() < 1e-5 * (1.0 + num.abs()), "{}: analytic {} numeric {num}", tsr.name, g[j]);
        }
        assert!(tsr.span.of(&g).iter().any(|&v| v != 0.0), "{} has no gradient", tsr.name);
    }
}

#[test]
fn fresh_adapters_compute_exactly_the_base_model() {
    let lora = Model::<f64>::new(config(&ALL)).unwrap();
    let base = Model::<f64>::new(ModelConfig { lora: None, ..lora.cfg.clone() }).unwrap();
    assert_eq!(base.layout.total, lora.layout.base_total, "the base is a prefix of the layout");
    let p = lora.layout.init(3);
    let x = tokens(4, 12, lora.cfg.vocab_size);
    assert_eq!(logits(&lora, &p, 2, &x), logits(&base, &p[..lora.layout.base_total], 2, &x));
    // init_adapters extends a base model's parameters with the same adapters
    let mut q = p[..lora.layout.base_total].to_vec();
    lora.layout.init_adapters(&mut q, 3);
    assert_eq!(p, q);
}

#[test]
fn merging_adapters_keeps_the_function() {
    for targets in [&ALL[..], &[LoraTarget::Experts], &[LoraTarget::Attn, LoraTarget::Router]] {
        let m = Model::<f64>::new(config(targets)).unwrap();
        let p = params(&m, 11);
        let x = tokens(12, 12, m.cfg.vocab_size);
        let want = logits(&m, &p, 2, &x);
        let (cfg, merged) = merge_model(&m.cfg, p.clone());
        assert!(cfg.lora.is_none());
        let plain = Model::<f64>::new(cfg).unwrap();
        let got = logits(&plain, &merged, 2, &x);
        let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-9, "{targets:?}: merged logits differ by {worst}");
        // and the adapters did change the function
        let base = logits(&plain, &p[..m.layout.base_total], 2, &x);
        assert!(want.iter().zip(&base).any(|(a, b)| (a - b).abs() > 1e-3), "{targets:?}");
    }
}

#[test]
fn targets_missing_from_the_model_are_refused() {
    let dense = ModelConfig {
        num_local_experts: 0,
        lora: Some(LoraConfig { rank: 2, alpha: 4.0, targets: vec![LoraTarget::Experts], base: BaseFormat::F32 }),
        ..ModelConfig::tiny()
    };
    let e = dense.validate().unwrap_err().to_string();
    assert!(e.contains("`experts`") && e.contains("--lora-targets"), "{e}");
    let zero = ModelConfig {
        lora: Some(LoraConfig { rank: 0, alpha: 4.0, targets: ALL.to_vec(), base: BaseFormat::F32 }),
        ..config(&ALL)
    };
    assert!(zero.validate().unwrap_err().to_string().contains("rank is 0"));
}

#[test]
fn a_packed_base_computes_what_its_decoded_weights_compute() {
    let (b, t) = (2, 6);
    for format in [BaseFormat::Bf16, BaseFormat::Q8_0] {
        let mut cfg = config(&ALL);
        let m64 = Model::<f64>::new(cfg.clone()).unwrap();
        let p: Vec<f32> = params(&m64, 21).iter().map(|&v| v as f32).collect();
        cfg.lora.as_mut().unwrap().base = format;
        let mut packed = Model::<f32>::new(cfg.clone()).unwrap();
        let q = pack_base(&mut packed, p.clone()).unwrap();
        let pb = packed.packed.as_ref().unwrap();
        let lens = packed.layout.linear_weights().iter().map(|s| s.len).collect::<Vec<_>>();
        let want = match format {
            BaseFormat::Bf16 => lens.iter().map(|l| 2 * l).sum::<usize>(),
            _ => lens.iter().map(|l| l.div_ceil(32) * 34).sum(),
        };
        assert_eq!(pb.bytes(), want, "{format:?}");
        for s in packed.layout.linear_weights() {
            assert!(s.of(&q).iter().all(|&v| v == 0.0), "a packed matrix is also in the buffer");
        }
        // the same model with the decoded weights in f32
        let mut decoded = p.clone();
        pb.unpack_into(&mut decoded);
        assert!(decoded != p, "{format:?} changed nothing");
        let again = PackedBase::pack(&decoded, &packed.layout.linear_weights(), format).unwrap();
        let mut twice = decoded.clone();
        again.unpack_into(&mut twice);
        assert!(twice == decoded, "{format:?}: packing decoded weights is not exact");
        let plain = Model::<f32>::new(cfg.clone()).unwrap();
        let (x, y) = (tokens(22, b * t, cfg.vocab_size), tokens(23, b * t, cfg.vocab_size));
        let run = |m: &Model<f32>, p: &[f32]| {
            let mut a = Acts::new(&m.cfg, b, t, t);
            let mut kv = KvCache::new(&m.cfg, b, t);
            m.forward(p, &mut a, &mut kv, &x, 0);
            let logits = a.logits[..b * t * cfg.vocab_size].to_vec();
            m.loss(&mut a, &y);
            let mut g = vec![0.0f32; p.len()];
            m.backward(p, &mut g, &mut a, &kv, &x, &y);
            (logits, g)
        };
        let ((l1, g1), (l2, g2)) = (run(&packed, &q), run(&plain, &decoded));
        let rel = |a: &[f32], b: &[f32]| {
            let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
            a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
        };
        assert!(rel(&l1, &l2) < 1e-5, "{format:?}: logits differ by {}", rel(&l1, &l2));
        for tsr in packed.layout.tensors.iter().filter(|t| t.trainable) {
            let e = rel(tsr.span.of(&g1), tsr.span.of(&g2));
            assert!(e < 1e-4, "{format:?}: gradient of {} differs by {e}", tsr.name);
        }
    }
}

/// A packed weight larger than one decoding block (600 x 1024: rows decoded 256 at a time),
/// with an adapter: forward and backward equal the plain layer over the decoded weights.
#[test]
fn packed_weights_decode_block_by_block() {
    use moe_engine::linear::{Lin, LinGrad, Lora, LoraGrad, Wt};
    use moe_engine::params::Span;
    let (n, i, o, r) = (5, 1024, 600, 3);
    let mut rng = Rng::new(9);
    let mut randn = |k: usize| (0..k).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
    let (w, x, dy, a, bm) = (randn(o * i), randn(n * i), randn(n * o), randn(r * i), randn(o * r));
    let span = Span { off: 0, len: o * i };
    for format in [BaseFormat::Bf16, BaseFormat::Q8_0] {
        let pb = PackedBase::pack(&w, &[span], format).unwrap();
        let mut dec = vec![0.0f32; o * i];
        pb.unpack_into(&mut dec);
        let lora = Some(Lora { a: &a[..], b: &bm[..], scale: 0.5 });
        let packed = Lin { w: Wt::Packed(pb.get(span).unwrap()), lora };
        let plain = Lin { w: Wt::Plain(&dec[..]), lora };
        let run = |l: &Lin<f32>| {
            let mut y = vec![0.0f32; n * o];
            l.forward(&mut y, &x, n, i, o, false);
            let (mut dx, mut ga, mut gb) = (vec![1.0f32; n * i], vec![0.0f32; r * i], vec![0.0f32; o * r]);
            let g = LinGrad { w: None, lora: Some(LoraGrad { a: &mut ga, b: &mut gb }) };
            l.backward(&mut dx, g, &dy, &x, n, i, o, false, false);
            (y, dx, ga, gb)
        };
        let (p, q) = (run(&packed), run(&plain));
        for (what, u, v) in [("y", &p.0, &q.0), ("dx", &p.1, &q.1), ("dA", &p.2, &q.2), ("dB", &p.3, &q.3)] {
            let worst = u.iter().zip(v).map(|(s, t)| (s - t).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-3, "{format:?} {what}: {worst}");
        }
    }
}
