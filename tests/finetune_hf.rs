//! `moe train --init HF_DIR`: Hugging Face checkpoints (the tiny Llama fixture in bf16, the
//! sharded Mixtral one, OLMoE with its q/k norms, DeepSeek-V3 with latent attention, gpt-oss) fine-tuned on a text with their own tokenizer. A run starts from
//! exactly the checkpoint's weights, lowers the loss on the text, and resumes with the
//! tokenizer it recorded.

use std::process::Command;

fn moe(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_moe")).args(args).output().expect("run moe");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

const LLAMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/moe-infer/tests/fixtures/llama_dense");
const MIXTRAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/moe-infer/tests/fixtures/mixtral");
const OLMOE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/moe-infer/tests/fixtures/olmoe_noclip");
const DEEPSEEK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/moe-infer/tests/fixtures/deepseek_v3_plain");
const GPT_OSS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/moe-infer/tests/fixtures/gpt_oss");

fn losses(run: &std::path::Path) -> Vec<f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "train")
        .filter_map(|v| v["m"]["ce"].as_f64())
        .collect()
}

/// A short text repeated, to fine-tune on: `dir`/t.txt.
fn write_text(dir: &std::path::Path) -> std::path::PathBuf {
    let text = dir.join("t.txt");
    let line = "the router sends each token to a few experts; the model adds their outputs.\n\n";
    std::fs::write(&text, line.repeat(200)).unwrap();
    text
}

#[test]
fn a_hugging_face_checkpoint_is_fine_tuned_from_its_own_weights() {
    let dir = tempfile::tempdir().unwrap();
    let text = write_text(dir.path());
    let t = text.to_str().unwrap();
    let cache = dir.path().join("cache");
    let c = cache.to_str().unwrap();
    let common = [
        "--data",
        t,
        "--cache-dir",
        c,
        "--batch-size",
        "4",
        "--seq-len",
        "16",
        "--eval-every",
        "10",
        "--log-every",
        "1",
        "--sample-tokens",
        "0",
    ];

    // lr 1e-30 (updates far below the weights' f32 resolution) and no weight decay: the
    // checkpoint holds the fixture's weights exactly
    for (i, from) in [LLAMA, MIXTRAL, OLMOE, DEEPSEEK, GPT_OSS].into_iter().enumerate() {
        let frozen = dir.path().join(format!("frozen{i}"));
        let mut args = vec!["train", "--init", from, "--steps", "2", "--lr", "1e-30", "--weight-decay", "0"];
        args.extend(common);
        args.extend(["--out", frozen.to_str().unwrap()]);
        let (code, log) = moe(&args);
        assert_eq!(code, 0, "{from}: {log}");
        let ck = moe_engine::checkpoint::load(&frozen).unwrap();
        let want = moe_infer::hf_train::read_checkpoint(std::path::Path::new(from)).unwrap();
        assert_eq!(ck.config.num_local_experts, want.config.num_local_experts);
        assert!(ck.params == want.params, "{from}: the run did not start from the checkpoint's weights");
    }

    // trained: the loss on the text falls; stopped halfway, it resumes with the recorded tokenizer
    let run = dir.path().join("ft");
    let mut args = vec!["train", "--init", LLAMA, "--steps", "30", "--stop-after", "15", "--lr", "3e-3"];
    args.extend(common);
    args.extend(["--out", run.to_str().unwrap()]);
    let (code, log) = moe(&args);
    assert_eq!(code, 0, "{log}");
    let mut args = vec!["train", "--resume", "--steps", "30"];
    args.extend(["--out", run.to_str().unwrap(), "--cache-dir", c, "--sample-tokens", "0"]);
    let (code, log) = moe(&args);
    assert_eq!(code, 0, "{log}");
    let l = losses(&run);
    assert_eq!(l.len(), 30, "{l:?}");
    let (first, last) = (l[..3].iter().sum::<f64>() / 3.0, l[27..].iter().sum::<f64>() / 3.0);
    assert!(last < first - 0.5, "fine-tuning did not lower the loss: {first:.3} -> {last:.3}");
}

/// Chat data (`--data x.jsonl` with `--init`): conversations rendered by the model's template,
/// loss on the assistant turns only; the loss falls, and `--resume` renders the same way.
#[test]
fn chat_conversations_fine_tune_on_the_assistant_turns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("chat.jsonl");
    let line = r#"{"messages": [{"role": "user", "content": "the router"}, {"role": "assistant", "content": "sends each token to a few experts"}]}"#;
    std::fs::write(&data, format!("{line}\n").repeat(300)).unwrap();
    let (run, cache) = (dir.path().join("chat"), dir.path().join("cache"));
    let (d, r, c) = (data.to_str().unwrap(), run.to_str().unwrap(), cache.to_str().unwrap());
    let common =
        ["--data", d, "--cache-dir", c, "--out", r, "--batch-size", "4", "--seq-len", "16", "--log-every", "1"];
    let mut args = vec!["train", "--init", LLAMA, "--steps", "40", "--stop-after", "20", "--lr", "3e-3"];
    args.extend(["--eval-every", "10", "--sample-tokens", "0"]);
    args.extend(common);
    let (code, log) = moe(&args);
    assert_eq!(code, 0, "{log}");
    let (code, log) =
        moe(&["train", "--resume", "--steps", "40", "--out", r, "--cache-dir", c, "--sample-tokens", "0"]);
    assert_eq!(code, 0, "{log}");
    let l = losses(&run);
    assert_eq!(l.len(), 40, "{l:?}");
    let (first, last) = (l[..3].iter().sum::<f64>() / 3.0, l[37..].iter().sum::<f64>() / 3.0);
    assert!(last < first - 0.5, "chat fine-tuning did not lower the loss: {first:.3} -> {last:.3}");
    let record = std::fs::read_to_string(run.join("run.json")).unwrap();
    assert!(record.contains("\"chat\":true"), "{record}");
}

/// LoRA (`--lora-rank`): the base weights stay exactly the checkpoint's while the loss falls;
/// the run resumes; `moe merge-lora` folds the adapters in, and the merged model computes what
/// the adapted one does; `moe export` merges on the fly.
#[test]
fn lora_fine_tunes_adapters_over_a_frozen_base_and_merges() {
    use moe_engine::model::{Acts, KvCache, Model};
    let dir = tempfile::tempdir().unwrap();
    let text = write_text(dir.path());
    let (run, cache) = (dir.path().join("lora"), dir.path().join("cache"));
    let (t, r, c) = (text.to_str().unwrap(), run.to_str().unwrap(), cache.to_str().unwrap());
    let common = ["--out", r, "--cache-dir", c, "--sample-tokens", "0"];
    let mut args = vec!["train", "--init", MIXTRAL, "--lora-rank", "4", "--lora-targets", "attn,experts,router"];
    args.extend(["--data", t, "--batch-size", "4", "--seq-len", "16", "--log-every", "1", "--eval-every", "10"]);
    args.extend(["--steps", "30", "--stop-after", "15", "--lr", "1e-2"]);
    args.extend(common);
    let (code, log) = moe(&args);
    assert_eq!(code, 0, "{log}");
    let args_first = args.clone();
    let mut args = vec!["train", "--resume", "--steps", "30"];
    args.extend(common);
    let (code, log) = moe(&args);
    assert_eq!(code, 0, "{log}");
    let l = losses(&run);
    assert_eq!(l.len(), 30, "{l:?}");
    let (first, last) = (l[..3].iter().sum::<f64>() / 3.0, l[27..].iter().sum::<f64>() / 3.0);
    assert!(last < first - 0.5, "LoRA did not lower the loss: {first:.3} -> {last:.3}");
    // the resumed run (adapters and their moments from the checkpoint) is the uninterrupted one
    let whole = dir.path().join("whole");
    let w = whole.to_str().unwrap();
    let args: Vec<&str> =
        args_first.iter().map(|a| if *a == r { w } else { a }).filter(|a| *a != "--stop-after" && *a != "15").collect();
    let (code, log) = moe(&args);
    assert_eq!(code, 0, "{log}");
    assert_eq!(losses(&whole), l, "resuming a LoRA run changed its losses");

    let ck = moe_engine::checkpoint::load(&run).unwrap();
    let lora = ck.config.lora.clone().expect("the run recorded its adapters");
    assert_eq!((lora.rank, lora.alpha, lora.targets.len()), (4, 8.0, 3));
    let layout = moe_engine::params::Layout::new(&ck.config);
    let base = moe_infer::hf_train::read_checkpoint(std::path::Path::new(MIXTRAL)).unwrap();
    assert!(ck.params[..layout.base_total] == base.params[..], "the frozen base changed");
    assert!(ck.params[layout.base_total..].iter().any(|&v| v != 0.0));

    let merged = dir.path().join("merged");
    let (code, log) = moe(&["merge-lora", "--checkpoint", r, "--out", merged.to_str().unwrap()]);
    assert_eq!(code, 0, "{log}");
    let mk = moe_engine::checkpoint::load(&merged).unwrap();
    assert!(mk.config.lora.is_none() && mk.params.len() == layout.base_total);
    assert!(mk.dir.join("tokenizer.json").is_file());
    let logits = |cfg: &moe_engine::config::ModelConfig, p: &[f32]| {
        let m = Model::<f32>::new(cfg.clone()).unwrap();
        let x: Vec<u32> = (0..16).map(|i| (i * 7 % 100) as u32).collect();
        let (mut a, mut kv) = (Acts::new(&m.cfg, 1, 16, 16), KvCache::new(&m.cfg, 1, 16));
        m.forward(p, &mut a, &mut kv, &x, 0);
        a.logits[..16 * m.cfg.vocab_size].to_vec()
    };
    let (want, got) = (logits(&ck.config, &ck.params), logits(&mk.config, &mk.params));
    let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "merged logits differ by {worst}");
    let before = logits(&mk.config, &base.params);
    assert!(want.iter().zip(&before).any(|(a, b)| (a - b).abs() > 1e-2), "the adapters changed nothing");

    let (code, log) = moe(&["merge-lora", "--checkpoint", merged.to_str().unwrap(), "--out", "/nonexistent/x"]);
    assert!(code != 0 && log.contains("has no LoRA adapters"), "{log}");
    // over a bf16 base: the checkpoint holds the base's matrices rounded to bf16, the rest as given
    let b16 = dir.path().join("bf16");
    let mut args = vec!["train", "--init", MIXTRAL, "--lora-rank", "4", "--lora-base", "bf16", "--steps", "10"];
    args.extend(["--data", t, "--batch-size", "4", "--seq-len", "16", "--lr", "1e-2", "--cache-dir", c]);
    args.extend(["--sample-tokens", "0", "--out", b16.to_str().unwrap()]);
    let (code, log) = moe(&args);
    assert_eq!(code, 0, "{log}");
    let bk = moe_engine::checkpoint::load(&b16).unwrap();
    let linear: Vec<_> = layout.linear_weights();
    for tsr in layout.tensors.iter().filter(|t| t.span.off < layout.base_total) {
        let (got, want) = (tsr.span.of(&bk.params), tsr.span.of(&base.params));
        if linear.contains(&tsr.span) {
            assert!(got.iter().all(|v| v.to_bits() & 0xffff == 0), "{} is not bf16", tsr.name);
            assert!(got.iter().zip(want).all(|(g, w)| (g - w).abs() <= w.abs() / 128.0), "{}", tsr.name);
        } else {
            assert!(got == want, "{} changed", tsr.name);
        }
    }
    // a target the model lacks is refused before anything runs
    let bad = dir.path().join("bad");
    let args = ["train", "--init", LLAMA, "--lora-rank", "4", "--lora-targets", "experts", "--data", t, "--out"];
    let (code, log) = moe(&[&args[..], &[bad.to_str().unwrap()]].concat());
    assert!(code != 0 && log.contains("`experts` does not exist"), "{log}");
    let hf = dir.path().join("hf");
    let (code, log) = moe(&["export", "--checkpoint", r, "--out", hf.to_str().unwrap()]);
    assert_eq!(code, 0, "{log}");
    assert!(hf.join("model.safetensors").is_file() || hf.join("model.safetensors.index.json").is_file());
}
