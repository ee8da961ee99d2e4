//! The KV-cache sampler of the AR baseline: from BOS, one network call per token for a whole batch
//! in lockstep, temperature and top-p (nucleus) truncation, and the same f64 categorical draw and
//! per-sample random streams as the diffusion sampler, so sample i is the same whatever the batch.

use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::nn::ops::fast_exp;
use crate::nn::{CausalLm, KvCache};
use crate::process::{argmax, draw_f64};
use crate::sample::{Progress, Sample};
use crate::{Error, Result};

/// AR sampler settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArSamplerOptions {
    /// Softmax temperature; 0 takes the most likely token (greedy).
    pub temperature: f64,
    /// Nucleus mass: draw only from the smallest set of most likely tokens whose probability
    /// reaches it (1 = no truncation).
    pub top_p: f64,
    /// Sequences decoded together.
    pub batch_size: usize,
    /// Seed; sample i always uses stream i of this seed, whatever the batching.
    pub seed: u64,
}

impl Default for ArSamplerOptions {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            batch_size: 16,
            seed: 1,
        }
    }
}

impl ArSamplerOptions {
    /// Check the settings are usable.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "temperature {} must be a finite number >= 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "top-p {} must be in (0, 1]",
                self.top_p
            )));
        }
        if self.batch_size == 0 {
            return Err(Error::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The distribution the next token is drawn from, unnormalised: softmax(logits / temperature)
/// without the `exclude` column (MASK), restricted to the top-p nucleus. Temperature 0 gives the
/// argmax as a one-hot.
pub fn next_token_probs(
    logits: &[f32],
    temperature: f64,
    top_p: f64,
    exclude: Option<usize>,
) -> Vec<f32> {
    let v = logits.len();
    let allowed = |i: usize| Some(i) != exclude;
    if temperature == 0.0 {
        let mut masked = logits.to_vec();
        if let Some(e) = exclude.filter(|&e| e < v) {
            masked[e] = f32::NEG_INFINITY;
        }
        let mut p = vec![0f32; v];
        if v > 0 {
            p[argmax(&masked)] = 1.0;
        }
        return p;
    }
    let m = (0..v)
        .filter(|&i| allowed(i))
        .map(|i| logits[i])
        .fold(f32::NEG_INFINITY, f32::max);
    // f32 with the vectorising exp: the draw itself is in f64, and ~1e-7 relative error in
    // a probability changes nothing that matters.
    let inv_t = (1.0 / temperature) as f32;
    let mut p: Vec<f32> = logits.iter().map(|&z| fast_exp((z - m) * inv_t)).collect();
    if let Some(e) = exclude.filter(|&e| e < v) {
        p[e] = 0.0;
    }
    if top_p < 1.0 {
        let total: f64 = p.iter().map(|&x| x as f64).sum();
        let mut order: Vec<usize> = (0..v).filter(|&i| p[i] > 0.0).collect();
        // Ties broken by id so the nucleus is a function of the logits alone.
        order.sort_unstable_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        let mut cum = 0.0;
        let mut keep = order.len();
        for (k, &i) in order.iter().enumerate() {
            cum += p[i] as f64 / total;
            if cum >= top_p {
                keep = k + 1;
                break;
            }
        }
        for &i in &order[keep..] {
            p[i] = 0.0;
        }
    }
    p
}

/// Check a prompt prefix: BOS first, shorter than the row, every id in the vocabulary.
pub fn check_prefix(prefix: &[u32], len: usize, vocab: usize) -> Result<()> {
    if prefix.is_empty() {
        return Err(Error::InvalidArgument(
            "an AR row needs at least its BOS token to start from".into(),
        ));
    }
    if prefix.len() > 1 && prefix.len() >= len {
        return Err(Error::InvalidArgument(format!(
            "the prompt takes {} tokens, which leaves nothing to generate in a row of {len}",
            prefix.len()
        )));
    }
    if let Some(&bad) = prefix.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::InvalidArgument(format!(
            "prompt token {bad} is outside the vocabulary of {vocab}"
        )));
    }
    Ok(())
}

/// Draw the next token from logits (V,) under `opts`, never `exclude`.
pub fn draw_next(
    logits: &[f32],
    opts: &ArSamplerOptions,
    exclude: Option<usize>,
    rng: &mut ChaCha8Rng,
) -> u32 {
    let p = next_token_probs(logits, opts.temperature, opts.top_p, exclude);
    if opts.temperature == 0.0 {
        return argmax(&p) as u32;
    }
    draw_f64(&p, rng) as u32
}

/// Draw `n` sequences of `len` tokens from `model`: `prefix` (BOS first, then any prompt) fed as
/// given, then decoded tokens up to `len`.
pub fn sample_ar(
    model: &CausalLm,
    n: usize,
    len: usize,
    prefix: &[u32],
    exclude: Option<u32>,
    opts: &ArSamplerOptions,
    progress: Option<Progress>,
) -> Result<Vec<Sample>> {
    opts.validate()?;
    let max = model.config().length;
    if len == 0 || len > max {
        return Err(Error::InvalidArgument(format!(
            "sequence length {len} must be in 1..={max} (the model's length)"
        )));
    }
    check_prefix(prefix, len, model.config().vocab_size)?;
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let end = (start + opts.batch_size).min(n);
        out.extend(sample_batch(model, start..end, len, prefix, exclude, opts)?);
        if let Some(p) = progress {
            p(end, n);
        }
        start = end;
    }
    Ok(out)
}

fn sample_batch(
    model: &CausalLm,
    idx: std::ops::Range<usize>,
    len: usize,
    prefix: &[u32],
    exclude: Option<u32>,
    opts: &ArSamplerOptions,
) -> Result<Vec<Sample>> {
    let mut batch = ArBatch::new(model, idx, len, prefix, exclude, opts);
    while !batch.is_done() {
        batch.step(model)?;
    }
    Ok(batch.finish())
}

/// Sequences decoded together from BOS, one token each per `step` (one network call), on their
/// own random streams: what `sample_ar` runs per batch, and what `idlm serve` steps.
pub struct ArBatch {
    idx: std::ops::Range<usize>,
    len: usize,
    rngs: Vec<ChaCha8Rng>,
    seqs: Vec<Vec<u32>>,
    cache: KvCache,
    exclude: Option<usize>,
    opts: ArSamplerOptions,
    t0: Instant,
    /// Tokens every sequence starts with (forced, not drawn).
    prefix: Vec<u32>,
}

impl ArBatch {
    /// Sequences `idx` (their stream numbers) of `len` tokens starting with `prefix` (BOS, then
    /// any prompt: fed one per call through the cache, never drawn). Checked by `check_prefix`.
    pub fn new(
        model: &CausalLm,
        idx: std::ops::Range<usize>,
        len: usize,
        prefix: &[u32],
        exclude: Option<u32>,
        opts: &ArSamplerOptions,
    ) -> Self {
        let b = idx.len();
        let rngs: Vec<ChaCha8Rng> = idx
            .clone()
            .map(|i| {
                let mut r = ChaCha8Rng::seed_from_u64(opts.seed);
                r.set_stream(i as u64);
                r
            })
            .collect();
        let seqs: Vec<Vec<u32>> = (0..b)
            .map(|_| {
                let mut s = Vec::with_capacity(len);
                s.extend(prefix.first());
                s
            })
            .collect();
        Self {
            cache: model.new_cache(b),
            idx,
            len,
            rngs,
            seqs,
            exclude: exclude.map(|e| e as usize),
            prefix: prefix.to_vec(),
            opts: opts.clone(),
            t0: Instant::now(),
        }
    }

    /// Every sequence has its `len` tokens (or the batch is empty).
    pub fn is_done(&self) -> bool {
        self.seqs.first().is_none_or(|s| s.len() >= self.len)
    }

    /// The tokens so far, one vector per sequence.
    pub fn seqs(&self) -> &[Vec<u32>] {
        &self.seqs
    }

    /// Decode one more token of every sequence (one network call).
    pub fn step(&mut self, model: &CausalLm) -> Result<()> {
        if self.is_done() {
            return Ok(());
        }
        let cur = self.current();
        let logits = model.step(&mut self.cache, &cur)?;
        self.accept(&logits.flatten_all()?.to_vec1::<f32>()?)
    }

    /// The tokens every sequence starts with (BOS, then any prompt).
    pub fn prefix(&self) -> &[u32] {
        &self.prefix
    }

    /// The token each sequence feeds at the next call.
    pub fn current(&self) -> Vec<u32> {
        self.seqs.iter().filter_map(|s| s.last().copied()).collect()
    }

    /// The KV cache the next call extends (for `CausalLm::step_many` across batches).
    pub fn cache_mut(&mut self) -> &mut KvCache {
        &mut self.cache
    }

    /// Draw the next token of every sequence from its row of `logits` (B x V, row-major), the
    /// output of the call that fed `current()`.
    pub fn accept(&mut self, logits: &[f32]) -> Result<()> {
        let b = self.seqs.len();
        if b == 0 || !logits.len().is_multiple_of(b) {
            return Err(Error::InvalidArgument(format!(
                "{} logits for {b} sequences",
                logits.len()
            )));
        }
        let v = logits.len() / b;
        let (opts, exclude) = (&self.opts, self.exclude);
        // Inside the prompt the next token is given (the call only filled the cache).
        let forced = self
            .seqs
            .first()
            .and_then(|s| self.prefix.get(s.len()))
            .copied();
        let next: Vec<u32> = match forced {
            Some(t) => vec![t; b],
            None => logits
                .par_chunks(v)
                .zip(self.rngs.par_iter_mut())
                .map(|(z, rng)| draw_next(z, opts, exclude, rng))
                .collect(),
        };
        for (s, t) in self.seqs.iter_mut().zip(next) {
            s.push(t);
        }
        Ok(())
    }

    /// The samples, each with `len - 1` calls and an equal share of the batch's wall time.
    pub fn finish(self) -> Vec<Sample> {
        let b = self.seqs.len();
        let secs = self.t0.elapsed().as_secs_f64() / b.max(1) as f64;
        let nfe = self.len.saturating_sub(1);
        self.idx
            .zip(self.seqs)
            .map(|(index, ids)| Sample {
                index,
                ids,
                nfe,
                seconds: secs,
            })
            .collect()
    }
}
