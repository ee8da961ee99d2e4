#![no_main]
//! Fuzz target `ckpt_import`: see `idlm::fuzz::ckpt_import`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| idlm::fuzz::ckpt_import(data));
