//! The autoregressive baseline (the AR row of the paper's tables): a causal LM (`nn::CausalLm`) of
//! the DiT's width and depth trained with next-token cross-entropy on the same token files, its
//! exact NLL, and a KV-cache sampler whose JSONL goes through the same `idlm eval`.

pub mod run;
pub mod sample;
pub mod train;

pub use run::run_ar_training;
pub use sample::{ArSamplerOptions, draw_next, next_token_probs, sample_ar};
pub use train::{
    ArTrainer, NllStats, ar_nll, check_is_ar, init_lm, lm_from_checkpoint, next_token_losses,
    process_name,
};

use crate::checkpoint::Checkpoint;
use crate::process::ProcessKind;
use crate::{Error, Result};

/// Refuse an AR checkpoint where a diffusion model is expected.
pub fn check_not_ar(ck: &Checkpoint) -> Result<()> {
    if ck.meta.process == ProcessKind::Ar {
        return Err(Error::ckpt(
            &ck.dir,
            "holds an autoregressive model (process 'ar'), not a diffusion model",
        ));
    }
    Ok(())
}
