//! What one request may ask for and how many may wait: each bound is refused by name (400 / 413 /
//! 408), and a full queue answers 429 with `Retry-After`.

use std::time::Duration;

/// Bounds on requests (`idlm serve` options).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Most tokens per sequence (also never more than the model's length).
    pub max_tokens: usize,
    /// Most reverse steps of a diffusion request.
    pub max_steps: usize,
    /// Most sequences per request.
    pub max_n: usize,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// Longest time to receive a request body.
    pub body_timeout: Duration,
    /// Most requests admitted (sampling or waiting for a slot) at once; past it, 429.
    pub queue: usize,
    /// Seconds a refused client is told to wait (`Retry-After`).
    pub retry_after_s: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tokens: 4096,
            max_steps: 4096,
            max_n: 16,
            max_body: 64 * 1024,
            body_timeout: Duration::from_secs(10),
            queue: 128,
            retry_after_s: 1,
        }
    }
}
