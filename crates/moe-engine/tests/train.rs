//! Training runs end to end on a generated corpus: resuming is exact, the loss falls, and
//! checkpoints, metrics and the plot are written.

mod common;
use common::{options, write_corpus};
use moe_engine::checkpoint;
use moe_engine::run::run;

fn quiet(_: &str) {}

#[test]
fn resume_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path());
    let whole = run(&options(dir.path(), &corpus, "whole", 10), &quiet).unwrap();
    let mut first = options(dir.path(), &corpus, "split", 10);
    first.stop_after = Some(5);
    let a = run(&first, &quiet).unwrap();
    assert!(!a.finished);
    let mut second = options(dir.path(), &corpus, "split", 10);
    second.resume = true;
    let b = run(&second, &quiet).unwrap();
    assert!(b.finished);
    let split: Vec<(u64, f64)> = a.metrics.iter().chain(&b.metrics).map(|m| (m.step, m.loss)).collect();
    let one: Vec<(u64, f64)> = whole.metrics.iter().map(|m| (m.step, m.loss)).collect();
    assert_eq!(one.len(), 10);
    assert_eq!(split, one, "resumed run differs from the uninterrupted one");
    assert_eq!(whole.val.last(), b.val.last());
    // The resumed run's metrics log holds each step once.
    let log = std::fs::read_to_string(dir.path().join("split/metrics.jsonl")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("\"kind\":\"train\"")).count(), 10);
}

#[test]
fn loss_falls_and_artifacts_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path());
    let mut o = options(dir.path(), &corpus, "run", 60);
    o.train.lr = 1e-2;
    o.train.eval_every = 30;
    o.sample_tokens = 10;
    let s = run(&o, &quiet).unwrap();
    let first = s.metrics[0].ce;
    let last_val = s.val.last().unwrap().1;
    assert!(last_val < first - 1.0, "validation loss {last_val} did not fall well below the initial {first}");
    assert!(
        last_val < s.unigram_entropy,
        "validation loss {last_val} is not below the unigram entropy {}",
        s.unigram_entropy
    );
    assert!(s.plot.is_file() && std::fs::metadata(&s.plot).unwrap().len() > 1000);
    assert!(s.sample.as_deref().is_some_and(|t| t.len() > 3));
    let ck = checkpoint::load(&dir.path().join("run")).unwrap();
    assert!(ck.moments.is_some() && ck.state.is_some());
    assert!(ck.dir.join("tokenizer.json").is_file());
    // Every logged step carries per-layer expert loads.
    let log = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(line["m"]["expert_load"].as_array().unwrap().len(), 2);
}

#[test]
fn gradient_accumulation_equals_a_larger_batch() {
    // Dense model (the balancing loss is per micro-batch, so MoE runs would differ by design):
    // 2 micro-batches of 1 sequence give the same step as 1 batch of 2 sequences.
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path());
    let mut big = options(dir.path(), &corpus, "big", 6);
    big.model.num_local_experts = 0;
    let mut acc = options(dir.path(), &corpus, "acc", 6);
    acc.model.num_local_experts = 0;
    acc.train.batch_size = 1;
    acc.train.grad_accum = 2;
    let (a, b) = (run(&big, &quiet).unwrap(), run(&acc, &quiet).unwrap());
    for (x, y) in a.metrics.iter().zip(&b.metrics) {
        assert!((x.loss - y.loss).abs() < 1e-5 * x.loss, "step {}: {} vs {}", x.step, x.loss, y.loss);
        assert!((x.grad_norm - y.grad_norm).abs() < 1e-4 * x.grad_norm);
    }
    assert_eq!(a.metrics.last().unwrap().tokens, b.metrics.last().unwrap().tokens);
}

#[test]
fn aux_loss_free_bias_moves_toward_balance() {
    use moe_engine::params::FfnSpans;
    use moe_engine::train::{TrainConfig, Trainer};
    let cfg =
        moe_engine::config::ModelConfig { bias_update_rate: 0.01, router_aux_loss_coef: 0.0, ..common::tiny_model() };
    let tc = TrainConfig { steps: 2, batch_size: 2, seq_len: 16, ..TrainConfig::default() };
    let mut tr = Trainer::new(cfg, tc, "test".into()).unwrap();
    let data: Vec<u32> = (0..4000).map(|i| (i * 7 % 300) as u32).collect();
    let m = tr.step(&data).unwrap();
    let bias_spans: Vec<_> = tr
        .model
        .layout
        .layers
        .iter()
        .filter_map(|l| if let FfnSpans::Moe(s) = &l.ffn { s.selection_bias } else { None })
        .collect();
    assert_eq!(bias_spans.len(), 2);
    for (span, load) in bias_spans.iter().zip(&m.expert_load) {
        let mean = load.iter().sum::<u32>() as f64 / load.len() as f64;
        for (&b, &c) in span.of(&tr.params).iter().zip(load) {
            let want = if (c as f64) < mean {
                0.01
            } else if (c as f64) > mean {
                -0.01
            } else {
                0.0
            };
            assert!((b - want).abs() < 1e-7, "load {c} (mean {mean}): bias {b}, want {want}");
        }
    }
}

#[test]
fn routes_separate_prose_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path());
    let mut text = std::fs::read_to_string(&corpus).unwrap();
    text += "```\nfn main() { let x = 1; }\n```\n";
    std::fs::write(&corpus, text).unwrap();
    let o = options(dir.path(), &corpus, "run", 4);
    run(&o, &quiet).unwrap();
    let ck = checkpoint::load(&dir.path().join("run")).unwrap();
    let tk = moe_engine::tokenizer::Tokenizer::load(&ck.dir.join("tokenizer.json")).unwrap();
    let docs = moe_engine::corpus::load(&moe_engine::corpus::Source::Path(corpus), false).unwrap();
    assert_eq!(docs[0].code.len(), 1);
    let model = moe_engine::model::Model::<f32>::new(ck.config).unwrap();
    let (domain, by_doc) = moe_engine::routes::analyse(&model, &ck.params, &tk, &docs, 100_000).unwrap();
    let (prose, code) = (domain.tokens[0], domain.tokens[1]);
    assert!(prose > 1000 && code > 5 && code < 40, "prose {prose}, code {code}");
    // Every token's K assignments are counted, per layer.
    for l in 0..2 {
        let total: u64 = domain.counts.iter().map(|g| g[l].iter().sum::<u64>()).sum();
        assert_eq!(total, 2 * (prose + code));
    }
    assert_eq!(by_doc.tokens[0], prose + code);
    assert!(dir.path().join("run/expert_load.png").is_file() && dir.path().join("run/load_balance.png").is_file());
    domain.plot("t", &dir.path().join("r.png")).unwrap();
    assert!(domain.markdown().contains("| code |"));
}

#[test]
fn recomputation_trains_exactly_as_without() {
    use moe_engine::train::{TrainConfig, Trainer};
    let cfg = moe_engine::config::ModelConfig { router_jitter_noise: 0.05, ..common::tiny_model() };
    let data: Vec<u32> = (0..4000).map(|i| (i * 7 % 300) as u32).collect();
    let train = |recompute: bool| {
        let tc = TrainConfig { steps: 4, batch_size: 4, seq_len: 16, replicas: 2, recompute, ..TrainConfig::default() };
        let mut tr = Trainer::new(cfg.clone(), tc, "test".into()).unwrap();
        let losses: Vec<f64> = (0..4).map(|_| tr.step(&data).unwrap().loss).collect();
        (losses, tr.params)
    };
    let (plain, re) = (train(false), train(true));
    assert_eq!(plain.0, re.0);
    assert!(plain.1 == re.1, "the weights differ after 4 steps");
}
