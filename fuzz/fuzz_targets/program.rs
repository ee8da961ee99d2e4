#![no_main]
//! Fuzz target `program`: see `idlm::fuzz::program`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| idlm::fuzz::program(data));
