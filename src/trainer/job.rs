//! A training run of any network: a trainer core and an objective stepped by the run loop
//! (`crate::run::drive`), validated on the held-out split, checkpointed with exact resume. The
//! teacher and the AR baseline differ only in their objective.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use super::{StepStats, Trainable, TrainerCore};
use crate::checkpoint::DataInfo;
use crate::data::{DataDir, PackedTokens};
use crate::run::{
    Cadence, RunJob, TrainRunOptions, TrainSummary, Validation, check_data_matches, data_info,
    drive, open_run_dir,
};
use crate::{Error, Result};

/// What a network is trained to minimise, and how its EMA is validated.
pub trait Objective<N: Trainable> {
    /// One optimizer step over `grad_accum` micro-batches of fresh rows.
    fn step(&self, tr: &mut TrainerCore<N>, data: &PackedTokens) -> Result<StepStats>;
    /// Validate `model` (the EMA) at `step` on the held-out split, with the run's batch size and
    /// row budget: the value checkpoints record as `val_nelbo`, and the validation's report.
    fn validate(
        &self,
        model: &N,
        data: &DataDir,
        rows: usize,
        batch_size: usize,
        step: u64,
    ) -> Result<(f64, Validation)>;
}

/// A trainer and its objective, as the run loop sees them.
struct TrainJob<'a, N: Trainable, O: Objective<N>> {
    trainer: TrainerCore<N>,
    objective: &'a O,
    data: &'a DataDir,
    info: DataInfo,
    tok_json: String,
    run_dir: PathBuf,
    started: Instant,
    start_tokens: u64,
    last_loss: f64,
}

impl<N: Trainable, O: Objective<N>> RunJob for TrainJob<'_, N, O> {
    fn step(&self) -> u64 {
        self.trainer.step
    }

    fn advance(&mut self) -> Result<(serde_json::Value, String)> {
        let tr = &mut self.trainer;
        let s0 = Instant::now();
        let st = self.objective.step(tr, &self.data.train)?;
        tr.train_seconds += s0.elapsed().as_secs_f64();
        self.last_loss = st.loss;
        let el = self.started.elapsed().as_secs_f64();
        let tps = (tr.tokens_seen - self.start_tokens) as f64 / el.max(1e-9);
        let line = json!({"step": st.step, "loss": st.loss, "grad_norm": st.grad_norm, "lr": st.lr,
                          "tokens": tr.tokens_seen, "tok_per_s": tps, "elapsed_s": tr.train_seconds});
        Ok((line, format!("loss {:.4} | {:.0} tok/s", st.loss, tps)))
    }

    fn validate(&mut self) -> Result<Validation> {
        let t = &self.trainer.cfg.train;
        let ema = self.trainer.ema_model()?;
        let rows = (t.eval_batches * t.batch_size).max(1);
        let (val, v) =
            self.objective
                .validate(&ema, self.data, rows, t.batch_size, self.trainer.step)?;
        // A NaN validation loss would be written as null into metrics.jsonl and meta.json.
        if !val.is_finite() {
            return Err(Error::NonFinite {
                what: "validation loss",
                step: self.trainer.step,
            });
        }
        self.trainer.last_val = Some(val);
        Ok(v)
    }

    fn save(&mut self) -> Result<PathBuf> {
        self.trainer.save(
            &self.run_dir,
            &self.info,
            &self.tok_json,
            self.trainer.last_val,
        )
    }
}

/// Run `trainer` (fresh, or resumed by the caller with the metrics truncated) on `data` with
/// `objective` until the config's step or time budget; the resolved config is saved as
/// `config.toml` beside the metrics and checkpoints.
pub fn train_run<N: Trainable, O: Objective<N>>(
    trainer: TrainerCore<N>,
    objective: &O,
    data: &DataDir,
    opts: &TrainRunOptions,
) -> Result<TrainSummary> {
    let run_dir = &opts.run_dir;
    let cfg = trainer.cfg.clone();
    let cfg_path = run_dir.join("config.toml");
    crate::atomic::write_file(&cfg_path, cfg.to_toml()?.as_bytes())?;
    let t = &cfg.train;
    let mut job = TrainJob {
        start_tokens: trainer.tokens_seen,
        trainer,
        objective,
        data,
        info: data_info(data),
        tok_json: data.tokenizer.to_json().to_string(),
        run_dir: run_dir.clone(),
        started: Instant::now(),
        last_loss: f64::NAN,
    };
    let cadence = Cadence {
        max_steps: t.max_steps,
        max_minutes: t.max_minutes,
        log_every: t.log_every,
        val_every: t.eval_every,
        ckpt_every: t.ckpt_every,
    };
    let end = drive(&mut job, &cadence, run_dir, opts.progress, false)?;
    let el = job.started.elapsed().as_secs_f64();
    Ok(TrainSummary {
        step: job.trainer.step,
        last_loss: job.last_loss,
        val_nelbo: job.trainer.last_val,
        unigram_entropy: data.info.unigram_entropy_nats,
        checkpoint: end.checkpoint,
        tokens_per_s: (job.trainer.tokens_seen - job.start_tokens) as f64 / el.max(1e-9),
    })
}

/// The trainer a run starts with: from the run's latest checkpoint when resuming (its
/// architecture and family kept, the data checked against it, later metric lines dropped), or a
/// fresh network sized for the data in a run directory that holds no run yet.
pub fn start_or_resume<N: Trainable>(
    opts: &TrainRunOptions,
    info: &DataInfo,
) -> Result<TrainerCore<N>> {
    let run_dir = &opts.run_dir;
    if opts.resume {
        crate::run::require_checkpoint(run_dir)?;
        let ck = crate::checkpoint::load(run_dir)?;
        N::check(ck.meta.process, &ck.dir)?;
        check_data_matches(&ck.meta.data, info, &ck.dir)?;
        open_run_dir(run_dir, Some(ck.meta.step))?;
        crate::checkpoint::prune_run(run_dir, &ck.dir, opts.cfg.train.keep_checkpoints)?;
        // The architecture and family come from the checkpoint; the rest may be overridden.
        let mut cfg = opts.cfg.clone();
        cfg.model = ck.meta.config.model.clone();
        cfg.train.process = ck.meta.process;
        TrainerCore::from_checkpoint(&ck, &cfg)
    } else {
        open_run_dir(run_dir, None)?;
        let arch = opts.cfg.model.dit(info.vocab_size, info.seq_len);
        TrainerCore::new(&opts.cfg, &arch)
    }
}
