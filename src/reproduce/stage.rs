//! One training stage of a reproduction pipeline: reused once its run reached its steps, resumed
//! from its latest checkpoint, or run from scratch; timed and recorded with the command that does
//! the same by hand. Both pipelines (`reproduce` and `reproduce --preset mini-gsm`) train through
//! these two functions.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::Stage;
use crate::Result;
use crate::ar::run_ar_training;
use crate::checkpoint;
use crate::config::RunConfig;
use crate::distill::{DistillConfig, DistillRunOptions, run_distill};
use crate::run::TrainRunOptions;
use crate::train::run_training;

/// The step of a run's latest checkpoint, if it has one.
pub(crate) fn finished_steps(dir: &Path) -> Option<u64> {
    checkpoint::resolve(dir)
        .ok()
        .and_then(|d| checkpoint::read_meta(&d).ok())
        .map(|m| m.step)
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
        seconds: t0.elapsed().as_secs_f64(),
        reused,
    })
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

/// Distil `s.source` into `s.dir`; the command shown names the same overrides.
pub(crate) fn distill_or_resume(s: &DistillStage, log: &dyn Fn(&str)) -> Result<Stage> {
    let dc = DistillConfig::default().with_overrides(s.overrides)?;
    let t0 = Instant::now();
    let finished = finished_steps(s.dir);
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
        seconds: t0.elapsed().as_secs_f64(),
        reused,
    })
}
