//! In-process data-parallel replicas: R replicas of B/R sequences each follow the run with one
//! replica of B sequences (losses, gradients, expert loads, parameters) for a dense model
//! and for every balancing scope of an MoE model, with gradient accumulation; validation loss
//! is the same; replica counts that do not divide the batch, or replicas inside an
//! expert-parallel rank, are refused.

mod common;
use moe_engine::config::{BalanceScope, ModelConfig};
use moe_engine::dist::{thread_ranks, Dist};
use moe_engine::rng::Rng;
use moe_engine::train::{StepMetrics, TrainConfig, Trainer};
use std::sync::Arc;
use std::time::Duration;

fn moe(scope: BalanceScope) -> ModelConfig {
    common::moe_with_losses(scope, 0.0)
}

fn train_cfg(replicas: usize) -> TrainConfig {
    TrainConfig {
        steps: 4,
        batch_size: 4,
        seq_len: 8,
        grad_accum: 2,
        warmup_steps: 1,
        lr: 1e-2,
        replicas,
        ..TrainConfig::default()
    }
}

fn data() -> Vec<u32> {
    let mut rng = Rng::new(5);
    (0..4000).map(|_| rng.below(300) as u32).collect()
}

/// What a run with `r` replicas computed: each step's metrics and gradients per replica (the
/// trainer's buffer holds their sum over replicas and micro-batches, which AdamW scales to the
/// mean and clips; divided by `r` it must equal one replica's), the final parameters and the
/// validation loss.
struct Run {
    metrics: Vec<StepMetrics>,
    grads: Vec<Vec<f32>>,
    params: Vec<f32>,
    val: f64,
}

const STEPS: usize = 3;

fn run(cfg: &ModelConfig, r: usize) -> Run {
    let data = data();
    let mut tr = Trainer::new(cfg.clone(), train_cfg(r), "d".into()).unwrap();
    assert_eq!(tr.replicas(), r);
    let (mut metrics, mut grads) = (vec![], vec![]);
    for _ in 0..STEPS {
        metrics.push(tr.step(&data).unwrap());
        grads.push(tr.grads.iter().map(|g| g / r as f32).collect());
    }
    let val = tr.evaluate(&data, 2);
    Run { metrics, grads, params: tr.params.clone(), val }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn close(what: &str, a: f64, b: f64, tol: f64) {
    assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}: {a} vs {b}");
}

fn replicas_follow_one(cfg: &ModelConfig) {
    let want = run(cfg, 1);
    for r in [2, 4] {
        let got = run(cfg, r);
        for ((g, w), (ga, wa)) in got.metrics.iter().zip(&want.metrics).zip(got.grads.iter().zip(&want.grads)) {
            let s = g.step;
            close(&format!("R={r} step {s} loss"), g.loss, w.loss, 1e-5);
            close(&format!("R={r} step {s} aux"), g.aux, w.aux, 1e-5);
            close(&format!("R={r} step {s} z"), g.z, w.z, 1e-5);
            close(&format!("R={r} step {s} grad norm"), g.grad_norm, w.grad_norm, 1e-4);
            assert_eq!(g.expert_load, w.expert_load, "R={r} step {s}: expert loads");
            assert_eq!(g.tokens, w.tokens);
            let scale = wa.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let diff = max_abs_diff(ga, wa);
            assert!(diff <= 1e-5 * scale, "R={r} step {s}: gradients differ by {diff} (largest {scale})");
        }
        // AdamW moves a weight by about lr whatever its gradient's size, so rounding in a
        // gradient that cancels to near zero can move a weight by a fraction of lr.
        let lr = train_cfg(r).lr as f32;
        let diff = max_abs_diff(&got.params, &want.params);
        assert!(diff < 0.02 * lr * STEPS as f32, "R={r}: parameters differ by {diff}");
        close(&format!("R={r} validation loss"), got.val, want.val, 1e-5);
    }
}

#[test]
fn replicas_follow_one_replica_dense() {
    replicas_follow_one(&ModelConfig { num_local_experts: 0, ..ModelConfig::tiny() });
}

#[test]
fn replicas_follow_one_replica_moe_global_balance() {
    replicas_follow_one(&moe(BalanceScope::Global));
}

#[test]
fn replicas_follow_one_replica_moe_layer_and_sequence_balance() {
    replicas_follow_one(&moe(BalanceScope::Layer));
    replicas_follow_one(&moe(BalanceScope::Sequence));
}

#[test]
fn replica_counts_that_do_not_divide_the_batch_are_refused() {
    let err = Trainer::new(ModelConfig::tiny(), train_cfg(3), "d".into()).err().unwrap().to_string();
    assert!(err.contains("--replicas 3 does not divide --batch-size 4"), "{err}");
}

#[test]
fn automatic_replicas_divide_the_batch() {
    for b in [1, 2, 3, 4, 6] {
        let tc = TrainConfig { batch_size: b, ..train_cfg(0) };
        let tr = Trainer::new(ModelConfig::tiny(), tc, "d".into()).unwrap();
        let r = tr.replicas();
        assert!(r >= 1 && b % r == 0 && r <= rayon::current_num_threads(), "batch {b}: {r} replicas");
    }
}

#[test]
fn replicas_inside_an_expert_parallel_rank_are_refused() {
    let comm = thread_ranks(1, Duration::from_secs(10)).pop().unwrap();
    let dist = Dist::new(Arc::new(comm));
    let err = Trainer::distributed(moe(BalanceScope::Global), train_cfg(2), "d".into(), dist).err().unwrap();
    assert!(err.to_string().contains("--replicas with --expert-parallel"), "{err}");
}
