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
use crate::data::pairs::answer_mask;
use crate::nn::{Dit, DitInput, DropoutRng};
use crate::process::ForwardProcess;
use crate::process::curriculum::{CLAMP_LOGIT, DuoCurriculum, Relaxed};
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
        let (b, lat) = (t.len(), &self.latent);
        let v = lat.process().vocab_size();
        let dev = crate::runtime::device();
        let input = lat.corrupt(&x0, l, tp, prompts, self.tau, rng, &dev)?;
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
        let clamp = Clamp::new(&x0, l, v, prompts, &dev)?;
        Ok(Job {
            input,
            renoise: Renoising {
                xi,
                scales,
                signals,
                sigma,
                l,
                tau: self.tau,
                clamp,
            },
        })
    }

    fn fake_target(
        &self,
        student: &Dit,
        j: &Job,
        _: &mut ChaCha8Rng,
    ) -> Result<(Tensor, Tensor, Vec<u32>)> {
        let g = student_probs(student, &j.input, None)?.detach();
        let (w, xt) = renoise_gaussian(&g, &j.renoise)?;
        Ok((g, w.detach(), xt))
    }

    fn fake_loss(
        &self,
        fake: &Dit,
        j: &Job,
        (g, w, xt): &(Tensor, Tensor, Vec<u32>),
        dropout: &mut DropoutRng,
    ) -> Result<Tensor> {
        let r = &j.renoise;
        let logits = soft_logits(fake, w, &r.sigma, Some(dropout))?;
        let loss = self
            .latent
            .process()
            .integrand_rows(&logits, xt, g, &r.signals)?;
        r.per_sequence(loss)
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
        duo_generator_loss(&self.latent, teacher, fake, &g, &j.renoise, self.mode)
    }
}

/// One micro-batch of IDLM-Duo: the student's relaxed input and how its sample is re-noised.
pub struct Job {
    input: Relaxed,
    renoise: Renoising,
}

/// How a micro-batch's student sample G is re-noised at the loss times, and which positions are
/// clamped prompts.
pub struct Renoising {
    /// The re-noising noise xi, (B x L, V).
    pub xi: Tensor,
    /// (alpha~_t, sigma~_t) per row.
    pub scales: Vec<(f64, f64)>,
    /// Integrand signal per position.
    pub signals: Vec<Signal>,
    /// -log alpha_t per row (the networks' time input).
    pub sigma: Vec<f32>,
    /// Row length.
    pub l: usize,
    /// Relaxation temperature.
    pub tau: f64,
    /// Clamped prompts, if any row has one.
    pub clamp: Option<Clamp>,
}

impl Renoising {
    /// Per-position losses (B x L,) to the batch loss: summed over the unclamped positions, per
    /// sequence.
    fn per_sequence(&self, loss: Tensor) -> Result<Tensor> {
        let loss = match &self.clamp {
            Some(c) => (loss * &c.mask)?,
            None => loss,
        };
        Ok((loss.sum_all()? / self.scales.len() as f64)?)
    }
}

/// The clamped prompts of a micro-batch: their re-noised input is the clean token's one-hot (so
/// G never reaches it), their hard state is the clean token, their loss terms are dropped.
pub struct Clamp {
    /// (B x L, 1): 0 at clamped positions, 1 elsewhere.
    keep: Tensor,
    /// (B x L, V): [`CLAMP_LOGIT`] at the clean token of clamped positions, 0 elsewhere.
    clean: Tensor,
    /// (B x L,): the loss weights, `keep` flattened.
    mask: Tensor,
    /// The clean tokens at clamped positions (B x L; None elsewhere).
    tokens: Vec<Option<u32>>,
}

impl Clamp {
    /// The clamp of rows `x0` (length `l`, vocabulary `v`) whose first `prompts[r]` positions
    /// are prompt; None when no row has a prompt.
    pub fn new(
        x0: &[u32],
        l: usize,
        v: usize,
        prompts: &[usize],
        dev: &candle_core::Device,
    ) -> Result<Option<Self>> {
        if prompts.iter().all(|&p| p == 0) {
            return Ok(None);
        }
        let m = prompts.len() * l;
        if x0.len() != m {
            return Err(Error::InvalidArgument(format!(
                "clamp: {} tokens for {} rows of {l}",
                x0.len(),
                prompts.len()
            )));
        }
        let keep = answer_mask(prompts, l);
        let mut clean = vec![0f32; m * v];
        let mut tokens = vec![None; m];
        for (r, &p) in prompts.iter().enumerate() {
            for pos in 0..p.min(l) {
                let i = r * l + pos;
                clean[i * v + x0[i] as usize] = CLAMP_LOGIT;
                tokens[i] = Some(x0[i]);
            }
        }
        Ok(Some(Self {
            keep: Tensor::from_vec(keep.clone(), (m, 1), dev)?,
            clean: Tensor::from_vec(clean, (m, v), dev)?,
            mask: Tensor::from_vec(keep, m, dev)?,
            tokens,
        }))
    }
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
/// hard state argmax w; clamped positions get the clean token's one-hot input and state.
pub fn renoise_gaussian(g: &Tensor, r: &Renoising) -> Result<(Tensor, Vec<u32>)> {
    let (xi, scales, l, tau) = (&r.xi, &r.scales, r.l, r.tau);
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
    let mut w = (g.broadcast_mul(&col(&|s| s.0)?)? + xi.broadcast_mul(&col(&|s| s.1)?)?)?;
    if let Some(c) = &r.clamp {
        w = (w.broadcast_mul(&c.keep)? + &c.clean)?;
    }
    let vals = w.detach().to_vec2::<f32>()?;
    let mut xt: Vec<u32> = vals
        .iter()
        .map(|row| crate::process::argmax(row) as u32)
        .collect();
    if let Some(c) = &r.clamp {
        for (x, t) in xt.iter_mut().zip(&c.tokens) {
            if let Some(t) = t {
                *x = *t;
            }
        }
    }
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

/// The IDLM-Duo student loss of one micro-batch: sum over unclamped positions of
/// [l(f*, G) - l(f, G)] / B with l the soft-target UDLM integrand at argmax w; without a fake,
/// l(f*, G) alone.
pub fn duo_generator_loss(
    latent: &DuoCurriculum,
    teacher: &Dit,
    fake: Option<&Dit>,
    g: &Tensor,
    r: &Renoising,
    mode: DuoGradient,
) -> Result<Tensor> {
    let gin = match mode {
        DuoGradient::Pathwise => g.clone(),
        DuoGradient::StopGradient => g.detach(),
    };
    let (w, xt) = renoise_gaussian(&gin, r)?;
    let p = latent.process();
    let lt = soft_logits(teacher, &w, &r.sigma, None)?;
    let mut loss = p.integrand_rows(&lt, &xt, g, &r.signals)?;
    if let Some(f) = fake {
        let lf = soft_logits(f, &w, &r.sigma, None)?;
        loss = (loss - p.integrand_rows(&lf, &xt, g, &r.signals)?)?;
    }
    r.per_sequence(loss)
}
