#![no_main]
//! Fuzz target `duality`: see `idlm::fuzz::duality`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| idlm::fuzz::duality(data));
