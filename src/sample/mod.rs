//! One sampler for every forward process: the grid, per-sequence caching, noise removal and the
//! f64 categorical draw (docs/algorithms.md §1, §2.3), with continuous batching across requests.

mod engine;
pub mod record;
mod sequence;
pub mod template;

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::process::{ForwardProcess, NoiseRemoval};
pub use crate::progress::Progress;
pub use engine::{Engine, Event, Request, RequestId, sample_requests};
pub use template::Template;

pub use crate::nn::Denoiser;

/// Sampler settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SamplerOptions {
    /// Number of reverse steps K on the grid linspace(1, 1e-5, K + 1).
    pub steps: usize,
    /// Final noise removal.
    pub noise_removal: NoiseRemoval,
    /// Skip network calls whose output the step cannot use: a masked step that reveals nothing
    /// (drawn before the call), and a sequence whose tokens did not change under a network without
    /// time input. Off: one call per sequence and step, as the reference sampler; same samples.
    pub cache: bool,
    /// Most sequences per network call.
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
    /// Wall-clock seconds attributed to it: each network call's time (with its updates) shared
    /// equally by the sequences in the call, so the seconds of all samples add up to the wall time.
    pub seconds: f64,
}

/// Draw `n` sequences of length `len` with `den` under `process`, `opts.batch_size` at a time.
pub fn sample(
    den: &dyn Denoiser,
    process: &dyn ForwardProcess,
    n: usize,
    len: usize,
    opts: &SamplerOptions,
    progress: Option<Progress>,
) -> Result<Vec<Sample>> {
    let req = Request {
        n,
        len,
        opts: opts.clone(),
        template: None,
    };
    let mut out = sample_requests(den, process, &[req], opts.batch_size, progress)?;
    Ok(out.pop().unwrap_or_default())
}
