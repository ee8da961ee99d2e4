//! Small building blocks of the DiT: a linear layer, bias-free LayerNorm, adaLN modulation.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::ops::head_nll::NllRows;
use crate::Result;

pub use super::ops::layer_norm::{LN_EPS, layer_norm_composed};

/// A linear layer `y = x W^T + b` with PyTorch's `[out, in]` weight layout.
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Resolve `weight` (and `bias`) under `vb`; the values are set by the initialiser later.
    pub fn new(vb: VarBuilder, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        let weight = vb.get_with_hints((d_out, d_in), "weight", candle_nn::Init::Const(0.0))?;
        let bias = if bias {
            Some(vb.get_with_hints(d_out, "bias", candle_nn::Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// Per-row weighted NLL of this layer's output for features (M, D): the projection and the
    /// loss in one node that never holds the whole logits (CPU f32 with a bias; composed otherwise).
    pub fn nll(&self, x: &Tensor, rows: &NllRows) -> Result<Tensor> {
        match &self.bias {
            Some(b) => Ok(super::ops::head_nll::head_nll(x, &self.weight, b, rows)?),
            None => Ok(rows.of_logits(&self.forward(x)?)?),
        }
    }

    /// Apply to the last dimension of `x` (fused single-node kernel on CPU).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(super::ops::linear::linear(
            x,
            &self.weight,
            self.bias.as_ref(),
        )?)
    }
}

/// Bias-free LayerNorm over the last dimension, times `weight` (fused kernel on CPU).
pub fn layer_norm_no_bias(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    Ok(super::ops::layer_norm::layer_norm_fused(x, weight)?)
}

/// The weights every transformer block here has (the DiT's and the causal LM's): the pre-norms,
/// the attention projections and the MLP, under the public layout's names.
pub struct BlockWeights {
    /// Pre-attention LayerNorm weight.
    pub norm1: Tensor,
    /// Pre-MLP LayerNorm weight.
    pub norm2: Tensor,
    /// Fused q, k, v projection.
    pub qkv: Linear,
    /// Attention output projection.
    pub out: Linear,
    /// MLP up-projection.
    pub mlp0: Linear,
    /// MLP down-projection.
    pub mlp2: Linear,
    /// Attention heads.
    pub n_heads: usize,
}

impl BlockWeights {
    /// Resolve the block's weights under `vb` for width `d`, MLP ratio and head count.
    pub fn new(vb: &VarBuilder, d: usize, mlp_ratio: usize, n_heads: usize) -> Result<Self> {
        let m = mlp_ratio * d;
        Ok(Self {
            norm1: vb.get_with_hints(d, "norm1.weight", candle_nn::Init::Const(1.0))?,
            norm2: vb.get_with_hints(d, "norm2.weight", candle_nn::Init::Const(1.0))?,
            qkv: Linear::new(vb.pp("attn_qkv"), d, 3 * d, false)?,
            out: Linear::new(vb.pp("attn_out"), d, d, false)?,
            mlp0: Linear::new(vb.pp("mlp.0"), d, m, true)?,
            mlp2: Linear::new(vb.pp("mlp.2"), m, d, true)?,
            n_heads,
        })
    }
}
