#![no_main]
//! Fuzz target `packed`: see `idlm::fuzz::packed`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| idlm::fuzz::packed(data));
