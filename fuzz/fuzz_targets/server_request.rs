//! libFuzzer's entry to `moe_fuzz::server_request` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| moe_fuzz::server_request::run(data));
