#![no_main]
//! Fuzz target `tokenizer`: see `idlm::fuzz::tokenizer`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| idlm::fuzz::tokenizer(data));
