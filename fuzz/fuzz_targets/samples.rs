#![no_main]
//! Fuzz target `samples`: see `idlm::fuzz::samples`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| idlm::fuzz::samples(data));
