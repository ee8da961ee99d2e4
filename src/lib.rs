//! idlm: few-step text diffusion (MDLM / Duo teachers, IDLM distillation) in Rust.

pub mod ar;
pub mod atomic;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod distill;
pub mod error;
pub mod eval;
pub mod fuzz;
pub mod interop;
pub mod nn;
pub mod optim;
pub mod plot;
pub mod process;
pub mod progress;
pub mod report;
pub mod reproduce;
pub mod run;
pub mod runtime;
pub mod sample;
pub mod serve;
pub mod task;
pub mod toy;
pub mod train;
pub mod trainer;

pub use error::{Error, Result};
