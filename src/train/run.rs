//! A teacher's run: the diffusion objective through the trainer core's run, validated by the
//! EMA's NELBO on the held-out split.

use serde_json::json;

use super::losses::nelbo;
use super::teacher::DiffusionObjective;
use crate::Result;
use crate::data::{DataDir, PackedTokens};
use crate::nn::Dit;
use crate::run::{TrainRunOptions, TrainSummary, VALID_SEED, Validation, data_info, make_process};
use crate::trainer::{Objective, StepStats, Trainer, start_or_resume, train_run};

impl Objective<Dit> for DiffusionObjective<'_> {
    fn step(&self, tr: &mut Trainer, data: &PackedTokens) -> Result<StepStats> {
        DiffusionObjective::step(self, tr, data)
    }

    fn validate(
        &self,
        model: &Dit,
        data: &DataDir,
        rows: usize,
        batch_size: usize,
        step: u64,
    ) -> Result<(f64, Validation)> {
        let s = nelbo(
            model,
            self.process(),
            &data.valid,
            self.layout(),
            rows,
            batch_size,
            1,
            VALID_SEED,
        )?;
        let v = Validation {
            line: json!({"step": step, "val_nelbo": s.nelbo, "val_stderr": s.stderr,
                         "val_tokens": s.tokens}),
            message: format!(
                "step {step}: val NELBO {:.4} +- {:.4} nats/token (unigram entropy {:.4})",
                s.nelbo, s.stderr, data.info.unigram_entropy_nats
            ),
            best: false,
        };
        Ok((s.nelbo, v))
    }
}

/// Train (or resume) a diffusion teacher.
pub fn run_teacher(opts: &TrainRunOptions) -> Result<TrainSummary> {
    // One process per run folder, held until the run returns (or the process dies).
    let _lock = crate::run::RunLock::acquire(&opts.run_dir)?;
    let data = DataDir::open(&opts.data_dir)?;
    let trainer: Trainer = start_or_resume(opts, &data_info(&data))?;
    let kind = trainer.cfg.train.process.diffusion(&opts.run_dir)?;
    let process = make_process(kind, &data)?;
    let objective = DiffusionObjective::from_config(&trainer.cfg, process.as_ref())?
        .with_layout(data.info.rows.clone())?;
    train_run(trainer, &objective, &data, opts)
}
