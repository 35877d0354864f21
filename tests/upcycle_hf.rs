//! `moe upcycle --from HF_DIR`: a Hugging Face dense checkpoint (the tiny Llama fixture) is
//! upcycled into an MoE and trained on a text with the model's own tokenizer, against an MoE from
//! scratch and the dense model continued; an MoE checkpoint (Mixtral) is refused with the reason.

use std::process::Command;

fn moe(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_moe")).args(args).output().expect("run moe");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/moe-infer/tests/fixtures");

#[test]
fn a_hugging_face_dense_checkpoint_is_upcycled_and_trained() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(
        &text,
        "the router sends each token to a few experts; the model adds their outputs.\n\n".repeat(300),
    )
    .unwrap();
    let out = dir.path().join("up");
    let cache = dir.path().join("cache");
    let from = format!("{FIXTURES}/llama_dense");
    let (code, log) = moe(&[
        "upcycle",
        "--from",
        &from,
        "--moe",
        "4x2",
        "--data",
        text.to_str().unwrap(),
        "--tokens",
        "4k",
        "--batch-size",
        "4",
        "--seq-len",
        "16",
        "--eval-batches",
        "2",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{log}");
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains("4x2-upcycled") && md.contains("dense-continued") && md.contains("4x2-scratch"), "{md}");

    let (code, log) = moe(&[
        "upcycle",
        "--from",
        &format!("{FIXTURES}/mixtral"),
        "--data",
        text.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(log.contains("already an MoE"), "{log}");
}
