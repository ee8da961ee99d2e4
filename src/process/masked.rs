//! MDLM: masked (absorbing-state) diffusion with the SUBS parameterisation (docs/algorithms.md §2).

use candle_core::{D, DType, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{
    ForwardProcess, LogLinear, NoiseRemoval, ProcessKind, StepPlan, Target, argmax, draw_f64,
};
use crate::nn::ops::head_nll::NllRows;
use crate::nn::ops::nll::column_bias;
use crate::nn::ops::soft_nll::soft_nll;
use crate::nn::ops::softmax::softmax_last;
use crate::nn::ops::{lanes, simd};
use crate::{Error, Result};
use rayon::prelude::*;

/// The "minus infinity" SUBS writes (the reference uses -1e6).
pub const NEG_INF: f32 = -1e6;

/// Masked diffusion over a vocabulary whose last id is MASK.
#[derive(Debug, Clone)]
pub struct Masked {
    vocab: usize,
    mask: u32,
    schedule: LogLinear,
}

impl Masked {
    /// A process over `vocab` model ids, with `mask_id` the absorbing state.
    pub fn new(vocab: usize, mask_id: u32) -> Result<Self> {
        if mask_id as usize >= vocab {
            return Err(Error::InvalidArgument(format!(
                "mask id {mask_id} outside vocabulary {vocab}"
            )));
        }
        Ok(Self {
            vocab,
            mask: mask_id,
            schedule: LogLinear::default(),
        })
    }

    /// The MASK id.
    pub fn mask_id(&self) -> u32 {
        self.mask
    }

    /// (V,) bias with -1e6 at the MASK column: the mask can never be predicted as clean.
    fn mask_bias(&self, dev: &candle_core::Device) -> Result<Tensor> {
        Ok(column_bias(self.vocab, self.mask as usize, NEG_INF, dev)?)
    }

    /// NELBO weight of a position: -alpha'/(1 - alpha) = 1/t where masked, 0 elsewhere.
    fn weight(&self, xt: u32, t: f64) -> f32 {
        if xt == self.mask {
            let s = self.schedule;
            (-s.dalpha(t) / (1.0 - s.alpha(t))) as f32
        } else {
            0.0
        }
    }

    /// The NELBO integrand as a weighted NLL: weight -alpha'/(1 - alpha) at masked positions,
    /// 0 elsewhere (SUBS gives log p = 0 there), and the MASK column out of the softmax.
    fn nll_rows(&self, xt: &[u32], x0: &[u32], t: &[f64]) -> NllRows {
        NllRows {
            targets: x0.to_vec(),
            weights: xt
                .iter()
                .zip(t)
                .map(|(&x, &tt)| self.weight(x, tt))
                .collect(),
            exclude: Some(self.mask as usize),
        }
    }

    fn check_times(&self, xt: &Tensor, t: &[f64]) -> Result<(usize, usize)> {
        let (b, l) = xt.dims2()?;
        if t.len() != b {
            return Err(Error::InvalidArgument(format!(
                "{} times for a batch of {b}",
                t.len()
            )));
        }
        Ok((b, l))
    }
}

impl ForwardProcess for Masked {
    fn kind(&self) -> ProcessKind {
        ProcessKind::Mdlm
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn schedule(&self) -> LogLinear {
        self.schedule
    }

    fn corrupt_row(&self, x0: &[u32], t: f64, rng: &mut ChaCha8Rng, out: &mut [u32]) {
        let move_p = 1.0 - self.schedule.alpha(t);
        for (o, &x) in out.iter_mut().zip(x0) {
            *o = if rng.random::<f64>() < move_p {
                self.mask
            } else {
                x
            };
        }
    }

    fn prior_row(&self, out: &mut [u32], _rng: &mut ChaCha8Rng) {
        out.fill(self.mask);
    }

    fn is_final(&self, xt: &[u32]) -> bool {
        !xt.contains(&self.mask)
    }

    fn log_probs(&self, logits: &Tensor, xt: &Tensor) -> Result<Tensor> {
        let (b, l, v) = logits.dims3()?;
        let ids = xt.flatten_all()?.to_vec1::<u32>()?;
        Ok(self
            .log_probs_rows(&logits.reshape((b * l, v))?, &ids)?
            .reshape((b, l, v))?)
    }

    fn active_positions(&self, xt: &[u32]) -> Option<Vec<u32>> {
        Some(
            xt.iter()
                .enumerate()
                .filter(|(_, x)| **x == self.mask)
                .map(|(i, _)| i as u32)
                .collect(),
        )
    }

    fn clean_probs(&self, logits: &Tensor, xt: &[u32]) -> Result<Vec<f32>> {
        let (m, v) = logits.dims2()?;
        if xt.len() != m {
            return Err(Error::InvalidArgument(format!(
                "{m} rows of logits for {} positions",
                xt.len()
            )));
        }
        // SUBS: softmax without the MASK column where masked; the observed token where not.
        let mut z = logits
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mask = self.mask as usize;
        z.par_chunks_mut(v)
            .zip(xt.par_iter())
            .for_each(|(row, &x)| {
                simd::dispatch(
                    #[inline(always)]
                    || {
                        if x == self.mask {
                            // Lane-parallel max and sum: an in-order sum over the vocabulary is
                            // one dependent add per entry. The MASK entry's exp(-87) is taken
                            // back out of the sum before it is zeroed.
                            row[mask] = f32::NEG_INFINITY;
                            let mx = lanes::max(row);
                            let s = lanes::exp_in_place(row, 1.0, mx) - row[mask];
                            row[mask] = 0.0;
                            let inv = 1.0 / s;
                            row.iter_mut().for_each(|r| *r *= inv);
                        } else {
                            row.fill(0.0);
                            row[x as usize] = 1.0;
                        }
                    },
                )
            });
        Ok(z)
    }

    fn hard_loss_rows(&self, logits: &Tensor, xt: &[u32], x0: &[u32], t: &[f64]) -> Result<Tensor> {
        let m = xt.len();
        if x0.len() != m || t.len() != m || logits.dim(0)? != m {
            return Err(Error::InvalidArgument(format!(
                "loss rows: {} logits rows, {m} noisy ids, {} targets, {} times",
                logits.dim(0)?,
                x0.len(),
                t.len()
            )));
        }
        Ok(self
            .nll_rows(xt, x0, t)
            .of_logits(&logits.to_dtype(DType::F32)?)?)
    }

    fn hard_loss_as_nll(&self, xt: &[u32], x0: &[u32], t: &[f64]) -> Option<NllRows> {
        (x0.len() == xt.len() && t.len() == xt.len()).then(|| self.nll_rows(xt, x0, t))
    }

    fn soft_loss_rows(&self, logits: &Tensor, xt: &[u32], g: &Tensor, t: &[f64]) -> Result<Tensor> {
        let m = xt.len();
        if t.len() != m || logits.dim(0)? != m || g.dims() != logits.dims() {
            return Err(Error::InvalidArgument(format!(
                "soft loss rows: logits {:?}, target {:?}, {m} noisy ids, {} times",
                logits.dims(),
                g.dims(),
                t.len()
            )));
        }
        let dev = logits.device();
        let w: Vec<f32> = xt
            .iter()
            .zip(t)
            .map(|(&x, &tt)| self.weight(x, tt))
            .collect();
        let w = Tensor::from_vec(w, m, dev)?;
        // -<g, log p> with the MASK column excluded from the softmax (SUBS at a masked position;
        // unmasked positions have weight 0 and their carry-over cancels in IDLM's difference).
        let exclude = Some((self.mask as usize, NEG_INF));
        Ok(soft_nll(
            &logits.to_dtype(DType::F32)?,
            &g.to_dtype(DType::F32)?,
            &w,
            exclude,
        )?)
    }

    fn log_probs_rows(&self, logits: &Tensor, xt: &[u32]) -> Result<Tensor> {
        let (m, v) = logits.dims2()?;
        if xt.len() != m {
            return Err(Error::InvalidArgument(format!(
                "{m} rows of logits for {} positions",
                xt.len()
            )));
        }
        let dev = logits.device();
        let z = logits
            .to_dtype(DType::F32)?
            .broadcast_add(&self.mask_bias(dev)?)?;
        let logp = candle_nn::ops::log_softmax(&z, D::Minus1)?;
        if xt.iter().all(|&x| x == self.mask) {
            return Ok(logp);
        }
        // Carry-over at unmasked positions: 0 at the observed token, -1e6 elsewhere.
        let mut keep = vec![1f32; m];
        let mut carry = vec![0f32; m * v];
        for (i, &x) in xt.iter().enumerate() {
            if x != self.mask {
                keep[i] = 0.0;
                let row = &mut carry[i * v..(i + 1) * v];
                row.fill(NEG_INF);
                row[x as usize] = 0.0;
            }
        }
        let keep = Tensor::from_vec(keep, (m, 1), dev)?;
        let carry = Tensor::from_vec(carry, (m, v), dev)?;
        Ok(logp.broadcast_mul(&keep)?.add(&carry)?)
    }

    fn probs_rows(&self, logits: &Tensor, xt: &[u32]) -> Result<Tensor> {
        if xt.len() != logits.dim(0)? || xt.iter().any(|&x| x != self.mask) {
            return Ok(self.log_probs_rows(logits, xt)?.exp()?);
        }
        // Every row masked (IDLM's student sample): one fused softmax instead of a composed
        // log-softmax and an exp, forward and backward. exp(-1e6) is 0 in f32 either way.
        let z = logits
            .to_dtype(DType::F32)?
            .broadcast_add(&self.mask_bias(logits.device())?)?;
        Ok(softmax_last(&z)?)
    }

    fn renoise_row(&self, g: &[f32], t: f64, rng: &mut ChaCha8Rng, out: &mut [u32]) {
        let keep = self.schedule.alpha(t);
        let v = self.vocab;
        for (l, o) in out.iter_mut().enumerate() {
            *o = if rng.random::<f64>() < keep {
                draw_f64(&g[l * v..(l + 1) * v], rng) as u32
            } else {
                self.mask
            };
        }
    }

    fn loss_per_token(
        &self,
        logits: &Tensor,
        xt: &Tensor,
        target: Target,
        t: &[f64],
    ) -> Result<Tensor> {
        let (b, l) = self.check_times(xt, t)?;
        let ids = xt.flatten_all()?.to_vec1::<u32>()?;
        let t_pos: Vec<f64> = (0..b * l).map(|i| t[i / l]).collect();
        let v = logits.dim(2)?;
        let flat = logits.reshape((b * l, v))?;
        match target {
            Target::Hard(x0) => {
                let x0 = x0.flatten_all()?.to_vec1::<u32>()?;
                Ok(self
                    .hard_loss_rows(&flat, &ids, &x0, &t_pos)?
                    .reshape((b, l))?)
            }
            Target::Soft(g) => Ok(self
                .soft_loss_rows(&flat, &ids, &g.reshape((b * l, v))?, &t_pos)?
                .reshape((b, l))?),
        }
    }

    fn plan_step(&self, xt: &[u32], t: f64, s: f64, rng: &mut ChaCha8Rng) -> StepPlan {
        let (at, as_) = (self.schedule.alpha(t), self.schedule.alpha(s));
        // Stay masked w.p. (1 - a_s)/(1 - a_t), else reveal from p. Drawing the stay/reveal events
        // first and drawing from p only where revealing is the same distribution as one draw from
        // q(v) = p_v (a_s - a_t), q(m) = 1 - a_s, at a fraction of the cost, and it tells the
        // sampler which rows of p it needs before it calls the network.
        let stay = ((1.0 - as_) / (1.0 - at)).clamp(0.0, 1.0);
        StepPlan::Reveal(
            xt.iter()
                .enumerate()
                .filter(|(_, x)| **x == self.mask)
                .filter(|_| rng.random::<f64>() >= stay)
                .map(|(l, _)| l as u32)
                .collect(),
        )
    }

    fn plan_noise_removal(
        &self,
        xt: &[u32],
        t: f64,
        mode: NoiseRemoval,
        rng: &mut ChaCha8Rng,
    ) -> StepPlan {
        match mode {
            NoiseRemoval::Ancestral => self.plan_step(xt, t, 0.0, rng),
            NoiseRemoval::Greedy => self
                .active_positions(xt)
                .map_or(StepPlan::Full, StepPlan::Reveal),
        }
    }

    fn posterior_row(
        &self,
        probs: &[f32],
        xt: &mut [u32],
        t: f64,
        s: f64,
        rng: &mut ChaCha8Rng,
    ) -> bool {
        let StepPlan::Reveal(pos) = self.plan_step(xt, t, s, rng) else {
            return false;
        };
        let v = self.vocab;
        for &l in &pos {
            let l = l as usize;
            xt[l] = draw_f64(&probs[l * v..(l + 1) * v], rng) as u32;
        }
        !pos.is_empty()
    }

    fn noise_removal_row(
        &self,
        probs: &[f32],
        xt: &mut [u32],
        t: f64,
        mode: NoiseRemoval,
        rng: &mut ChaCha8Rng,
    ) -> bool {
        match mode {
            NoiseRemoval::Ancestral => self.posterior_row(probs, xt, t, 0.0, rng),
            NoiseRemoval::Greedy => {
                let v = self.vocab;
                let mut changed = false;
                for (l, x) in xt.iter_mut().enumerate() {
                    if *x == self.mask {
                        *x = argmax(&probs[l * v..(l + 1) * v]) as u32;
                        changed = true;
                    }
                }
                changed
            }
        }
    }
}
