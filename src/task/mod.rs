//! Math word problems scored by execution (docs/tasks.md): a safe interpreter for the small
//! Python subset that TinyGSM-style answers are written in, the comparison of its result with a
//! reference number, GSM8K loading and its calculator-annotation converter, and the seeded
//! `synth-math` problem generator.

pub mod error;
pub mod lexer;
pub mod limits;
pub mod parser;
pub mod program;
pub mod value;

pub use error::{ProgramError, ProgramResult};
pub use program::{execute, parse_program, run_program};
pub use value::Value;

#[cfg(test)]
mod program_tests;
