//! Expert-parallel training with in-process ranks (threads): P ranks with B sequences each
//! follow the single-process run with P*B sequences (losses, gradient norms, parameters) for
//! every balancing scope, and while the experts are re-placed (moved and replicated) between
//! steps; checkpoints written by P ranks load on any rank count and resume exactly;
//! communication volume matches tokens x K x hidden x bytes.

mod common;
use moe_engine::checkpoint;
use moe_engine::config::{BalanceScope, ModelConfig};
use moe_engine::dist::{take_shard, thread_ranks, Dist, Shard};
use moe_engine::params::Layout;
use moe_engine::rng::Rng;
use moe_engine::train::{TrainConfig, Trainer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn cfg(scope: BalanceScope, bias_rate: f64) -> ModelConfig {
    common::moe_with_losses(scope, bias_rate)
}

fn train_cfg(batch: usize) -> TrainConfig {
    TrainConfig {
        steps: 4,
        batch_size: batch,
        seq_len: 8,
        grad_accum: 2,
        warmup_steps: 1,
        lr: 1e-2,
        ..TrainConfig::default()
    }
}

fn data() -> Vec<u32> {
    let mut rng = Rng::new(3);
    (0..4000).map(|_| rng.below(300) as u32).collect()
}

/// (loss, grad norm) per step and the final parameters of the single-process run.
type Trace = (Vec<(f64, f64)>, Vec<f32>);

fn single(cfg: &ModelConfig, batch: usize, steps: u64, data: &[u32]) -> (Trace, Trainer) {
    let mut tr = Trainer::new(cfg.clone(), train_cfg(batch), "d".into()).unwrap();
    let trace = (0..steps).map(|_| tr.step(data).map(|m| (m.loss, m.grad_norm)).unwrap()).collect();
    ((trace, tr.params.clone()), tr)
}

/// Runs `f` on P thread ranks and returns their results in rank order.
fn on_ranks<R: Send>(p: usize, f: impl Fn(Dist) -> R + Sync) -> Vec<R> {
    let comms = thread_ranks(p, Duration::from_secs(60));
    std::thread::scope(|s| {
        let hs: Vec<_> = comms.into_iter().map(|c| s.spawn(|| f(Dist::new(Arc::new(c))))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn assert_close(what: &str, a: f64, b: f64, tol: f64) {
    assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}: {a} vs {b}");
}

fn compare(p: usize, cfg: &ModelConfig, data: &[u32]) {
    compare_with(p, cfg, data, TrainConfig::default());
}

/// As `compare`, the ranks with the rebalancing settings of `rb`; returns each rank's
/// trainer's final placements and the steps that re-placed experts.
fn compare_with(p: usize, cfg: &ModelConfig, data: &[u32], rb: TrainConfig) -> Vec<(Shard, Vec<u64>)> {
    let b = 2;
    let ((want, params), _) = single(cfg, p * b, 3, data);
    let runs = on_ranks(p, |d| {
        let tc = TrainConfig {
            rebalance_every: rb.rebalance_every,
            redundant_experts: rb.redundant_experts,
            ..train_cfg(b)
        };
        let mut tr = Trainer::distributed(cfg.clone(), tc, "d".into(), d).unwrap();
        let mut moved = vec![];
        let mut trace = vec![];
        for _ in 0..3 {
            let m = tr.step(data).unwrap();
            if m.rebalanced.is_some() {
                moved.push(m.step);
            }
            trace.push((m.loss, m.grad_norm));
        }
        (trace, tr.params.clone(), tr.model.layout.clone(), (tr.model.shard.clone(), moved))
    });
    let full = Layout::new(cfg);
    for (rank, (trace, local, layout, _)) in runs.iter().enumerate() {
        for (s, (got, exp)) in trace.iter().zip(&want).enumerate() {
            assert_close(&format!("P={p} rank {rank} step {s} loss"), got.0, exp.0, 1e-5);
            assert_close(&format!("P={p} rank {rank} step {s} grad norm"), got.1, exp.1, 1e-4);
        }
        let expected = take_shard(&full, layout, &params);
        let diff = local.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-5, "P={p} rank {rank}: parameters differ by {diff}");
    }
    runs.into_iter().map(|r| r.3).collect()
}

#[test]
fn ranks_follow_the_single_process_run_while_experts_move() {
    let data = data();
    let cfg = cfg(BalanceScope::Global, 0.0);
    // Re-placed after every step: moved only (P=2), with replicas (P=2: 3 slots per rank;
    // P=4: 2 slots per rank, every expert twice).
    for (p, redundant) in [(2, 0), (2, 2), (4, 4)] {
        let rb = TrainConfig { rebalance_every: 1, redundant_experts: redundant, ..TrainConfig::default() };
        let shards = compare_with(p, &cfg, &data, rb);
        for (rank, (shard, moved)) in shards.iter().enumerate() {
            assert_eq!(moved, &[1, 2, 3], "P={p} rank {rank}: re-placed after every step");
            let placements = shard.placements.as_ref().expect("a balanced placement");
            assert_eq!(placements.len(), cfg.num_moe_layers());
            assert!(placements.iter().all(|pl| pl.replicas.iter().sum::<usize>() == 4 + redundant));
        }
    }
}

#[test]
fn checkpoints_after_experts_moved_hold_the_whole_model() {
    let data = data();
    let cfg = cfg(BalanceScope::Global, 0.0);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ck");
    let paths = on_ranks(2, |d| {
        let tc = TrainConfig { rebalance_every: 1, redundant_experts: 2, ..train_cfg(2) };
        let mut tr = Trainer::distributed(cfg.clone(), tc, "d".into(), d).unwrap();
        tr.step(&data).unwrap();
        tr.step(&data).unwrap();
        assert!(tr.model.shard.placements.is_some());
        tr.save(&root, None).unwrap()
    });
    let ((_, want), _) = single(&cfg, 4, 2, &data);
    let got = checkpoint::load(&paths[0]).unwrap().params;
    let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-5, "checkpoint differs from the single-process model by {diff}");
}

#[test]
fn rebalancing_settings_that_do_not_fit_are_refused() {
    let cfg = cfg(BalanceScope::Global, 0.0);
    let errors = on_ranks(2, |d| {
        let tc = TrainConfig { rebalance_every: 1, redundant_experts: 1, ..train_cfg(2) };
        Trainer::distributed(cfg.clone(), tc, "d".into(), d).err().map(|e| e.to_string())
    });
    for e in errors {
        let e = e.expect("4 experts + 1 replica on 2 ranks is refused");
        assert!(e.contains("do not fill 2 ranks") && e.contains("--redundant-experts"), "{e}");
    }
}

#[test]
fn ranks_follow_the_single_process_run() {
    let data = data();
    for p in [2, 4] {
        compare(p, &cfg(BalanceScope::Global, 0.0), &data);
    }
    compare(2, &cfg(BalanceScope::Layer, 0.01), &data);
    compare(2, &cfg(BalanceScope::Sequence, 0.0), &data);
}

#[test]
fn checkpoints_of_p_ranks_resume_on_any_rank_count() {
    let data = data();
    let cfg = cfg(BalanceScope::Global, 0.0);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ck");
    // Two ranks train two steps and save.
    let paths = on_ranks(2, |d| {
        let mut tr = Trainer::distributed(cfg.clone(), train_cfg(2), "d".into(), d).unwrap();
        tr.step(&data).unwrap();
        tr.step(&data).unwrap();
        tr.save(&root, None).unwrap()
    });
    assert_eq!(paths[0], paths[1]);
    let ((want, _), _) = single(&cfg, 4, 3, &data);
    let third = |trace: &[f64]| assert_close("resumed third step", trace[0], want[2].0, 1e-5);
    // One process resumes (batch 4 = the global batch) ...
    let loaded = checkpoint::load(&paths[0]).unwrap();
    let st = state_with_batch(&loaded, 4);
    let ck = checkpoint::Checkpoint { state: Some(serde_json::to_value(st).unwrap()), ..loaded };
    let mut one = Trainer::resume(ck, None).unwrap();
    third(&[one.step(&data).unwrap().loss]);
    // ... and so do four ranks with one sequence each.
    let losses = on_ranks(4, |d| {
        let loaded = checkpoint::load_sharded(&paths[0], &d.shard).unwrap();
        let st = state_with_batch(&loaded, 1);
        let ck = checkpoint::Checkpoint { state: Some(serde_json::to_value(st).unwrap()), ..loaded };
        let mut tr = Trainer::resume_distributed(ck, None, d).unwrap();
        tr.step(&data).unwrap().loss
    });
    losses.iter().for_each(|&l| third(&[l]));
    assert!(Path::new(&paths[0]).join("model.safetensors").is_file());
}

/// The saved training state with another per-rank batch (the global batch stays 4).
fn state_with_batch(ck: &checkpoint::Checkpoint, b: usize) -> moe_engine::train::TrainState {
    let mut st: moe_engine::train::TrainState = serde_json::from_value(ck.state.clone().unwrap()).unwrap();
    st.train.batch_size = b;
    st
}

#[test]
fn communication_volume_matches_the_formula() {
    let data = data();
    let cfg = cfg(BalanceScope::Global, 0.0);
    let (b, t, k, c) = (2, 8, cfg.num_experts_per_tok, cfg.hidden_size);
    let bytes = on_ranks(2, |d| {
        let mut tr = Trainer::distributed(cfg.clone(), train_cfg(b), "d".into(), d).unwrap();
        let m = tr.step(&data).unwrap();
        (tr.comm_bytes(), m)
    });
    // Per step and MoE layer, 4 all-to-alls (forward there and back, backward there and back)
    // each move every routed row once: tokens x K x hidden x 4 bytes, over all ranks.
    let tokens = 2 * b * t * train_cfg(b).grad_accum;
    let want = (4 * cfg.num_moe_layers() * tokens * k * c * 4) as u64;
    assert_eq!(bytes.iter().map(|x| x.0 .0).sum::<u64>(), want);
    assert!(bytes.iter().all(|x| x.0 .1 < x.0 .0));
    // The step's metrics carry the same volume, and the rows each rank's experts processed
    // add up to every routed row of the global batch.
    for (_, m) in &bytes {
        assert_eq!(m.comm_bytes, want);
        assert_eq!(m.rank_rows.iter().sum::<f64>(), (cfg.num_moe_layers() * tokens * k) as f64);
        assert!(m.rank_comm_s.len() == 2 && m.rank_comm_s.iter().all(|&s| s >= 0.0));
    }
}

#[test]
fn expert_parallel_generation_equals_one_process() {
    use moe_engine::generate::{generate_on, Sampling};
    use moe_engine::model::Model;
    use moe_engine::tokenizer::Tokenizer;
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path());
    let mut o = common::options(dir.path(), &corpus, "run", 20);
    o.train.lr = 1e-2;
    moe_engine::run::run(&o, &|_| {}).unwrap();
    let ck = checkpoint::load(&dir.path().join("run")).unwrap();
    let tk = Tokenizer::load(&ck.dir.join("tokenizer.json")).unwrap();
    let s = Sampling { temperature: 0.8, seed: 5, ..Default::default() };
    let model = Model::<f32>::new(ck.config.clone()).unwrap();
    let mut want = String::new();
    generate_on(&model, &ck.params, &tk, "the", 12, &s, &mut |p| want.push_str(p), None).unwrap();
    let texts = on_ranks(2, |d| {
        let model = Model::<f32>::sharded(ck.config.clone(), d.shard.clone()).unwrap();
        let params = take_shard(&Layout::new(&ck.config), &model.layout, &ck.params);
        let mut text = String::new();
        generate_on(&model, &params, &tk, "the", 12, &s, &mut |p| text.push_str(p), Some(d.comm.clone())).unwrap();
        text
    });
    assert!(!want.is_empty());
    assert_eq!(texts, vec![want.clone(), want]);
}

/// `--precision auto` in an expert-parallel job: the ranks measure together (their passes
/// exchange tokens) and reach one decision, which each then trains in.
#[test]
fn ranks_agree_on_the_automatic_precision() {
    use moe_engine::train::Precision;
    let cfg = cfg(BalanceScope::Global, 0.0);
    let data = data();
    let chosen = on_ranks(2, |d| {
        let tc = TrainConfig { precision: Precision::Auto, ..train_cfg(2) };
        let mut tr = Trainer::distributed(cfg.clone(), tc, "d".into(), d).unwrap();
        tr.step(&data).unwrap();
        (tr.state.train.precision, tr.precision_line())
    });
    assert_ne!(chosen[0].0, Precision::Auto, "{}", chosen[0].1);
    assert_eq!(chosen[0].0, chosen[1].0, "{} / {}", chosen[0].1, chosen[1].1);
    assert!(chosen[0].1.contains("auto: "), "{}", chosen[0].1);
}
