//! Checkpoints of a distillation run: the student in the public layout (so `idlm sample` reads it
//! like a teacher), and beside it the fake, the teacher, both optimisers, both EMAs, the streams
//! and the phase; written atomically by `checkpoint::save`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::config::DistillConfig;
use crate::checkpoint::{self, Checkpoint, DataInfo};
use crate::trainer::{TrainRngs, Trainer};
use crate::{Error, Result};

/// File holding the fake network (weights `w.*`, EMA `ema.*`, moments `m.*` / `v.*`).
pub const FAKE_FILE: &str = "fake.safetensors";
/// File holding the (current) teacher's weights.
pub const TEACHER_FILE: &str = "teacher.safetensors";

/// Random streams of a distiller (the networks' dropout streams live in their trainers).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistillRngs {
    /// Diffusion times.
    pub time: ChaCha8Rng,
    /// Forward-process noise and re-noising draws.
    pub noise: ChaCha8Rng,
}

impl DistillRngs {
    /// Streams derived from one seed (distinct from the trainers' streams of the same seed).
    pub fn new(seed: u64) -> Self {
        let stream = |s: u64| {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            r.set_stream(s);
            r
        };
        Self {
            time: stream(11),
            noise: stream(12),
        }
    }
}

/// Counters and streams of one trained network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetState {
    /// Updates done.
    pub step: u64,
    /// AdamW steps.
    pub opt_step: u64,
    /// EMA updates.
    pub ema_updates: u64,
    /// Tokens seen.
    pub tokens_seen: u64,
    /// Seconds trained.
    pub train_seconds: f64,
    /// Streams (data order, dropout).
    pub rngs: TrainRngs,
}

impl NetState {
    /// The state of a trainer.
    pub fn of(tr: &Trainer) -> Self {
        Self {
            step: tr.step,
            opt_step: tr.opt.step,
            ema_updates: tr.ema.num_updates,
            tokens_seen: tr.tokens_seen,
            train_seconds: tr.train_seconds,
            rngs: tr.rngs.clone(),
        }
    }

    /// Put this state into a trainer.
    pub fn apply(&self, tr: &mut Trainer) {
        tr.step = self.step;
        tr.opt.step = self.opt_step;
        tr.ema.num_updates = self.ema_updates;
        tr.tokens_seen = self.tokens_seen;
        tr.train_seconds = self.train_seconds;
        tr.rngs = self.rngs.clone();
    }
}

/// Everything of a distillation run besides tensors (stored in meta.json under `distill`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistillState {
    /// Settings.
    pub config: DistillConfig,
    /// The teacher checkpoint it started from.
    pub teacher_path: String,
    /// Student counters and streams.
    pub student: NetState,
    /// Fake counters and streams (IDLM only).
    pub fake: Option<NetState>,
    /// Times and noise.
    pub rngs: DistillRngs,
    /// SDTT: the current round.
    pub round: u64,
    /// Entropy of the initial student's validation samples (the selection floor's reference).
    pub ref_entropy: Option<f64>,
    /// Best validation GenPPL so far (with enough entropy).
    pub best_genppl: Option<f64>,
    /// Wall-clock seconds of the run so far.
    pub seconds: f64,
}

/// A loaded distillation checkpoint.
pub struct Loaded {
    /// The checkpoint (student weights, EMA, meta).
    pub ck: Checkpoint,
    /// The run's state.
    pub state: DistillState,
    /// Teacher weights.
    pub teacher: HashMap<String, Tensor>,
    /// The fake file, if present.
    pub fake: Option<HashMap<String, Tensor>>,
}

/// Tensors of a trainer under `prefix` (weights `w.`, EMA `ema.`, moments `m.` / `v.`).
pub fn net_tensors(tr: &Trainer, prefix: &str) -> Result<HashMap<String, Tensor>> {
    let mut out = tr.optim_tensors(prefix)?;
    for (k, v) in tr.weights() {
        out.insert(format!("{prefix}w.{k}"), v);
    }
    for (k, v) in tr.ema_weights() {
        out.insert(format!("{prefix}ema.{k}"), v);
    }
    Ok(out)
}

/// Restore a trainer from [`net_tensors`] output.
pub fn restore_tensors(
    tr: &mut Trainer,
    t: &HashMap<String, Tensor>,
    prefix: &str,
    origin: &Path,
) -> Result<()> {
    let sub = |p: &str| -> HashMap<String, Tensor> {
        let full = format!("{prefix}{p}");
        t.iter()
            .filter_map(|(k, v)| k.strip_prefix(&full).map(|n| (n.to_string(), v.clone())))
            .collect()
    };
    tr.restore(&sub("w."), &sub("ema."), t, prefix, origin)
}

/// Write a checkpoint of the run under `run_dir/checkpoints/`: the student in the public layout,
/// the fake and the current teacher beside it, `state` in meta.json.
#[allow(clippy::too_many_arguments)]
pub fn save(
    run_dir: &Path,
    student: &Trainer,
    fake: Option<&Trainer>,
    teacher: &HashMap<String, Tensor>,
    state: &DistillState,
    data: &DataInfo,
    tokenizer_json: &str,
    keep: usize,
) -> Result<PathBuf> {
    let mut meta = student.checkpoint_meta(data, None)?;
    meta.distill = Some(
        serde_json::to_value(state)
            .map_err(|e| Error::Config(format!("cannot serialise distill state: {e}")))?,
    );
    let mut extra: Vec<(&str, HashMap<String, Tensor>)> = vec![(TEACHER_FILE, teacher.clone())];
    if let Some(f) = fake {
        extra.push((FAKE_FILE, net_tensors(f, "")?));
    }
    student.save_with(run_dir, &meta, tokenizer_json, &extra, keep)
}

/// Load a distillation checkpoint (a checkpoint or a run directory).
pub fn load(path: &Path) -> Result<Loaded> {
    let ck = checkpoint::load(path)?;
    let raw = ck.meta.distill.clone().ok_or_else(|| {
        Error::ckpt(
            &ck.dir,
            "is not a distillation checkpoint (no distill state in meta.json)",
        )
    })?;
    let state: DistillState = serde_json::from_value(raw)
        .map_err(|e| Error::ckpt(&ck.dir, format!("corrupt distill state: {e}")))?;
    let teacher = ck.safetensors(TEACHER_FILE)?;
    let fake = if state.fake.is_some() {
        Some(ck.safetensors(FAKE_FILE)?)
    } else {
        None
    };
    Ok(Loaded {
        ck,
        state,
        teacher,
        fake,
    })
}
