//! The command line: bad input ends with one `error:` line and exit code 1 (2 for flag
//! errors, from clap), and the informational commands work.

use std::process::Command;

fn moe(args: &[&str]) -> (i32, String, String) {
    let cache = std::env::temp_dir().join(format!("moe-cli-cache-{}", std::process::id()));
    moe_with_cache(args, &cache)
}

/// `moe args` with its precision calibrations cached under `cache` (not the user's home).
fn moe_with_cache(args: &[&str], cache: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_moe")).args(args).env("MOE_CACHE_DIR", cache).output().expect("run moe");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn inspect_reports_total_and_active_parameters() {
    let (code, out, _) = moe(&["inspect", "bench-moe8x2"]);
    assert_eq!(code, 0);
    assert!(out.contains("35.02 M total") && out.contains("12.21 M active"), "{out}");
    let (code, dense, _) = moe(&["inspect", "bench-dense"]);
    assert_eq!(code, 0);
    // Equal active compute: the FLOPs per token differ only by the router (< 1%).
    let flops = |s: &str| -> f64 {
        let line = s.lines().find(|l| l.starts_with("FLOPs")).unwrap();
        line.split_whitespace().nth(3).unwrap().parse().unwrap()
    };
    let (m, d) = (flops(&out), flops(&dense));
    assert!(m >= d && (m - d) / d < 0.01, "moe {m} vs dense {d}");
}

#[test]
fn bad_input_gives_one_error_line() {
    for args in [
        vec!["inspect", "no-such-preset"],
        vec!["generate", "--checkpoint", "/nonexistent/run", "--prompt", "x"],
        vec!["train", "--data", "/nonexistent/corpus.txt", "--out", "/tmp/moe-cli-test-never"],
        vec!["train", "--experts", "4", "--top-k", "9", "--out", "/tmp/moe-cli-test-never"],
    ] {
        let (code, _, err) = moe(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let (code, _, err) = moe(&["train", "--preset", "huge"]);
    assert_eq!(code, 2, "clap rejects unknown presets: {err}");
    assert!(err.contains("bench-moe8x2"));
}

const HF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/moe-infer/tests/fixtures");

#[test]
fn hugging_face_model_commands() {
    let mixtral = format!("{HF}/mixtral");
    let (code, out, err) = moe(&["inspect", &mixtral]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("MixtralForCausalLM") && out.contains("top-2") && out.contains("active per token"), "{out}");
    // the files' count and the training form's formulas agree on total and active parameters
    // (and for DeepSeek-V3: latent attention, a dense layer, shared experts)
    for out in [out, moe(&["inspect", &format!("{HF}/deepseek_v3")]).1] {
        let counts: Vec<(&str, &str)> = out
            .lines()
            .filter(|l| l.trim_start().starts_with("parameters"))
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w[1], w[4])
            })
            .collect();
        assert!(out.contains("fine-tuned with `moe train --init`") && counts.len() == 2, "{out}");
        assert_eq!(counts[0], counts[1], "{out}");
    }
    // every family fixture has a training form now (OLMoE's with its clip_qkv)
    let (code, out, _) = moe(&["inspect", &format!("{HF}/olmoe")]);
    assert_eq!(code, 0);
    assert!(out.contains("fine-tuned with `moe train --init`") && !out.contains("not trainable"), "{out}");
    let (code, out, err) = moe(&["inspect", &format!("{HF}/llama_dense")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("not run by the inference engine") && out.contains("architecture      decoder-only, dense"),
        "{out}"
    );

    // greedy generation streams the text of transformers' greedy ids (scripts/hf_checkpoints.py)
    let (code, out, err) = moe(&[
        "generate",
        "--model",
        &mixtral,
        "--prompt",
        "the router sends a token to the experts",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("the router sends a token to the experts") && out.len() > 40, "{out}");
    assert!(err.contains("tokens/s") && err.contains("peak RSS"), "{err}");

    let (code, _, err) = moe(&["generate", "--model", &mixtral, "--chat", "--prompt", "hi", "--max-tokens", "4"]);
    assert_eq!(code, 0, "{err}");

    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("logits.npy");
    let (code, _, err) = moe(&["logits", "--model", &mixtral, "--ids", "1,2,3", "--out", npy.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let bytes = std::fs::read(&npy).unwrap();
    assert!(bytes.starts_with(b"\x93NUMPY") && String::from_utf8_lossy(&bytes[..128]).contains("'shape': (3, 128)"));
    assert_eq!(bytes.len(), 128 + 3 * 128 * 4);

    for args in [
        vec!["logits", "--model", "/nonexistent", "--ids", "1", "--out", "/tmp/never.npy"],
        vec!["logits", "--model", &mixtral, "--ids", "999999", "--out", "/tmp/never.npy"],
        vec!["generate", "--model", "/nonexistent", "--prompt", "x"],
    ] {
        let (code, _, err) = moe(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.lines().filter(|l| l.starts_with("error:")).count() == 1 && !err.contains("panicked"), "{err}");
    }
}

#[test]
fn gguf_files_run_like_their_hugging_face_checkpoint() {
    let f = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/moe-infer/tests/fixtures");
    let (hf, gguf) = (format!("{f}/mixtral"), format!("{f}/gguf/mixtral-f32.gguf"));
    let gen = ["generate", "--prompt", "hello world", "--max-tokens", "8", "--seed", "3", "--model"];
    let (code, want, err) = moe(&[&gen[..], &[&hf]].concat());
    assert_eq!(code, 0, "{err}");
    let (code, got, err) = moe(&[&gen[..], &[&gguf, "--tokenizer", &hf]].concat());
    assert_eq!(code, 0, "{err}");
    assert_eq!(got, want);
    // Alone, it runs with the tokenizer embedded in the file.
    let (code, out, err) = moe(&[&gen[..], &[&gguf]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("hello world"), "{out}");
    let (code, out, _) = moe(&["inspect", &format!("{f}/gguf/mixtral-q8_0.gguf")]);
    assert_eq!(code, 0);
    assert!(out.contains("MixtralForCausalLM") && out.contains("Q8_0"), "{out}");
}

#[test]
fn bench_infer_reports_speed_bytes_and_bandwidth() {
    let f = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/moe-infer/tests/fixtures/gguf/mixtral-q8_0.gguf");
    let args = ["bench", "infer", "--model", f, "--prompt-tokens", "16", "--gen-tokens", "4", "--reps", "1"];
    let (code, out, err) = moe(&[&args[..], &["--llama-bench", "/nonexistent/llama-bench"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("memory read bandwidth") && out.contains("| moe |"), "{out}");
    assert!(err.contains("GB of weights read per decoded token"), "{err}");
    assert!(err.contains("llama.cpp skipped"), "{err}");
}

#[test]
fn bench_train_interleaves_presets_and_refuses_zero_steps() {
    let args = ["bench", "train", "--presets", "tiny", "bench-dense", "--batch-size", "2", "--seq-len", "8"];
    let (code, out, err) = moe(&[&args[..], &["--warmup", "0", "--steps", "1", "--interleave"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("interleaved step by step") && out.contains("busy") && out.contains("MFLOP/tok"), "{out}");
    fn row<'a>(out: &'a str, p: &str) -> Option<Vec<&'a str>> {
        out.lines().find(|l| l.starts_with(p)).map(|l| l.split_whitespace().collect())
    }
    // Both presets measured, with the resident-memory column left out ("-") when interleaved.
    assert_eq!(row(&out, "tiny ").map(|r| r.len()), Some(13), "{out}");
    assert_eq!(row(&out, "bench-dense ").map(|r| r.len()), Some(13), "{out}");
    assert!(out.contains("step time bench-dense / tiny:"), "{out}");
    // One preset alone: its peak resident memory ("N MB", Linux), at least its weights, gradients
    // and AdamW moments (4 x 4 bytes per parameter).
    let (code, out, err) =
        moe(&["bench", "train", "--presets", "bench-dense", "--batch-size", "2", "--seq-len", "8", "--steps", "1"]);
    assert_eq!(code, 0, "{err}");
    let r = row(&out, "bench-dense ").expect("bench-dense row");
    if cfg!(target_os = "linux") {
        assert_eq!((r.len(), r[13]), (14, "MB"), "{out}");
        let (mb, params_m): (f64, f64) = (r[12].parse().unwrap(), r[1].trim_end_matches('M').parse().unwrap());
        assert!(mb >= 16.0 * params_m, "{out}");
    }
    let (code, _, err) = moe(&[&args[..], &["--steps", "0"]].concat());
    assert_ne!(code, 0);
    assert!(err.contains("no timed steps") && err.contains("--steps 1"), "{err}");
}

/// Whether this CPU has bf16 matrix instructions (AMX-BF16 implies AVX512-BF16 on every Intel
/// part that has it).
fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[test]
fn precision_auto_measures_once_then_reads_its_calibration() {
    let cache = tempfile::tempdir().unwrap();
    let args =
        ["bench", "train", "--presets", "tiny", "--batch-size", "2", "--seq-len", "8", "--warmup", "0", "--steps", "1"];
    let line = |out: &str| out.lines().find(|l| l.starts_with("tiny: ")).map(str::to_string).unwrap_or_default();
    let (code, out, err) = moe_with_cache(&args, cache.path());
    assert_eq!(code, 0, "{err}");
    let first = line(&out);
    let file = cache.path().join("precision.json");
    if !cpu_has_bf16() {
        eprintln!("skipped (no AVX512-BF16 on this CPU): auto's measurement; checked that it says why it chose fp32");
        assert!(first.contains("matrix products in fp32 (auto: fp32, this CPU has neither"), "{out}");
        assert!(!file.exists());
        let (code, _, err) = moe_with_cache(&[&args[..], &["--precision", "bf16"]].concat(), cache.path());
        assert_ne!(code, 0);
        assert!(err.contains("--precision bf16 needs a CPU with") && err.contains("--precision auto or fp32"), "{err}");
        return;
    }
    // Measured now, with both times and the reason; then the same choice from the cache.
    assert!(first.contains("(auto: ") && first.contains("ms in fp32 and") && first.contains("(measured now)"), "{out}");
    let cached: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(cached.as_object().map(|o| o.len()), Some(1), "{cached}");
    let (code, out, err) = moe_with_cache(&args, cache.path());
    assert_eq!(code, 0, "{err}");
    let second = line(&out);
    assert!(second.contains("(cached calibration)"), "{out}");
    assert_eq!(first.replace("measured now", "cached calibration"), second);
    // An explicit bf16 is checked against the same figures: a warning exactly when it is slower.
    let (code, out, err) = moe_with_cache(&[&args[..], &["--precision", "bf16"]].concat(), cache.path());
    assert_eq!(code, 0, "{err}");
    let explicit = line(&out);
    assert!(explicit.contains("matrix products in bf16"), "{out}");
    let slower = first.contains("bf16 runs at 0.");
    assert_eq!(explicit.contains("warning: --precision bf16 runs at 0."), slower, "{first}\n{explicit}");
}

#[test]
fn compare_runs_every_variant_in_the_precision_auto_chose_for_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    let text: String = (0..400).map(|i| format!("fn item_{i}(x: u32) -> u32 {{ x * {i} + 1 }}\n")).collect();
    std::fs::write(&corpus, text).unwrap();
    let p = |q: &str| dir.path().join(q).to_string_lossy().into_owned();
    let args = ["compare", "--preset", "tiny", "--moe", "4x2", "--tokens", "2048", "--evals", "1", "--batch-size", "2"];
    let extra =
        ["--seq-len", "16", "--quiet", "--data", &p("corpus.txt"), "--cache-dir", &p("cache"), "--out", &p("cmp")];
    let (code, _, err) = moe_with_cache(&[&args[..], &extra[..]].concat(), dir.path());
    assert_eq!(code, 0, "{err}");
    let want = if cpu_has_bf16() { ["fp32 matrix products", "bf16 ("] } else { ["fp32 matrix products"; 2] };
    let md = std::fs::read_to_string(dir.path().join("cmp/compare.md")).unwrap();
    assert!(want.iter().any(|w| md.contains(w)) && !md.contains("auto"), "{md}");
    // The reference decided (with its reason) and the MoE variant computes in the same precision.
    let chosen = err.lines().find(|l| l.starts_with("dense: matrix products in ")).expect(&err);
    let precision = chosen["dense: matrix products in ".len()..].split([' ', ';']).next().unwrap();
    assert!(
        err.lines().any(|l| l.starts_with("4x2: ") && l.contains(&format!("matrix products in {precision}"))),
        "{err}"
    );
}

/// The subcommands listed under "Commands:" in a help text (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

/// docs/cli.md is every command's `--help`, generated from the CLI definitions; this fails when
/// a flag changed without it. Regenerate: `UPDATE_CLI_DOCS=1 cargo test --test cli cli_reference`.
#[test]
fn cli_reference_matches_the_cli() {
    let mut doc = String::from(
        "# moe command-line reference\n\nEvery command's `moe <command> --help`, generated from the CLI definitions \
         (`UPDATE_CLI_DOCS=1 cargo test --test cli cli_reference`; a test fails when it is out of date).\n",
    );
    let mut queue: Vec<Vec<String>> = vec![vec![]];
    while let Some(path) = queue.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let (code, out, err) = moe(&args);
        assert_eq!(code, 0, "moe {args:?}: {err}");
        doc += &format!("\n## moe {}\n\n```text\n{}\n```\n", path.join(" "), out.trim_end());
        let subs = subcommands(&out);
        // Depth first, in the order of the help text.
        for s in subs.into_iter().rev() {
            let mut p = path.clone();
            p.push(s);
            queue.push(p);
        }
    }
    let doc = doc.replace("## moe \n", "## moe\n");
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md");
    if std::env::var_os("UPDATE_CLI_DOCS").is_some() {
        std::fs::write(&file, &doc).unwrap();
    }
    let have = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        have == doc,
        "docs/cli.md is out of date with the CLI: run `UPDATE_CLI_DOCS=1 cargo test --test cli cli_reference`"
    );
}
