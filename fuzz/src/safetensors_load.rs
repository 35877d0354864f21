//! Any bytes as the model.safetensors of an OLMoE checkpoint directory (the test fixture's
//! config.json): `Model::load` gives a model or an error, never a panic; a model that loads also
//! runs a forward pass over two tokens.

use moe_infer::{Cache, Model};

const CONFIG: &str = include_str!("../../crates/moe-infer/tests/fixtures/olmoe/config.json");

/// One input: an error or a value, never a panic.
pub fn run(data: &[u8]) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("config.json"), CONFIG).expect("write config");
    std::fs::write(dir.path().join("model.safetensors"), data).expect("write input");
    if let Ok(m) = Model::load(dir.path()) {
        let _ = m.forward(&[0, 1], &mut Cache::new(&m.spec), false);
    }
}
