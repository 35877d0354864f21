//! The fuzz targets' bodies, one module each: any bytes as one kind of input, which must give a
//! value or an error, never a panic. `fuzz_targets/` wraps each in libFuzzer's entry point
//! (`scripts/fuzz.sh` fuzzes them); `tests/replay.rs` runs them on the committed inputs without
//! libFuzzer, in CI.

pub mod chat_template;
pub mod checkpoint_dir;
pub mod config_json;
pub mod gguf_load;
pub mod safetensors_load;
pub mod server_request;
pub mod tokenizer_json;
