#![no_main]
//! Fuzz target `hf_config`: see `idlm::fuzz::hf_config`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| idlm::fuzz::hf_config(data));
