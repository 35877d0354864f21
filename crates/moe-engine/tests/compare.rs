//! `moe compare` and `moe upcycle`: variant derivation keeps the active compute, the time-to-loss
//! interpolation, upcycled models compute the dense model's function, and lockstep training
//! equals training each model alone.

mod common;
use common::{options, write_corpus};
use moe_engine::compare::report::{reach, rows};
use moe_engine::compare::spec::{dense_reference, preset_or_variant, Spec};
use moe_engine::compare::upcycle::upcycle;
use moe_engine::compare::{run, Budget, CompareOptions, ValPoint, Variant};
use moe_engine::config::ModelConfig;
use moe_engine::inspect::sizes;
use moe_engine::model::{Acts, KvCache, Model};
use moe_engine::params::Layout;
use std::path::Path;

fn quiet(_: &str) {}

fn dense() -> ModelConfig {
    ModelConfig { intermediate_size: 24, ..dense_reference(&ModelConfig::tiny()) }
}

#[test]
fn bench_names_are_presets_or_variants_of_their_dense_reference() {
    let default = ModelConfig::preset("default").unwrap();
    assert_eq!(preset_or_variant("default").unwrap(), default);
    let d = preset_or_variant("default/dense").unwrap();
    assert_eq!((d.num_local_experts, d.intermediate_size), (0, default.intermediate_size));
    let m = preset_or_variant("default/16x3+1").unwrap();
    assert_eq!((m.num_local_experts, m.num_experts_per_tok, m.moe_intermediate_size), (16, 3, 256));
    assert_eq!(m.shared_expert_intermediate_size, 256);
    for bad in ["nope/8x2", "default/8y2", "nope"] {
        assert!(preset_or_variant(bad).is_err(), "{bad} should be refused");
    }
}

#[test]
fn specs_keep_the_active_compute() {
    let d = dense();
    let router = |cfg: &ModelConfig| cfg.num_moe_layers() * cfg.num_local_experts * cfg.hidden_size;
    for (text, e, k, f, shared) in
        [("8x2", 8, 2, 12, 0), ("16x4", 16, 4, 6, 0), ("4x1", 4, 1, 24, 0), ("8x3+1", 8, 3, 6, 6)]
    {
        let cfg = Spec::parse(text).unwrap().config(&d).unwrap();
        assert_eq!(
            (
                cfg.num_local_experts,
                cfg.num_experts_per_tok,
                cfg.moe_intermediate_size,
                cfg.shared_expert_intermediate_size
            ),
            (e, k, f, shared),
            "{text}"
        );
        let (sd, sm) = (sizes(&d, 1, 16), sizes(&cfg, 1, 16));
        assert_eq!(sm.active_params, sd.active_params + router(&cfg), "{text}: active parameters differ from dense");
        assert!(sm.total_params > sd.total_params);
    }
    let explicit = Spec::parse("8x2:5").unwrap().config(&d).unwrap();
    assert_eq!(explicit.moe_intermediate_size, 5);
    assert_eq!(Spec::parse("dense").unwrap().config(&d).unwrap(), d);
    assert_eq!(Spec::parse("8x3+1@0.5").unwrap().budget, 0.5);
    assert_eq!(
        Spec::parse("8x3+1@0.5").unwrap().config(&d).unwrap(),
        Spec::parse("8x3+1").unwrap().config(&d).unwrap()
    );
    assert_eq!(Spec::parse("dense@0.25").unwrap().budget, 0.25);
    assert_eq!(Spec::parse("8x2").unwrap().budget, 1.0);
    for bad in ["8", "x2", "2x3", "8x0", "8x2:0", "8x2+q", "axb", "8x2@0", "8x2@1.5", "8x2@x", "8x2@-1"] {
        let e = Spec::parse(bad).unwrap_err().to_string();
        assert!(e.contains(bad) && e.contains("8x2"), "{bad}: {e}");
    }
}

fn vp(tokens: u64, seconds: f64, loss: f64) -> ValPoint {
    ValPoint { step: tokens / 10, tokens, seconds, loss }
}

#[test]
fn reach_interpolates_the_first_crossing() {
    let val = [vp(100, 1.0, 5.0), vp(200, 2.0, 4.0), vp(300, 4.0, 3.0), vp(400, 5.0, 3.5)];
    assert_eq!(reach(&val, 4.5), Some((150.0, 1.5)));
    assert_eq!(reach(&val, 3.5), Some((250.0, 3.0)));
    assert_eq!(reach(&val, 6.0), Some((100.0, 1.0)));
    assert_eq!(reach(&val, 2.9), None);
}

fn logits(cfg: &ModelConfig, p: &[f32], tokens: &[u32]) -> Vec<f32> {
    let m = Model::<f32>::new(cfg.clone()).unwrap();
    let t = tokens.len();
    let mut a = Acts::new(cfg, 1, t, t);
    let mut cache = KvCache::new(cfg, 1, t);
    m.forward(p, &mut a, &mut cache, tokens, 0);
    a.logits[..t * cfg.vocab_size].to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn upcycled_model_computes_the_dense_function() {
    let d = dense();
    let dp: Vec<f32> = Layout::new(&d).init(3);
    let tokens: Vec<u32> = (0..12).map(|i| (i * 37 % 300) as u32).collect();
    let want = logits(&d, &dp, &tokens);
    // Copies: any renormalised top-k mixture of identical experts is the dense MLP.
    let copies =
        Spec::parse("4x2").unwrap().config(&d).map(|c| ModelConfig { moe_intermediate_size: 24, ..c }).unwrap();
    let p = upcycle(&d, &dp, &copies, 1, 0.02, 9).unwrap();
    assert!(max_diff(&logits(&copies, &p, &tokens), &want) < 1e-4);
    // Two half-width slices, both chosen with weight 1/2 (zero router): their sum is the dense MLP.
    let halves = Spec::parse("2x2").unwrap().config(&d).unwrap();
    assert_eq!(halves.moe_intermediate_size, 12);
    let p = upcycle(&d, &dp, &halves, 2, 0.0, 9).unwrap();
    assert!(max_diff(&logits(&halves, &p, &tokens), &want) < 1e-4);
    // A nonzero router moves the halves' weights away from 1/2: no longer the dense function.
    let p = upcycle(&d, &dp, &halves, 2, 0.5, 9).unwrap();
    assert!(max_diff(&logits(&halves, &p, &tokens), &want) > 1e-4);
    // Mismatches are refused with a reason.
    let e = upcycle(&d, &dp, &halves, 1, 0.0, 9).unwrap_err().to_string();
    assert!(e.contains("split"), "{e}");
    let e = upcycle(&copies, &p, &halves, 2, 0.0, 9).unwrap_err().to_string();
    assert!(e.contains("already an MoE"), "{e}");
    // A shared expert of the dense width (with and without its gate) and routed slices with a
    // random router: the shared expert is the dense MLP, the routed experts add nothing yet.
    for gate in [false, true] {
        let shared = ModelConfig { shared_expert_intermediate_size: 24, shared_expert_gate: gate, ..halves.clone() };
        let p = upcycle(&d, &dp, &shared, 2, 0.5, 9).unwrap();
        assert!(max_diff(&logits(&shared, &p, &tokens), &want) < 1e-4, "gate {gate}");
    }
    let narrow = ModelConfig { shared_expert_intermediate_size: 12, ..halves.clone() };
    let e = upcycle(&d, &dp, &narrow, 2, 0.0, 9).unwrap_err().to_string();
    assert!(e.contains("the dense width"), "{e}");
}

#[test]
fn lockstep_runs_equal_separate_runs_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path());
    let base = options(dir.path(), &corpus, "alone", 8);
    let d = dense();
    let moe = Spec::parse("4x2").unwrap().config(&d).unwrap();
    let o = CompareOptions {
        variants: vec![
            Variant { label: "dense".into(), model: d.clone(), init: None, budget: 1.0 },
            Variant { label: "4x2".into(), model: moe.clone(), init: None, budget: 1.0 },
        ],
        train: base.train.clone(),
        budget: Budget::Tokens(8 * 2 * 16),
        evals: 4,
        source: base.source.clone().unwrap(),
        tokenizer: None,
        out_dir: dir.path().join("cmp"),
        cache_dir: base.cache_dir.clone(),
        progress: false,
    };
    let runs = run(&o, &quiet).unwrap();
    assert_eq!(runs.iter().map(|r| r.steps).collect::<Vec<_>>(), vec![8, 8]);
    // Each variant trained alone with `moe train`'s loop gives the same validation losses.
    for r in &runs {
        let mut alone = options(dir.path(), &corpus, &format!("alone-{}", r.label), 8);
        alone.model = r.model.clone();
        alone.train.eval_every = 2;
        let s = moe_engine::run::run(&alone, &quiet).unwrap();
        let lock: Vec<(u64, f64)> = r.val.iter().map(|v| (v.step, v.loss)).collect();
        assert_eq!(lock, s.val, "{}: lockstep differs from a separate run", r.label);
        assert!(r.checkpoint.join("model.safetensors").is_file());
        assert_eq!(r.step_seconds.len(), 8);
    }
    let (md, plots) = moe_engine::compare::report::write(&o.out_dir, &runs, &o.train, "").unwrap();
    assert!(md.contains("| dense |") && md.contains("| 4x2 |"), "{md}");
    assert!(plots.iter().all(|p| std::fs::metadata(p).unwrap().len() > 1000));
    assert!(o.out_dir.join("compare.json").is_file());
    let table = rows(&runs, &o.train);
    assert_eq!(table[0].speedup_tokens, Some(1.0));
    assert!(table[1].total_params > table[0].total_params);
    // An existing comparison is not overwritten.
    let e = run(&o, &quiet).unwrap_err().to_string();
    assert!(e.contains("already holds a comparison"), "{e}");
    // A FLOPs budget gives each variant steps in inverse proportion to its FLOPs per token.
    let f = sizes(&moe, 2, 16).train_flops_per_token * 2.0 * 16.0 * 5.0;
    let o2 = CompareOptions { budget: Budget::Flops(f), out_dir: dir.path().join("cmp2"), ..o.clone() };
    let runs = run(&o2, &quiet).unwrap();
    assert_eq!(runs[1].steps, 5);
    let ratio = sizes(&moe, 2, 16).train_flops_per_token / sizes(&d, 2, 16).train_flops_per_token;
    assert_eq!(runs[0].steps, (5.0 * ratio).round() as u64);
    // A variant with half the budget trains half the steps, its schedule ending there.
    let mut o3 = CompareOptions { out_dir: dir.path().join("cmp3"), ..o.clone() };
    o3.variants[1].budget = 0.5;
    let runs = run(&o3, &quiet).unwrap();
    assert_eq!(runs.iter().map(|r| r.steps).collect::<Vec<_>>(), vec![8, 4]);
    assert_eq!(runs[1].val.last().map(|v| v.step), Some(4));
    let metrics = std::fs::read_to_string(runs[1].dir.join("metrics.jsonl")).unwrap();
    let lr = |line: &str| serde_json::from_str::<serde_json::Value>(line).unwrap()["m"]["lr"].as_f64();
    let last_lr = metrics.lines().filter_map(lr).next_back().unwrap();
    let full = std::fs::read_to_string(runs[0].dir.join("metrics.jsonl")).unwrap();
    let at4 = full.lines().filter_map(lr).nth(3).unwrap();
    assert!(
        last_lr < at4,
        "the half-budget schedule ends lower ({last_lr}) than the full one at the same step ({at4})"
    );
}

/// Options comparing [`dense`] with one other model on a corpus written into `dir`.
fn dense_and(dir: &Path, (label, model): (&str, ModelConfig), budget: Budget) -> CompareOptions {
    let corpus = write_corpus(dir);
    let base = options(dir, &corpus, "alone", 8);
    CompareOptions {
        variants: vec![
            Variant { label: "dense".into(), model: dense(), init: None, budget: 1.0 },
            Variant { label: label.into(), model, init: None, budget: 1.0 },
        ],
        train: base.train.clone(),
        budget,
        evals: 2,
        source: base.source.clone().unwrap(),
        tokenizer: None,
        out_dir: dir.join("cmp"),
        cache_dir: base.cache_dir.clone(),
        progress: false,
    }
}

#[test]
fn a_total_time_budget_gives_equal_tokens_capped_at_one_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dense();
    let moe = Spec::parse("4x2").unwrap().config(&d).unwrap();
    // Far more time than the data: the cap decides.
    let o = dense_and(dir.path(), ("4x2", moe), Budget::Total(1e6));
    let runs = run(&o, &quiet).unwrap();
    let data = moe_engine::dataset::Dataset::prepare(&o.source, d.vocab_size, &o.cache_dir, &quiet, false).unwrap();
    let per_step = (o.train.batch_size * o.train.seq_len * o.train.grad_accum) as u64;
    let epoch = data.train.len() as u64 / per_step;
    assert!(epoch >= 1);
    assert_eq!(runs.iter().map(|r| r.steps).collect::<Vec<_>>(), vec![epoch, epoch]);
    // Almost no time: one step each.
    let o2 = CompareOptions { budget: Budget::Total(1e-9), out_dir: dir.path().join("cmp2"), ..o.clone() };
    assert_eq!(run(&o2, &quiet).unwrap().iter().map(|r| r.steps).collect::<Vec<_>>(), vec![1, 1]);
}

/// An equal-time budget gives each model the steps its own measured step time allows: a model
/// with far more compute per token gets fewer; almost no time gives one step each.
#[test]
fn a_time_budget_gives_the_slower_model_fewer_steps() {
    let dir = tempfile::tempdir().unwrap();
    let d = dense();
    let big = ModelConfig { hidden_size: 4 * d.hidden_size, intermediate_size: 16 * d.intermediate_size, ..d };
    let o = dense_and(dir.path(), ("big", big), Budget::Seconds(0.5));
    let steps: Vec<u64> = run(&o, &quiet).unwrap().iter().map(|r| r.steps).collect();
    assert!(steps[1] >= 1 && steps[1] < steps[0], "steps {steps:?}");
    let o2 = CompareOptions { budget: Budget::Seconds(1e-9), out_dir: dir.path().join("cmp2"), ..o.clone() };
    assert_eq!(run(&o2, &quiet).unwrap().iter().map(|r| r.steps).collect::<Vec<_>>(), vec![1, 1]);
}

#[test]
fn layer_balance_sums_the_loads_of_the_steps() {
    use moe_engine::report::layer_balance;
    use moe_engine::train::StepMetrics;
    let step = |load: Vec<Vec<u32>>| StepMetrics { expert_load: load, ..Default::default() };
    // Layer 0: [3+1, 1+3] = even; layer 1: [4+4, 0+0] = everything on one expert.
    let steps = [step(vec![vec![3, 1], vec![4, 0]]), step(vec![vec![1, 3], vec![4, 0]])];
    assert_eq!(layer_balance(&steps), vec![1.0, 2.0]);
    assert!(layer_balance(&[step(vec![])]).is_empty(), "a dense run has no MoE layer");
}

/// A load that falls during a comparison (the first half of the rounds twice as slow) biases
/// plain time-to-loss against a model that reaches the loss early; the load-adjusted speed-up
/// is exactly the token speed-up over the step-cost ratio.
#[test]
fn load_adjusted_wall_clock_removes_a_changing_load() {
    use moe_engine::compare::VariantRun;
    let run = |label: &str, cost: f64, loss_at: fn(u64) -> f64| {
        let load = |j: usize| if j < 50 { 2.0 } else { 1.0 };
        let step_seconds: Vec<f64> = (0..100).map(|j| cost * load(j)).collect();
        let val = (1..=10)
            .map(|k| {
                let step = k * 10;
                let seconds = step_seconds[..step as usize].iter().sum();
                ValPoint { step, tokens: step * 1000, seconds, loss: loss_at(step) }
            })
            .collect();
        VariantRun {
            label: label.into(),
            model: ModelConfig::tiny(),
            steps: 100,
            val,
            step_seconds,
            dir: "d".into(),
            checkpoint: "c".into(),
            precision: Default::default(),
        }
    };
    // The MoE reaches the dense model's final loss (1.0) at step 40, with steps 1.25x as long.
    let runs = vec![run("dense", 1.0, |s| 2.0 - s as f64 / 100.0), run("moe", 1.25, |s| 2.0 - s as f64 / 40.0)];
    let tc = moe_engine::train::TrainConfig { batch_size: 1, seq_len: 1000, ..Default::default() };
    let table = rows(&runs, &tc);
    let m = &table[1];
    assert!((m.speedup_tokens.unwrap() - 2.5).abs() < 1e-9);
    // Plain: dense 150 s in all; the MoE 40 slow steps, 100 s: 1.5x instead of 2.5 / 1.25 = 2.
    assert!((m.speedup_time.unwrap() - 1.5).abs() < 1e-9, "{m:?}");
    assert!((m.speedup_time_adjusted.unwrap() - 2.0).abs() < 1e-9, "{m:?}");
    assert!((table[0].speedup_time_adjusted.unwrap() - 1.0).abs() < 1e-12);
}
