//! Shared helpers for engine tests: a small generated corpus and tiny run options.
#![allow(dead_code)]

use moe_engine::config::{BalanceScope, ModelConfig};
use moe_engine::corpus::Source;
use moe_engine::run::RunOptions;
use moe_engine::train::TrainConfig;
use std::path::{Path, PathBuf};

/// Writes a ~40 KB English-and-code text file and returns its path.
pub fn write_corpus(dir: &Path) -> PathBuf {
    let mut text = String::new();
    let words = [
        "the", "expert", "router", "sends", "each", "token", "to", "a", "few", "experts", "and", "the", "model",
        "learns", "fast",
    ];
    for i in 0..600 {
        let w: Vec<&str> = (0..8).map(|j| words[(i * 7 + j * 3 + i / 5) % words.len()]).collect();
        text += &w.join(" ");
        text += ".\n";
        if i % 10 == 0 {
            text += &format!("fn step_{i}(x: u32) -> u32 {{ x + {i} }}\n\n");
        }
    }
    let p = dir.join("corpus.txt");
    std::fs::write(&p, text).unwrap();
    p
}

/// A tiny MoE (its vocabulary fits a byte-level BPE, which needs at least 257 entries).
pub fn tiny_model() -> ModelConfig {
    ModelConfig::tiny()
}

/// The tiny model with 4 experts, top-2, and active balancing and z-losses (`scope` pools the
/// balancing statistics; `bias_rate` is the aux-loss-free selection-bias update rate).
pub fn moe_with_losses(scope: BalanceScope, bias_rate: f64) -> ModelConfig {
    ModelConfig {
        num_local_experts: 4,
        num_experts_per_tok: 2,
        aux_loss_scope: scope,
        router_aux_loss_coef: 0.05,
        router_z_loss_coef: 0.01,
        bias_update_rate: bias_rate,
        ..ModelConfig::tiny()
    }
}

pub fn options(dir: &Path, corpus: &Path, out: &str, steps: u64) -> RunOptions {
    RunOptions {
        model: tiny_model(),
        train: TrainConfig {
            steps,
            batch_size: 2,
            seq_len: 16,
            warmup_steps: 2,
            eval_every: 4,
            eval_batches: 2,
            checkpoint_every: 4,
            log_every: 1,
            ..TrainConfig::default()
        },
        source: Some(Source::Path(corpus.to_path_buf())),
        out_dir: dir.join(out),
        cache_dir: dir.join("cache"),
        resume: false,
        steps_override: None,
        stop_after: None,
        progress: false,
        sample_prompt: "the".into(),
        sample_tokens: 0,
        dist: None,
        init: None,
        chat: None,
    }
}
