//! Why a program did not produce a number. Every one of these scores as a wrong answer.

/// A failure of [`super::run_program`]: the text is outside the subset, or running it failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProgramError {
    /// The input is longer than [`super::limits::MAX_SOURCE_BYTES`].
    #[error("program too long: {0} bytes")]
    TooLong(usize),
    /// A character or token the subset does not have (line numbers from 1).
    #[error("line {line}: {msg}")]
    Syntax { line: usize, msg: String },
    /// Parentheses, unary signs or `**` nested deeper than the bound.
    #[error("line {line}: expression nested deeper than {limit}")]
    TooDeep { line: usize, limit: usize },
    /// More evaluation steps than the bound.
    #[error("more than {0} evaluation steps")]
    TooManySteps(usize),
    /// A name read before it was assigned (or not a known function).
    #[error("line {line}: name '{name}' is not defined")]
    UnknownName { line: usize, name: String },
    /// Division or modulo by zero, or zero to a negative power.
    #[error("line {line}: division by zero")]
    ZeroDivision { line: usize },
    /// An integer past the bound, or a float that overflowed or is not a number.
    #[error("line {line}: {what} out of range")]
    Overflow { line: usize, what: &'static str },
    /// A function called with the wrong number or kind of arguments, or a value Python would
    /// make complex.
    #[error("line {line}: {msg}")]
    Value { line: usize, msg: String },
    /// The function body ended without `return`.
    #[error("the function never returns a value")]
    NoReturn,
}

/// Result alias for the interpreter.
pub type ProgramResult<T> = std::result::Result<T, ProgramError>;
