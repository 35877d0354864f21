//! libFuzzer's entry to `moe_fuzz::safetensors_load` (what it checks is documented there).
#![no_main]

// Panics that the loaders contain (a third-party parser's) are errors, not crashes.
libfuzzer_sys::fuzz_target!(init: moe_engine::contain::install_quiet_hook(), |data: &[u8]| moe_fuzz::safetensors_load::run(data));
