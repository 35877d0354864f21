//! Any bytes as one file of a checkpoint directory, its checksum manifest rewritten to match
//! (the integrity check would stop a random corruption; this is the hostile case that passes
//! it). The input's first byte picks the file (config.json, model.safetensors,
//! optimizer.safetensors, state.json, tokenizer.json or checksums.json itself), the rest is
//! its content; the other files are those of a valid checkpoint of the tiny test model.
//! `checkpoint::load` gives a checkpoint or an error, never a panic; a checkpoint that loads
//! runs a forward pass and its loss.

use moe_engine::checkpoint::{self, SaveRequest};
use moe_engine::checksum::{write_manifest, MANIFEST};
use moe_engine::config::ModelConfig;
use moe_engine::model::{Acts, KvCache, Model};
use std::path::PathBuf;
use std::sync::OnceLock;

const FILES: [&str; 6] =
    ["config.json", "model.safetensors", "optimizer.safetensors", "state.json", "tokenizer.json", MANIFEST];

/// The valid checkpoint's files, (name, bytes), written once.
fn base() -> &'static Vec<(String, Vec<u8>)> {
    static BASE: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    BASE.get_or_init(|| {
        let root = tempfile::tempdir().expect("temp dir");
        let cfg = ModelConfig::tiny();
        let model = Model::<f32>::new(cfg.clone()).expect("tiny model");
        let params: Vec<f32> = model.layout.init(7);
        let zeros = vec![0.0f32; params.len()];
        let state = serde_json::json!({"step": 3, "tokens": 96});
        let req = SaveRequest {
            config: &cfg,
            layout: &model.layout,
            params: &params,
            moments: Some((&zeros, &zeros)),
            state: Some(&state),
            tokenizer_json: Some(br#"{"model": {"type": "BPE", "vocab": {}, "merges": []}}"#),
            packed: None,
        };
        let dir: PathBuf = checkpoint::save(root.path(), "step-0000003", &req, 1).expect("save");
        std::fs::read_dir(&dir)
            .expect("list")
            .map(|e| {
                let e = e.expect("entry");
                (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("read"))
            })
            .collect()
    })
}

/// One input: an error or a value, never a panic.
pub fn run(data: &[u8]) {
    let Some((&pick, content)) = data.split_first() else { return };
    let target = FILES[pick as usize % FILES.len()];
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, bytes) in base() {
        std::fs::write(dir.path().join(name), if name == target { content } else { bytes }).expect("write");
    }
    if target != MANIFEST {
        write_manifest(dir.path()).expect("manifest");
    }
    let Ok(ck) = checkpoint::load(dir.path()) else { return };
    let Ok(model) = Model::<f32>::new(ck.config) else { return };
    assert_eq!(ck.params.len(), model.layout.total, "a loaded checkpoint matches its layout");
    let (b, t) = (1, 4.min(model.cfg.max_position_embeddings));
    let v = model.cfg.vocab_size as u32;
    let x: Vec<u32> = (0..(b * t) as u32).map(|i| i % v).collect();
    let mut a = Acts::new(&model.cfg, b, t, t);
    let mut kv = KvCache::new(&model.cfg, b, t);
    model.forward(&ck.params, &mut a, &mut kv, &x, 0);
    let _ = model.loss(&mut a, &x);
}

/// One input per file of the valid checkpoint: its pick byte, then the file as it is.
pub fn seeds() -> Vec<Vec<u8>> {
    let base = base();
    FILES
        .iter()
        .enumerate()
        .filter_map(|(i, f)| base.iter().find(|(n, _)| n == f).map(|(_, b)| [&[i as u8][..], b].concat()))
        .collect()
}
