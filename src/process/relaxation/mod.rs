//! The process-specific part of IDLM (docs/algorithms.md §4.2-§4.4): how the student's input is formed
//! from real rows, how its simplex G is re-noised into the state x_t the teacher and the fake see,
//! and the two losses on that state. One IDLM step (`distill::Idlm::step`) is written against this
//! trait; masked diffusion re-noises G into hard tokens ([`Hard`]), Duo through its Gaussian
//! latent with a differentiable soft input ([`Gaussian`]).

pub mod batch;
pub mod gaussian;
pub mod hard;

pub use batch::{active, corrupt, logits_at};
pub use gaussian::{DuoGradient, Gaussian};
pub use hard::Hard;

use candle_core::Tensor;
use rand_chacha::ChaCha8Rng;

use crate::Result;
use crate::nn::{Dit, DropoutRng};

/// How IDLM relaxes and re-noises the student's sample for one forward process.
pub trait Relaxation {
    /// What the teacher is to the student loss (a DiT, or any denoiser for hard states).
    type Teacher: ?Sized;
    /// One micro-batch: real rows, the student's input at times t', the loss times t, and any
    /// noise drawn up front.
    type Job;
    /// The fake's training target: the frozen student's re-noised sample.
    type FakeTarget;

    /// A micro-batch from real rows `x0` (B x L, flat) at times `tp` (student) and `t` (loss);
    /// draws its noise from `rng`. `prompts`: each row's clamped prefix (prompt/answer rows; all 0
    /// for unconditional data), kept clean in every state and out of every loss.
    fn job(
        &self,
        x0: Vec<u32>,
        l: usize,
        tp: &[f64],
        t: &[f64],
        prompts: &[usize],
        rng: &mut ChaCha8Rng,
    ) -> Result<Self::Job>;

    /// The frozen student's sample on `job`, re-noised (drawing from `rng` where the process
    /// needs), as the fake's target.
    fn fake_target(
        &self,
        student: &Dit,
        job: &Self::Job,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self::FakeTarget>;

    /// The fake's loss on its target (per sequence), with gradient into `fake`.
    fn fake_loss(
        &self,
        fake: &Dit,
        job: &Self::Job,
        target: &Self::FakeTarget,
        dropout: &mut DropoutRng,
    ) -> Result<Tensor>;

    /// The student loss L(f*, G) - L(f, G) (per sequence; without a fake, L(f*, G) alone) of the
    /// student's sample on `job`, with gradient into `student` only.
    fn generator_loss(
        &self,
        student: &Dit,
        teacher: &Self::Teacher,
        fake: Option<&Dit>,
        job: &Self::Job,
        dropout: &mut DropoutRng,
        rng: &mut ChaCha8Rng,
    ) -> Result<Tensor>;
}
