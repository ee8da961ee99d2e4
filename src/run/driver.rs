//! The one run loop: progress bar, time budget, cadence of metrics lines, validation and
//! checkpoints, the best checkpoint kept by validation, and a final checkpoint at the last step.
//! A teacher, the AR baseline and every distiller give it their step, validation and save.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::append_jsonl;
use crate::atomic::Staging;
use crate::{Error, Result};

/// When a run stops and how often it logs, validates and checkpoints (0: never).
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    /// Stop at this many steps.
    pub max_steps: u64,
    /// Stop after this many minutes of this invocation; 0 = no limit.
    pub max_minutes: f64,
    /// A metrics line every this many steps.
    pub log_every: u64,
    /// Validation every this many steps (and at the last step).
    pub val_every: u64,
    /// A checkpoint every this many steps (and at the end).
    pub ckpt_every: u64,
}

/// What one validation measured.
pub struct Validation {
    /// Its metrics line.
    pub line: serde_json::Value,
    /// A line for the terminal.
    pub message: String,
    /// The best so far: the checkpoint of this step is kept as `run_dir/best`.
    pub best: bool,
}

/// What a run gives the loop.
pub trait RunJob {
    /// Steps done.
    fn step(&self) -> u64;
    /// One update: its metrics line and a short progress message.
    fn advance(&mut self) -> Result<(serde_json::Value, String)>;
    /// Validate the current weights.
    fn validate(&mut self) -> Result<Validation>;
    /// Write a checkpoint of everything needed to resume; returns its directory.
    fn save(&mut self) -> Result<PathBuf>;
}

/// Where a run ended.
pub struct LoopEnd {
    /// The checkpoint of the last step.
    pub checkpoint: PathBuf,
    /// `run_dir/best`, if a validation ever marked a best step.
    pub best: Option<PathBuf>,
}

/// Run `job` until `cadence.max_steps` or the time budget; `validate_first`: validate once
/// before the first step (a distiller's reference point). Metrics go to `run_dir/metrics.jsonl`.
pub fn drive(
    job: &mut dyn RunJob,
    cadence: &Cadence,
    run_dir: &Path,
    progress: bool,
    validate_first: bool,
) -> Result<LoopEnd> {
    let c = cadence;
    let metrics = run_dir.join("metrics.jsonl");
    let bar = if progress {
        let b = ProgressBar::new(c.max_steps);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} ETA {eta} {msg}",
            )
            .map_err(|e| Error::Config(e.to_string()))?,
        );
        b.set_position(job.step());
        b
    } else {
        ProgressBar::hidden()
    };
    let mut best = Some(run_dir.join("best")).filter(|b| b.join("meta.json").is_file());
    if validate_first && c.val_every > 0 {
        let v = job.validate()?;
        bar.println(&v.message);
        append_jsonl(&metrics, &v.line)?;
    }
    let started = Instant::now();
    let start_step = job.step();
    let mut last_ckpt: Option<PathBuf> = None;
    while job.step() < c.max_steps {
        if c.max_minutes > 0.0 && started.elapsed().as_secs_f64() > c.max_minutes * 60.0 {
            bar.println(format!("time budget of {} min reached", c.max_minutes));
            break;
        }
        let (line, msg) = job.advance()?;
        let step = job.step();
        bar.set_position(step);
        bar.set_message(msg);
        if c.log_every > 0 && step.is_multiple_of(c.log_every) {
            append_jsonl(&metrics, &line)?;
        }
        let last = step >= c.max_steps;
        let mut is_best = false;
        if c.val_every > 0 && (step.is_multiple_of(c.val_every) || last) {
            let v = job.validate()?;
            bar.println(&v.message);
            append_jsonl(&metrics, &v.line)?;
            is_best = v.best;
        }
        if is_best || (c.ckpt_every > 0 && step.is_multiple_of(c.ckpt_every)) {
            let p = job.save()?;
            if is_best {
                best = Some(copy_as_best(&p, run_dir)?);
            }
            last_ckpt = Some(p);
        }
    }
    let step = job.step();
    let name = format!("step-{step:08}");
    let checkpoint = match last_ckpt {
        Some(p) if p.ends_with(&name) => p,
        // A resume with nothing left to do (killed after its final checkpoint): that checkpoint
        // is the one loaded. Writing it again would replace the folder `latest` names, a window
        // in which a second kill leaves nothing to resume from.
        _ if step == start_step && latest_is(run_dir, &name) => {
            run_dir.join("checkpoints").join(&name)
        }
        _ => job.save()?,
    };
    bar.finish_and_clear();
    Ok(LoopEnd { checkpoint, best })
}

/// Whether `run_dir/checkpoints/latest` names the complete checkpoint `name`.
fn latest_is(run_dir: &Path, name: &str) -> bool {
    crate::checkpoint::resolve(run_dir).is_ok_and(|d| d.ends_with(name))
}

/// Copy a checkpoint directory to `run_dir/best` (staged, then renamed into place).
fn copy_as_best(src: &Path, run_dir: &Path) -> Result<PathBuf> {
    let staged = Staging::new(run_dir, "best")?;
    for entry in fs::read_dir(src).map_err(|e| Error::io("listing", src, e))? {
        let entry = entry.map_err(|e| Error::io("listing", src, e))?;
        let to = staged.path().join(entry.file_name());
        fs::copy(entry.path(), &to).map_err(|e| Error::io("copying into", &to, e))?;
    }
    let best = run_dir.join("best");
    staged.publish(&best)?;
    Ok(best)
}
