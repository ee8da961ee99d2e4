//! Sampler throughput and latency of the benchmark DiT against AR KV-cache decoding of a causal LM
//! with the same vocabulary, width, depth, heads and length, at the full batch and at batch 1.

use std::time::Instant;

use serde::Serialize;

use crate::Result;
use crate::bench::options::BenchOptions;
use crate::nn::Dit;
use crate::process::{Masked, NoiseRemoval};
use crate::sample::{SamplerOptions, sample};

/// One sampler measurement.
#[derive(Debug, Clone, Serialize)]
pub struct SamplerRow {
    /// Reverse steps.
    pub steps: usize,
    /// Sequences per network call.
    pub batch: usize,
    /// Whether the network takes sigma (if not, unchanged sequences reuse their prediction).
    pub time_conditioned: bool,
    /// Sequences drawn.
    pub sequences: usize,
    /// Generated tokens (sequences x length) per wall-clock second.
    pub tokens_per_s: f64,
    /// Mean network calls per sequence.
    pub nfe_per_seq: f64,
}

/// The sampler table and the AR baseline at the same two batch sizes.
#[derive(Debug, Clone, Serialize)]
pub struct SamplerBench {
    /// Diffusion sampler rows.
    pub rows: Vec<SamplerRow>,
    /// AR KV-cache decoding tokens/s at the benchmark batch.
    pub ar_kv_tokens_per_s: f64,
    /// AR KV-cache decoding tokens/s one sequence at a time (latency-bound serving).
    pub ar_kv_b1_tokens_per_s: f64,
}

impl SamplerBench {
    /// Tokens/s of the row with these settings, if measured.
    pub fn tokens_per_s(&self, steps: usize, batch: usize, time_conditioned: bool) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| {
                r.steps == steps && r.batch == batch && r.time_conditioned == time_conditioned
            })
            .map(|r| r.tokens_per_s)
    }
}

/// Time `n` sequences of the benchmark length at `steps`, `batch` per call.
fn row(model: &Dit, o: &BenchOptions, steps: usize, batch: usize, n: usize) -> Result<SamplerRow> {
    let process = Masked::new(o.vocab, (o.vocab - 1) as u32)?;
    let opts = SamplerOptions {
        steps,
        noise_removal: NoiseRemoval::Ancestral,
        cache: true,
        batch_size: batch,
        seed: 1,
    };
    let t0 = Instant::now();
    let s = sample(model, &process, n, o.len, &opts, None)?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(SamplerRow {
        steps,
        batch,
        time_conditioned: model.config().time_conditioning,
        sequences: n,
        tokens_per_s: (n * o.len) as f64 / secs,
        nfe_per_seq: s.iter().map(|s| s.nfe).sum::<usize>() as f64 / n.max(1) as f64,
    })
}

/// The sampler at 4, 16 and 1024 steps at the benchmark batch and at 4 and 16 steps one sequence at
/// a time, with the time-conditioned `model`; 1024 steps also with `untimed` (the same weights
/// without time input); and the AR baseline at both batch sizes.
pub fn sampler_bench(model: &Dit, untimed: &Dit, o: &BenchOptions) -> Result<SamplerBench> {
    let b = o.batch;
    // An untimed pass first so allocation and thread start-up are not timed.
    row(model, o, 2, b, b)?;
    let mut rows = Vec::new();
    for steps in [4, 16, 1024] {
        rows.push(row(model, o, steps, b, b)?);
    }
    rows.push(row(untimed, o, 1024, b, b)?);
    let n1 = 4;
    for steps in [4, 16] {
        rows.push(row(model, o, steps, 1, n1)?);
    }
    Ok(SamplerBench {
        rows,
        ar_kv_tokens_per_s: ar_kv_tokens_per_s(o, b, b)?,
        ar_kv_b1_tokens_per_s: ar_kv_tokens_per_s(o, 1, n1)?,
    })
}

/// Tokens per second (sequences x length / wall time) of the AR KV-cache sampler at temperature 1,
/// top-p 1, for a causal LM of the benchmark's vocabulary, width, depth and heads, decoding `n`
/// sequences of the benchmark length, `batch` together.
pub fn ar_kv_tokens_per_s(o: &BenchOptions, batch: usize, n: usize) -> Result<f64> {
    let cfg = crate::nn::CausalLmConfig {
        vocab_size: o.vocab,
        hidden_size: o.hidden,
        n_blocks: o.blocks,
        n_heads: o.heads,
        mlp_ratio: 4,
        length: o.len,
        dropout: 0.0,
    };
    let lm = crate::ar::random_frozen_lm(&cfg, 1)?;
    let opts = crate::ar::ArSamplerOptions {
        batch_size: batch,
        ..Default::default()
    };
    let mask = Some((o.vocab - 1) as u32);
    crate::ar::sample_ar(&lm, batch, o.len.min(4), &[0], mask, &opts, None)?;
    let t0 = Instant::now();
    crate::ar::sample_ar(&lm, n, o.len, &[0], mask, &opts, None)?;
    Ok((n * o.len) as f64 / t0.elapsed().as_secs_f64())
}
