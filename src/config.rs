//! Run configuration: TOML presets and files, `key.path=value` overrides, saved beside every run.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::nn::DitConfig;
use crate::process::ModelFamily;
use crate::process::curriculum::DuoConfig;
use crate::sample::SamplerOptions;
use crate::{Error, Result};

/// The network's architecture, without the sizes that come from the data (vocabulary, length).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Residual width.
    pub hidden_size: usize,
    /// Time-conditioning width.
    pub cond_dim: usize,
    /// Number of blocks.
    pub n_blocks: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// MLP width multiple.
    pub mlp_ratio: usize,
    /// Dropout in training.
    pub dropout: f64,
    /// Feed sigma to the network (MDLM: false).
    pub time_conditioning: bool,
}

impl ModelConfig {
    /// The full DiT config for a vocabulary and sequence length.
    pub fn dit(&self, vocab_size: usize, length: usize) -> DitConfig {
        DitConfig {
            vocab_size,
            hidden_size: self.hidden_size,
            cond_dim: self.cond_dim,
            n_blocks: self.n_blocks,
            n_heads: self.n_heads,
            mlp_ratio: self.mlp_ratio,
            length,
            dropout: self.dropout,
            time_conditioning: self.time_conditioning,
        }
    }
}

/// Optimisation and bookkeeping of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Forward process ("mdlm", "duo"), or "ar" for the autoregressive baseline.
    pub process: ModelFamily,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate (constant after warmup).
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup_steps: u64,
    /// AdamW beta1.
    pub beta1: f64,
    /// AdamW beta2.
    pub beta2: f64,
    /// AdamW epsilon.
    pub adam_eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 disables it.
    pub grad_clip: f64,
    /// EMA decay (with the (1+n)/(10+n) warm-up).
    pub ema_decay: f64,
    /// Stop after this many optimizer steps.
    pub max_steps: u64,
    /// Stop after this many minutes of training in this invocation; 0 = no limit.
    pub max_minutes: f64,
    /// Validation NELBO every this many steps; 0 = never.
    pub eval_every: u64,
    /// Validation micro-batches per evaluation.
    pub eval_batches: usize,
    /// Checkpoint every this many steps (and at the end).
    pub ckpt_every: u64,
    /// Metrics log line every this many steps.
    pub log_every: u64,
    /// How many step checkpoints to keep.
    pub keep_checkpoints: usize,
    /// Seed of initialisation, data order, noise and dropout.
    pub seed: u64,
}

/// Everything a run needs besides the data: model, training, sampler defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Architecture.
    pub model: ModelConfig,
    /// Training.
    pub train: TrainConfig,
    /// Sampler defaults stored with the checkpoint.
    pub sample: SamplerOptions,
    /// Duo's Gaussian curriculum (used only with `train.process = "duo"`).
    #[serde(default)]
    pub duo: DuoConfig,
}

/// Built-in presets: (name, TOML).
pub const PRESETS: &[(&str, &str)] = &[
    ("tiny", include_str!("../configs/tiny.toml")),
    ("small", include_str!("../configs/small.toml")),
    ("base", include_str!("../configs/base.toml")),
    ("mini", include_str!("../configs/mini.toml")),
    ("mini-duo", include_str!("../configs/mini-duo.toml")),
];

impl RunConfig {
    /// Parse a TOML document; unknown keys are errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Config(format!("{origin}: {e}")))
    }

    /// A preset by name, or a TOML file by path.
    pub fn load(preset_or_path: &str) -> Result<Self> {
        if let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == preset_or_path) {
            return Self::from_toml(text, &format!("preset '{preset_or_path}'"));
        }
        let path = Path::new(preset_or_path);
        if !path.exists() {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            return Err(Error::Config(format!(
                "'{preset_or_path}' is neither a preset ({}) nor a config file",
                names.join(", ")
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Apply `section.key=value` overrides (the value is parsed as TOML, else taken as a string).
    pub fn with_overrides(&self, overrides: &[String]) -> Result<Self> {
        let mut doc = toml::Value::try_from(self)
            .map_err(|e| Error::Config(format!("cannot serialise config: {e}")))?;
        for ov in overrides {
            let (key, raw) = ov.split_once('=').ok_or_else(|| {
                Error::Config(format!("override '{ov}' is not of the form key.path=value"))
            })?;
            let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.to_string()));
            let mut cur = &mut doc;
            let parts: Vec<&str> = key.trim().split('.').collect();
            for (i, p) in parts.iter().enumerate() {
                let table = cur
                    .as_table_mut()
                    .ok_or_else(|| Error::Config(format!("override '{key}': not a table")))?;
                let entry = table
                    .get_mut(*p)
                    .ok_or_else(|| Error::Config(format!("unknown config key '{key}'")))?;
                if i + 1 == parts.len() {
                    *entry = value.clone();
                    break;
                }
                cur = entry;
            }
        }
        let text = toml::to_string(&doc)
            .map_err(|e| Error::Config(format!("cannot serialise config: {e}")))?;
        let cfg = Self::from_toml(&text, "overrides")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check values that serde cannot.
    pub fn validate(&self) -> Result<()> {
        check_finite_floats(self)?;
        let t = &self.train;
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if t.adam_eps <= 0.0 || t.weight_decay < 0.0 || t.grad_clip < 0.0 || t.max_minutes < 0.0 {
            return bad(
                "train.adam_eps must be positive; train.weight_decay, train.grad_clip and \
                 train.max_minutes must not be negative",
            );
        }
        if !(0.0..1.0).contains(&self.model.dropout) {
            return bad("model.dropout must be in [0, 1)");
        }
        if t.batch_size == 0 || t.grad_accum == 0 {
            return bad("train.batch_size and train.grad_accum must be at least 1");
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return bad("train.lr must be positive");
        }
        if !(0.0..1.0).contains(&t.beta1) || !(0.0..1.0).contains(&t.beta2) {
            return bad("train.beta1 and train.beta2 must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&t.ema_decay) {
            return bad("train.ema_decay must be in [0, 1)");
        }
        if self.sample.steps == 0 {
            return bad("sample.steps must be at least 1");
        }
        if self.model.n_heads == 0 || !self.model.hidden_size.is_multiple_of(self.model.n_heads) {
            return bad("model.hidden_size must be divisible by model.n_heads");
        }
        Ok(())
    }

    /// The config as TOML text (saved beside outputs).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::Config(format!("cannot serialise config: {e}")))
    }
}

/// Refuse a config holding a NaN or infinite number (TOML spells them `nan` and `inf`), naming
/// its key: no setting may carry a non-finite value into a run.
pub fn check_finite_floats<T: Serialize>(cfg: &T) -> Result<()> {
    fn walk(v: &toml::Value, key: &str) -> Result<()> {
        match v {
            toml::Value::Float(x) if !x.is_finite() => Err(Error::Config(format!(
                "{key} = {x}: every number in a config must be finite"
            ))),
            toml::Value::Table(t) => t.iter().try_for_each(|(k, v)| {
                walk(
                    v,
                    &if key.is_empty() {
                        k.clone()
                    } else {
                        format!("{key}.{k}")
                    },
                )
            }),
            toml::Value::Array(a) => a
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| walk(v, &format!("{key}[{i}]"))),
            _ => Ok(()),
        }
    }
    let v = toml::Value::try_from(cfg)
        .map_err(|e| Error::Config(format!("cannot serialise config: {e}")))?;
    walk(&v, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_round_trip() {
        for (name, _) in PRESETS {
            let c = RunConfig::load(name).unwrap();
            c.validate().unwrap();
            let back = RunConfig::from_toml(&c.to_toml().unwrap(), "x").unwrap();
            assert_eq!(c, back);
        }
    }

    #[test]
    fn overrides_apply_and_unknown_keys_fail() {
        let c = RunConfig::load("tiny").unwrap();
        let o = c
            .with_overrides(&["train.lr=0.5".into(), "sample.noise_removal=greedy".into()])
            .unwrap();
        assert_eq!(o.train.lr, 0.5);
        assert_eq!(o.sample.noise_removal, crate::process::NoiseRemoval::Greedy);
        assert!(c.with_overrides(&["train.nope=1".into()]).is_err());
        assert!(c.with_overrides(&["train.lr".into()]).is_err());
        let err = RunConfig::from_toml("[model]\nbogus = 1\n", "f").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
