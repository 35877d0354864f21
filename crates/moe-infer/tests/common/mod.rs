//! Helpers shared by this crate's tests (fuzz loops, the fixture list).
#![allow(dead_code)] // each test file uses a part

/// Runs `f`, turning a panic into Err(its message).
pub fn no_panic<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    std::panic::catch_unwind(f).map_err(|p| {
        p.downcast_ref::<String>().cloned().or(p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
    })
}

/// The Hugging Face fixture checkpoints, one per family and layout (scripts/hf_checkpoints.py).
pub const FIXTURES: [&str; 10] = [
    "mixtral",
    "mixtral_fused",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "deepseek_v3",
    "granitemoe",
    "phimoe",
    "gpt_oss",
    "gpt_oss_mxfp4",
];
