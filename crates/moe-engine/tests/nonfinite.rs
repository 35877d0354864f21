//! Non-finite steps: a NaN loss or an infinite gradient skips the update (weights, moments and
//! selection bias untouched), training then goes on, and too many in a row stop the run with
//! a clear error while its last checkpoint stays loadable and finite.

mod common;
use common::{options, write_corpus};
use moe_engine::config::ModelConfig;
use moe_engine::nonfinite::Fault;
use moe_engine::train::{TrainConfig, Trainer};
use moe_engine::{checkpoint, Error};

fn trainer(limit: u64) -> (Trainer, Vec<u32>) {
    let cfg = ModelConfig { bias_update_rate: 0.01, ..common::tiny_model() };
    let tc = TrainConfig { steps: 20, batch_size: 2, seq_len: 16, max_skipped_steps: limit, ..TrainConfig::default() };
    let data: Vec<u32> = (0..4000).map(|i| (i * 7 % 300) as u32).collect();
    (Trainer::new(cfg, tc, "test".into()).unwrap(), data)
}

#[test]
fn a_nan_loss_or_an_infinite_gradient_skips_the_update_only() {
    for fault in [Fault::NanLoss, Fault::InfGradient] {
        let (mut tr, data) = trainer(3);
        assert!(!tr.step(&data).unwrap().skipped);
        let (p, m, v, tokens) = (tr.params.clone(), tr.m.clone(), tr.v.clone(), tr.state.tokens);
        tr.fault = Some(fault);
        let met = tr.step(&data).unwrap();
        assert!(met.skipped, "{fault:?}");
        assert!(!met.loss.is_finite() || !met.grad_norm.is_finite(), "{fault:?}: {met:?}");
        assert!(tr.params == p && tr.m == m && tr.v == v, "{fault:?}: the skipped step changed the state");
        assert_eq!((tr.state.step, tr.state.skipped_in_a_row), (2, 1));
        assert!(tr.state.tokens > tokens, "the skipped batch counts as consumed");
        // The next step trains again, from finite values.
        let met = tr.step(&data).unwrap();
        assert!(!met.skipped && met.loss.is_finite() && met.grad_norm.is_finite());
        assert!(tr.params != p && tr.params.iter().all(|x| x.is_finite()));
        assert_eq!(tr.state.skipped_in_a_row, 0);
    }
}

#[test]
fn too_many_non_finite_steps_in_a_row_stop_with_a_clear_error() {
    let (mut tr, data) = trainer(2);
    tr.step(&data).unwrap();
    for _ in 0..2 {
        tr.fault = Some(Fault::NanLoss);
        assert!(tr.step(&data).unwrap().skipped);
    }
    tr.fault = Some(Fault::InfGradient);
    let e = tr.step(&data).unwrap_err();
    assert!(matches!(e, Error::NonFinite { in_a_row: 3, .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("3 steps in a row") && msg.contains("last checkpoint"), "{msg}");
}

/// A learning rate far too high drives the run to non-finite losses: it stops with the error,
/// never a panic, and its latest checkpoint (written before) loads with finite weights.
#[test]
fn a_diverging_run_stops_and_keeps_a_finite_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path());
    let mut o = options(dir.path(), &corpus, "run", 400);
    o.train.lr = 1e12;
    o.train.grad_clip = 0.0;
    o.train.warmup_steps = 0;
    o.train.checkpoint_every = 1;
    o.train.max_skipped_steps = 2;
    let quiet = |_: &str| {};
    let e = moe_engine::run::run(&o, &quiet).unwrap_err();
    assert!(matches!(e, Error::NonFinite { in_a_row: 3, .. }), "{e}");
    let ck = checkpoint::load(&o.out_dir).unwrap();
    assert!(ck.params.iter().all(|x| x.is_finite()));
}
