#![no_main]
//! Fuzz target `template`: see `idlm::fuzz::template`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| idlm::fuzz::template(data));
