//! The progress callback shared by the samplers and the evaluation metrics: a leaf module, so that
//! evaluation does not depend on the sampler just to report how far it got.

/// Progress callback: (items finished, total), e.g. sequences sampled or texts scored.
pub type Progress<'a> = &'a (dyn Fn(usize, usize) + Sync);
