//! IDLM for uniform-state (Duo) teachers, as coded in the reference (algorithms.md §4.3): the
//! student sees the Gaussian-relaxed data w'/tau; its simplex G is re-noised by the Gaussian
//! reparameterisation w = (alpha~_t G + sigma~_t xi) / tau; the frozen teacher and fake both see
//! the soft input softmax(w), and the student loss l(f*, G) - l(f, G) reaches G through the
//! integrand's target and through both frozen networks' inputs (pathwise gradient).

use candle_core::{D, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::config::DuoGradient;
use super::idlm::{Idlm, IdlmStats};
use super::nets::phase_times;
use crate::checkpoint::dit_from_tensors;
use crate::data::PackedTokens;
use crate::nn::{Dit, DitInput, DropoutRng};
use crate::process::ForwardProcess;
use crate::process::curriculum::{DuoCurriculum, Relaxed};
use crate::process::duality::{alpha_tilde, sigma_tilde};
use crate::process::uniform::Signal;
use crate::{Error, Result};

/// One micro-batch: the student's relaxed input, its real rows, the loss times' signals and
/// sigma, and the re-noising noise xi.
struct Job {
    input: Relaxed,
    /// (alpha~_t, sigma~_t) per row.
    scales: Vec<(f64, f64)>,
    /// Integrand signal per position.
    signals: Vec<Signal>,
    sigma: Vec<f32>,
    xi: Tensor,
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

impl Idlm {
    /// Fresh jobs for one phase: real rows through the Gaussian latent at t', and the loss
    /// times' scales and signals with their xi.
    fn duo_jobs(
        &mut self,
        latent: &DuoCurriculum,
        tau: f64,
        data: &PackedTokens,
    ) -> Result<Vec<Job>> {
        let (b, l, acc) = (self.cfg.batch_size, data.row_len(), self.cfg.grad_accum);
        let (tp, t) = phase_times(b * acc, self.cfg.coupling, &mut self.rngs.time);
        let v = latent.process().vocab_size();
        let mut jobs = Vec::with_capacity(acc);
        for m in 0..acc {
            let x0 = self.student.next_rows(data, b)?;
            let tpm = &tp[m * b..(m + 1) * b];
            let input = latent.corrupt(
                &x0,
                l,
                tpm,
                tau,
                &mut self.rngs.noise,
                &crate::runtime::device(),
            )?;
            let mut scales = Vec::with_capacity(b);
            let mut signals = Vec::with_capacity(b * l);
            let mut sigma = Vec::with_capacity(b);
            for &ti in &t[m * b..(m + 1) * b] {
                let (gamma, s) = latent.signal(ti);
                scales.push((alpha_tilde(gamma), sigma_tilde(gamma)));
                signals.extend(std::iter::repeat_n(s, l));
                sigma.push(-(s.alpha.ln()) as f32);
            }
            let xi = gaussian(b * l, v, &mut self.rngs.noise)?;
            jobs.push(Job {
                input,
                scales,
                signals,
                sigma,
                xi,
            });
        }
        Ok(jobs)
    }

    /// One IDLM-Duo alternation: a fake update on re-noised student samples, then a student
    /// update through the Gaussian reparameterisation. `tau` is the relaxation temperature.
    pub fn step_duo(
        &mut self,
        teacher: &Dit,
        latent: &DuoCurriculum,
        tau: f64,
        mode: DuoGradient,
        data: &PackedTokens,
    ) -> Result<IdlmStats> {
        let (b, l) = (self.cfg.batch_size, data.row_len());
        let tokens = (b * l * self.cfg.grad_accum) as u64;
        let p = self.cfg.dropout;

        // Fake phase: G detached (student frozen, no dropout), the fake fitted to it.
        let (fake_loss, fake_norm) = if self.fake.is_some() {
            let jobs = self.duo_jobs(latent, tau, data)?;
            let mut targets = Vec::with_capacity(jobs.len());
            for j in &jobs {
                let g = student_probs(&self.student.model, &j.input, None)?.detach();
                let (w, xt) = renoise_gaussian(&g, &j.xi, &j.scales, l, tau)?;
                targets.push((g, w.detach(), xt));
            }
            let fake = self
                .fake
                .as_mut()
                .ok_or_else(|| Error::Config("fake network missing".into()))?;
            let st = fake.optimize(tokens, |model, micro, rng| {
                let (g, w, xt) = &targets[micro];
                let j = &jobs[micro];
                let mut drop = DropoutRng { p, rng };
                let logits = soft_logits(model, w, &j.sigma, Some(&mut drop))?;
                let loss = latent
                    .process()
                    .integrand_rows(&logits, xt, g, &j.signals)?;
                Ok((loss.sum_all()? / b as f64)?)
            })?;
            (st.loss, st.grad_norm)
        } else {
            (f64::NAN, f64::NAN)
        };

        // Student phase: the fake frozen as a plain network (no weight gradients), the teacher
        // and fake evaluated on the differentiable soft input.
        let jobs = self.duo_jobs(latent, tau, data)?;
        let frozen_fake = match &self.fake {
            Some(f) => {
                let w = f
                    .weights()
                    .into_iter()
                    .map(|(k, v)| (k, v.detach()))
                    .collect();
                Some(dit_from_tensors(&w, &f.arch, std::path::Path::new("fake"))?)
            }
            None => None,
        };
        let st = self.student.optimize(tokens, |model, micro, rng| {
            let j = &jobs[micro];
            let mut drop = DropoutRng { p, rng };
            let g = student_probs(model, &j.input, Some(&mut drop))?;
            duo_generator_loss(
                latent,
                teacher,
                frozen_fake.as_ref(),
                &g,
                &j.xi,
                &j.scales,
                &j.signals,
                &j.sigma,
                l,
                tau,
                mode,
            )
        })?;
        Ok(IdlmStats {
            step: self.student.step,
            fake_loss,
            student_loss: st.loss,
            fake_grad_norm: fake_norm,
            student_grad_norm: st.grad_norm,
            lr: st.lr,
        })
    }
}
