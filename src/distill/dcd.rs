//! DCD, Duo's discrete consistency distillation (docs/algorithms.md §3.7): on one deterministic Gaussian
//! trajectory (a shared xi), the student at the hard state of time t learns the frozen teacher's
//! prediction at the state of time s = t - dt, by KL(student || teacher); every round dt doubles
//! and the teacher becomes the student's raw weights. Prompt/answer rows keep their prompts clean
//! in both states and out of the KL.

use candle_core::{D, Tensor};

use super::config::DistillConfig;
use super::distiller::RoundDistiller;
use super::nets::DistillRngs;
use super::rounds::{RoundNets, RoundStats, Weights};
use crate::Result;
use crate::checkpoint::Checkpoint;
use crate::data::PackedTokens;
use crate::data::pairs::{RowLayout, prompt_lens, unclamped_count};
use crate::nn::{DitInput, DropoutRng};
use crate::process::ForwardProcess;
use crate::process::curriculum::{DuoConfig, DuoCurriculum, LatentPair, prompt_mask};
use crate::process::schedule::antithetic_times;

/// What one update measured.
pub type DcdStats = RoundStats;

/// The state of a DCD run.
pub struct Dcd {
    /// Settings.
    pub cfg: DistillConfig,
    /// Student, teacher and round.
    pub nets: RoundNets,
    /// Times and noise.
    pub rngs: DistillRngs,
    latent: DuoCurriculum,
    /// Row layout of the data: prompt/answer rows keep their prompts clamped.
    pub layout: RowLayout,
}

/// The Gaussian latent over DCD's gamma window for the model's vocabulary.
fn latent(cfg: &DistillConfig, vocab: usize) -> Result<DuoCurriculum> {
    let dc = DuoConfig {
        alpha_max: cfg.dcd_alpha_max,
        alpha_min: cfg.dcd_alpha_min,
        ..DuoConfig::default()
    };
    DuoCurriculum::new(&dc, vocab, &crate::data::cache_dir().join("duality"))
}

impl Dcd {
    /// Student and round-0 teacher both from `weights` (the Duo teacher's EMA weights).
    pub fn new(cfg: &DistillConfig, teacher: &Checkpoint, weights: &Weights) -> Result<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            nets: RoundNets::new(cfg, teacher, weights)?,
            rngs: DistillRngs::new(cfg.seed),
            latent: latent(cfg, teacher.meta.model.vocab_size)?,
            layout: RowLayout::Stream,
        })
    }

    /// Resume from a distillation checkpoint.
    pub fn from_loaded(l: &super::state::Loaded) -> Result<Self> {
        Ok(Self {
            cfg: l.state.config.clone(),
            nets: RoundNets::from_loaded(l)?,
            rngs: l.state.rngs.clone(),
            latent: latent(&l.state.config, l.ck.meta.model.vocab_size)?,
            layout: RowLayout::Stream,
        })
    }

    /// The step between the student's and the teacher's times in the current round.
    pub fn dt(&self) -> f64 {
        (2f64.powi(self.nets.round as i32) / self.cfg.dcd_base_steps as f64).min(1.0)
    }

    /// One student update; at the end of a round dt doubles and the teacher becomes a copy of
    /// the student.
    pub fn step(&mut self, data: &PackedTokens) -> Result<DcdStats> {
        let (b, l, acc) = (self.cfg.batch_size, data.row_len(), self.cfg.grad_accum);
        let times = antithetic_times(b * acc, &mut self.rngs.time);
        let dt = self.dt();
        let dev = self.nets.student.model.device().clone();
        let mut jobs: Vec<(LatentPair, Tensor, Tensor, usize)> = Vec::with_capacity(acc);
        for m in 0..acc {
            let x0 = self.nets.student.next_rows(data, b)?;
            // t moved up by dt and clipped, s = t - dt: both on the sampler's [0, 1].
            let t: Vec<f64> = times[m * b..(m + 1) * b]
                .iter()
                .map(|&ti| (ti + dt).clamp(0.0, 1.0))
                .collect();
            let s: Vec<f64> = t.iter().map(|&ti| ti - dt).collect();
            // Clean prompts in both states: the teacher conditions on them, the KL leaves them out.
            let prompts = prompt_lens(&x0, l, &self.layout);
            let pair = self
                .latent
                .pair(&x0, l, &t, &s, &prompts, &mut self.rngs.noise)?;
            let xs = Tensor::from_slice(&pair.xs, (b, l), &dev)?;
            let sig = Tensor::from_slice(&pair.sigma_s, b, &dev)?;
            let feats = self.nets.teacher.features(DitInput::Ids(&xs), &sig, None)?;
            let d = feats.dim(2)?;
            let logits = self.nets.teacher.head(&feats.reshape((b * l, d))?)?;
            let target = candle_nn::ops::log_softmax(&logits, D::Minus1)?.detach();
            let keep = prompt_mask(&prompts, l, &dev)?;
            let counted = unclamped_count(b, l, &prompts);
            jobs.push((pair, target, keep, counted));
        }
        let p = self.cfg.dropout;
        let st = self
            .nets
            .student
            .optimize((b * l * acc) as u64, |model, micro, rng| {
                let (pair, target, keep, counted) = &jobs[micro];
                let mut drop = DropoutRng { p, rng };
                let xt = Tensor::from_slice(&pair.xt, (b, l), &dev)?;
                let sig = Tensor::from_slice(&pair.sigma_t, b, &dev)?;
                let feats = model.features(DitInput::Ids(&xt), &sig, Some(&mut drop))?;
                let d = feats.dim(2)?;
                let logits = model.head(&feats.reshape((b * l, d))?)?;
                let lq = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
                // kl-bwd: sum_v f_theta (log f_theta - log f_teacher), mean over the tokens
                // outside the prompts.
                let kl = lq.exp()?.mul(&(&lq - target)?)?.sum(D::Minus1)?;
                Ok(((kl * keep)?.sum_all()? / (*counted).max(1) as f64)?)
            })?;
        let round = self.nets.round;
        self.nets.end_update(self.cfg.dcd_round_steps)?;
        Ok(DcdStats {
            step: self.nets.student.step,
            round,
            dt,
            loss: st.loss,
            grad_norm: st.grad_norm,
            lr: st.lr,
        })
    }
}

impl RoundDistiller for Dcd {
    fn nets(&self) -> &RoundNets {
        &self.nets
    }
    fn rngs(&self) -> &DistillRngs {
        &self.rngs
    }
    fn config_mut(&mut self) -> &mut DistillConfig {
        &mut self.cfg
    }
    fn update(&mut self, _: &dyn ForwardProcess, data: &PackedTokens) -> Result<RoundStats> {
        self.step(data)
    }
    fn set_layout(&mut self, layout: RowLayout) -> Result<()> {
        self.layout = layout;
        Ok(())
    }
}
