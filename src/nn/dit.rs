//! The DiT backbone of MDLM / Duo / IDLM (docs/algorithms.md §2.4), with parameter names in the public
//! `backbone.*` layout (§8) so public checkpoints load by name.

use crate::nn::ops::head_nll::NllRows;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::dropout::DropoutRng;
use super::layers::{BlockWeights, Linear};
use super::ops::attention::{RotaryAttention, rotary_attention};
use super::ops::modulate::gated_residual;
use super::ops::norm_modulate::norm_modulate;
use super::ops::{gelu::gelu_tanh, softmax::softmax_last};
use super::rotary::Rotary;
use crate::{Error, Result};

/// Size of the sinusoidal frequency embedding of sigma (fixed in the reference code).
pub const FREQ_EMBED_SIZE: usize = 256;

/// Architecture of a DiT; the vocabulary and length come from the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DitConfig {
    /// Model vocabulary, including the MASK id.
    pub vocab_size: usize,
    /// Width D of the residual stream.
    pub hidden_size: usize,
    /// Width of the time conditioning vector c.
    pub cond_dim: usize,
    /// Number of DDiT blocks.
    pub n_blocks: usize,
    /// Attention heads (head dim = hidden_size / n_heads, must be even for rotary).
    pub n_heads: usize,
    /// MLP hidden width as a multiple of hidden_size.
    pub mlp_ratio: usize,
    /// Longest sequence the model accepts.
    pub length: usize,
    /// Dropout probability in training.
    pub dropout: f64,
    /// Whether sigma is fed to the time embedding (false: sigma is replaced by zeros).
    pub time_conditioning: bool,
}

impl DitConfig {
    /// Check the sizes are consistent.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.vocab_size < 2 || self.hidden_size == 0 || self.n_blocks == 0 || self.cond_dim == 0
        {
            return bad(format!("model sizes must be positive: {self:?}"));
        }
        if self.n_heads == 0 || !self.hidden_size.is_multiple_of(self.n_heads) {
            return bad(format!(
                "hidden_size {} is not divisible by n_heads {}",
                self.hidden_size, self.n_heads
            ));
        }
        if !(self.hidden_size / self.n_heads).is_multiple_of(2) {
            return bad("head dimension must be even for rotary embeddings".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        Ok(())
    }

    /// Number of trainable parameters.
    pub fn n_params(&self) -> usize {
        let (v, d, c, m) = (
            self.vocab_size,
            self.hidden_size,
            self.cond_dim,
            self.mlp_ratio * self.hidden_size,
        );
        let sigma = FREQ_EMBED_SIZE * c + c + c * c + c;
        let block = 2 * d + 3 * d * d + d * d + (d * m + m) + (m * d + d) + (c * 6 * d + 6 * d);
        let out = d + d * v + v + c * 2 * d + 2 * d;
        v * d + sigma + self.n_blocks * block + out
    }
}

/// The network's input: token ids (B, L) or a soft input (B, L, V) read as logits.
#[derive(Debug, Clone, Copy)]
pub enum DitInput<'a> {
    /// Integer ids, u32, shape (B, L).
    Ids(&'a Tensor),
    /// Float logits over the vocabulary, shape (B, L, V); softmaxed inside the embedding.
    Soft(&'a Tensor),
}

struct TimestepEmbedder {
    l0: Linear,
    l2: Linear,
    freqs: Tensor,
}

impl TimestepEmbedder {
    fn new(vb: VarBuilder, cond_dim: usize) -> Result<Self> {
        let half = FREQ_EMBED_SIZE / 2;
        let freqs: Vec<f32> = (0..half)
            .map(|k| (-(10000f64.ln()) * k as f64 / half as f64).exp() as f32)
            .collect();
        Ok(Self {
            l0: Linear::new(vb.pp("mlp.0"), FREQ_EMBED_SIZE, cond_dim, true)?,
            l2: Linear::new(vb.pp("mlp.2"), cond_dim, cond_dim, true)?,
            freqs: Tensor::from_vec(freqs, (1, half), vb.device())?,
        })
    }

    /// sigma (B,) -> SiLU(MLP([cos(sigma f), sin(sigma f)])) of shape (B, cond_dim).
    fn forward(&self, sigma: &Tensor) -> Result<Tensor> {
        let args = sigma.unsqueeze(1)?.broadcast_mul(&self.freqs)?;
        let emb = Tensor::cat(&[args.cos()?, args.sin()?], 1)?;
        let h = self.l0.forward(&emb)?.silu()?;
        Ok(self.l2.forward(&h)?.silu()?)
    }
}

struct Block {
    w: BlockWeights,
    ada: Linear,
}

impl std::ops::Deref for Block {
    type Target = BlockWeights;
    fn deref(&self) -> &BlockWeights {
        &self.w
    }
}

impl Block {
    fn new(vb: VarBuilder, cfg: &DitConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            w: BlockWeights::new(&vb, d, cfg.mlp_ratio, cfg.n_heads)?,
            ada: Linear::new(vb.pp("adaLN_modulation"), cfg.cond_dim, 6 * d, true)?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        c: &Tensor,
        rotary: &Rotary,
        attn: &RotaryAttention,
        drop: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        // (B, 6D) -> (B, 1, 6D): shift, scale, gate (msa), shift, scale, gate (mlp).
        let ada = self.ada.forward(c)?.unsqueeze(1)?;
        let y = self.attend(x, &ada, rotary, attn)?;
        self.finish(x, &y, &ada, drop)
    }

    /// The attention output (B, L, D) before `attn_out`, for every position.
    fn attend(
        &self,
        x: &Tensor,
        ada: &Tensor,
        rotary: &Rotary,
        attn: &RotaryAttention,
    ) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        // ada's first two chunks are [shift | scale] of the attention branch.
        let h = norm_modulate(x, &self.norm1, &ada.narrow(2, 0, 2 * d)?)?;
        let qkv = self.qkv.forward(&h)?;
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            Ok(rotary_attention(&qkv, attn)?)
        } else {
            attention_composed(&qkv, rotary, self.n_heads, b, l, d)
        }
    }

    /// The rest of the block from the attention output `y`: `attn_out`, the gated residual and the
    /// MLP. All position-wise, so it runs on any rows (N, L', D) given their own (N, 1, 6D) `ada`.
    fn finish(
        &self,
        x: &Tensor,
        y: &Tensor,
        ada: &Tensor,
        mut drop: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let d = x.dim(2)?;
        let chunk = |i: usize| ada.narrow(2, i * d, d);
        let y = self.out.forward(y)?;
        let y = match drop.as_deref_mut() {
            Some(r) => r.apply(&y)?,
            None => y,
        };
        let x = gated_residual(x, &y, &chunk(2)?)?;
        // Chunks 3 and 4: [shift | scale] of the MLP branch.
        let h = norm_modulate(&x, &self.norm2, &ada.narrow(2, 3 * d, 2 * d)?)?;
        let h = self.mlp2.forward(&gelu_tanh(&self.mlp0.forward(&h)?)?)?;
        let h = match drop {
            Some(r) => r.apply(&h)?,
            None => h,
        };
        Ok(gated_residual(&x, &h, &chunk(5)?)?)
    }
}

/// Packed qkv (B, L, 3D) split into per-head q, k, v (B, H, L, dh), rotary applied to q and k:
/// the first half of both composed attention oracles.
pub(crate) fn qkv_heads(
    qkv: &Tensor,
    rotary: &Rotary,
    h: usize,
    b: usize,
    l: usize,
    d: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let qkv = qkv.reshape((b, l, 3, h, d / h))?;
    // (B, L, H, dh) -> (B, H, L, dh)
    let take = |i: usize| -> Result<Tensor> {
        Ok(qkv
            .narrow(2, i, 1)?
            .squeeze(2)?
            .transpose(1, 2)?
            .contiguous()?)
    };
    Ok((rotary.apply(&take(0)?)?, rotary.apply(&take(1)?)?, take(2)?))
}

/// Attention on packed qkv (B, L, 3D) with composed ops: the fused kernel's oracle and the path on
/// other devices.
pub fn attention_composed(
    qkv: &Tensor,
    rotary: &Rotary,
    h: usize,
    b: usize,
    l: usize,
    d: usize,
) -> Result<Tensor> {
    let (q, k, v) = qkv_heads(qkv, rotary, h, b, l, d)?;
    let scale = 1.0 / ((d / h) as f64).sqrt();
    let att = (q.matmul(&k.t()?)? * scale)?;
    let att = softmax_last(&att)?;
    Ok(att.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?)
}

/// The diffusion transformer: embedding, time embedding, adaLN-zero blocks, final layer.
pub struct Dit {
    cfg: DitConfig,
    embedding: Tensor,
    sigma_map: TimestepEmbedder,
    rotary: Rotary,
    attn: RotaryAttention,
    blocks: Vec<Block>,
    norm_final: Tensor,
    linear: Linear,
    ada_final: Linear,
}

impl Dit {
    /// Build the network, resolving weights by their public names under `vb` (e.g. `backbone`).
    pub fn new(vb: VarBuilder, cfg: &DitConfig) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.hidden_size;
        let embedding = vb.get_with_hints(
            (cfg.vocab_size, d),
            "vocab_embed.embedding",
            candle_nn::Init::Const(0.0),
        )?;
        let sigma_map = TimestepEmbedder::new(vb.pp("sigma_map"), cfg.cond_dim)?;
        let rotary = Rotary::new(d / cfg.n_heads, cfg.length, vb.device())?;
        let blocks = (0..cfg.n_blocks)
            .map(|i| Block::new(vb.pp(format!("blocks.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        let vo = vb.pp("output_layer");
        Ok(Self {
            cfg: cfg.clone(),
            embedding,
            sigma_map,
            rotary,
            attn: RotaryAttention::new(cfg.n_heads, d / cfg.n_heads, cfg.length),
            blocks,
            norm_final: vo.get_with_hints(d, "norm_final.weight", candle_nn::Init::Const(1.0))?,
            linear: Linear::new(vo.pp("linear"), d, cfg.vocab_size, true)?,
            ada_final: Linear::new(vo.pp("adaLN_modulation"), cfg.cond_dim, 2 * d, true)?,
        })
    }

    /// The architecture.
    pub fn config(&self) -> &DitConfig {
        &self.cfg
    }

    /// The rotary inverse frequencies, saved as the `rotary_emb.inv_freq` buffer.
    pub fn inv_freq(&self) -> &Tensor {
        self.rotary.inv_freq()
    }

    /// Logits (B, L, V) for `input` at noise level `sigma` (B,); `dropout` enables training mode.
    pub fn forward(
        &self,
        input: DitInput,
        sigma: &Tensor,
        dropout: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        self.head(&self.features(input, sigma, dropout)?)
    }

    /// The output projection: logits (..., V) from final features (..., D).
    pub fn head(&self, features: &Tensor) -> Result<Tensor> {
        self.linear.forward(features)
    }

    /// Per-row weighted NLL of the output projection of features (M, D): [`Self::head`] and the
    /// loss fused, so training never holds the whole (M, V) logits.
    pub fn head_nll(&self, features: &Tensor, rows: &NllRows) -> Result<Tensor> {
        self.linear.nll(features, rows)
    }

    /// Final features (B, L, D): everything but the output projection, so a loss that needs only
    /// some positions projects only those.
    pub fn features(
        &self,
        input: DitInput,
        sigma: &Tensor,
        dropout: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let (x, c) = self.embed(input, sigma)?;
        self.run(x, &c, dropout)
    }

    /// The blocks and the final norm over embedded input x (B, L, D).
    fn run(
        &self,
        mut x: Tensor,
        c: &Tensor,
        mut dropout: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        for blk in &self.blocks {
            x = blk.forward(&x, c, &self.rotary, &self.attn, dropout.as_deref_mut())?;
        }
        let ada = self.ada_final.forward(c)?.unsqueeze(1)?;
        self.final_norm(&x, &ada)
    }

    /// Final features (M, D) at the flat positions `pos` (indices into B x L) only, equal to the
    /// rows of [`Self::features`]: the last block attends from every position (its keys and
    /// values are needed) and runs `attn_out`, the MLP and the final norm only at `pos`. That is
    /// three quarters of the last block's work at the positions not asked for.
    pub fn features_at(
        &self,
        input: DitInput,
        sigma: &Tensor,
        pos: &[u32],
        mut dropout: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let (mut x, c) = self.embed(input, sigma)?;
        let (b, l, d) = x.dims3()?;
        if let Some(&bad) = pos.iter().find(|&&p| p as usize >= b * l) {
            return Err(Error::InvalidArgument(format!(
                "position {bad} outside a batch of {b} x {l}"
            )));
        }
        if pos.len() == b * l && pos.iter().enumerate().all(|(i, &p)| p as usize == i) {
            return Ok(self.run(x, &c, dropout)?.reshape((b * l, d))?);
        }
        let Some((last, body)) = self.blocks.split_last() else {
            return Err(Error::Config("a DiT needs at least one block".into()));
        };
        for blk in body {
            x = blk.forward(&x, &c, &self.rotary, &self.attn, dropout.as_deref_mut())?;
        }
        let ada = last.ada.forward(&c)?;
        let y = last.attend(&x, &ada.unsqueeze(1)?, &self.rotary, &self.attn)?;
        let dev = x.device();
        let idx = Tensor::from_slice(pos, pos.len(), dev)?;
        let seq: Vec<u32> = pos.iter().map(|&p| p / l as u32).collect();
        let seq = Tensor::from_vec(seq, pos.len(), dev)?;
        // Each row becomes a sequence of length one with its own sequence's modulation.
        let rows = |t: &Tensor| -> Result<Tensor> {
            Ok(t.reshape((b * l, d))?.index_select(&idx, 0)?.unsqueeze(1)?)
        };
        let per_row = |a: &Tensor| -> Result<Tensor> { Ok(a.index_select(&seq, 0)?.unsqueeze(1)?) };
        let x = last.finish(&rows(&x)?, &rows(&y)?, &per_row(&ada)?, dropout)?;
        let f = self.final_norm(&x, &per_row(&self.ada_final.forward(&c)?)?)?;
        Ok(f.squeeze(1)?)
    }

    /// The input embedding (B, L, D) and the time conditioning c (B, cond_dim).
    fn embed(&self, input: DitInput, sigma: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = match input {
            DitInput::Ids(ids) => {
                let (b, l) = ids.dims2()?;
                self.check_len(l)?;
                self.embedding
                    .index_select(&ids.flatten_all()?, 0)?
                    .reshape((b, l, self.cfg.hidden_size))?
            }
            DitInput::Soft(logits) => {
                let (b, l, v) = logits.dims3()?;
                self.check_len(l)?;
                if v != self.cfg.vocab_size {
                    return Err(Error::InvalidArgument(format!(
                        "soft input has {v} classes, the model vocabulary is {}",
                        self.cfg.vocab_size
                    )));
                }
                let p = softmax_last(&logits.to_dtype(DType::F32)?)?;
                p.reshape((b * l, v))?.matmul(&self.embedding)?.reshape((
                    b,
                    l,
                    self.cfg.hidden_size,
                ))?
            }
        };
        let sigma = if self.cfg.time_conditioning {
            sigma.to_dtype(DType::F32)?
        } else {
            sigma.zeros_like()?.to_dtype(DType::F32)?
        };
        Ok((x, self.sigma_map.forward(&sigma)?))
    }

    /// The final LayerNorm and adaLN modulation of x (N, L', D) by its (N, 1, 2D) `ada`.
    fn final_norm(&self, x: &Tensor, ada: &Tensor) -> Result<Tensor> {
        Ok(norm_modulate(x, &self.norm_final, ada)?)
    }

    fn check_len(&self, l: usize) -> Result<()> {
        if l > self.cfg.length {
            return Err(Error::InvalidArgument(format!(
                "sequence length {l} exceeds the model's length {}",
                self.cfg.length
            )));
        }
        Ok(())
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.embedding.device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    /// `features_at` is the rows of `features`: values, and the gradient of every weight of a
    /// loss on those rows (the last block's row path differentiates like the full one).
    #[test]
    fn features_at_is_the_rows_of_features() {
        let cfg = DitConfig {
            vocab_size: 23,
            hidden_size: 16,
            cond_dim: 8,
            n_blocks: 2,
            n_heads: 2,
            mlp_ratio: 4,
            length: 12,
            dropout: 0.0,
            time_conditioning: true,
        };
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let dit = Dit::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev), &cfg).unwrap();
        crate::nn::init::init_dit(&varmap, 5).unwrap();
        // Non-zero adaLN and output weights, so every modulation row matters.
        for v in varmap.all_vars() {
            let noise = Tensor::randn(0f32, 0.2, v.shape(), &dev).unwrap();
            v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
        }
        let (b, l) = (3usize, 10usize);
        let ids: Vec<u32> = (0..b * l).map(|i| ((i * 7) % 23) as u32).collect();
        let ids = Tensor::from_vec(ids, (b, l), &dev).unwrap();
        let sigma = Tensor::new(&[0.3f32, 1.2, 2.5], &dev).unwrap();
        let pos: Vec<u32> = vec![29, 0, 13, 14, 5, 22, 9];
        let full = dit
            .features(DitInput::Ids(&ids), &sigma, None)
            .unwrap()
            .reshape((b * l, 16))
            .unwrap();
        let want = full
            .index_select(&Tensor::new(pos.as_slice(), &dev).unwrap(), 0)
            .unwrap();
        let got = dit
            .features_at(DitInput::Ids(&ids), &sigma, &pos, None)
            .unwrap();
        assert_eq!(got.dims(), &[pos.len(), 16]);
        let max_abs = |t: Tensor| t.abs().and_then(|t| t.max_all()?.to_scalar::<f32>());
        // Largest difference relative to the largest entry of b.
        let diff = |a: &Tensor, b: &Tensor| {
            max_abs((a - b).unwrap()).unwrap() / max_abs(b.clone()).unwrap().max(1e-12)
        };
        assert!(diff(&got, &want) < 1e-5);
        let r = Tensor::randn(0f32, 1.0, (pos.len(), 16), &dev).unwrap();
        let ga = (got * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (want * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in varmap.all_vars() {
            let (p, q) = (ga.get(v.as_tensor()), gb.get(v.as_tensor()));
            match (p, q) {
                (Some(p), Some(q)) => assert!(diff(p, q) < 1e-4, "{:?}", v.shape()),
                (None, None) => {}
                _ => panic!("a gradient on one path only: {:?}", v.shape()),
            }
        }
        // All positions in order take the full path; an outside position is an error.
        let all: Vec<u32> = (0..(b * l) as u32).collect();
        let f = dit
            .features_at(DitInput::Ids(&ids), &sigma, &all, None)
            .unwrap();
        assert!(diff(&f, &full) < 1e-6);
        let e = dit
            .features_at(DitInput::Ids(&ids), &sigma, &[30], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("position 30 outside a batch of 3 x 10"), "{e}");
    }
}
