//! What the trainer and the checkpoint loader need of a network (the DiT, the AR baseline's causal
//! LM): to be built on trainable variables or on frozen tensors, and its rotary buffer.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::{CausalLm, CausalLmConfig, Dit, DitConfig};
use crate::{Error, Result};

/// A network built from the `[model]` config resolved for the data.
pub trait Network: Sized {
    /// Build on a variable builder (trainable variables or frozen tensors).
    fn build(vb: VarBuilder, arch: &DitConfig) -> Result<Self>;
    /// The rotary buffer saved beside the weights in the public layout.
    fn inv_freq(&self) -> &Tensor;
}

impl Network for Dit {
    fn build(vb: VarBuilder, arch: &DitConfig) -> Result<Self> {
        Dit::new(vb, arch)
    }
    fn inv_freq(&self) -> &Tensor {
        Dit::inv_freq(self)
    }
}

impl Network for CausalLm {
    fn build(vb: VarBuilder, arch: &DitConfig) -> Result<Self> {
        CausalLm::new(vb, &CausalLmConfig::from_dit(arch))
    }
    fn inv_freq(&self) -> &Tensor {
        CausalLm::inv_freq(self)
    }
}

/// A frozen network from plain tensors (no gradient tracking); every weight must be present with
/// the right shape, or the error names `origin`.
pub fn frozen<N: Network>(
    w: &HashMap<String, Tensor>,
    arch: &DitConfig,
    origin: &Path,
) -> Result<N> {
    let vb = VarBuilder::from_tensors(w.clone(), DType::F32, &crate::runtime::device());
    N::build(vb, arch)
        .map_err(|e| Error::ckpt(origin, format!("weights do not fit the model: {e}")))
}
