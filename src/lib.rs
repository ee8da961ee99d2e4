//! idlm: few-step text diffusion (MDLM / Duo teachers, IDLM distillation) in Rust.

pub mod data;
pub mod error;
pub mod nn;
pub mod process;
pub mod sample;

pub use error::{Error, Result};
