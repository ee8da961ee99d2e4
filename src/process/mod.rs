//! Forward processes behind one trait: the sampler, trainer and distillers are written once against
//! it (docs/design.md §2). MDLM (masked) lives in `masked.rs`, Duo (uniform) in `uniform.rs`.

pub mod categorical;
pub mod curriculum;
pub mod duality;
pub mod factory;
pub mod family;
pub mod masked;
pub mod relaxation;
pub mod schedule;
pub mod uniform;

use crate::nn::ops::head_nll::NllRows;
use candle_core::Tensor;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::Result;
pub use categorical::{draw_f64, race_f64};
pub use factory::build_process;
pub use family::ModelFamily;
pub use masked::Masked;
pub use schedule::LogLinear;
pub use uniform::Uniform;

/// Clean target of a loss: hard ids (teacher training) or a simplex (IDLM's relaxed student sample).
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// u32 ids of shape (B, L).
    Hard(&'a Tensor),
    /// Probabilities of shape (B, L, V).
    Soft(&'a Tensor),
}

/// How the last step of a sampler turns the remaining noise into tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoiseRemoval {
    /// One more ancestral update to alpha_s = 1 (samples the remaining tokens).
    Ancestral,
    /// Argmax of the model's clean-token distribution.
    Greedy,
}

impl std::str::FromStr for NoiseRemoval {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ancestral" => Ok(Self::Ancestral),
            "greedy" => Ok(Self::Greedy),
            _ => Err(crate::Error::InvalidArgument(format!(
                "noise removal must be 'ancestral' or 'greedy', got '{s}'"
            ))),
        }
    }
}

/// What one reverse step of a row needs from the network, drawn before the network is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepPlan {
    /// Set exactly these positions (ascending) by a draw from p(x0 | x_t) there, each on its own;
    /// every other position stays. Empty: the step changes nothing and needs no network call.
    Reveal(Vec<u32>),
    /// The step needs p(x0 | x_t) at every position it may change (`posterior_row`).
    Full,
}

/// Which forward process a diffusion model was trained with (the AR baseline has none: see
/// [`ModelFamily`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessKind {
    /// Masked (absorbing-state) diffusion, MDLM.
    Mdlm,
    /// Uniform-state diffusion, Duo.
    Duo,
}

impl ProcessKind {
    /// The name in configs and checkpoints ("mdlm", "duo").
    pub fn name(self) -> &'static str {
        match self {
            Self::Mdlm => "mdlm",
            Self::Duo => "duo",
        }
    }
}

/// A discrete forward process q_t(x_t | x_0), its loss and its reverse posterior.
pub trait ForwardProcess: Send + Sync {
    /// Which process this is.
    fn kind(&self) -> ProcessKind;
    /// Model vocabulary (including any MASK id).
    fn vocab_size(&self) -> usize;
    /// The noise schedule.
    fn schedule(&self) -> LogLinear;
    /// The sigma fed to a time-conditioned network at time t.
    fn sigma(&self, t: f64) -> f64 {
        self.schedule().sigma(t)
    }
    /// Sample x_t ~ q_t(. | x0) for one row.
    fn corrupt_row(&self, x0: &[u32], t: f64, rng: &mut ChaCha8Rng, out: &mut [u32]);
    /// Sample a row from the prior (t = 1).
    fn prior_row(&self, out: &mut [u32], rng: &mut ChaCha8Rng);
    /// True when a sampler cannot change this row any more (no network call is needed).
    fn is_final(&self, xt: &[u32]) -> bool;
    /// Log-probabilities log p(x0 | x_t) of shape (B, L, V) from raw logits (the parameterisation).
    fn log_probs(&self, logits: &Tensor, xt: &Tensor) -> Result<Tensor>;
    /// Flat indices (into B x L) of the positions whose loss can be non-zero (MDLM: the masked
    /// ones), or None for all: a loss computes the vocabulary projection only there.
    fn active_positions(&self, _xt: &[u32]) -> Option<Vec<u32>> {
        None
    }
    /// The clean-token distribution p(x0 | x_t) (M x V, row-major) from raw logits (M, V) at
    /// positions whose noisy tokens are `xt` (the parameterisation, for the sampler).
    fn clean_probs(&self, logits: &Tensor, xt: &[u32]) -> Result<Vec<f32>>;
    /// NELBO integrand at selected positions: logits (M, V), and per position its noisy token,
    /// clean target and time. Returns (M,).
    fn hard_loss_rows(&self, logits: &Tensor, xt: &[u32], x0: &[u32], t: &[f64]) -> Result<Tensor>;
    /// The same integrand as a weighted NLL of the raw logits when it is one (MDLM), so a loss can
    /// fuse it with the output projection; None when it is not (Duo).
    fn hard_loss_as_nll(&self, _xt: &[u32], _x0: &[u32], _t: &[f64]) -> Option<NllRows> {
        None
    }
    /// NELBO integrand at selected positions against a soft (simplex) clean target `g` (M, V):
    /// IDLM's relaxed student sample. Differentiable in `g` and in `logits`. Returns (M,).
    fn soft_loss_rows(&self, logits: &Tensor, xt: &[u32], g: &Tensor, t: &[f64]) -> Result<Tensor>;
    /// Differentiable log p(x0 | x_t) (M, V) from raw logits (M, V) at positions whose noisy
    /// tokens are `xt` (the parameterisation; MDLM: SUBS).
    fn log_probs_rows(&self, logits: &Tensor, xt: &[u32]) -> Result<Tensor>;
    /// Differentiable p(x0 | x_t) (M, V): the exp of [`Self::log_probs_rows`].
    fn probs_rows(&self, logits: &Tensor, xt: &[u32]) -> Result<Tensor> {
        Ok(self.log_probs_rows(logits, xt)?.exp()?)
    }
    /// Re-noise a relaxed clean row: draw x_t from q_t(. | g) = alpha_t g + (1 - alpha_t) pi per
    /// position, with `g` the row's simplex (L x V, row-major). Hard and without gradient (MDLM).
    fn renoise_row(&self, g: &[f32], t: f64, rng: &mut ChaCha8Rng, out: &mut [u32]);
    /// Per-position NELBO integrand (B, L) from raw logits at times `t` (one per row).
    fn loss_per_token(
        &self,
        logits: &Tensor,
        xt: &Tensor,
        target: Target,
        t: &[f64],
    ) -> Result<Tensor>;
    /// Plan the reverse step t -> s of a row before any prediction exists. A process whose step
    /// sets each changed position from p(x0 | x_t) alone (MDLM) draws which positions change here,
    /// so a sampler predicts only those; `posterior_row` must equal this plan followed by
    /// `draw_f64` at each planned position, on the same random stream.
    fn plan_step(&self, _xt: &[u32], _t: f64, _s: f64, _rng: &mut ChaCha8Rng) -> StepPlan {
        StepPlan::Full
    }
    /// Plan the final noise removal at t the same way (greedy: the planned positions take the
    /// argmax instead of a draw).
    fn plan_noise_removal(
        &self,
        _xt: &[u32],
        _t: f64,
        _mode: NoiseRemoval,
        _rng: &mut ChaCha8Rng,
    ) -> StepPlan {
        StepPlan::Full
    }
    /// One reverse step t -> s of a row given p(x0 | x_t) (row-major L x V); true if x_t changed.
    fn posterior_row(
        &self,
        probs: &[f32],
        xt: &mut [u32],
        t: f64,
        s: f64,
        rng: &mut ChaCha8Rng,
    ) -> bool;
    /// The final noise-removal step of a row; true if x_t changed.
    fn noise_removal_row(
        &self,
        probs: &[f32],
        xt: &mut [u32],
        t: f64,
        mode: NoiseRemoval,
        rng: &mut ChaCha8Rng,
    ) -> bool;
}

/// Index of the largest entry.
pub fn argmax(p: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in p.iter().enumerate() {
        if v > p[best] {
            best = i;
        }
    }
    best
}
