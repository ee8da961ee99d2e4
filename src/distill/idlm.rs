//! IDLM, as coded in the reference (docs/algorithms.md §4): a frozen teacher f*, a fake f refitted on
//! the student's samples, and the student G; one fake update then one student update, the student
//! loss L(f*, G) - L(f, G). One step serves every process: what is process-specific (the student's
//! input, the re-noising of G, the losses) is its [`Relaxation`].

use std::collections::HashMap;

use candle_core::Tensor;
use serde::Serialize;

use super::config::{DistillConfig, GeneratorLoss};
use super::distiller::Distiller;
use super::nets::{DistillRngs, Role, phase_times, resume_net, start_net};
use crate::checkpoint::{CheckpointMeta, dit_from_tensors};
use crate::config::RunConfig;
use crate::data::PackedTokens;
use crate::data::pairs::{RowLayout, prompt_lens};
use crate::nn::{Denoiser, Dit, DitConfig, DropoutRng};
use crate::process::curriculum::DuoCurriculum;
use crate::process::relaxation::{Gaussian, Hard, Relaxation};
use crate::process::{ForwardProcess, ModelFamily};
use crate::trainer::Trainer;
use crate::{Error, Result};

pub use crate::process::relaxation::hard::generator_loss;

/// What one alternation measured.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct IdlmStats {
    /// Student updates after this alternation.
    pub step: u64,
    /// Fake loss L(f, G) per sequence (masked positions; NaN for the naive ablation).
    pub fake_loss: f64,
    /// Student loss L(f*, G) - L(f, G) per sequence.
    pub student_loss: f64,
    /// Gradient norm of the fake update.
    pub fake_grad_norm: f64,
    /// Gradient norm of the student update.
    pub student_grad_norm: f64,
    /// Learning rate of both updates.
    pub lr: f64,
}

/// The trainable state of an IDLM run: student and fake with their optimisers and EMAs.
pub struct Idlm {
    /// Settings.
    pub cfg: DistillConfig,
    /// The student G (its trainer also owns the data order).
    pub student: Trainer,
    /// The fake f (None for the naive ablation, which has no fake).
    pub fake: Option<Trainer>,
    /// Times and noise.
    pub rngs: DistillRngs,
    /// Row layout of the data: prompt/answer rows keep their prompts clamped.
    pub layout: RowLayout,
}

impl Idlm {
    /// Student and fake both start from `weights` (the teacher's EMA weights).
    pub fn new(
        cfg: &DistillConfig,
        teacher_cfg: &RunConfig,
        dit_cfg: &DitConfig,
        weights: &HashMap<String, Tensor>,
        origin: &std::path::Path,
    ) -> Result<Self> {
        cfg.validate()?;
        let net = |role| start_net(cfg, teacher_cfg, dit_cfg, weights, origin, role);
        let student = net(Role::Student)?;
        let fake = match cfg.generator {
            GeneratorLoss::Idlm => Some(net(Role::Fake)?),
            GeneratorLoss::Naive => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            student,
            fake,
            rngs: DistillRngs::new(cfg.seed),
            layout: RowLayout::Stream,
        })
    }

    /// Student updates done.
    pub fn step_count(&self) -> u64 {
        self.student.step
    }

    /// One phase's micro-batches: fresh real rows at fresh (t', t) pairs.
    fn jobs<R: Relaxation>(&mut self, relax: &R, data: &PackedTokens) -> Result<Vec<R::Job>> {
        let (b, l, acc) = (self.cfg.batch_size, data.row_len(), self.cfg.grad_accum);
        let (tp, t) = phase_times(b * acc, self.cfg.coupling, &mut self.rngs.time);
        (0..acc)
            .map(|m| {
                let x0 = self.student.next_rows(data, b)?;
                let prompts = prompt_lens(&x0, l, &self.layout);
                let span = m * b..(m + 1) * b;
                let (tp, t) = (&tp[span.clone()], &t[span]);
                relax.job(x0, l, tp, t, &prompts, &mut self.rngs.noise)
            })
            .collect()
    }

    /// One alternation: a fake update on the current student's re-noised samples, then a student
    /// update with the loss L(f*, G) - L(f, G) on fresh ones.
    pub fn step<R: Relaxation>(
        &mut self,
        teacher: &R::Teacher,
        relax: &R,
        data: &PackedTokens,
    ) -> Result<IdlmStats> {
        let (b, l) = (self.cfg.batch_size, data.row_len());
        let tokens = (b * l * self.cfg.grad_accum) as u64;
        let p = self.cfg.dropout;

        // Fake phase: the student frozen (no dropout, no graph), the fake fitted to its samples.
        let (fake_loss, fake_norm) = if self.fake.is_some() {
            let jobs = self.jobs(relax, data)?;
            let targets = jobs
                .iter()
                .map(|j| relax.fake_target(&self.student.model, j, &mut self.rngs.noise))
                .collect::<Result<Vec<_>>>()?;
            let fake = self
                .fake
                .as_mut()
                .ok_or_else(|| Error::Config("fake network missing".into()))?;
            let st = fake.optimize(tokens, |model, micro, rng| {
                relax.fake_loss(
                    model,
                    &jobs[micro],
                    &targets[micro],
                    &mut DropoutRng { p, rng },
                )
            })?;
            (st.loss, st.grad_norm)
        } else {
            (f64::NAN, f64::NAN)
        };

        // Student phase: G with gradient; the teacher and the fake frozen (the fake as a plain
        // network on its current weights, so no weight gradients are built for it).
        let jobs = self.jobs(relax, data)?;
        let fake = match &self.fake {
            Some(f) => Some(f.frozen_view()?),
            None => None,
        };
        let noise = &mut self.rngs.noise;
        let st = self.student.optimize(tokens, |model, micro, rng| {
            let mut drop = DropoutRng { p, rng };
            relax.generator_loss(
                model,
                teacher,
                fake.as_ref(),
                &jobs[micro],
                &mut drop,
                noise,
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

impl Idlm {
    /// Resume from a distillation checkpoint.
    pub fn from_loaded(l: &super::state::Loaded) -> Result<Self> {
        Ok(Self {
            cfg: l.state.config.clone(),
            student: resume_net(l, Role::Student)?,
            fake: match l.state.fake {
                Some(_) => Some(resume_net(l, Role::Fake)?),
                None => None,
            },
            rngs: l.state.rngs.clone(),
            layout: RowLayout::Stream,
        })
    }
}

/// How an IDLM run relaxes its student's samples: by the teacher's process (hard states), or
/// through Duo's Gaussian latent.
enum Relax {
    Hard,
    Gaussian(Gaussian),
}

/// An IDLM run: the trainable state, the frozen teacher and its weights, the relaxation.
pub struct IdlmRun {
    idlm: Idlm,
    teacher: Dit,
    teacher_weights: HashMap<String, Tensor>,
    relax: Relax,
}

/// The relaxation of a teacher: Duo's Gaussian latent over the teacher's own gamma window at its
/// final tau; hard re-noising otherwise.
fn relaxation(meta: &CheckpointMeta, cfg: &DistillConfig) -> Result<Relax> {
    if meta.process != ModelFamily::DUO {
        return Ok(Relax::Hard);
    }
    let dir = crate::data::cache_dir().join("duality");
    let latent = DuoCurriculum::new(&meta.config.duo, meta.model.vocab_size, &dir)?;
    let tau = 10f64.powf(meta.config.duo.tau_log10_end);
    Ok(Relax::Gaussian(latent.relaxation(tau, cfg.duo_gradient)))
}

impl IdlmRun {
    /// A fresh run from a teacher checkpoint's metadata and (EMA) weights.
    pub fn start(
        cfg: &DistillConfig,
        meta: &CheckpointMeta,
        weights: HashMap<String, Tensor>,
        origin: &std::path::Path,
    ) -> Result<Self> {
        Ok(Self {
            idlm: Idlm::new(cfg, &meta.config, &meta.model, &weights, origin)?,
            teacher: dit_from_tensors(&weights, &meta.model, origin)?,
            teacher_weights: weights,
            relax: relaxation(meta, cfg)?,
        })
    }

    /// Resume from a distillation checkpoint.
    pub fn from_loaded(l: &super::state::Loaded) -> Result<Self> {
        Ok(Self {
            idlm: Idlm::from_loaded(l)?,
            teacher: dit_from_tensors(&l.teacher, &l.ck.meta.model, &l.ck.dir)?,
            teacher_weights: l.teacher.clone(),
            relax: relaxation(&l.ck.meta, &l.state.config)?,
        })
    }
}

impl Distiller for IdlmRun {
    fn student(&self) -> &Trainer {
        &self.idlm.student
    }
    fn fake(&self) -> Option<&Trainer> {
        self.idlm.fake.as_ref()
    }
    fn teacher_weights(&self) -> &HashMap<String, Tensor> {
        &self.teacher_weights
    }
    fn record(&self, st: &mut super::state::DistillState) {
        st.rngs = self.idlm.rngs.clone();
    }
    fn set_layout(&mut self, layout: RowLayout) -> Result<()> {
        self.idlm.layout = layout;
        Ok(())
    }
    fn set_config(&mut self, cfg: &DistillConfig) {
        self.idlm.cfg = cfg.clone();
        if let Relax::Gaussian(g) = &mut self.relax {
            g.mode = cfg.duo_gradient;
        }
    }
    fn advance(
        &mut self,
        process: &dyn ForwardProcess,
        data: &PackedTokens,
    ) -> Result<(serde_json::Value, String)> {
        let i = &mut self.idlm;
        let s = match &self.relax {
            Relax::Gaussian(g) => i.step(&self.teacher, g, data)?,
            Relax::Hard => i.step(&self.teacher as &dyn Denoiser, &Hard(process), data)?,
        };
        let fake_ok = i.fake.is_none() || s.fake_loss.is_finite();
        if !fake_ok || !s.student_loss.is_finite() {
            return Err(Error::NonFinite {
                what: "distillation loss",
                step: s.step,
            });
        }
        let msg = format!("fake {:.3} | student {:.4}", s.fake_loss, s.student_loss);
        let v = serde_json::to_value(s).map_err(|e| Error::Config(e.to_string()))?;
        Ok((v, msg))
    }
}
