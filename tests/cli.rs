//! The command line: bad input ends with one `error:` line and exit code 1 (2 for flag
//! errors, from clap), and the informational commands work.

use std::process::Command;

fn moe(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_moe")).args(args).output().expect("run moe");
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
