//! Bad input gets a one-line error that names the problem and the fix, never a panic, and a
//! broken or interrupted checkpoint never loads as valid.

mod common;
use common::{options, tiny_model, write_corpus};
use moe_engine::checkpoint;
use moe_engine::config::ModelConfig;
use moe_engine::corpus::{self, Source};
use moe_engine::run::{run, RunOptions};
use moe_engine::Error;
use std::path::Path;

fn one_line(e: &Error) -> String {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "error spans several lines: {msg}");
    msg
}

fn quiet(_: &str) {}

#[test]
fn missing_empty_and_non_utf8_corpora() {
    let dir = tempfile::tempdir().unwrap();
    let e = corpus::load(&Source::Path(dir.path().join("nope.txt")), false).unwrap_err();
    assert!(one_line(&e).contains("does not exist"), "{e}");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let e = corpus::load(&Source::Path(empty), false).unwrap_err();
    assert!(one_line(&e).contains("holds no text") && e.to_string().contains("--data"), "{e}");
    let bin = dir.path().join("bin.txt");
    std::fs::write(&bin, b"hello \xff\xfe world").unwrap();
    let e = corpus::load(&Source::Path(bin), false).unwrap_err();
    let msg = one_line(&e);
    assert!(msg.contains("bin.txt") && msg.contains("UTF-8") && msg.contains("offset 6"), "{msg}");
    let empty_dir = dir.path().join("d");
    std::fs::create_dir(&empty_dir).unwrap();
    assert!(one_line(&corpus::load(&Source::Path(empty_dir), false).unwrap_err()).contains("no files"));
}

#[test]
fn corpus_too_small_for_the_context() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.txt");
    std::fs::write(&small, "a tiny corpus of a few words only.\n").unwrap();
    let mut o = options(dir.path(), &small, "run", 4);
    o.train.seq_len = 16;
    let e = run(&o, &quiet).unwrap_err();
    assert!(one_line(&e).contains("fewer than one window"), "{e}");
}

#[test]
fn unknown_preset_and_bad_configs() {
    let e = ModelConfig::preset("gigantic").unwrap_err();
    let msg = one_line(&e);
    assert!(msg.contains("gigantic") && msg.contains("bench-moe8x2"), "{msg}");
    let bad = ModelConfig { num_experts_per_tok: 5, ..ModelConfig::tiny() };
    assert!(one_line(&bad.validate().unwrap_err()).contains("top-k"));
    let bad = ModelConfig { num_attention_heads: 3, ..ModelConfig::tiny() };
    assert!(one_line(&bad.validate().unwrap_err()).contains("divisible"));
    // the config_json fuzz target's find: a count of 5 x 10^13 was walked layer by layer
    let bad = ModelConfig { num_hidden_layers: 49_999_999_999_996, ..ModelConfig::tiny() };
    assert!(one_line(&bad.validate().unwrap_err()).contains("num_hidden_layers must be at most"));
    // sizes whose products overflowed the size arithmetic (or asked for petabytes)
    for bad in [
        ModelConfig { hidden_size: 1 << 40, ..ModelConfig::tiny() },
        ModelConfig { vocab_size: 1 << 45, ..ModelConfig::tiny() },
        ModelConfig { num_local_experts: 1 << 40, ..ModelConfig::tiny() },
        ModelConfig { moe_intermediate_size: usize::MAX, ..ModelConfig::tiny() },
        ModelConfig { max_position_embeddings: usize::MAX, ..ModelConfig::tiny() },
    ] {
        assert!(one_line(&bad.validate().unwrap_err()).contains("parameters"), "{bad:?}");
    }
    // RoPE tables of 1.8 x 10^9 positions (14 GB)
    let bad = ModelConfig { max_position_embeddings: 1_777_777_717, ..ModelConfig::tiny() };
    assert!(one_line(&bad.validate().unwrap_err()).contains("lower max_position_embeddings"));
    let bad = ModelConfig { router_aux_loss_coef: -1.0, ..ModelConfig::tiny() };
    assert!(one_line(&bad.validate().unwrap_err()).contains("router_aux_loss_coef"));
    // RoPE scaling from a file: a factor of 0 would fill the tables with infinities
    for (scaling, says) in [
        (serde_json::json!({"rope_type": "linear", "factor": 0.0}), "`factor` is 0"),
        (
            serde_json::json!({"rope_type": "yarn", "factor": -2.0, "original_max_position_embeddings": 8}),
            "`factor` is -2",
        ),
        (
            serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
            "original_max_position_embeddings": 8}),
            "high_freq_factor",
        ),
        (serde_json::json!({"rope_type": "ntk"}), "not supported"),
    ] {
        let bad = ModelConfig { rope_scaling: Some(scaling), ..ModelConfig::tiny() };
        let msg = one_line(&bad.validate().unwrap_err());
        assert!(msg.contains("rope_scaling") && msg.contains(says), "{msg}");
    }
    let bad = ModelConfig { layer_types: vec![moe_engine::config::LayerType::FullAttention], ..ModelConfig::tiny() };
    assert!(one_line(&bad.validate().unwrap_err()).contains("layer_types lists 1 layers"));
}

/// Trains 4 steps and returns the run directory.
fn trained(dir: &Path) -> std::path::PathBuf {
    let corpus = write_corpus(dir);
    let o = options(dir, &corpus, "run", 4);
    run(&o, &quiet).unwrap();
    o.out_dir
}

#[test]
fn corrupt_truncated_and_mismatched_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = trained(dir.path());
    let ck = checkpoint::resolve(&run_dir).unwrap();
    assert!(checkpoint::load(&ck).is_ok());
    // The parsers' own checks, which also guard checkpoints without a checksum manifest.
    std::fs::remove_file(ck.join(moe_engine::checksum::MANIFEST)).unwrap();
    let weights = ck.join("model.safetensors");
    let good = std::fs::read(&weights).unwrap();

    std::fs::write(&weights, &good[..good.len() / 2]).unwrap();
    let msg = one_line(&checkpoint::load(&ck).err().unwrap());
    assert!(msg.contains("model.safetensors") && msg.contains("corrupt or truncated"), "{msg}");

    std::fs::write(&weights, b"garbage").unwrap();
    assert!(one_line(&checkpoint::load(&ck).err().unwrap()).contains("not a valid safetensors"));
    std::fs::write(&weights, &good).unwrap();

    // Config and weights that do not belong together.
    let cfg_path = ck.join("config.json");
    let good_cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let other = ModelConfig { moe_intermediate_size: 8, ..tiny_model() };
    std::fs::write(&cfg_path, serde_json::to_string(&other).unwrap()).unwrap();
    let msg = one_line(&checkpoint::load(&ck).err().unwrap());
    assert!(
        msg.contains("mlp.experts.gate_proj") && msg.contains("[4, 8, 16]") && msg.contains("[4, 12, 16]"),
        "{msg}"
    );
    std::fs::write(&cfg_path, "{ not json").unwrap();
    assert!(one_line(&checkpoint::load(&ck).err().unwrap()).contains("invalid config"));
    std::fs::write(&cfg_path, good_cfg).unwrap();
    assert!(checkpoint::load(&ck).is_ok());

    let msg = one_line(&checkpoint::load(&dir.path().join("nowhere")).err().unwrap());
    assert!(msg.contains("no checkpoint here"), "{msg}");
}

#[test]
fn one_flipped_byte_in_any_checkpoint_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let ck = checkpoint::resolve(&trained(dir.path())).unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(&ck).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for f in ["model.safetensors", "optimizer.safetensors", "config.json", "state.json", "tokenizer.json"] {
        assert!(names.iter().any(|n| n == f), "{f} missing from {names:?}");
    }
    for name in &names {
        let path = ck.join(name);
        let good = std::fs::read(&path).unwrap();
        // The first, a middle and the last byte: header, data and trailer of every file.
        for at in [0, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let msg =
                one_line(&checkpoint::load(&ck).err().unwrap_or_else(|| panic!("{name}: byte {at} flipped, loaded")));
            assert!(msg.contains(name.as_str()) && msg.contains("corrupt"), "{name} byte {at}: {msg}");
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        let msg = one_line(&checkpoint::load(&ck).err().unwrap());
        assert!(msg.contains(name.as_str()) && msg.contains("corrupt"), "{name} truncated: {msg}");
        std::fs::write(&path, &good).unwrap();
        assert!(checkpoint::load(&ck).is_ok());
    }
    // A listed file that disappeared is named too.
    std::fs::remove_file(ck.join("state.json")).unwrap();
    let msg = one_line(&checkpoint::load(&ck).err().unwrap());
    assert!(msg.contains("state.json") && msg.contains("missing"), "{msg}");
}

#[test]
fn interrupted_checkpoint_write_leaves_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = trained(dir.path());
    let root = run_dir.join("checkpoints");
    let before = checkpoint::resolve(&run_dir).unwrap();
    // A writer killed mid-way leaves only its temporary directory behind.
    let tmp = root.join(".step-0000008.tmp-4242");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("model.safetensors"), b"partial").unwrap();
    assert_eq!(checkpoint::resolve(&run_dir).unwrap(), before);
    let ck = checkpoint::load(&run_dir).unwrap();
    assert_eq!(ck.dir, before);
    // And `latest` naming a checkpoint that never appeared is an error, not a panic.
    std::fs::write(root.join("latest"), "step-0000008").unwrap();
    assert!(one_line(&checkpoint::load(&run_dir).err().unwrap()).contains("step-0000008"));
}

#[test]
fn refuses_to_overwrite_or_resume_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path());
    let o = options(dir.path(), &corpus, "run", 4);
    run(&o, &quiet).unwrap();
    let msg = one_line(&run(&o, &quiet).unwrap_err());
    assert!(msg.contains("already holds a training run") && msg.contains("--resume"), "{msg}");
    let mut fresh = options(dir.path(), &corpus, "empty", 4);
    fresh.resume = true;
    let msg = one_line(&run(&fresh, &quiet).unwrap_err());
    assert!(msg.contains("nothing to resume"), "{msg}");
    // Resuming on another corpus is refused.
    let other = dir.path().join("other.txt");
    std::fs::write(&other, std::fs::read_to_string(&corpus).unwrap().replace("expert", "worker")).unwrap();
    let mut wrong = options(dir.path(), &other, "run", 8);
    wrong.resume = true;
    let msg = one_line(&run(&wrong, &quiet).unwrap_err());
    assert!(msg.contains("another corpus"), "{msg}");
}

#[test]
fn resume_remembers_its_data_and_says_when_it_changed() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path());
    // Spelled unlike the absolute path the run records, which must name the same corpus.
    let spelled = corpus.parent().unwrap().join(".").join(corpus.file_name().unwrap());
    let mut o = options(dir.path(), &spelled, "run", 8);
    o.stop_after = Some(4);
    run(&o, &quiet).unwrap();
    // --resume without --data continues on the recorded corpus.
    let again = RunOptions { source: None, resume: true, stop_after: None, ..o.clone() };
    let s = run(&again, &quiet).unwrap();
    assert!(s.finished && s.metrics.last().unwrap().step == 8);
    // The corpus edited in place since: the run names it and says it changed.
    let mut o2 = options(dir.path(), &corpus, "run2", 8);
    o2.stop_after = Some(4);
    run(&o2, &quiet).unwrap();
    std::fs::write(&corpus, std::fs::read_to_string(&corpus).unwrap().replace("expert", "worker")).unwrap();
    let resumed = RunOptions { source: None, resume: true, stop_after: None, ..o2 };
    let msg = one_line(&run(&resumed, &quiet).unwrap_err());
    let abs = std::fs::canonicalize(&corpus).unwrap();
    assert!(msg.contains("has changed since") && msg.contains(&abs.display().to_string()), "{msg}");
}

#[test]
fn bad_routing_configs() {
    use moe_engine::config::RouterKind;
    let msg = |c: ModelConfig| one_line(&c.validate().unwrap_err());
    let ds = ModelConfig { router: RouterKind::SigmoidGroup, num_local_experts: 4, n_group: 2, ..ModelConfig::tiny() };
    assert!(msg(ModelConfig { topk_group: 3, ..ds.clone() }).contains("topk_group 3 must be in 1..=2"));
    assert!(msg(ModelConfig { n_group: 3, ..ds.clone() }).contains("does not divide"));
    assert!(msg(ModelConfig { capacity_factor: -1.0, ..ModelConfig::tiny() }).contains("capacity_factor"));
    assert!(msg(ModelConfig { router: RouterKind::Switch, ..ModelConfig::tiny() })
        .contains("switch router needs num_experts_per_tok = 1"));
    assert!(msg(ModelConfig { router_jitter_noise: 1.5, ..ModelConfig::tiny() }).contains("router_jitter_noise"));
    assert!(msg(ModelConfig { bias_update_rate: -0.1, ..ModelConfig::tiny() }).contains("bias_update_rate"));
    assert!(msg(ModelConfig { num_experts_per_tok: 3, topk_group: 1, ..ds }).contains("exceeds the 2 experts"));
    // An unknown router in a config file names the valid ones.
    let mut v = serde_json::to_value(ModelConfig::tiny()).unwrap();
    v["router"] = "random".into();
    let e = serde_json::from_value::<ModelConfig>(v).unwrap_err().to_string();
    assert!(e.contains("unknown variant `random`") && e.contains("sigmoid_group"), "{e}");
}
