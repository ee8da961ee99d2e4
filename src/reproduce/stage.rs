//! One training stage of a reproduction pipeline: reused once its run reached its steps, resumed
//! from its latest checkpoint, or run from scratch; timed and recorded with the command that does
//! the same by hand. Both pipelines (`reproduce` and `reproduce --preset mini-gsm`) train through
//! these two functions.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::Stage;
use crate::ar::run_ar_training;
use crate::checkpoint;
use crate::config::RunConfig;
use crate::distill::{DistillConfig, DistillRunOptions, run_distill};
use crate::run::TrainRunOptions;
use crate::train::run_training;
use crate::{Error, Result};

/// The step of a run's latest checkpoint, if it has one.
pub(crate) fn finished_steps(dir: &Path) -> Option<u64> {
    checkpoint::resolve(dir)
        .ok()
        .and_then(|d| checkpoint::read_meta(&d).ok())
        .map(|m| m.step)
}

/// Seconds the run in `dir` spent up to its latest checkpoint, over all its invocations: a
/// distillation's own clock, else the trainer's. A reused stage reports these, so a report made
/// by a run that reuses everything still says what each stage cost.
pub(crate) fn run_seconds(dir: &Path) -> Option<f64> {
    let meta = checkpoint::read_meta(&checkpoint::resolve(dir).ok()?).ok()?;
    let distilled = meta
        .distill
        .as_ref()
        .and_then(|d| d.get("seconds")?.as_f64());
    Some(distilled.unwrap_or(meta.train_seconds))
}

/// Wall-clock seconds since `t0`, or for a reused stage those its run recorded.
fn stage_seconds(dir: &Path, t0: Instant, reused: bool) -> f64 {
    if reused {
        run_seconds(dir).unwrap_or(0.0)
    } else {
        t0.elapsed().as_secs_f64()
    }
}

/// Train a diffusion model (or, `ar`, the AR baseline) into `dir` on `data_dir` with `cfg`: the
/// stage `name`, shown by hand as `command`.
pub(crate) fn train_or_resume(
    name: &str,
    dir: &Path,
    data_dir: &Path,
    cfg: &RunConfig,
    ar: bool,
    command: String,
    log: &dyn Fn(&str),
) -> Result<Stage> {
    let t0 = Instant::now();
    let done = finished_steps(dir);
    let reused = done.is_some_and(|s| s >= cfg.train.max_steps);
    if !reused {
        log(&format!("{name}: training"));
        let o = TrainRunOptions {
            run_dir: dir.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            cfg: cfg.clone(),
            resume: done.is_some(),
            progress: true,
        };
        if ar {
            run_ar_training(&o)?;
        } else {
            run_training(&o)?;
        }
    }
    Ok(Stage {
        name: name.to_string(),
        command,
        seconds: stage_seconds(dir, t0, reused),
        reused,
    })
}

/// Refuse a student run in `dir` whose recorded teacher is not what `source` resolves to now.
fn check_same_teacher(dir: &Path, source: &Path) -> Result<()> {
    let meta = checkpoint::read_meta(&checkpoint::resolve(dir)?)?;
    let recorded = meta
        .distill
        .as_ref()
        .and_then(|d| d.get("teacher_path"))
        .and_then(|p| p.as_str())
        .map(str::to_string);
    let now = checkpoint::resolve(source)?.display().to_string();
    match recorded {
        Some(r) if r != now => Err(Error::Config(format!(
            "{} was distilled from {r}, but {} is now {now}: remove {} to distil it again",
            dir.display(),
            source.display(),
            dir.display()
        ))),
        _ => Ok(()),
    }
}

/// What one distillation stage distils.
pub(crate) struct DistillStage<'a> {
    /// The stage's name.
    pub name: String,
    /// The checkpoint (or run folder) distilled.
    pub source: &'a Path,
    /// The student's run folder.
    pub dir: &'a Path,
    /// The prepared data.
    pub data_dir: &'a Path,
    /// `--set` overrides of the distillation config.
    pub overrides: &'a [String],
    /// The GenPPL scorer of validation (None: `--no-genppl`).
    pub genppl_model: Option<PathBuf>,
}

/// Distil `s.source` into `s.dir`; the command shown names the same overrides. A student run
/// begun from another checkpoint than the one `s.source` now resolves to (its teacher trained on
/// since) is an error naming both, never reused or resumed as if it were this one's.
pub(crate) fn distill_or_resume(s: &DistillStage, log: &dyn Fn(&str)) -> Result<Stage> {
    let dc = DistillConfig::default().with_overrides(s.overrides)?;
    let t0 = Instant::now();
    let finished = finished_steps(s.dir);
    if finished.is_some() {
        check_same_teacher(s.dir, s.source)?;
    }
    let reused = finished.is_some_and(|st| st >= dc.max_steps);
    if !reused {
        log(&format!("{}: distilling", s.name));
        run_distill(&DistillRunOptions {
            run_dir: s.dir.to_path_buf(),
            teacher: s.source.to_path_buf(),
            data_dir: Some(s.data_dir.to_path_buf()),
            cfg: dc,
            resume: finished.is_some(),
            progress: true,
            genppl_model: s.genppl_model.clone(),
        })?;
    }
    let sets: Vec<String> = s.overrides.iter().map(|o| format!("--set '{o}'")).collect();
    Ok(Stage {
        name: s.name.clone(),
        command: format!(
            "idlm distill --teacher {} --out {}{} {}",
            s.source.display(),
            s.dir.display(),
            if s.genppl_model.is_none() {
                " --no-genppl"
            } else {
                ""
            },
            sets.join(" ")
        ),
        seconds: stage_seconds(s.dir, t0, reused),
        reused,
    })
}
