//! Any bytes as a GGUF file: `Model::load` gives a model or an error, never a panic; a model
//! that loads also runs a forward pass over two tokens (decoding every kind of weight block).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moe_infer::{Cache, Model};

// Panics that the loaders contain (a third-party parser's) are errors, not crashes.
fuzz_target!(init: moe_engine::contain::install_quiet_hook(), |data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fuzz.gguf");
    std::fs::write(&path, data).expect("write input");
    if let Ok(m) = Model::load(&path) {
        let _ = m.forward(&[0, 1], &mut Cache::new(&m.spec), false);
    }
});
