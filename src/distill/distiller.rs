//! What the run loop needs of a distiller (IDLM, SDTT, DCD), and the two ways to get one: started
//! from a teacher checkpoint or resumed from a distillation checkpoint.

use std::collections::HashMap;

use candle_core::Tensor;
use serde_json::Value;

use super::config::{DistillConfig, Method};
use super::dcd::Dcd;
use super::idlm::IdlmRun;
use super::nets::DistillRngs;
use super::rounds::{RoundNets, RoundStats};
use super::sdtt::Sdtt;
use super::state::{DistillState, Loaded};
use crate::checkpoint::Checkpoint;
use crate::data::PackedTokens;
use crate::process::ForwardProcess;
use crate::trainer::Trainer;
use crate::{Error, Result};

/// A distillation method's trainable state, as the run loop sees it.
pub trait Distiller {
    /// The student.
    fn student(&self) -> &Trainer;
    /// IDLM's fake, saved beside the student.
    fn fake(&self) -> Option<&Trainer> {
        None
    }
    /// The current teacher's weights (saved: SDTT and DCD replace the teacher every round).
    fn teacher_weights(&self) -> &HashMap<String, Tensor>;
    /// Put the method's streams and round into the state a checkpoint saves.
    fn record(&self, st: &mut DistillState);
    /// Replace the settings (a resume with overrides).
    fn set_config(&mut self, cfg: &DistillConfig);
    /// One update: its metrics line and a short progress message.
    fn advance(
        &mut self,
        process: &dyn ForwardProcess,
        data: &PackedTokens,
    ) -> Result<(Value, String)>;
}

/// SDTT and DCD: a student and a teacher refreshed every round.
pub trait RoundDistiller {
    /// Student, teacher and round.
    fn nets(&self) -> &RoundNets;
    /// Times and noise.
    fn rngs(&self) -> &DistillRngs;
    /// Settings.
    fn config_mut(&mut self) -> &mut DistillConfig;
    /// One student update (the round advances inside).
    fn update(&mut self, process: &dyn ForwardProcess, data: &PackedTokens) -> Result<RoundStats>;
}

impl<T: RoundDistiller> Distiller for T {
    fn student(&self) -> &Trainer {
        &self.nets().student
    }
    fn teacher_weights(&self) -> &HashMap<String, Tensor> {
        &self.nets().teacher_weights
    }
    fn record(&self, st: &mut DistillState) {
        st.round = self.nets().round;
        st.rngs = self.rngs().clone();
    }
    fn set_config(&mut self, cfg: &DistillConfig) {
        *self.config_mut() = cfg.clone();
    }
    fn advance(
        &mut self,
        process: &dyn ForwardProcess,
        data: &PackedTokens,
    ) -> Result<(Value, String)> {
        let st = self.update(process, data)?;
        if !st.loss.is_finite() {
            return Err(Error::NonFinite {
                what: "distillation loss",
                step: st.step,
            });
        }
        let msg = format!("round {} | KL {:.4}", st.round, st.loss);
        let v = serde_json::to_value(st).map_err(|e| Error::Config(e.to_string()))?;
        Ok((v, msg))
    }
}

/// A fresh distiller of `cfg.method` from a teacher checkpoint; every network starts from the
/// teacher's EMA weights (the paper's initialisation).
pub fn start(cfg: &DistillConfig, ck: &Checkpoint) -> Result<Box<dyn Distiller>> {
    let w = ck.ema.clone().unwrap_or_else(|| ck.weights.clone());
    let (m, dir) = (&ck.meta, ck.dir.as_path());
    Ok(match cfg.method {
        Method::Idlm => Box::new(IdlmRun::start(cfg, m, w, dir)?),
        Method::Sdtt => Box::new(Sdtt::new(cfg, ck, &w)?),
        Method::Dcd => Box::new(Dcd::new(cfg, ck, &w)?),
    })
}

/// The distiller of a distillation checkpoint, with the settings `cfg` (the saved ones with the
/// caller's overrides).
pub fn resume(l: &Loaded, cfg: &DistillConfig) -> Result<Box<dyn Distiller>> {
    let mut d: Box<dyn Distiller> = match l.state.config.method {
        Method::Idlm => Box::new(IdlmRun::from_loaded(l)?),
        Method::Sdtt => Box::new(Sdtt::from_loaded(l)?),
        Method::Dcd => Box::new(Dcd::from_loaded(l)?),
    };
    d.set_config(cfg);
    Ok(d)
}
