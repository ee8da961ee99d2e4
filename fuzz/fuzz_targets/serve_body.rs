#![no_main]
//! Fuzz target `serve_body`: see `idlm::fuzz::serve_body`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| idlm::fuzz::serve_body(data));
