//! Any bytes as a config.json, read both ways the project reads one: as a Hugging Face config
//! (`Spec::parse`, the inference model's architecture table) and as a checkpoint's training
//! config (`ModelConfig`, validated, then its parameter layout built). Each gives a value or an
//! error, never a panic.

use moe_engine::config::ModelConfig;
use moe_engine::model::Model;
use moe_infer::config::Spec;
use std::path::Path;

/// One input: an error or a value, never a panic.
pub fn run(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = Spec::parse(&v, Path::new("config.json"));
    if let Ok(cfg) = serde_json::from_value::<ModelConfig>(v) {
        if cfg.validate().is_ok() {
            let _ = Model::<f32>::new(cfg);
        }
    }
}
