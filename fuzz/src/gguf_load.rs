//! Any bytes as a GGUF file: `Model::load` gives a model or an error, never a panic; a model
//! that loads also runs a forward pass over two tokens (decoding every kind of weight block).

use moe_infer::{Cache, Model};

/// One input: an error or a value, never a panic.
pub fn run(data: &[u8]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fuzz.gguf");
    std::fs::write(&path, data).expect("write input");
    if let Ok(m) = Model::load(&path) {
        let _ = m.forward(&[0, 1], &mut Cache::new(&m.spec), false);
    }
}
