//! `moe export`: a trained MoE checkpoint written as a Hugging Face Mixtral checkpoint runs in
//! the inference engine with the training engine's logits (1e-4), and `moe perplexity` scores a
//! text with it; models Mixtral cannot express are refused with the reason.

use moe_engine::config::ModelConfig;
use moe_engine::model::{Acts, KvCache, Model};
use moe_engine::rng::Rng;
use moe_engine::train::{TrainConfig, Trainer};
use std::process::Command;

fn moe(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_moe")).args(args).output().expect("run moe");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn trained(cfg: ModelConfig, dir: &std::path::Path) -> std::path::PathBuf {
    let tc = TrainConfig { steps: 3, batch_size: 2, seq_len: 16, warmup_steps: 1, lr: 1e-2, ..TrainConfig::default() };
    let mut tr = Trainer::new(cfg, tc, "d".into()).unwrap();
    let mut rng = Rng::new(1);
    let data: Vec<u32> = (0..2000).map(|_| rng.below(200) as u32).collect();
    for _ in 0..3 {
        tr.step(&data).unwrap();
    }
    tr.save(&dir.join("ck"), None).unwrap()
}

#[test]
fn exported_mixtral_gives_the_training_engines_logits() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig { num_local_experts: 4, num_experts_per_tok: 2, norm_topk_prob: true, ..ModelConfig::tiny() };
    let ck = trained(cfg.clone(), dir.path());
    let out = dir.path().join("hf");
    let (code, _, err) = moe(&["export", "--checkpoint", ck.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let ids = [3u32, 17, 5, 99, 42, 7, 120, 1];
    let loaded = moe_engine::checkpoint::load(&ck).unwrap();
    let model = Model::<f32>::new(loaded.config.clone()).unwrap();
    let mut acts = Acts::new(&model.cfg, 1, ids.len(), ids.len());
    let mut cache = KvCache::new(&model.cfg, 1, ids.len());
    model.forward(&loaded.params, &mut acts, &mut cache, &ids, 0);
    let want = &acts.logits[..ids.len() * cfg.vocab_size];
    let hf = moe_infer::Model::load(&out).unwrap();
    let got = hf.forward(&ids, &mut moe_infer::Cache::new(&hf.spec), true).unwrap();
    let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "exported logits differ by {diff}");
    // Exporting twice into the same directory is refused.
    let (code, _, err) = moe(&["export", "--checkpoint", ck.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("already holds a model"), "{err}");
}

#[test]
fn models_mixtral_cannot_express_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig {
        num_local_experts: 4,
        num_experts_per_tok: 2,
        shared_expert_intermediate_size: 16,
        ..ModelConfig::tiny()
    };
    let ck = trained(cfg, dir.path());
    let out = dir.path().join("hf");
    let (code, _, err) = moe(&["export", "--checkpoint", ck.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot be exported as Mixtral: it has a shared expert"), "{err}");
}

#[test]
fn perplexity_of_a_text() {
    let f = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/moe-infer/tests/fixtures/mixtral");
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "the router sends each token to a few experts. ".repeat(20)).unwrap();
    let (code, out, err) = moe(&["perplexity", "--model", f, "--text", text.to_str().unwrap(), "--window", "32"]);
    assert_eq!(code, 0, "{err}");
    let ppl: f64 = out.split("perplexity ").nth(1).unwrap().trim().parse().unwrap();
    // A random model over a vocabulary of 128: near-uniform, so near 128.
    assert!(ppl > 20.0 && ppl < 1000.0, "{out}");
    let empty = dir.path().join("e.txt");
    std::fs::write(&empty, "").unwrap();
    let (code, _, err) = moe(&["perplexity", "--model", f, "--text", empty.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("fewer than 2 tokens"), "{err}");
}
