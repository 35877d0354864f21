//! Every fuzz target on the committed inputs, without libFuzzer (CI's short run of each target;
//! `scripts/fuzz.sh` fuzzes them): the test fixtures, fuzz/seeds and the inputs the fuzzers found,
//! each whole, cut in half and with one byte flipped. A panic fails the test.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The files of `dir` (relative to the project root) whose names end with `suffix`.
fn files(dir: &str, suffix: &str) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no {suffix} files in {dir}");
    paths.iter().map(|p| std::fs::read(p).expect("a readable input")).collect()
}

/// The named file of each test fixture directory that has one.
fn fixture_files(name: &str) -> Vec<Vec<u8>> {
    let dir = root().join("crates/moe-infer/tests/fixtures");
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("fixtures").map(|e| e.expect("an entry").path().join(name)).collect();
    paths.retain(|p| p.is_file());
    paths.sort();
    assert!(!paths.is_empty(), "no fixture has a {name}");
    paths.iter().map(|p| std::fs::read(p).expect("a readable fixture")).collect()
}

/// Runs `target` on each input whole, cut in half and with its middle byte flipped.
fn replay(target: fn(&[u8]), inputs: Vec<Vec<u8>>) {
    // panics that the loaders contain (a third-party parser's) are errors: not printed
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(moe_engine::contain::install_quiet_hook);
    for input in inputs {
        target(&input);
        target(&input[..input.len() / 2]);
        let mut flipped = input.clone();
        if let Some(b) = flipped.get_mut(input.len() / 2) {
            *b ^= 0x5a;
        }
        target(&flipped);
    }
}

#[test]
fn config_json() {
    replay(moe_fuzz::config_json::run, fixture_files("config.json"));
}

#[test]
fn tokenizer_json() {
    let mut inputs = files("fuzz/seeds/tokenizer_json", ".json");
    inputs.extend(fixture_files("tokenizer.json"));
    replay(moe_fuzz::tokenizer_json::run, inputs);
}

#[test]
fn chat_template() {
    let mut inputs = files("fuzz/seeds/chat_template", ".jinja");
    inputs.extend(fixture_files("chat_template.jinja"));
    replay(moe_fuzz::chat_template::run, inputs);
}

#[test]
fn checkpoint_dir() {
    replay(moe_fuzz::checkpoint_dir::run, moe_fuzz::checkpoint_dir::seeds());
}

#[test]
fn gguf_load() {
    let mut inputs = files("crates/moe-infer/tests/fixtures/gguf", ".gguf");
    inputs.extend(files("crates/moe-infer/tests/fixtures/fuzz", ".gguf"));
    replay(moe_fuzz::gguf_load::run, inputs);
}

#[test]
fn safetensors_load() {
    let olmoe = Path::new("crates/moe-infer/tests/fixtures/olmoe");
    replay(moe_fuzz::safetensors_load::run, files(&olmoe.to_string_lossy(), "model.safetensors"));
}

#[test]
fn server_request() {
    replay(moe_fuzz::server_request::run, files("fuzz/seeds/server_request", ".json"));
}
