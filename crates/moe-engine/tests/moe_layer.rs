//! The MoE layer: finite differences through every stage (router, routing weights, experts,
//! balancing and z-losses) in f64, and its equivalences with the dense MLP and a naive loop.

use moe_engine::ffn::{mlp_forward, MlpActs, MlpWeights};
use moe_engine::moe::experts::{ExpertGrads, ExpertWeights};
use moe_engine::moe::losses::switch_loss_grad;
use moe_engine::moe::{moe_backward, moe_forward, MoeActs, MoeDims, MoeGrads, MoeWeights};
use moe_engine::rng::Rng;

fn randn(rng: &mut Rng, n: usize, std: f64) -> Vec<f64> {
    (0..n).map(|_| rng.normal() * std).collect()
}

struct Case {
    d: MoeDims,
    x: Vec<f64>,
    router: Vec<f64>,
    gate: Vec<f64>,
    up: Vec<f64>,
    down: Vec<f64>,
}

impl Case {
    fn new(seed: u64, n: usize, c: usize, e: usize, k: usize, f: usize, norm: bool) -> Self {
        let mut rng = Rng::new(seed);
        let d = MoeDims { n, c, e, k, f, norm_topk_prob: norm };
        Case {
            d,
            x: randn(&mut rng, n * c, 1.0),
            router: randn(&mut rng, e * c, 1.0),
            gate: randn(&mut rng, e * f * c, 0.5),
            up: randn(&mut rng, e * f * c, 0.5),
            down: randn(&mut rng, e * c * f, 0.5),
        }
    }
    fn weights<'a>(
        &'a self,
        router: &'a [f64],
        gate: &'a [f64],
        up: &'a [f64],
        down: &'a [f64],
    ) -> MoeWeights<'a, f64> {
        MoeWeights { router, experts: ExpertWeights { gate, up, down } }
    }
    fn acts(&self) -> MoeActs<f64> {
        MoeActs::new(self.d.n, self.d.c, self.d.e, self.d.k, self.d.f)
    }
}

const AUX: f64 = 0.3;
const Z: f64 = 0.2;

/// Scalar loss: <out, r> + AUX * switch + Z * z-loss.
fn loss(cs: &Case, x: &[f64], router: &[f64], gate: &[f64], up: &[f64], down: &[f64], r: &[f64]) -> f64 {
    let mut a = cs.acts();
    let mut out = vec![0.0; cs.d.n * cs.d.c];
    moe_forward(&mut out, x, cs.weights(router, gate, up, down), &mut a, cs.d);
    let dot: f64 = out.iter().zip(r).map(|(a, b)| a * b).sum();
    dot + AUX * a.stats.switch_loss() + Z * a.stats.z_loss
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
        let tol = 1e-6 * (1.0 + num.abs());
        assert!((num - analytic[i]).abs() < tol, "{name}[{i}]: analytic {} numeric {num}", analytic[i]);
    }
}

fn gradient_check(seed: u64, n: usize, c: usize, e: usize, k: usize, f: usize, norm: bool) {
    let cs = Case::new(seed, n, c, e, k, f, norm);
    let r = randn(&mut Rng::new(seed + 100), n * c, 1.0);
    let mut a = cs.acts();
    let mut out = vec![0.0; n * c];
    let w = cs.weights(&cs.router, &cs.gate, &cs.up, &cs.down);
    moe_forward(&mut out, &cs.x, w, &mut a, cs.d);
    let dmp: Vec<f64> = switch_loss_grad(&a.stats.tokens_per_expert, n).iter().map(|g| g * AUX).collect();
    let mut dx = vec![0.0; n * c];
    let (mut dr, mut dg, mut du, mut dd) =
        (vec![0.0; e * c], vec![0.0; e * f * c], vec![0.0; e * f * c], vec![0.0; e * c * f]);
    let grads = MoeGrads { router: &mut dr, experts: ExpertGrads { gate: &mut dg, up: &mut du, down: &mut dd } };
    moe_backward(&mut dx, grads, &r, &cs.x, w, &mut a, cs.d, &dmp, Z);
    check("dx", &cs.x, &dx, |x| loss(&cs, x, &cs.router, &cs.gate, &cs.up, &cs.down, &r));
    check("drouter", &cs.router, &dr, |p| loss(&cs, &cs.x, p, &cs.gate, &cs.up, &cs.down, &r));
    check("dgate", &cs.gate, &dg, |p| loss(&cs, &cs.x, &cs.router, p, &cs.up, &cs.down, &r));
    check("dup", &cs.up, &du, |p| loss(&cs, &cs.x, &cs.router, &cs.gate, p, &cs.down, &r));
    check("ddown", &cs.down, &dd, |p| loss(&cs, &cs.x, &cs.router, &cs.gate, &cs.up, p, &r));
}

#[test]
fn moe_layer_gradients_renormalised_topk() {
    gradient_check(1, 5, 4, 4, 2, 3, true);
    gradient_check(2, 1, 3, 3, 3, 2, true);
    gradient_check(3, 9, 5, 6, 2, 7, true);
}

#[test]
fn moe_layer_gradients_unnormalised_topk() {
    gradient_check(4, 5, 4, 4, 2, 3, false);
    gradient_check(5, 7, 3, 5, 1, 4, false);
}

#[test]
fn one_expert_top1_equals_dense_mlp() {
    for norm in [true, false] {
        let cs = Case::new(6, 7, 6, 1, 1, 5, norm);
        let mut a = cs.acts();
        let mut out = vec![0.0; 7 * 6];
        moe_forward(&mut out, &cs.x, cs.weights(&cs.router, &cs.gate, &cs.up, &cs.down), &mut a, cs.d);
        let (mut g, mut u, mut h, mut y) = (vec![0.0; 35], vec![0.0; 35], vec![0.0; 35], vec![0.0; 42]);
        let w = MlpWeights { gate: &cs.gate, up: &cs.up, down: &cs.down };
        mlp_forward(&mut y, MlpActs { g: &mut g, u: &mut u, h: &mut h }, &cs.x, w, 7, 6, 5, false);
        let err = out.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(err < 1e-12, "norm={norm}: {err}");
    }
}

#[test]
fn grouped_dispatch_equals_naive_per_expert_loop() {
    let (n, c, e, k, f) = (33, 8, 6, 2, 5);
    for norm in [true, false] {
        let cs = Case::new(7, n, c, e, k, f, norm);
        let mut a = cs.acts();
        let mut out = vec![0.0; n * c];
        moe_forward(&mut out, &cs.x, cs.weights(&cs.router, &cs.gate, &cs.up, &cs.down), &mut a, cs.d);
        // Naive: softmax, sort each token's experts by probability, run each chosen expert on the
        // token alone, weight and sum.
        for t in 0..n {
            let xr = &cs.x[t * c..(t + 1) * c];
            let logits: Vec<f64> = (0..e).map(|i| (0..c).map(|j| xr[j] * cs.router[i * c + j]).sum()).collect();
            let m = logits.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
            let p: Vec<f64> = logits.iter().map(|l| (l - m).exp() / z).collect();
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&i, &j| p[j].partial_cmp(&p[i]).unwrap());
            let chosen = &order[..k];
            let s: f64 = chosen.iter().map(|&i| p[i]).sum();
            let mut want = vec![0.0; c];
            for &i in chosen {
                let (fc, cf) = (f * c, c * f);
                let (mut g, mut u, mut h, mut y) = (vec![0.0; f], vec![0.0; f], vec![0.0; f], vec![0.0; c]);
                let w = MlpWeights {
                    gate: &cs.gate[i * fc..][..fc],
                    up: &cs.up[i * fc..][..fc],
                    down: &cs.down[i * cf..][..cf],
                };
                mlp_forward(&mut y, MlpActs { g: &mut g, u: &mut u, h: &mut h }, xr, w, 1, c, f, false);
                let wt = if norm { p[i] / s } else { p[i] };
                want.iter_mut().zip(&y).for_each(|(o, v)| *o += wt * v);
            }
            let err = want.iter().zip(&out[t * c..(t + 1) * c]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-12, "token {t}: {err}");
        }
        let total: u32 = a.stats.tokens_per_expert.iter().sum();
        assert_eq!(total as usize, n * k);
    }
}
