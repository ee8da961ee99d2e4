//! The autoregressive baseline (the AR row of the paper's tables): a causal LM (`nn::CausalLm`) of
//! the DiT's width and depth trained by the same trainer core with next-token cross-entropy on the
//! same token files, its exact NLL, and a KV-cache sampler whose JSONL goes through the same
//! `idlm eval`.

pub mod run;
pub mod sample;
pub mod train;

pub use crate::trainer::ArTrainer;
pub use run::run_ar_training;
pub use sample::{ArBatch, ArSamplerOptions, draw_next, next_token_probs, sample_ar};
pub use train::{
    ArObjective, NllStats, ar_nll, init_lm, lm_from_checkpoint, lm_from_tensors, next_token_losses,
    prompted_next_token_losses, random_frozen_lm,
};
