//! One sampler loop for every forward process: the grid, per-sequence caching, noise removal and the
//! f64 categorical race (algorithms.md §1, §2.3).

use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::nn::{Dit, DitInput};
use crate::process::schedule::{T_FINAL, sampling_grid};
use crate::process::{ForwardProcess, NoiseRemoval};
use crate::{Error, Result};

/// Anything that maps noisy ids (B, L) and sigma (B,) to logits over the vocabulary.
pub trait Denoiser: Sync {
    /// Raw logits (M, V) for `xt` (B, L) at noise levels `sigma` (B,), at the flat positions
    /// `positions` (indices into B x L), or at all B x L positions in order when None.
    fn logits(&self, xt: &Tensor, sigma: &Tensor, positions: Option<&[u32]>) -> Result<Tensor>;
    /// Whether the output depends on sigma (if not, an unchanged x_t can reuse its prediction).
    fn time_conditioned(&self) -> bool;
    /// Longest sequence accepted.
    fn max_len(&self) -> usize;
    /// The device inputs must live on.
    fn device(&self) -> Device;
}

impl Denoiser for Dit {
    fn logits(&self, xt: &Tensor, sigma: &Tensor, positions: Option<&[u32]>) -> Result<Tensor> {
        let f = self.features(DitInput::Ids(xt), sigma, None)?;
        let (b, l, d) = f.dims3()?;
        let f = f.reshape((b * l, d))?;
        let f = match positions {
            Some(p) => f.index_select(&Tensor::from_slice(p, p.len(), f.device())?, 0)?,
            None => f,
        };
        self.head(&f)
    }
    fn time_conditioned(&self) -> bool {
        self.config().time_conditioning
    }
    fn max_len(&self) -> usize {
        self.config().length
    }
    fn device(&self) -> Device {
        Dit::device(self).clone()
    }
}

/// Sampler settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SamplerOptions {
    /// Number of reverse steps K on the grid linspace(1, 1e-5, K + 1).
    pub steps: usize,
    /// Final noise removal.
    pub noise_removal: NoiseRemoval,
    /// Reuse a sequence's last prediction when its tokens did not change (exact only without time
    /// conditioning; ignored otherwise).
    pub cache: bool,
    /// Sequences per network call.
    pub batch_size: usize,
    /// Seed; sample i always uses stream i of this seed, whatever the batching.
    pub seed: u64,
}

impl Default for SamplerOptions {
    fn default() -> Self {
        Self {
            steps: 128,
            noise_removal: NoiseRemoval::Ancestral,
            cache: true,
            batch_size: 16,
            seed: 1,
        }
    }
}

/// One generated sequence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Index of the sample (its random stream).
    pub index: usize,
    /// Token ids.
    pub ids: Vec<u32>,
    /// Network calls spent on this sequence.
    pub nfe: usize,
    /// Wall-clock seconds of its batch, divided by the batch size.
    pub seconds: f64,
}

/// Progress callback: (sequences finished, total).
pub type Progress<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// Draw `n` sequences of length `len` with `den` under `process`.
pub fn sample(
    den: &dyn Denoiser,
    process: &dyn ForwardProcess,
    n: usize,
    len: usize,
    opts: &SamplerOptions,
    progress: Option<Progress>,
) -> Result<Vec<Sample>> {
    if opts.steps == 0 {
        return Err(Error::InvalidArgument(
            "the number of sampling steps must be at least 1".into(),
        ));
    }
    if opts.batch_size == 0 {
        return Err(Error::InvalidArgument(
            "batch size must be at least 1".into(),
        ));
    }
    if len == 0 || len > den.max_len() {
        return Err(Error::InvalidArgument(format!(
            "sequence length {len} must be in 1..={} (the model's length)",
            den.max_len()
        )));
    }
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let end = (start + opts.batch_size).min(n);
        out.extend(sample_batch(den, process, start..end, len, opts)?);
        if let Some(p) = progress {
            p(end, n);
        }
        start = end;
    }
    Ok(out)
}

struct Seq {
    x: Vec<u32>,
    /// p(x0 | x_t) table (L x V), allocated once and overwritten at the active positions of each
    /// prediction: a process reads only the rows it marks active (MDLM: the masked ones).
    probs: Vec<f32>,
    /// Whether `probs` is the prediction for the current x.
    fresh: bool,
    rng: ChaCha8Rng,
    nfe: usize,
}

fn sample_batch(
    den: &dyn Denoiser,
    process: &dyn ForwardProcess,
    idx: std::ops::Range<usize>,
    len: usize,
    opts: &SamplerOptions,
) -> Result<Vec<Sample>> {
    let t0 = Instant::now();
    let cache_ok = opts.cache && !den.time_conditioned();
    let mut seqs: Vec<Seq> = idx
        .clone()
        .map(|i| {
            let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
            rng.set_stream(i as u64);
            let mut x = vec![0u32; len];
            process.prior_row(&mut x, &mut rng);
            Seq {
                x,
                probs: Vec::new(),
                fresh: false,
                rng,
                nfe: 0,
            }
        })
        .collect();
    let grid = sampling_grid(opts.steps);
    let dt = (1.0 - T_FINAL) / opts.steps as f64;
    for &t in grid.iter().take(opts.steps) {
        let s = t - dt;
        predict(den, process, &mut seqs, t)?;
        seqs.par_iter_mut().for_each(|q| {
            if q.fresh {
                let changed = process.posterior_row(&q.probs, &mut q.x, t, s, &mut q.rng);
                q.fresh = !changed && cache_ok;
            }
        });
    }
    predict(den, process, &mut seqs, T_FINAL)?;
    seqs.par_iter_mut().for_each(|q| {
        if q.fresh {
            process.noise_removal_row(&q.probs, &mut q.x, T_FINAL, opts.noise_removal, &mut q.rng);
        }
    });
    let secs = t0.elapsed().as_secs_f64() / seqs.len().max(1) as f64;
    Ok(idx
        .zip(seqs)
        .map(|(index, q)| Sample {
            index,
            ids: q.x,
            nfe: q.nfe,
            seconds: secs,
        })
        .collect())
}

/// Fill `probs` for every sequence that has no valid prediction and can still change.
fn predict(
    den: &dyn Denoiser,
    process: &dyn ForwardProcess,
    seqs: &mut [Seq],
    t: f64,
) -> Result<()> {
    let need: Vec<usize> = (0..seqs.len())
        .filter(|&i| !seqs[i].fresh && !process.is_final(&seqs[i].x))
        .collect();
    if need.is_empty() {
        return Ok(());
    }
    let len = seqs[need[0]].x.len();
    let ids: Vec<u32> = need.iter().flat_map(|&i| seqs[i].x.clone()).collect();
    let dev = den.device();
    let xt = Tensor::from_slice(&ids, (need.len(), len), &dev)?;
    let sigma = Tensor::from_vec(vec![process.sigma(t) as f32; need.len()], need.len(), &dev)?;
    // Only positions the posterior can change need a prediction (MDLM: the masked ones).
    let pos: Vec<u32> = process
        .active_positions(&ids)
        .unwrap_or_else(|| (0..ids.len() as u32).collect());
    let logits = den.logits(&xt, &sigma, Some(&pos))?;
    let v = logits.dim(1)?;
    let at: Vec<u32> = pos.iter().map(|&p| ids[p as usize]).collect();
    let rows = process.clean_probs(&logits, &at)?;
    // Positions are in flat order, so sequence j's rows are one run of `pos`: copy in parallel.
    let mut todo: Vec<(usize, &mut Seq)> = seqs
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| need.binary_search(i).is_ok())
        .map(|(_, q)| q)
        .enumerate()
        .collect();
    todo.par_iter_mut().for_each(|(j, q)| {
        if q.probs.len() != len * v {
            q.probs = vec![0f32; len * v];
        }
        q.fresh = true;
        q.nfe += 1;
        let lo = pos.partition_point(|&p| (p as usize) < *j * len);
        let hi = pos.partition_point(|&p| (p as usize) < (*j + 1) * len);
        for (r, &p) in pos[lo..hi].iter().enumerate() {
            let l = p as usize % len;
            q.probs[l * v..(l + 1) * v].copy_from_slice(&rows[(lo + r) * v..(lo + r + 1) * v]);
        }
    });
    Ok(())
}
