#![no_main]
//! Fuzz target `safetensors`: see `idlm::fuzz::safetensors`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| idlm::fuzz::safetensors(data));
