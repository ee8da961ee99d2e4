//! What a sampler needs of a network: logits at chosen positions of a noisy batch. The DiT is one;
//! the toy worlds' exact denoisers are others.

use candle_core::{Device, Tensor};

use super::{Dit, DitInput};
use crate::Result;

/// Anything that maps noisy ids (B, L) and sigma (B,) to logits over the vocabulary.
pub trait Denoiser: Sync {
    /// Raw logits (M, V) for `xt` (B, L) at noise levels `sigma` (B,), at the flat positions
    /// `positions` (indices into B x L), or at all B x L positions in order when None.
    fn logits(&self, xt: &Tensor, sigma: &Tensor, positions: Option<&[u32]>) -> Result<Tensor>;
    /// Whether the output depends on sigma (if not, an unchanged x_t can reuse its prediction).
    fn time_conditioned(&self) -> bool;
    /// Longest sequence accepted.
    fn max_len(&self) -> usize;
    /// The device inputs must live on.
    fn device(&self) -> Device;
}

impl Denoiser for Dit {
    fn logits(&self, xt: &Tensor, sigma: &Tensor, positions: Option<&[u32]>) -> Result<Tensor> {
        let f = match positions {
            Some(p) => self.features_at(DitInput::Ids(xt), sigma, p, None)?,
            None => {
                let f = self.features(DitInput::Ids(xt), sigma, None)?;
                let (b, l, d) = f.dims3()?;
                f.reshape((b * l, d))?
            }
        };
        self.head(&f)
    }
    fn time_conditioned(&self) -> bool {
        self.config().time_conditioning
    }
    fn max_len(&self) -> usize {
        self.config().length
    }
    fn device(&self) -> Device {
        Dit::device(self).clone()
    }
}
