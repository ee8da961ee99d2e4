//! What the run loop needs of a distiller (IDLM, SDTT, DCD); SDTT and DCD share one
//! implementation through [`RoundDistiller`].

use std::collections::HashMap;

use candle_core::Tensor;
use serde_json::Value;

use super::config::DistillConfig;
use super::nets::DistillRngs;
use super::rounds::{RoundNets, RoundStats};
use super::state::DistillState;
use crate::data::PackedTokens;
use crate::data::pairs::RowLayout;
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
    /// The data's row layout: prompt/answer rows keep their prompts clean in every state and out
    /// of every loss.
    fn set_layout(&mut self, layout: RowLayout) -> Result<()>;
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
    /// The data's row layout (prompts clamped, as [`Distiller::set_layout`]).
    fn set_layout(&mut self, layout: RowLayout) -> Result<()>;
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
    fn set_layout(&mut self, layout: RowLayout) -> Result<()> {
        RoundDistiller::set_layout(self, layout)
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
