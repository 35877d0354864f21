//! Expert parallelism across processes with Open MPI (`--features mpi`; needs `mpirun`):
//! `mpirun -np 2` and `-np 4` (oversubscribed) training equals the single process with the
//! same global batch (losses, gradient norms, parameters to 1e-5), also while the experts are
//! re-placed with replicas between steps, and generation over 2 ranks
//! prints what one process prints; ranks started with
//! different settings, and a rank that dies, end the job with an error instead of hanging.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const MOE: &str = env!("CARGO_BIN_EXE_moe");

fn corpus(dir: &Path) -> PathBuf {
    let words = ["the", "expert", "router", "sends", "each", "token", "to", "a", "few", "experts", "fn", "main"];
    let text: String =
        (0..3000).map(|i| format!("{} {} {}\n", words[i % 12], words[(i * 7) % 12], words[(i / 3) % 12])).collect();
    let p = dir.join("corpus.txt");
    std::fs::write(&p, text).unwrap();
    p
}

fn args(dir: &Path, out: &str, batch: usize, steps: u64) -> Vec<String> {
    let data = corpus(dir);
    let cache = dir.join("cache");
    [
        "train",
        "--preset",
        "tiny",
        "--steps",
        &steps.to_string(),
        "--batch-size",
        &batch.to_string(),
        "--seq-len",
        "16",
        "--warmup",
        "2",
        "--eval-every",
        "2",
        "--eval-batches",
        "2",
        "--log-every",
        "1",
        "--sample-tokens",
        "0",
        "--quiet",
        "--aux-loss-coef",
        "0.05",
        "--z-loss-coef",
        "0.01",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--data".into(), data.display().to_string(), "--cache-dir".into(), cache.display().to_string()])
    .chain(["--out".into(), dir.join(out).display().to_string()])
    .collect()
}

fn mpirun(np: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", &np.to_string(), MOE]);
    c
}

/// Waits for `child` at most `limit`; kills it and fails the test on a hang.
fn finish(mut child: Child, limit: Duration) -> Output {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            child.kill().unwrap();
            panic!("the MPI job hung for more than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

fn run(mut c: Command) -> Output {
    let out = finish(c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(), Duration::from_secs(240));
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// (loss, grad norm) of every logged step.
fn trace(run_dir: &Path) -> Vec<(f64, f64)> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "train")
        .map(|v| (v["m"]["loss"].as_f64().unwrap(), v["m"]["grad_norm"].as_f64().unwrap()))
        .collect()
}

#[test]
fn mpirun_ranks_equal_the_single_process() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run({
        let mut c = Command::new(MOE);
        c.args(args(d, "single", 4, 4));
        c
    });
    let want = trace(&d.join("single"));
    let single = moe_engine::checkpoint::load(&d.join("single")).unwrap();
    // Contiguous experts on 2 and 4 ranks; on 2 ranks re-placed after every step with two
    // replicas of hot experts (3 slots per rank).
    let rebalance = ["--rebalance-every", "1", "--redundant-experts", "2"];
    for (np, extra) in [(2, &[][..]), (4, &[][..]), (2, &rebalance[..])] {
        let name = format!("np{np}-{}", extra.len());
        let out = run({
            let mut c = mpirun(np);
            c.args(args(d, &name, 4 / np, 4)).args(["--expert-parallel", &np.to_string()]).args(extra);
            c
        });
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.matches("experts re-placed").count(), if extra.is_empty() { 0 } else { 4 }, "{err}");
        let got = trace(&d.join(&name));
        assert_eq!(got.len(), want.len());
        for (s, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g.0 - w.0).abs() < 1e-5 * w.0.abs(), "np {np} step {s}: loss {} vs {}", g.0, w.0);
            assert!((g.1 - w.1).abs() < 1e-5 * (1.0 + w.1.abs()), "np {np} step {s}: grad norm {} vs {}", g.1, w.1);
        }
        let ck = moe_engine::checkpoint::load(&d.join(&name)).unwrap();
        let diff = ck.params.iter().zip(&single.params).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-5, "np {np}: checkpoint parameters differ by {diff}");
    }
    // Generation with the experts spread over 2 ranks prints what one process prints.
    let gen =
        ["generate", "--max-tokens", "10", "--temperature", "0.8", "--seed", "3", "--prompt", "the", "--checkpoint"];
    let ck_dir = d.join("single").display().to_string();
    let one = run({
        let mut c = Command::new(MOE);
        c.args(gen).arg(&ck_dir);
        c
    });
    let two = run({
        let mut c = mpirun(2);
        c.args(gen).arg(&ck_dir).args(["--expert-parallel", "2"]);
        c
    });
    assert!(one.stdout.len() > 3);
    assert_eq!(String::from_utf8_lossy(&two.stdout), String::from_utf8_lossy(&one.stdout));
}

#[test]
fn ranks_with_different_settings_stop_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", "1", MOE]).args(args(d, "mix", 2, 4));
    c.args(["--expert-parallel", "2", "--seed", "1", ":", "-np", "1", MOE]).args(args(d, "mix", 2, 4));
    c.args(["--expert-parallel", "2", "--seed", "2"]);
    let out = finish(c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(), Duration::from_secs(120));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("disagree on the model, training settings or data"), "{err}");
}

#[test]
fn a_rank_that_dies_ends_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut c = mpirun(2);
    c.args(args(d, "die", 2, 100_000)).args(["--expert-parallel", "2"]);
    let child = c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // Wait until training runs, then kill one rank (a child process of mpirun).
    let t0 = Instant::now();
    while trace(&d.join("die")).len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(120), "training did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let kids = Command::new("pgrep").args(["-P", &child.id().to_string()]).output().unwrap();
    let pid = String::from_utf8_lossy(&kids.stdout).split_whitespace().next().expect("a rank process").to_string();
    Command::new("kill").args(["-9", &pid]).status().unwrap();
    let out = finish(child, Duration::from_secs(60));
    assert!(!out.status.success(), "the job went on after a rank died");
}

#[test]
fn without_mpirun_the_rank_count_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(MOE).args(args(dir.path(), "x", 2, 2)).args(["--expert-parallel", "2"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mpirun -np 2"), "{err}");
}
