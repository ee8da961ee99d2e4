#![no_main]
//! Fuzz target `config`: see `idlm::fuzz::config`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| idlm::fuzz::config(data));
