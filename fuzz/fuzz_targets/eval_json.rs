#![no_main]
//! Fuzz target `eval_json`: see `idlm::fuzz::eval_json`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| idlm::fuzz::eval_json(data));
