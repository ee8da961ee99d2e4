//! The benchmark's sizes, in a leaf module so the timed parts (`idlm`, `sampler`) and the report
//! that runs them all depend on it without depending on each other.

use serde::Serialize;

/// Sizes and repetitions of a benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchOptions {
    /// Vocabulary (the last id is MASK).
    pub vocab: usize,
    /// Width.
    pub hidden: usize,
    /// Blocks.
    pub blocks: usize,
    /// Heads.
    pub heads: usize,
    /// Time-conditioning width.
    pub cond_dim: usize,
    /// Sequence length.
    pub len: usize,
    /// Batch size.
    pub batch: usize,
    /// Untimed iterations first.
    pub warmup: usize,
    /// Timed iterations (the median is reported).
    pub iters: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            vocab: 8192,
            hidden: 256,
            blocks: 4,
            heads: 4,
            cond_dim: 128,
            len: 128,
            batch: 32,
            warmup: 1,
            iters: 5,
        }
    }
}
