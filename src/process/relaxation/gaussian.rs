//! IDLM's relaxation for uniform-state (Duo) teachers, as coded in the reference (docs/algorithms.md
//! §4.3): the student sees the Gaussian-relaxed data w'/tau; its simplex G is re-noised by the
//! Gaussian reparameterisation w = (alpha~_t G + sigma~_t xi) / tau; the frozen teacher and fake
//! both see the soft input softmax(w), and the student loss l(f*, G) - l(f, G) reaches G through
//! the integrand's target and through both frozen networks' inputs (pathwise gradient).

use candle_core::{D, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::Relaxation;
use crate::nn::{Dit, DitInput, DropoutRng};
use crate::process::ForwardProcess;
use crate::process::curriculum::{DuoCurriculum, Relaxed};
use crate::process::duality::{alpha_tilde, sigma_tilde};
use crate::process::uniform::Signal;
use crate::{Error, Result};

/// How G enters the re-noised input of IDLM-Duo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DuoGradient {
    /// w = alpha~ G + sigma~ xi with gradient through the networks' inputs (the method).
    #[default]
    Pathwise,
    /// The DMD-like ablation w = alpha~ sg(G) + sigma~ xi: G reaches the loss only as its target.
    StopGradient,
}

/// Duo's Gaussian relaxation: the teacher's latent window, the temperature tau, the gradient mode.
pub struct Gaussian {
    /// The Gaussian latent over the teacher's gamma window.
    pub latent: DuoCurriculum,
    /// Relaxation temperature.
    pub tau: f64,
    /// How G enters the re-noised input.
    pub mode: DuoGradient,
}

impl DuoCurriculum {
    /// IDLM's relaxation through this Gaussian latent at temperature `tau`.
    pub fn relaxation(self, tau: f64, mode: DuoGradient) -> Gaussian {
        Gaussian {
            latent: self,
            tau,
            mode,
        }
    }
}

impl Relaxation for Gaussian {
    type Teacher = Dit;
    type Job = Job;
    /// (G, w, argmax w), all without gradient.
    type FakeTarget = (Tensor, Tensor, Vec<u32>);

    fn job(
        &self,
        x0: Vec<u32>,
        l: usize,
        tp: &[f64],
        t: &[f64],
        prompts: &[usize],
        rng: &mut ChaCha8Rng,
    ) -> Result<Job> {
        if prompts.iter().any(|&p| p > 0) {
            // The Gaussian latent noises every position; clamping it is not written yet.
            return Err(crate::Error::InvalidArgument(
                "IDLM-Duo does not clamp prompts yet: its Gaussian latent noises every position of \
                 a prompt/answer row"
                    .into(),
            ));
        }
        let (b, lat) = (t.len(), &self.latent);
        let v = lat.process().vocab_size();
        let input = lat.corrupt(&x0, l, tp, self.tau, rng, &crate::runtime::device())?;
        let mut scales = Vec::with_capacity(b);
        let mut signals = Vec::with_capacity(b * l);
        let mut sigma = Vec::with_capacity(b);
        for &ti in t {
            let (gamma, s) = lat.signal(ti);
            scales.push((alpha_tilde(gamma), sigma_tilde(gamma)));
            signals.extend(std::iter::repeat_n(s, l));
            sigma.push(-(s.alpha.ln()) as f32);
        }
        let xi = gaussian(b * l, v, rng)?;
        Ok(Job {
            input,
            scales,
            signals,
            sigma,
            xi,
            l,
        })
    }

    fn fake_target(
        &self,
        student: &Dit,
        j: &Job,
        _: &mut ChaCha8Rng,
    ) -> Result<(Tensor, Tensor, Vec<u32>)> {
        let g = student_probs(student, &j.input, None)?.detach();
        let (w, xt) = renoise_gaussian(&g, &j.xi, &j.scales, j.l, self.tau)?;
        Ok((g, w.detach(), xt))
    }

    fn fake_loss(
        &self,
        fake: &Dit,
        j: &Job,
        (g, w, xt): &(Tensor, Tensor, Vec<u32>),
        dropout: &mut DropoutRng,
    ) -> Result<Tensor> {
        let logits = soft_logits(fake, w, &j.sigma, Some(dropout))?;
        let loss = self
            .latent
            .process()
            .integrand_rows(&logits, xt, g, &j.signals)?;
        Ok((loss.sum_all()? / j.scales.len() as f64)?)
    }

    fn generator_loss(
        &self,
        student: &Dit,
        teacher: &Dit,
        fake: Option<&Dit>,
        j: &Job,
        dropout: &mut DropoutRng,
        _: &mut ChaCha8Rng,
    ) -> Result<Tensor> {
        let g = student_probs(student, &j.input, Some(dropout))?;
        duo_generator_loss(
            &self.latent,
            teacher,
            fake,
            &g,
            &j.xi,
            &j.scales,
            &j.signals,
            &j.sigma,
            j.l,
            self.tau,
            self.mode,
        )
    }
}

/// One micro-batch of IDLM-Duo: the student's relaxed input, its real rows, the loss times' signals and
/// sigma, and the re-noising noise xi.
pub struct Job {
    input: Relaxed,
    /// (alpha~_t, sigma~_t) per row.
    scales: Vec<(f64, f64)>,
    /// Integrand signal per position.
    signals: Vec<Signal>,
    sigma: Vec<f32>,
    xi: Tensor,
    l: usize,
}

/// The student's distribution G (B x L, V) on a relaxed input, with the graph kept.
fn student_probs(model: &Dit, input: &Relaxed, dropout: Option<&mut DropoutRng>) -> Result<Tensor> {
    let (b, l, _) = input.input.dims3()?;
    let sigma = Tensor::from_slice(&input.sigma, b, model.device())?;
    let feats = model.features(DitInput::Soft(&input.input), &sigma, dropout)?;
    let d = feats.dim(2)?;
    let logits = model.head(&feats.reshape((b * l, d))?)?;
    Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?.exp()?)
}

/// Logits (B x L, V) of a network on the soft input `w` (B, L, V).
fn soft_logits(
    model: &Dit,
    w: &Tensor,
    sigma: &[f32],
    dropout: Option<&mut DropoutRng>,
) -> Result<Tensor> {
    let (b, l, _) = w.dims3()?;
    let sigma = Tensor::from_slice(sigma, b, model.device())?;
    let feats = model.features(DitInput::Soft(w), &sigma, dropout)?;
    let d = feats.dim(2)?;
    model.head(&feats.reshape((b * l, d))?)
}

/// w = (alpha~_t G + sigma~_t xi) / tau as (B, L, V), differentiable in `g` (B x L, V), and the
/// hard state argmax w.
pub fn renoise_gaussian(
    g: &Tensor,
    xi: &Tensor,
    scales: &[(f64, f64)],
    l: usize,
    tau: f64,
) -> Result<(Tensor, Vec<u32>)> {
    let (m, v) = g.dims2()?;
    let b = scales.len();
    if m != b * l || xi.dims() != g.dims() {
        return Err(Error::InvalidArgument(format!(
            "re-noising: G {:?}, xi {:?}, {b} rows of {l}",
            g.dims(),
            xi.dims()
        )));
    }
    let col = |f: &dyn Fn(&(f64, f64)) -> f64| -> Result<Tensor> {
        let x: Vec<f32> = (0..m).map(|i| (f(&scales[i / l]) / tau) as f32).collect();
        Ok(Tensor::from_vec(x, (m, 1), g.device())?)
    };
    let w = (g.broadcast_mul(&col(&|s| s.0)?)? + xi.broadcast_mul(&col(&|s| s.1)?)?)?;
    let vals = w.detach().to_vec2::<f32>()?;
    let xt = vals
        .iter()
        .map(|row| crate::process::argmax(row) as u32)
        .collect();
    Ok((w.reshape((b, l, v))?, xt))
}

/// Standard normal noise of shape (m, v) from `rng`.
fn gaussian(m: usize, v: usize, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    let x: Vec<f32> = (0..m * v)
        .map(|_| {
            let z: f64 = StandardNormal.sample(rng);
            z as f32
        })
        .collect();
    Ok(Tensor::from_vec(x, (m, v), &crate::runtime::device())?)
}

/// The IDLM-Duo student loss of one micro-batch: sum over positions of [l(f*, G) - l(f, G)] / B
/// with l the soft-target UDLM integrand at argmax w; without a fake, l(f*, G) alone.
#[allow(clippy::too_many_arguments)]
pub fn duo_generator_loss(
    latent: &DuoCurriculum,
    teacher: &Dit,
    fake: Option<&Dit>,
    g: &Tensor,
    xi: &Tensor,
    scales: &[(f64, f64)],
    signals: &[Signal],
    sigma: &[f32],
    l: usize,
    tau: f64,
    mode: DuoGradient,
) -> Result<Tensor> {
    let gin = match mode {
        DuoGradient::Pathwise => g.clone(),
        DuoGradient::StopGradient => g.detach(),
    };
    let (w, xt) = renoise_gaussian(&gin, xi, scales, l, tau)?;
    let p = latent.process();
    let lt = soft_logits(teacher, &w, sigma, None)?;
    let mut loss = p.integrand_rows(&lt, &xt, g, signals)?;
    if let Some(f) = fake {
        let lf = soft_logits(f, &w, sigma, None)?;
        loss = (loss - p.integrand_rows(&lf, &xt, g, signals)?)?;
    }
    Ok((loss.sum_all()? / scales.len() as f64)?)
}
