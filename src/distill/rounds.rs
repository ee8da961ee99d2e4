//! A student and its frozen teacher refreshed every round (SDTT and DCD): both start from the
//! teacher's EMA weights; at the end of a round the teacher becomes a copy of the student.

use std::collections::HashMap;

use candle_core::Tensor;

use super::config::DistillConfig;
use super::nets::{Role, resume_net, start_net};
use super::state::Loaded;
use crate::Result;
use crate::checkpoint::{Checkpoint, dit_from_tensors};
use crate::nn::Dit;
use crate::trainer::Trainer;

/// Weights by name.
pub type Weights = HashMap<String, Tensor>;

/// What one update of a round-based distiller measured.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct RoundStats {
    /// Student updates done.
    pub step: u64,
    /// Round (the step size is the round-0 step times 2^round).
    pub round: u64,
    /// Step size of this round.
    pub dt: f64,
    /// KL(student || teacher): per sequence (SDTT, masked positions) or per token (DCD).
    pub loss: f64,
    /// Gradient norm.
    pub grad_norm: f64,
    /// Learning rate.
    pub lr: f64,
}

/// The networks of a round-based distiller.
pub struct RoundNets {
    /// The student.
    pub student: Trainer,
    /// The current (frozen) teacher.
    pub teacher: Dit,
    /// Its weights (saved in checkpoints: they change every round).
    pub teacher_weights: HashMap<String, Tensor>,
    /// Current round.
    pub round: u64,
}

impl RoundNets {
    /// Student and round-0 teacher both from `weights` (the teacher's EMA weights).
    pub fn new(cfg: &DistillConfig, teacher: &Checkpoint, weights: &Weights) -> Result<Self> {
        cfg.validate()?;
        let (m, origin) = (&teacher.meta, teacher.dir.as_path());
        let student = start_net(cfg, &m.config, &m.model, weights, origin, Role::Student)?;
        Ok(Self {
            teacher: dit_from_tensors(weights, &student.arch, origin)?,
            teacher_weights: weights.clone(),
            student,
            round: 0,
        })
    }

    /// Student, current teacher and round of a distillation checkpoint.
    pub fn from_loaded(l: &Loaded) -> Result<Self> {
        Ok(Self {
            student: resume_net(l, Role::Student)?,
            teacher: dit_from_tensors(&l.teacher, &l.ck.meta.model, &l.ck.dir)?,
            teacher_weights: l.teacher.clone(),
            round: l.state.round,
        })
    }

    /// Call after each student update: when `round_steps` updates have been done since the
    /// round began, advance the round and make the teacher a copy of the student.
    pub fn end_update(&mut self, round_steps: u64) -> Result<()> {
        if self.student.step.is_multiple_of(round_steps) {
            self.round += 1;
            (self.teacher_weights, self.teacher) = self.student.snapshot()?;
        }
        Ok(())
    }
}
