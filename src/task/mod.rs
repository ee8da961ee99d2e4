//! Math word problems scored by execution (docs/tasks.md): a safe interpreter for the small
//! Python subset that TinyGSM-style answers are written in, the comparison of its result with a
//! reference number, GSM8K loading and its calculator-annotation converter, and the seeded
//! `synth-math` problem generator.

pub mod answer;
pub mod error;
pub mod gsm8k;
pub mod lexer;
pub mod limits;
pub mod parser;
pub mod program;
pub mod score;
pub mod style;
pub mod synth;
pub mod templates;
pub mod value;

pub use answer::{Outcome, RefNumber, extract_program, score_text};
pub use error::{ProgramError, ProgramResult};
pub use program::{execute, parse_program, run_program};
pub use score::{Accuracy, AnswerRef, read_answers, score_files};
pub use value::Value;

/// The first line of every answer program (TinyGSM's).
pub const PROGRAM_HEADER: &str = "def simple_math_problem() -> int:";

#[cfg(test)]
mod program_tests;
