#![no_main]
//! Fuzz target `pickle`: see `idlm::fuzz::pickle`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| idlm::fuzz::pickle(data));
