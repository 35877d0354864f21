//! A checkpoint write that fails as a full disk does ends the run with a clear error, removes
//! the partial checkpoint and leaves the previous one intact and loadable; after space is
//! freed the run resumes from it. (Its own test binary: the disk budget is process-wide.)

mod common;
use common::{options, write_corpus};
use moe_engine::checkpoint::{self, DISK_BUDGET};
use moe_engine::run::run;
use std::sync::atomic::Ordering;

#[test]
fn a_full_disk_keeps_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path());
    let quiet = |_: &str| {};
    let mut first = options(dir.path(), &corpus, "run", 12);
    first.stop_after = Some(4);
    run(&first, &quiet).unwrap();
    let root = first.out_dir.join("checkpoints");
    let before = checkpoint::resolve(&first.out_dir).unwrap();
    assert!(before.ends_with("step-0000004"));

    // The disk fills up in the middle of the next checkpoint (step 8).
    DISK_BUDGET.store(3000, Ordering::SeqCst);
    let resume = moe_engine::run::RunOptions { resume: true, stop_after: None, ..first.clone() };
    let e = run(&resume, &quiet).unwrap_err().to_string();
    DISK_BUDGET.store(-1, Ordering::SeqCst);
    assert!(e.contains("step-0000008") && e.contains("could not be written"), "{e}");
    assert!(e.contains("No space left on device") && e.contains("step-0000004"), "{e}");
    assert_eq!(checkpoint::resolve(&first.out_dir).unwrap(), before);
    let ck = checkpoint::load(&before).unwrap();
    assert_eq!(ck.state.unwrap()["step"], 4);
    let left: Vec<String> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| !n.contains("tmp")), "partial checkpoint left behind: {left:?}");

    // Space freed: the run resumes from step 4 and finishes.
    let s = run(&resume, &quiet).unwrap();
    assert!(s.finished && s.metrics.first().unwrap().step == 5);
}
