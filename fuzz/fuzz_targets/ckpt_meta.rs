#![no_main]
//! Fuzz target `ckpt_meta`: see `idlm::fuzz::ckpt_meta`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| idlm::fuzz::ckpt_meta(data));
