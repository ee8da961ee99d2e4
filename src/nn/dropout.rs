//! Dropout with its own seeded stream, so a resumed run draws the same masks as an uninterrupted one.

use candle_core::Tensor;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::Result;

/// Training-mode dropout: the probability and the random stream it draws masks from.
pub struct DropoutRng<'a> {
    /// Drop probability.
    pub p: f64,
    /// The stream masks are drawn from.
    pub rng: &'a mut ChaCha8Rng,
}

impl DropoutRng<'_> {
    /// Zero each element with probability p and scale the rest by 1 / (1 - p).
    pub fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        if self.p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let scale = (1.0 / keep) as f32;
        // Compare 32-bit draws to a threshold: one draw per element, no float conversion.
        let threshold = (keep * u32::MAX as f64) as u32;
        let n = x.elem_count();
        let mask: Vec<f32> = (0..n)
            .map(|_| {
                if self.rng.random::<u32>() < threshold {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
        Ok((x * mask)?)
    }
}
