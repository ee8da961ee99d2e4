//! GPT-NeoX "rotate-half" rotary embedding on q and k (docs/algorithms.md §2.4, step 3).

use candle_core::{Device, Tensor};

use crate::Result;

/// Precomputed cos / sin tables for positions 0..max_len.
pub struct Rotary {
    inv_freq: Tensor,
    cos: Tensor,
    sin: Tensor,
    half: usize,
}

impl Rotary {
    /// Tables for head dimension `dim` (even) and up to `max_len` positions, base 10000.
    pub fn new(dim: usize, max_len: usize, dev: &Device) -> Result<Self> {
        let half = dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|j| 10000f64.powf(-(2.0 * j as f64) / dim as f64) as f32)
            .collect();
        let mut cos = Vec::with_capacity(max_len * dim);
        let mut sin = Vec::with_capacity(max_len * dim);
        for p in 0..max_len {
            // The angle is computed in f32 as the reference does (t * inv_freq in fp32).
            for _ in 0..2 {
                for &f in &inv {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        Ok(Self {
            inv_freq: Tensor::from_vec(inv, half, dev)?,
            cos: Tensor::from_vec(cos, (max_len, dim), dev)?,
            sin: Tensor::from_vec(sin, (max_len, dim), dev)?,
            half,
        })
    }

    /// The `inv_freq` buffer (dim / 2 values).
    pub fn inv_freq(&self) -> &Tensor {
        &self.inv_freq
    }

    /// Rotate `x` of shape (B, H, L, dh): `x cos + rotate_half(x) sin`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let l = x.dim(2)?;
        let cos = self.cos.narrow(0, 0, l)?;
        let sin = self.sin.narrow(0, 0, l)?;
        let x1 = x.narrow(3, 0, self.half)?;
        let x2 = x.narrow(3, self.half, self.half)?;
        let rot = Tensor::cat(&[&x2.neg()?, &x1], 3)?;
        Ok((x.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?)?)
    }
}
