//! Teacher training: the diffusion objective (`teacher`), its losses and validation NELBO
//! (`losses`), the teacher's run (`run`), and `run_training`, which trains whatever family a
//! config names (a diffusion teacher here, the AR baseline in `crate::ar`). The trainer core
//! itself is `crate::trainer`.

pub mod losses;
pub mod run;
pub mod teacher;

pub use crate::trainer::{ArTrainer, StepStats, TrainRngs, Trainer, TrainerCore};
pub use losses::{NelboStats, active_losses, batch_loss, nelbo, prompted_batch_loss};
pub use run::run_teacher;
pub use teacher::DiffusionObjective;

use crate::Result;
use crate::process::ModelFamily;
use crate::run::{TrainRunOptions, TrainSummary};

/// Train (or resume) a model of the family `opts.cfg.train.process` names: a diffusion teacher,
/// or with "ar" the autoregressive baseline.
pub fn run_training(opts: &TrainRunOptions) -> Result<TrainSummary> {
    match opts.cfg.train.process {
        ModelFamily::Diffusion(_) => run_teacher(opts),
        ModelFamily::Ar => crate::ar::run_ar_training(opts),
    }
}
