//! An AR training run: the AR objective through the trainer core's run, validated by the EMA's
//! exact NLL.

use serde_json::json;

use super::train::{ArObjective, ar_nll};
use crate::Result;
use crate::data::{DataDir, PackedTokens};
use crate::nn::CausalLm;
use crate::run::{TrainRunOptions, TrainSummary, Validation, data_info};
use crate::trainer::{ArTrainer, Objective, StepStats, start_or_resume, train_run};

impl Objective<CausalLm> for ArObjective {
    fn step(&self, tr: &mut ArTrainer, data: &PackedTokens) -> Result<StepStats> {
        ArObjective::step(self, tr, data)
    }

    fn validate(
        &self,
        model: &CausalLm,
        data: &DataDir,
        rows: usize,
        batch_size: usize,
        step: u64,
    ) -> Result<(f64, Validation)> {
        let s = ar_nll(
            model,
            &data.valid,
            &self.layout,
            rows,
            batch_size,
            self.mask_id,
        )?;
        // val_nelbo repeats the exact NLL (the value every diffusion NELBO bounds) so loss plots
        // and tables read AR and diffusion runs alike.
        let v = Validation {
            line: json!({"step": step, "val_nll": s.nll, "val_ppl": s.perplexity,
                         "val_stderr": s.stderr, "val_tokens": s.tokens, "val_nelbo": s.nll}),
            message: format!(
                "step {step}: val NLL {:.4} +- {:.4} nats/token, perplexity {:.2} (unigram entropy {:.4})",
                s.nll, s.stderr, s.perplexity, data.info.unigram_entropy_nats
            ),
            best: false,
        };
        Ok((s.nll, v))
    }
}

/// Train (or resume) the AR baseline; `TrainSummary::val_nelbo` holds the validation NLL.
pub fn run_ar_training(opts: &TrainRunOptions) -> Result<TrainSummary> {
    // One process per run folder, held until the run returns (or the process dies).
    let _lock = crate::run::RunLock::acquire(&opts.run_dir)?;
    let data = DataDir::open(&opts.data_dir)?;
    let info = data_info(&data);
    let trainer: ArTrainer = start_or_resume(opts, &info)?;
    let objective = ArObjective {
        mask_id: info.mask_id,
        layout: data.info.rows.clone(),
    };
    train_run(trainer, &objective, &data, opts)
}
