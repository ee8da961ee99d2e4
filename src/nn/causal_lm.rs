//! The autoregressive baseline: a GPT-style pre-LN causal transformer with rotary attention, built
//! from the DiT's parts at the DiT's width and depth but without adaLN or the time embedding (MDLM's
//! `causal_attention=True` variant, docs/algorithms.md §2.4 step 7). Weights use the same public
//! `backbone.*` names. `step` decodes one token per sequence against a KV cache.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::dit::{DitConfig, qkv_heads};
use super::dropout::DropoutRng;
use super::kv_cache::KvCache;
use super::layers::{BlockWeights, Linear, layer_norm_no_bias};
use super::ops::attention::{RotaryAttention, rotary_attention};
use super::ops::{gelu::gelu_tanh, softmax::softmax_last};
use super::rotary::Rotary;
use crate::{Error, Result};

/// Architecture of the causal LM; the vocabulary and length come from the data.
#[derive(Debug, Clone, PartialEq)]
pub struct CausalLmConfig {
    /// Model vocabulary (including the MASK id, which is never predicted).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Number of blocks.
    pub n_blocks: usize,
    /// Attention heads (head dim must be even for rotary).
    pub n_heads: usize,
    /// MLP hidden width as a multiple of hidden_size.
    pub mlp_ratio: usize,
    /// Longest sequence the model accepts (and the KV cache's capacity).
    pub length: usize,
    /// Dropout probability in training.
    pub dropout: f64,
}

impl CausalLmConfig {
    /// The AR model with the same sizes as a DiT config (its time conditioning is ignored).
    pub fn from_dit(c: &DitConfig) -> Self {
        Self {
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            n_blocks: c.n_blocks,
            n_heads: c.n_heads,
            mlp_ratio: c.mlp_ratio,
            length: c.length,
            dropout: c.dropout,
        }
    }

    /// Check the sizes are consistent.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.vocab_size < 2 || self.hidden_size == 0 || self.n_blocks == 0 || self.length == 0 {
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

    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.n_heads
    }

    /// Number of trainable parameters.
    pub fn n_params(&self) -> usize {
        let (v, d, m) = (
            self.vocab_size,
            self.hidden_size,
            self.mlp_ratio * self.hidden_size,
        );
        let block = 2 * d + 3 * d * d + d * d + (d * m + m) + (m * d + d);
        v * d + self.n_blocks * block + d + d * v + v
    }
}

struct Block {
    w: BlockWeights,
}

impl std::ops::Deref for Block {
    type Target = BlockWeights;
    fn deref(&self) -> &BlockWeights {
        &self.w
    }
}

impl Block {
    fn new(vb: VarBuilder, cfg: &CausalLmConfig) -> Result<Self> {
        Ok(Self {
            w: BlockWeights::new(&vb, cfg.hidden_size, cfg.mlp_ratio, cfg.n_heads)?,
        })
    }

    /// The MLP half of the block: x + MLP(LN2(x)).
    fn mlp(&self, x: &Tensor, drop: Option<&mut DropoutRng>) -> Result<Tensor> {
        let h = layer_norm_no_bias(x, &self.norm2)?;
        let h = self.mlp2.forward(&gelu_tanh(&self.mlp0.forward(&h)?)?)?;
        let h = match drop {
            Some(r) => r.apply(&h)?,
            None => h,
        };
        Ok((x + h)?)
    }

    fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        attn: &RotaryAttention,
        mut drop: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let qkv = self.qkv.forward(&layer_norm_no_bias(x, &self.norm1)?)?;
        let y = if x.device().is_cpu() && x.dtype() == DType::F32 {
            rotary_attention(&qkv, attn)?
        } else {
            causal_attention_composed(&qkv, rotary, self.n_heads, b, l, d)?
        };
        let y = self.out.forward(&y)?;
        let y = match drop.as_deref_mut() {
            Some(r) => r.apply(&y)?,
            None => y,
        };
        self.mlp(&(x + y)?, drop)
    }

    /// One new position per sequence: x (sum of the caches' batches, D), the rows of each cache in
    /// turn, each at its own cache's current position. The projections and the MLP see all rows in
    /// one call; attention runs per cache (caches of different lengths cannot share it).
    fn step(
        &self,
        x: &Tensor,
        caches: &mut [&mut KvCache],
        layer: usize,
        attn: &RotaryAttention,
    ) -> Result<Tensor> {
        let (b, d) = x.dims2()?;
        let qkv = self.qkv.forward(&layer_norm_no_bias(x, &self.norm1)?)?;
        let qkv = qkv
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut y = Vec::with_capacity(b * d);
        let mut row = 0;
        for cache in caches.iter_mut() {
            let n = cache.batch();
            y.extend(cache.attend(layer, &qkv[row * 3 * d..(row + n) * 3 * d], attn));
            row += n;
        }
        let y = Tensor::from_vec(y, (b, d), x.device())?;
        let y = self.out.forward(&y)?;
        self.mlp(&(x + y)?, None)
    }
}

/// Causal attention on packed qkv (B, L, 3D) with composed ops: the fused kernel's causal oracle and
/// the path on other devices.
pub fn causal_attention_composed(
    qkv: &Tensor,
    rotary: &Rotary,
    h: usize,
    b: usize,
    l: usize,
    d: usize,
) -> Result<Tensor> {
    let dh = d / h;
    let (q, k, v) = qkv_heads(qkv, rotary, h, b, l, d)?;
    let att = (q.matmul(&k.t()?)? * (1.0 / (dh as f64).sqrt()))?;
    // A large finite negative rather than -inf: exp underflows to 0 without inf - inf = NaN.
    let mask: Vec<f32> = (0..l * l)
        .map(|ij| if ij % l > ij / l { -1e9 } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, (l, l), qkv.device())?.to_dtype(att.dtype())?;
    let att = softmax_last(&att.broadcast_add(&mask)?)?;
    Ok(att.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?)
}

/// The causal language model: embedding, pre-LN blocks, final LayerNorm and vocabulary projection.
pub struct CausalLm {
    cfg: CausalLmConfig,
    embedding: Tensor,
    rotary: Rotary,
    attn: RotaryAttention,
    blocks: Vec<Block>,
    norm_final: Tensor,
    linear: Linear,
}

impl CausalLm {
    /// Build the network, resolving weights by their public names under `vb` (e.g. `backbone`).
    pub fn new(vb: VarBuilder, cfg: &CausalLmConfig) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.hidden_size;
        let embedding = vb.get_with_hints(
            (cfg.vocab_size, d),
            "vocab_embed.embedding",
            candle_nn::Init::Const(0.0),
        )?;
        let blocks = (0..cfg.n_blocks)
            .map(|i| Block::new(vb.pp(format!("blocks.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        let vo = vb.pp("output_layer");
        Ok(Self {
            cfg: cfg.clone(),
            embedding,
            rotary: Rotary::new(cfg.head_dim(), cfg.length, vb.device())?,
            attn: RotaryAttention::causal(cfg.n_heads, cfg.head_dim(), cfg.length),
            blocks,
            norm_final: vo.get_with_hints(d, "norm_final.weight", candle_nn::Init::Const(1.0))?,
            linear: Linear::new(vo.pp("linear"), d, cfg.vocab_size, true)?,
        })
    }

    /// The architecture.
    pub fn config(&self) -> &CausalLmConfig {
        &self.cfg
    }

    /// The rotary inverse frequencies, saved as the `rotary_emb.inv_freq` buffer.
    pub fn inv_freq(&self) -> &Tensor {
        self.rotary.inv_freq()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.embedding.device()
    }

    /// Logits (B, L, V) for ids (B, L): position i predicts token i + 1 from tokens 0..=i.
    pub fn forward(&self, ids: &Tensor, dropout: Option<&mut DropoutRng>) -> Result<Tensor> {
        self.head(&self.features(ids, dropout)?)
    }

    /// The output projection: logits (..., V) from final features (..., D).
    pub fn head(&self, features: &Tensor) -> Result<Tensor> {
        self.linear.forward(features)
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let shape = ids.dims().to_vec();
        let x = self.embedding.index_select(&ids.flatten_all()?, 0)?;
        let mut s = shape;
        s.push(self.cfg.hidden_size);
        Ok(x.reshape(s)?)
    }

    /// Final features (B, L, D) of ids (B, L) u32; `dropout` enables training mode.
    pub fn features(&self, ids: &Tensor, mut dropout: Option<&mut DropoutRng>) -> Result<Tensor> {
        let (_, l) = ids.dims2()?;
        if l == 0 || l > self.cfg.length {
            return Err(Error::InvalidArgument(format!(
                "sequence length {l} must be in 1..={} (the model's length)",
                self.cfg.length
            )));
        }
        let mut x = self.embed(ids)?;
        for blk in &self.blocks {
            x = blk.forward(&x, &self.rotary, &self.attn, dropout.as_deref_mut())?;
        }
        layer_norm_no_bias(&x, &self.norm_final)
    }

    /// An empty KV cache for `batch` sequences of up to the model's length.
    pub fn new_cache(&self, batch: usize) -> KvCache {
        KvCache::new(
            self.cfg.n_blocks,
            batch,
            self.cfg.n_heads,
            self.cfg.head_dim(),
            self.cfg.length,
        )
    }

    /// Feed one token per sequence at the cache's next position; returns the logits (B, V) of the
    /// token after it. Equal to `forward` on the whole prefix, at the cost of one position.
    pub fn step(&self, cache: &mut KvCache, ids: &[u32]) -> Result<Tensor> {
        self.step_many(&mut [cache], ids)
    }

    /// `step` for several caches in one network call (continuous batching of requests that started
    /// at different times): `ids` holds the rows of each cache in turn, and so do the logits.
    pub fn step_many(&self, caches: &mut [&mut KvCache], ids: &[u32]) -> Result<Tensor> {
        let rows: usize = caches.iter().map(|c| c.batch()).sum();
        if ids.len() != rows || rows == 0 {
            return Err(Error::InvalidArgument(format!(
                "{} tokens fed to {} of {rows} sequences",
                ids.len(),
                if caches.len() == 1 {
                    "a KV cache"
                } else {
                    "KV caches"
                }
            )));
        }
        if let Some(c) = caches.iter().find(|c| c.len() >= c.capacity()) {
            return Err(Error::InvalidArgument(format!(
                "KV cache is full: {} positions (the model's length is {})",
                c.len(),
                self.cfg.length
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        let ids = Tensor::from_slice(ids, ids.len(), self.device())?;
        let mut x = self.embed(&ids)?;
        for (i, blk) in self.blocks.iter().enumerate() {
            x = blk.step(&x, caches, i, &self.attn)?;
        }
        for c in caches.iter_mut() {
            c.advance();
        }
        self.head(&layer_norm_no_bias(&x, &self.norm_final)?)
    }
}
