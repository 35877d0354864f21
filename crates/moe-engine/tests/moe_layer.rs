//! The MoE layer: finite differences in f64 through every stage for every router variant (with
//! router bias, selection bias, groups, scaling, jitter), the shared expert and its gate,
//! capacity dropping, and the balancing (batch and per-sequence) and z-losses; and the layer's
//! equivalences.

use moe_engine::config::{DropPolicy, ModelConfig, RouterKind};
use moe_engine::ffn::{mlp_forward, MlpActs, MlpGrads, MlpWeights};
use moe_engine::linear::{Lin, LinGrad};
use moe_engine::moe::losses::switch_loss_grad;
use moe_engine::moe::router::{RouterGrads, RouterWeights};
use moe_engine::moe::shared::{SharedGrads, SharedWeights};
use moe_engine::moe::{moe_backward, moe_forward, MoeActs, MoeGrads, MoeSpec, MoeWeights};
use moe_engine::rng::Rng;

fn randn(rng: &mut Rng, n: usize, std: f64) -> Vec<f64> {
    (0..n).map(|_| rng.normal() * std).collect()
}

/// All parameters of one layer as separate vectors (index order below).
#[derive(Clone)]
struct Params(Vec<Vec<f64>>);
const ROUTER: usize = 0;
const RBIAS: usize = 1;
const SBIAS: usize = 2;
const GATE: usize = 3;
const UP: usize = 4;
const DOWN: usize = 5;
const SGATE: usize = 6;
const SUP: usize = 7;
const SDOWN: usize = 8;
const SG: usize = 9;
const NAMES: [&str; 10] = [
    "router",
    "router_bias",
    "selection_bias",
    "gate",
    "up",
    "down",
    "shared_gate",
    "shared_up",
    "shared_down",
    "shared_expert_gate",
];

struct Case {
    spec: MoeSpec,
    x: Vec<f64>,
    p: Params,
    seed: Option<u64>,
}

fn case(cfg: ModelConfig, n: usize, t: usize, seed: u64) -> Case {
    cfg.validate().unwrap();
    let spec = MoeSpec::new(&cfg, n, t);
    let (c, e, f, fs) = (spec.c, spec.e, spec.f, spec.fs);
    let mut rng = Rng::new(seed);
    let sizes = [
        e * c,
        if cfg.router_bias { e } else { 0 },
        if cfg.has_selection_bias() { e } else { 0 },
        e * f * c,
        e * f * c,
        e * c * f,
        fs * c,
        fs * c,
        c * fs,
        if cfg.shared_expert_gate { c } else { 0 },
    ];
    let p = Params(sizes.iter().map(|&len| randn(&mut rng, len, 0.7)).collect());
    let x = randn(&mut rng, n * c, 1.0);
    let seed = (cfg.router_jitter_noise > 0.0).then_some(seed + 7);
    Case { spec, x, p, seed }
}

fn weights(p: &Params) -> MoeWeights<'_, f64> {
    let opt = |i: usize| (!p.0[i].is_empty()).then_some(&p.0[i][..]);
    MoeWeights {
        router: RouterWeights { weight: Lin::from(&p.0[ROUTER][..]), bias: opt(RBIAS), selection_bias: opt(SBIAS) },
        experts: MlpWeights::plain(&p.0[GATE], &p.0[UP], &p.0[DOWN]),
        shared: (!p.0[SGATE].is_empty())
            .then(|| SharedWeights { mlp: MlpWeights::plain(&p.0[SGATE], &p.0[SUP], &p.0[SDOWN]), gate: opt(SG) }),
    }
}

const AUX: f64 = 0.3;
const SEQ_AUX: f64 = 0.2;
const Z: f64 = 0.1;

fn forward(cs: &Case, x: &[f64], p: &Params) -> (Vec<f64>, MoeActs<f64>) {
    let mut a = MoeActs::new(cs.spec);
    let mut out = vec![0.0; cs.spec.n * cs.spec.c];
    moe_forward(&mut out, x, weights(p), &mut a, cs.spec, cs.seed);
    (out, a)
}

/// <out, r> + AUX * batch Switch loss + SEQ_AUX * per-sequence Switch loss + Z * z-loss.
fn loss(cs: &Case, x: &[f64], p: &Params, r: &[f64]) -> f64 {
    let (out, a) = forward(cs, x, p);
    let s = &a.stats;
    out.iter().zip(r).map(|(a, b)| a * b).sum::<f64>()
        + AUX * s.switch_loss()
        + SEQ_AUX * s.sequence_switch_loss()
        + Z * s.z_loss
}

fn check(name: &str, x: &[f64], analytic: &[f64], f: impl Fn(&[f64]) -> f64) {
    let h = 1e-6;
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        xp[i] = x[i] + h;
        let lp = f(&xp);
        xp[i] = x[i] - h;
        let lm = f(&xp);
        xp[i] = x[i];
        let num = (lp - lm) / (2.0 * h);
        assert!(
            (num - analytic[i]).abs() < 1e-6 * (1.0 + num.abs()),
            "{name}[{i}]: analytic {} numeric {num}",
            analytic[i]
        );
    }
}

fn gradient_check(cfg: ModelConfig, n: usize, t: usize, seed: u64) {
    let cs = case(cfg, n, t, seed);
    let (c, e) = (cs.spec.c, cs.spec.e);
    let r = randn(&mut Rng::new(seed + 100), n * c, 1.0);
    let (_, mut a) = forward(&cs, &cs.x, &cs.p);
    let st = a.stats.clone();
    // dLoss/dP[s,e]: the batch loss spreads over sequences; the sequence loss is per sequence.
    let seqs = st.seqs;
    let batch = switch_loss_grad(&st.tokens_per_expert, n);
    let dp: Vec<f64> = (0..seqs * e)
        .map(|i| {
            let (s, ex) = (i / e, i % e);
            let seq = switch_loss_grad(&st.seq_counts[s * e..(s + 1) * e], t)[ex];
            AUX * batch[ex] / seqs as f64 + SEQ_AUX * seq / seqs as f64
        })
        .collect();
    let mut g = Params(cs.p.0.iter().map(|v| vec![0.0; v.len()]).collect());
    let mut dx = vec![0.0; n * c];
    {
        let [router, rbias, _sbias, gate, up, down, sgate, sup, sdown, sg] = &mut g.0[..] else { unreachable!() };
        let has_shared = !sgate.is_empty();
        let grads = MoeGrads {
            router: RouterGrads { weight: LinGrad::from(&mut router[..]), bias: opt_mut(rbias) },
            experts: MlpGrads::plain(gate, up, down),
            shared: has_shared.then(|| SharedGrads { mlp: MlpGrads::plain(sgate, sup, sdown), gate: opt_mut(sg) }),
        };
        moe_backward(&mut dx, grads, &r, &cs.x, weights(&cs.p), &mut a, cs.spec, &dp, Z);
    }
    check("dx", &cs.x, &dx, |x| loss(&cs, x, &cs.p, &r));
    for (i, name) in NAMES.iter().enumerate() {
        if i == SBIAS {
            continue; // selection-only: piecewise constant, no gradient by design
        }
        check(name, &cs.p.0[i], &g.0[i], |v| {
            let mut p = cs.p.clone();
            p.0[i] = v.to_vec();
            loss(&cs, &cs.x, &p, &r)
        });
    }
}

fn opt_mut(v: &mut [f64]) -> Option<&mut [f64]> {
    if v.is_empty() {
        None
    } else {
        Some(v)
    }
}

fn base() -> ModelConfig {
    ModelConfig {
        hidden_size: 6,
        num_attention_heads: 1,
        num_key_value_heads: 1,
        num_local_experts: 4,
        num_experts_per_tok: 2,
        moe_intermediate_size: 3,
        ..ModelConfig::tiny()
    }
}

#[test]
fn softmax_topk_renormalised_and_not() {
    gradient_check(base(), 6, 3, 1);
    gradient_check(ModelConfig { norm_topk_prob: false, ..base() }, 6, 2, 2);
    gradient_check(ModelConfig { num_local_experts: 3, num_experts_per_tok: 3, ..base() }, 1, 1, 3);
}

#[test]
fn topk_softmax_with_router_bias() {
    gradient_check(ModelConfig { router: RouterKind::TopkSoftmax, router_bias: true, ..base() }, 6, 3, 4);
}

#[test]
fn switch_top1() {
    gradient_check(ModelConfig { router: RouterKind::Switch, num_experts_per_tok: 1, ..base() }, 7, 7, 5);
}

#[test]
fn sigmoid_group_with_bias_groups_and_scaling() {
    let ds = ModelConfig {
        router: RouterKind::SigmoidGroup,
        num_local_experts: 6,
        n_group: 3,
        topk_group: 2,
        routed_scaling_factor: 2.5,
        ..base()
    };
    gradient_check(ds.clone(), 6, 3, 6);
    gradient_check(ModelConfig { norm_topk_prob: false, ..ds }, 4, 2, 7);
}

#[test]
fn expert_choice() {
    gradient_check(ModelConfig { router: RouterKind::ExpertChoice, capacity_factor: 1.5, ..base() }, 6, 3, 8);
}

#[test]
fn router_jitter() {
    gradient_check(ModelConfig { router_jitter_noise: 0.2, ..base() }, 6, 3, 9);
}

#[test]
fn shared_expert_with_and_without_gate() {
    let sh = ModelConfig { shared_expert_intermediate_size: 4, ..base() };
    gradient_check(sh.clone(), 6, 3, 10);
    gradient_check(ModelConfig { shared_expert_gate: true, norm_topk_prob: false, ..sh }, 6, 3, 11);
}

#[test]
fn capacity_dropping_by_weight_and_by_position() {
    let cap = ModelConfig { capacity_factor: 0.5, ..base() };
    let cs = case(cap.clone(), 8, 4, 12);
    let (_, a) = forward(&cs, &cs.x, &cs.p);
    assert!(a.stats.dropped > 0, "a capacity factor of 0.5 must drop assignments");
    gradient_check(cap.clone(), 8, 4, 12);
    gradient_check(ModelConfig { drop_policy: DropPolicy::Position, ..cap }, 8, 4, 13);
}

#[test]
fn large_capacity_equals_dropless() {
    for (policy, seed) in [(DropPolicy::Probability, 14), (DropPolicy::Position, 15)] {
        let dropless = case(base(), 24, 8, seed);
        let big = case(ModelConfig { capacity_factor: 4.0, drop_policy: policy, ..base() }, 24, 8, seed);
        let (o1, a1) = forward(&dropless, &dropless.x, &dropless.p);
        let (o2, a2) = forward(&big, &big.x, &big.p);
        assert_eq!(a2.stats.dropped, 0);
        assert_eq!(a1.stats.tokens_per_expert, a2.stats.tokens_per_expert);
        assert!(o1.iter().zip(&o2).all(|(a, b)| (a - b).abs() < 1e-12));
    }
}

#[test]
fn expert_choice_routes_every_token_of_a_balanced_input() {
    // 8 tokens, 4 experts, top-1, capacity T*k/E = 2; token i prefers expert i % 4.
    let cfg = ModelConfig {
        router: RouterKind::ExpertChoice,
        hidden_size: 4,
        num_local_experts: 4,
        num_experts_per_tok: 1,
        capacity_factor: 1.0,
        ..base()
    };
    let mut cs = case(cfg, 8, 8, 16);
    cs.x = (0..8 * 4).map(|i| if i % 4 == (i / 4) % 4 { 3.0 + (i / 4) as f64 * 0.1 } else { 0.0 }).collect();
    cs.p.0[ROUTER] = (0..16).map(|i| if i % 4 == i / 4 { 1.0 } else { 0.0 }).collect();
    let (_, a) = forward(&cs, &cs.x, &cs.p);
    let rt = &a.routing;
    for n in 0..8 {
        assert_eq!(rt.tok_offsets[n + 1] - rt.tok_offsets[n], 1, "token {n} is routed once");
    }
    assert_eq!(a.stats.kept_per_expert, vec![2, 2, 2, 2]);
}

#[test]
fn group_limited_routing_with_one_group_is_plain_topk() {
    let one = ModelConfig { router: RouterKind::SigmoidGroup, num_local_experts: 6, ..base() };
    let all_groups = ModelConfig { n_group: 3, topk_group: 3, ..one.clone() };
    let (c1, c2) = (case(one, 10, 5, 17), case(all_groups, 10, 5, 17));
    let (o1, a1) = forward(&c1, &c1.x, &c1.p);
    let (o2, a2) = forward(&c2, &c2.x, &c2.p);
    assert_eq!(a1.router.expert, a2.router.expert);
    assert!(o1.iter().zip(&o2).all(|(a, b)| (a - b).abs() < 1e-12));
    // And top-k of sigmoid(logit) + bias, by a sort.
    let (e, k) = (6, 2);
    for t in 0..10 {
        let mut order: Vec<usize> = (0..e).collect();
        let key = |i: usize| a1.router.scores[t * e + i] + c1.p.0[SBIAS][i];
        order.sort_by(|&i, &j| key(j).partial_cmp(&key(i)).unwrap());
        let got: Vec<usize> = a1.router.expert[t * k..(t + 1) * k].iter().map(|&i| i as usize).collect();
        assert_eq!(got, order[..k].to_vec(), "token {t}");
    }
}

#[test]
fn one_expert_top1_equals_dense_mlp() {
    for norm in [true, false] {
        let cs = case(
            ModelConfig { num_local_experts: 1, num_experts_per_tok: 1, norm_topk_prob: norm, ..base() },
            7,
            7,
            18,
        );
        let (out, _) = forward(&cs, &cs.x, &cs.p);
        let (c, f) = (cs.spec.c, cs.spec.f);
        let (mut g, mut u, mut h, mut y) = (vec![0.0; 7 * f], vec![0.0; 7 * f], vec![0.0; 7 * f], vec![0.0; 7 * c]);
        let w = MlpWeights::plain(&cs.p.0[GATE], &cs.p.0[UP], &cs.p.0[DOWN]);
        mlp_forward(&mut y, MlpActs { g: &mut g, u: &mut u, h: &mut h }, &cs.x, w, 7, c, f, false);
        assert!(out.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-12), "norm={norm}");
    }
}

#[test]
fn grouped_dispatch_equals_naive_per_token_loop() {
    let (n, c, e, k, f) = (33, 8, 6, 2, 5);
    for norm in [true, false] {
        let cfg = ModelConfig {
            hidden_size: c,
            num_local_experts: e,
            num_experts_per_tok: k,
            moe_intermediate_size: f,
            norm_topk_prob: norm,
            ..base()
        };
        let cs = case(cfg, n, 11, 19);
        let (out, a) = forward(&cs, &cs.x, &cs.p);
        for t in 0..n {
            let xr = &cs.x[t * c..(t + 1) * c];
            let logits: Vec<f64> = (0..e).map(|i| (0..c).map(|j| xr[j] * cs.p.0[ROUTER][i * c + j]).sum()).collect();
            let m = logits.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
            let p: Vec<f64> = logits.iter().map(|l| (l - m).exp() / z).collect();
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&i, &j| p[j].partial_cmp(&p[i]).unwrap());
            let s: f64 = order[..k].iter().map(|&i| p[i]).sum();
            let mut want = vec![0.0; c];
            for &i in &order[..k] {
                let fc = f * c;
                let (mut g, mut u, mut h, mut y) = (vec![0.0; f], vec![0.0; f], vec![0.0; f], vec![0.0; c]);
                let w = MlpWeights::plain(
                    &cs.p.0[GATE][i * fc..][..fc],
                    &cs.p.0[UP][i * fc..][..fc],
                    &cs.p.0[DOWN][i * fc..][..fc],
                );
                mlp_forward(&mut y, MlpActs { g: &mut g, u: &mut u, h: &mut h }, xr, w, 1, c, f, false);
                let wt = if norm { p[i] / s } else { p[i] };
                want.iter_mut().zip(&y).for_each(|(o, v)| *o += wt * v);
            }
            assert!(want.iter().zip(&out[t * c..(t + 1) * c]).all(|(a, b)| (a - b).abs() < 1e-12), "token {t}");
        }
        assert_eq!(a.stats.tokens_per_expert.iter().sum::<u32>() as usize, n * k);
    }
}
