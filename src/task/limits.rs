//! The interpreter's bounds: whatever the input, it stops quickly with an error past these.

/// Longest program text read (bytes); a sampled answer is a few hundred.
pub const MAX_SOURCE_BYTES: usize = 64 * 1024;
/// Deepest nesting of parentheses, unary signs, `**` and calls in one expression, and the
/// tallest expression tree (so a chain `1+1+...` is bounded too): parsing, evaluating and
/// dropping it recurse at most this deep.
pub const MAX_DEPTH: usize = 100;
/// Most expression nodes evaluated in one run.
pub const MAX_STEPS: usize = 100_000;
/// Largest exponent of an int power with |base| >= 2 (2^127 is already past i128).
pub const MAX_INT_POW_BITS: u32 = 127;
/// Most statements in the function body.
pub const MAX_STATEMENTS: usize = 10_000;
