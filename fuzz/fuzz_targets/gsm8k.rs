#![no_main]
//! Fuzz target `gsm8k`: see `idlm::fuzz::gsm8k`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| idlm::fuzz::gsm8k(data));
