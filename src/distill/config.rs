//! Settings of a distillation run (TOML, saved beside the run, `--set distill.key=value`).

use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::{Error, Result};

/// Which distillation algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Inverse distillation (docs/algorithms.md §4).
    Idlm,
    /// Self-distillation through time (docs/algorithms.md §5.2), for masked teachers.
    Sdtt,
    /// Discrete consistency distillation (docs/algorithms.md §3.7), for uniform (Duo) teachers.
    Dcd,
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "idlm" => Ok(Self::Idlm),
            "sdtt" => Ok(Self::Sdtt),
            "dcd" => Ok(Self::Dcd),
            _ => Err(Error::InvalidArgument(format!(
                "unknown method '{s}': use idlm, sdtt (masked teachers) or dcd (Duo teachers)"
            ))),
        }
    }
}

/// The generator objective of IDLM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeneratorLoss {
    /// L(f*, G) - L(f, G) with the fake f refitted on student samples (the method).
    Idlm,
    /// Ablation: the fake term removed, only L(f*, G) (no fake network, no fake updates).
    Naive,
}

/// How the student-input time t' and the loss time t are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeCoupling {
    /// Independent draws, as the paper states.
    Independent,
    /// Two stratified draws paired by stratum, as the reference code effectively does (§4.4):
    /// |t - t'| < 1 / (batch x accumulation). The default: with independent times a small t
    /// often meets a large t' (many soft positions, re-noised almost all kept), so the few
    /// masked positions carry weight 1/t on G's gradient; pairing bounds that variance.
    Shared,
}

pub use crate::process::relaxation::DuoGradient;

/// Everything a distillation run needs besides the teacher and the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Algorithm.
    pub method: Method,
    /// IDLM generator objective (ignored by SDTT).
    pub generator: GeneratorLoss,
    /// Coupling of t' and t (IDLM).
    pub coupling: TimeCoupling,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per update (of each network).
    pub grad_accum: usize,
    /// Learning rate of both optimisers (constant after warmup).
    pub lr: f64,
    /// Linear warmup, counted in student updates.
    pub warmup_steps: u64,
    /// AdamW beta1.
    pub beta1: f64,
    /// AdamW beta2.
    pub beta2: f64,
    /// AdamW epsilon.
    pub adam_eps: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Gradient-norm clip; 0 = none (the reference default).
    pub grad_clip: f64,
    /// EMA decay of the student and the fake.
    pub ema_decay: f64,
    /// Dropout of the trained networks (the teacher's by default: 0 for our teachers).
    pub dropout: f64,
    /// Student updates to run (IDLM: alternations; SDTT: all rounds together).
    pub max_steps: u64,
    /// Stop after this many minutes in this invocation; 0 = no limit.
    pub max_minutes: f64,
    /// Few-step validation every this many student updates; 0 = never.
    pub val_every: u64,
    /// Samples drawn for validation.
    pub val_samples: usize,
    /// Sampler steps of the validation.
    pub val_steps: usize,
    /// Keep as `best` only checkpoints whose validation entropy is at least this share of the
    /// initial student's (= the teacher's) at the same steps; guards the GenPPL selection
    /// against entropy collapse.
    pub val_min_entropy_ratio: f64,
    /// Checkpoint every this many student updates (and at the end).
    pub ckpt_every: u64,
    /// Metrics line every this many student updates.
    pub log_every: u64,
    /// Step checkpoints kept.
    pub keep_checkpoints: usize,
    /// Seed of data order, times, noise, dropout.
    pub seed: u64,
    /// SDTT: the teacher's step count in round 0 (dt = (1 - 1e-5) / sdtt_base_steps).
    pub sdtt_base_steps: usize,
    /// SDTT: teacher ancestral steps per student step.
    pub sdtt_teacher_steps: usize,
    /// SDTT: student updates per round (the step size doubles and the teacher is refreshed).
    pub sdtt_round_steps: u64,
    /// DCD: T of the round-0 step dt = 1 / T (the reference's distil_owt.sh: 512).
    #[serde(default = "default_dcd_base_steps")]
    pub dcd_base_steps: usize,
    /// DCD: student updates per round (dt doubles, the teacher becomes the student's raw weights).
    #[serde(default = "default_dcd_round_steps")]
    pub dcd_round_steps: u64,
    /// DCD: discrete signal at the low end of the gamma window. The reference uses gamma in
    /// [-4, -1] for GPT-2 (N = 50257), where T gives alpha 0.9986941 .. 0.0061863; the window is
    /// carried to other vocabularies in alpha, as the curriculum's is.
    #[serde(default = "default_dcd_alpha_max")]
    pub dcd_alpha_max: f64,
    /// DCD: discrete signal at the high end of the gamma window.
    #[serde(default = "default_dcd_alpha_min")]
    pub dcd_alpha_min: f64,
    /// IDLM-Duo: how G enters the re-noised input (`pathwise`, or the `stopgradient` ablation).
    #[serde(default)]
    pub duo_gradient: DuoGradient,
}

fn default_dcd_base_steps() -> usize {
    512
}
fn default_dcd_round_steps() -> u64 {
    100
}
fn default_dcd_alpha_max() -> f64 {
    0.998_694_1
}
fn default_dcd_alpha_min() -> f64 {
    0.006_186_3
}

impl Default for DistillConfig {
    fn default() -> Self {
        Self {
            method: Method::Idlm,
            generator: GeneratorLoss::Idlm,
            coupling: TimeCoupling::Shared,
            batch_size: 16,
            grad_accum: 1,
            lr: 1e-5,
            warmup_steps: 50,
            beta1: 0.9,
            beta2: 0.999,
            adam_eps: 1e-8,
            weight_decay: 0.0,
            grad_clip: 0.0,
            ema_decay: 0.99,
            dropout: 0.0,
            max_steps: 1000,
            max_minutes: 0.0,
            val_every: 100,
            val_samples: 16,
            val_steps: 16,
            val_min_entropy_ratio: 0.97,
            ckpt_every: 100,
            log_every: 5,
            keep_checkpoints: 2,
            seed: 1,
            sdtt_base_steps: 1024,
            sdtt_teacher_steps: 2,
            sdtt_round_steps: 100,
            dcd_base_steps: default_dcd_base_steps(),
            dcd_round_steps: default_dcd_round_steps(),
            dcd_alpha_max: default_dcd_alpha_max(),
            dcd_alpha_min: default_dcd_alpha_min(),
            duo_gradient: DuoGradient::Pathwise,
        }
    }
}

impl DistillConfig {
    /// Parse TOML (unknown keys are errors) and validate.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let c: Self = toml::from_str(text).map_err(|e| Error::Config(format!("{origin}: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::Config(format!("cannot serialise config: {e}")))
    }

    /// Apply `key=value` overrides (TOML values), then validate.
    pub fn with_overrides(&self, overrides: &[String]) -> Result<Self> {
        let mut table = toml::Table::try_from(self)
            .map_err(|e| Error::Config(format!("cannot serialise config: {e}")))?;
        for ov in overrides {
            let (key, raw) = ov.split_once('=').ok_or_else(|| {
                Error::Config(format!("override '{ov}' is not of the form key=value"))
            })?;
            let key = key.trim().trim_start_matches("distill.");
            let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.to_string()));
            match table.get_mut(key) {
                Some(e) => *e = value,
                None => return Err(Error::Config(format!("unknown distill key '{key}'"))),
            }
        }
        let text = toml::to_string(&table)
            .map_err(|e| Error::Config(format!("cannot serialise config: {e}")))?;
        Self::from_toml(&text, "overrides")
    }

    /// Check values that serde cannot.
    pub fn validate(&self) -> Result<()> {
        crate::config::check_finite_floats(self)?;
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.adam_eps <= 0.0
            || self.weight_decay < 0.0
            || self.grad_clip < 0.0
            || self.max_minutes < 0.0
        {
            return bad(
                "distill adam_eps must be positive; weight_decay, grad_clip and max_minutes \
                 must not be negative",
            );
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("distill batch_size and grad_accum must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("distill lr must be positive");
        }
        if !(0.0..1.0).contains(&self.ema_decay) || !(0.0..1.0).contains(&self.dropout) {
            return bad("distill ema_decay and dropout must be in [0, 1)");
        }
        if self.val_every > 0 && (self.val_samples == 0 || self.val_steps == 0) {
            return bad("distill val_samples and val_steps must be at least 1");
        }
        if self.sdtt_base_steps < 2 || self.sdtt_teacher_steps == 0 || self.sdtt_round_steps == 0 {
            return bad(
                "sdtt_base_steps must be at least 2, sdtt_teacher_steps and sdtt_round_steps at least 1",
            );
        }
        if self.dcd_base_steps < 1 || self.dcd_round_steps == 0 {
            return bad("dcd_base_steps and dcd_round_steps must be at least 1");
        }
        if !(0.0 < self.dcd_alpha_min && self.dcd_alpha_min < self.dcd_alpha_max)
            || self.dcd_alpha_max >= 1.0
        {
            return bad("dcd alpha window: need 0 < dcd_alpha_min < dcd_alpha_max < 1");
        }
        Ok(())
    }

    /// The per-network training config (optimiser, EMA, dropout) derived from a teacher's.
    pub fn network_config(&self, teacher: &RunConfig) -> RunConfig {
        let mut c = teacher.clone();
        c.model.dropout = self.dropout;
        // A student's default sampler is few-step.
        c.sample.steps = self.val_steps.max(1);
        let t = &mut c.train;
        t.batch_size = self.batch_size;
        t.grad_accum = self.grad_accum;
        t.lr = self.lr;
        t.warmup_steps = self.warmup_steps;
        t.beta1 = self.beta1;
        t.beta2 = self.beta2;
        t.adam_eps = self.adam_eps;
        t.weight_decay = self.weight_decay;
        t.grad_clip = self.grad_clip;
        t.ema_decay = self.ema_decay;
        t.max_steps = self.max_steps;
        t.seed = self.seed;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_overrides() {
        let c = DistillConfig::default();
        let back = DistillConfig::from_toml(&c.to_toml().unwrap(), "x").unwrap();
        assert_eq!(c, back);
        let o = c
            .with_overrides(&["coupling=\"independent\"".into(), "distill.lr=0.5".into()])
            .unwrap();
        assert_eq!(o.coupling, TimeCoupling::Independent);
        assert_eq!(o.lr, 0.5);
        assert!(c.with_overrides(&["nope=1".into()]).is_err());
        assert!(c.with_overrides(&["lr=-1".into()]).is_err());
        assert_eq!("dcd".parse::<Method>().unwrap(), Method::Dcd);
        assert!("dmd".parse::<Method>().is_err());
        // Configs saved before DCD existed still load, with its defaults.
        let mut t = toml::Table::try_from(&c).unwrap();
        t.remove("dcd_base_steps");
        let old = DistillConfig::from_toml(&toml::to_string(&t).unwrap(), "old").unwrap();
        assert_eq!(old.dcd_base_steps, 512);
    }
}
