//! Where the MoE layer's extra time goes: one MoE feed-forward layer (router, dispatch, experts,
//! combine, shared expert, statistics; forward and backward) against the dense SwiGLU MLP of the
//! same active compute, on one thread (a training replica's share of a step), at the `small`
//! and `mini` presets' shapes with the `moe compare` variants 16x3+1, 32x3+1 and 64x3+1. Prints each
//! stage's median time and the layer's time over the dense MLP's.
//! `cargo bench -p moe-engine --bench moe_layer`.

use moe_engine::config::ModelConfig;
use moe_engine::ffn::{mlp_backward, mlp_forward, MlpActs, MlpGrads, MlpWeights};
use moe_engine::linear::{Lin, LinGrad};
use moe_engine::moe::combine::{combine_backward, combine_forward};
use moe_engine::moe::dispatch::{dispatch_backward, dispatch_forward};
use moe_engine::moe::experts::{experts_backward, experts_forward};
use moe_engine::moe::losses::{routing_stats, MoeStats};
use moe_engine::moe::router::{router_backward, router_forward, RouterGrads, RouterWeights};
use moe_engine::moe::shared::{shared_backward, shared_forward, SharedGrads, SharedWeights};
use moe_engine::moe::{moe_backward, moe_forward, MoeActs, MoeGrads, MoeSpec, MoeWeights};
use moe_engine::rng::Rng;

/// Median seconds of `reps` calls after two warm-up calls.
fn time(reps: usize, f: impl FnMut()) -> f64 {
    moe_engine::bench::median_secs(2, reps, f)
}

fn randn(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * scale) as f32).collect()
}

/// The dense MLP of width `f` over n rows of width c: forward + backward seconds.
fn dense(rng: &mut Rng, n: usize, c: usize, f: usize) -> f64 {
    let (x, dy) = (randn(rng, n * c, 1.0), randn(rng, n * c, 1.0));
    let (g, u, d) = (randn(rng, f * c, 0.05), randn(rng, f * c, 0.05), randn(rng, c * f, 0.05));
    let w = MlpWeights::plain(&g, &u, &d);
    let z = |len: usize| vec![0f32; len];
    let (mut ag, mut au, mut ah, mut y, mut dx) = (z(n * f), z(n * f), z(n * f), z(n * c), z(n * c));
    let (mut gg, mut gu, mut gd) = (z(f * c), z(f * c), z(f * c));
    let (mut s1, mut s2, mut s3) = (z(n * f), z(n * f), z(n * f));
    time(21, || {
        mlp_forward(&mut y, MlpActs { g: &mut ag, u: &mut au, h: &mut ah }, &x, w, n, c, f, false);
        let grads = MlpGrads::plain(&mut gg, &mut gu, &mut gd);
        mlp_backward(&mut dx, grads, &dy, &x, w, &ag, &au, &ah, [&mut s1, &mut s2, &mut s3], n, c, f, false);
    })
}

/// The MoE layer of `cfg` over n tokens in sequences of t: the whole layer and its stages.
fn moe(rng: &mut Rng, cfg: &ModelConfig, n: usize, t: usize) -> (f64, Vec<(&'static str, f64)>) {
    let s = MoeSpec::new(cfg, n, t);
    let (c, e, f, fs) = (s.c, s.e, s.f, s.fs);
    let (x, dy) = (randn(rng, n * c, 1.0), randn(rng, n * c, 1.0));
    let rw = randn(rng, e * c, 0.05);
    let (eg, eu, ed) = (randn(rng, e * f * c, 0.05), randn(rng, e * f * c, 0.05), randn(rng, e * c * f, 0.05));
    let (sg, su, sd) = (randn(rng, fs * c, 0.05), randn(rng, fs * c, 0.05), randn(rng, c * fs, 0.05));
    let experts = MlpWeights::plain(&eg, &eu, &ed);
    let router = RouterWeights { weight: Lin::from(&rw[..]), bias: None, selection_bias: None };
    let shared = (fs > 0).then_some(SharedWeights { mlp: MlpWeights::plain(&sg, &su, &sd), gate: None });
    let w = MoeWeights { router, experts, shared };
    let z = |len: usize| vec![0f32; len];
    let mut a = MoeActs::<f32>::new(s);
    let (mut out, mut dx) = (z(n * c), z(n * c));
    let (mut grw, mut geg, mut geu, mut ged) = (z(e * c), z(e * f * c), z(e * f * c), z(e * c * f));
    let (mut gsg, mut gsu, mut gsd) = (z(fs * c), z(fs * c), z(c * fs));
    let dprobs = vec![1e-3; (n / t) * e];
    let layer = time(21, || {
        moe_forward(&mut out, &x, w, &mut a, s, Some(1));
        let gw = MoeGrads {
            router: RouterGrads { weight: LinGrad::from(&mut grw[..]), bias: None },
            experts: MlpGrads::plain(&mut geg, &mut geu, &mut ged),
            shared: shared.map(|_| SharedGrads { mlp: MlpGrads::plain(&mut gsg, &mut gsu, &mut gsd), gate: None }),
        };
        moe_backward(&mut dx, gw, &dy, &x, w, &mut a, s, &dprobs, 1e-3);
    });
    // The stages on the routing of the last forward.
    let r = a.router.r;
    let (expert, token, weight) =
        (a.router.expert[..r].to_vec(), a.router.token[..r].to_vec(), a.router.weight[..r].to_vec());
    let rows = a.routing.rows();
    let bins = a.routing.bins.clone();
    let (mut dys, mut dweight, mut dxs) = (z(rows * c), z(r), z(rows * c));
    let (mut dh, mut dg, mut du) = (z(rows * f), z(rows * f), z(rows * f));
    let mut stats = MoeStats::default();
    let stages = vec![
        ("router forward", time(21, || router_forward(&mut a.router, &x, router, &s, Some(1)))),
        ("routing (counting sort)", time(21, || a.routing.build(&expert, &token, &weight, n, s.capacity, false))),
        ("dispatch forward", time(21, || dispatch_forward(&mut a.xs, &x, &a.routing, &token, c))),
        (
            "experts forward",
            time(21, || experts_forward(&mut a.ys, &mut a.g, &mut a.u, &mut a.h, &a.xs, experts, &bins, c, f)),
        ),
        ("combine forward", time(21, || combine_forward(&mut out, &a.ys, &weight, &a.routing, c))),
        (
            "combine backward",
            time(21, || combine_backward(&mut dys, &mut dweight, &dy, &a.ys, &weight, &token, &a.routing, c)),
        ),
        (
            "experts backward",
            time(21, || {
                let gw = MlpGrads::plain(&mut geg, &mut geu, &mut ged);
                let scratch = [&mut dh[..], &mut dg[..], &mut du[..]];
                experts_backward(&mut dxs, gw, &dys, &a.xs, experts, &a.g, &a.u, &a.h, scratch, &bins, c, f)
            }),
        ),
        ("dispatch backward", time(21, || dispatch_backward(&mut dx, &dxs, &a.routing, c))),
        (
            "shared expert fwd + bwd",
            time(21, || {
                let (Some(sw), Some(sa)) = (shared, a.shared.as_mut()) else { return };
                shared_forward(&mut out, &x, sw, sa, n, c, fs);
                let g = SharedGrads { mlp: MlpGrads::plain(&mut gsg, &mut gsu, &mut gsd), gate: None };
                shared_backward(&mut dx, g, &dy, &x, sw, sa, n, c, fs);
            }),
        ),
        (
            "routing statistics",
            time(21, || {
                let (rt, ra) = (&a.routing, &a.router);
                let kept = &rt.tokens_per_expert;
                routing_stats(
                    &mut stats,
                    &ra.probs,
                    Some(&ra.logits[..]),
                    &ra.lse,
                    &expert,
                    &token,
                    kept,
                    rt.dropped,
                    n,
                    t,
                    e,
                )
            }),
        ),
        (
            "router backward",
            time(21, || {
                let g = RouterGrads { weight: LinGrad::from(&mut grw[..]), bias: None };
                router_backward(&mut dx, g, &dweight, &dprobs, 1e-3, &mut a.router, &x, router, &s)
            }),
        ),
    ];
    (layer, stages)
}

fn main() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a one-thread pool");
    let mut rng = Rng::new(7);
    // A replica's share of `moe compare`'s batch (16 x 128 on two replicas).
    let (n, t) = (1024, 128);
    for (preset, base) in [("small", ModelConfig::small()), ("mini", ModelConfig::mini())] {
        let c = base.hidden_size;
        let f_dense = base.intermediate_size;
        let d = pool.install(|| dense(&mut rng, n, c, f_dense));
        println!(
            "{preset}: {n} tokens of width {c}, one thread; dense MLP (F {f_dense}) forward + backward {:.3} ms",
            d * 1e3
        );
        for experts in [16, 32, 64] {
            // The `moe compare` variant EXk+1: experts a quarter of the dense width, top-3, one
            // shared expert of the same width (the same active compute as the dense MLP).
            let cfg = ModelConfig {
                num_local_experts: experts,
                num_experts_per_tok: 3,
                moe_intermediate_size: f_dense / 4,
                shared_expert_intermediate_size: f_dense / 4,
                ..base.clone()
            };
            let (layer, stages) = pool.install(|| moe(&mut rng, &cfg, n, t));
            println!(
                "  {experts}x3+1: layer forward + backward {:.3} ms = {:.2}x the dense MLP",
                layer * 1e3,
                layer / d
            );
            let parts: f64 = stages.iter().map(|s| s.1).sum();
            for (name, s) in &stages {
                println!("    {name:<24} {:>8.3} ms", s * 1e3);
            }
            println!(
                "    {:<24} {:>8.3} ms (the layer's time less its stages' in isolation)",
                "other",
                (layer - parts) * 1e3
            );
        }
    }
}
