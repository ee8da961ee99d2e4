//! A quantized Llama for scoring: reads a GGUF (llama.cpp layout) with candle's `gguf_file`
//! reader and returns logits for every position, which perplexity needs (candle-transformers'
//! `quantized_llama` returns only the last position and demands `output.weight`).
//!
//! Rotary: llama.cpp's converter permutes the q / k weights so that the rotation acts on adjacent
//! pairs (2i, 2i+1), the "interleaved" form (`candle_nn::rotary_emb::rope_i`); the HF half-split
//! form on these weights gives perplexities in the thousands on real prose.
//! Weights are used as stored ([`WeightMode::Quantized`]) or dequantized to f32 once at load
//! ([`WeightMode::Dequantized`], much faster on x86, where candle has no SIMD Q4_1 kernel).
//! Batches are right-padded: attention is causal, so real positions never see the padding.

use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{D, DType, Device, Module, Tensor};

use crate::error::{Error, Result};

/// Llama hyper-parameters from the GGUF metadata (`llama.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Model width.
    pub d_model: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key / value heads (grouped-query attention when fewer than `n_head`).
    pub n_kv_head: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size (rows of `token_embd`).
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// Rotary base frequency.
    pub rope_theta: f64,
    /// Training context length.
    pub context_length: usize,
}

/// How the projection weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightMode {
    /// As stored (Q4_1 / Q8_0 blocks); activations are quantized to 8 bits per matmul, as in
    /// llama.cpp. Small, but candle has no x86 SIMD kernel for Q4_1, so it is slow there.
    Quantized,
    /// The stored weights dequantized to f32 once at load (~4x the memory, SmolLM2: ~0.55 GB)
    /// and multiplied with f32 GEMM: ~10x faster on x86 CPUs.
    Dequantized,
}

/// Which rotary pairing the q / k weights expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): llama.cpp's GGUF layout (the default).
    Interleaved,
    /// Halves (i, i + d/2): HF's `rotate_half` layout (wrong for GGUF weights; kept for tests).
    HalfSplit,
}

/// One transformer block.
#[derive(Debug)]
struct Block {
    attn_norm: Tensor,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    ffn_norm: Tensor,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
}

/// A Llama-architecture causal LM with quantized weights, for scoring.
#[derive(Debug)]
pub struct QLlama {
    cfg: LlamaConfig,
    embed: QMatMul,
    blocks: Vec<Block>,
    norm: Tensor,
    head: QMatMul,
    rope: RopeStyle,
    mode: WeightMode,
    device: Device,
}

/// Wrap a candle error with what was being read.
fn ctx(what: &str) -> impl Fn(candle_core::Error) -> Error + '_ {
    move |e| Error::EvalModel(format!("{what}: {e}"))
}

/// Prefix an eval-model or tokenizer error with the file it came from.
pub(crate) fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::EvalModel(m) | Error::Tokenizer(m) => {
            Error::EvalModel(format!("{}: {m}", path.display()))
        }
        other => Error::EvalModel(format!("{}: {other}", path.display())),
    }
}

/// A metadata integer.
fn meta_usize(c: &Content, key: &str) -> Result<usize> {
    let v = c
        .metadata
        .get(key)
        .ok_or_else(|| Error::EvalModel(format!("GGUF metadata has no {key}")))?;
    Ok(v.to_u32().map_err(ctx(key))? as usize)
}

/// A metadata float.
fn meta_f64(c: &Content, key: &str) -> Result<f64> {
    let v = c
        .metadata
        .get(key)
        .ok_or_else(|| Error::EvalModel(format!("GGUF metadata has no {key}")))?;
    Ok(v.to_f32().map_err(ctx(key))? as f64)
}

/// A tensor of the GGUF, quantized as stored.
fn read_q<R: std::io::Read + std::io::Seek>(
    c: &Content,
    r: &mut R,
    name: &str,
    device: &Device,
) -> Result<QTensor> {
    c.tensor(r, name, device).map_err(ctx(name))
}

/// A (small) tensor of the GGUF, dequantized to f32.
fn read_vec<R: std::io::Read + std::io::Seek>(
    c: &Content,
    r: &mut R,
    name: &str,
    device: &Device,
) -> Result<Tensor> {
    read_q(c, r, name, device)?
        .dequantize(device)
        .map_err(ctx(name))
}

/// A weight matrix of the GGUF as a `QMatMul`, quantized or dequantized to f32.
fn read_mm<R: std::io::Read + std::io::Seek>(
    c: &Content,
    r: &mut R,
    name: &str,
    device: &Device,
    mode: WeightMode,
) -> Result<QMatMul> {
    let q = read_q(c, r, name, device)?;
    match mode {
        WeightMode::Quantized => QMatMul::from_qtensor(q).map_err(ctx(name)),
        WeightMode::Dequantized => Ok(QMatMul::Tensor(q.dequantize(device).map_err(ctx(name))?)),
    }
}

impl LlamaConfig {
    /// Read the `llama.*` keys; the architecture must be "llama".
    pub fn from_gguf(c: &Content) -> Result<Self> {
        let arch = c
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .map(|s| s.as_str())
            .unwrap_or("");
        if arch != "llama" {
            return Err(Error::EvalModel(format!(
                "general.architecture is {arch:?}; only \"llama\" is supported"
            )));
        }
        let d_model = meta_usize(c, "llama.embedding_length")?;
        let n_head = meta_usize(c, "llama.attention.head_count")?;
        let n_kv_head = match c.metadata.get("llama.attention.head_count_kv") {
            Some(_) => meta_usize(c, "llama.attention.head_count_kv")?,
            None => n_head,
        };
        if n_head == 0 || n_kv_head == 0 || d_model % n_head != 0 || n_head % n_kv_head != 0 {
            return Err(Error::EvalModel(format!(
                "inconsistent heads: width {d_model}, {n_head} heads, {n_kv_head} KV heads"
            )));
        }
        let head_dim = d_model / n_head;
        if let Some(v) = c.metadata.get("llama.rope.dimension_count") {
            let rd = v.to_u32().map_err(ctx("llama.rope.dimension_count"))? as usize;
            if rd != head_dim {
                return Err(Error::EvalModel(format!(
                    "partial rotary ({rd} of {head_dim} dims) is not supported"
                )));
            }
        }
        if head_dim % 2 != 0 {
            return Err(Error::EvalModel(format!("odd head width {head_dim}")));
        }
        let vocab = match c.tensor_infos.get("token_embd.weight") {
            Some(t) => t.shape.dims2().map_err(ctx("token_embd.weight"))?.0,
            None => return Err(Error::EvalModel("GGUF has no token_embd.weight".into())),
        };
        Ok(LlamaConfig {
            n_layer: meta_usize(c, "llama.block_count")?,
            d_model,
            n_head,
            n_kv_head,
            head_dim,
            vocab,
            rms_eps: meta_f64(c, "llama.attention.layer_norm_rms_epsilon")?,
            rope_theta: match c.metadata.get("llama.rope.freq_base") {
                Some(_) => meta_f64(c, "llama.rope.freq_base")?,
                None => 10_000.0,
            },
            context_length: meta_usize(c, "llama.context_length")?,
        })
    }
}

impl QLlama {
    /// Read the header of the GGUF at `path` and load the model from it onto the CPU.
    pub fn load(path: &Path, mode: WeightMode) -> Result<(Self, Content)> {
        let mut f = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let content = Content::read(&mut f).map_err(ctx(&path.display().to_string()))?;
        let model =
            Self::from_gguf(&content, &mut f, &Device::Cpu, mode).map_err(|e| in_file(path, e))?;
        Ok((model, content))
    }

    /// Load the weights described by `c` from `r`.
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        c: &Content,
        r: &mut R,
        device: &Device,
        mode: WeightMode,
    ) -> Result<Self> {
        let cfg = LlamaConfig::from_gguf(c)?;
        let embed = read_mm(c, r, "token_embd.weight", device, mode)?;
        let norm = read_vec(c, r, "output_norm.weight", device)?;
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            let mut mm = |n: &str| -> Result<QMatMul> {
                read_mm(c, r, &format!("{p}.{n}.weight"), device, mode)
            };
            blocks.push(Block {
                wq: mm("attn_q")?,
                wk: mm("attn_k")?,
                wv: mm("attn_v")?,
                wo: mm("attn_output")?,
                gate: mm("ffn_gate")?,
                up: mm("ffn_up")?,
                down: mm("ffn_down")?,
                attn_norm: read_vec(c, r, &format!("{p}.attn_norm.weight"), device)?,
                ffn_norm: read_vec(c, r, &format!("{p}.ffn_norm.weight"), device)?,
            });
        }
        // Tied head: llama.cpp falls back to token_embd when output.weight is absent.
        let head = if c.tensor_infos.contains_key("output.weight") {
            read_mm(c, r, "output.weight", device, mode)?
        } else {
            embed.clone()
        };
        Ok(QLlama {
            cfg,
            embed,
            blocks,
            norm,
            head,
            rope: RopeStyle::Interleaved,
            mode,
            device: device.clone(),
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// How the weights are held.
    pub fn weight_mode(&self) -> WeightMode {
        self.mode
    }

    /// The rotary pairing in use.
    pub fn rope_style(&self) -> RopeStyle {
        self.rope
    }

    /// Use another rotary pairing (only to show that the GGUF layout needs the interleaved one).
    pub fn set_rope_style(&mut self, style: RopeStyle) {
        self.rope = style;
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// cos / sin tables (t, head_dim / 2) for positions 0..t.
    fn rope_tables(&self, t: usize) -> Result<(Tensor, Tensor)> {
        let half = self.cfg.head_dim / 2;
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        let inv: Vec<f64> = (0..half)
            .map(|i| {
                self.cfg
                    .rope_theta
                    .powf(-((2 * i) as f64) / self.cfg.head_dim as f64)
            })
            .collect();
        for pos in 0..t {
            for &f in &inv {
                let a = pos as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok((
            Tensor::from_vec(cos, (t, half), &self.device)?,
            Tensor::from_vec(sin, (t, half), &self.device)?,
        ))
    }

    /// Final-norm hidden states (b, t, d_model) of token ids `ids` (b, t), u32.
    pub fn hidden(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t == 0 {
            return Err(Error::InvalidArgument("empty sequence".into()));
        }
        if t > self.cfg.context_length {
            return Err(Error::InvalidArgument(format!(
                "sequence of {t} tokens exceeds the model's context of {}",
                self.cfg.context_length
            )));
        }
        let max_id = ids.max_all()?.to_dtype(DType::U32)?.to_scalar::<u32>()?;
        if max_id as usize >= self.cfg.vocab {
            return Err(Error::InvalidArgument(format!(
                "token id {max_id} is outside the vocabulary of {}",
                self.cfg.vocab
            )));
        }
        let (cos, sin) = self.rope_tables(t)?;
        let mask = causal_mask(t, &self.device)?;
        let eps = self.cfg.rms_eps as f32;
        let mut x = self.embed.embedding(ids)?;
        for blk in &self.blocks {
            let h = candle_nn::ops::rms_norm(&x, &blk.attn_norm, eps)?;
            let a = self.attention(blk, &h, &cos, &sin, &mask, b, t)?;
            x = (x + a)?;
            let h = candle_nn::ops::rms_norm(&x, &blk.ffn_norm, eps)?;
            let g = candle_nn::ops::silu(&linear(&blk.gate, &h)?)?;
            let m = linear(&blk.down, &(g * linear(&blk.up, &h)?)?)?;
            x = (x + m)?;
        }
        Ok(candle_nn::ops::rms_norm(&x, &self.norm, eps)?)
    }

    /// Causal self-attention of one block on normed input `h` (b, t, d).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        blk: &Block,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        b: usize,
        t: usize,
    ) -> Result<Tensor> {
        let (nh, nkv, hd) = (self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim);
        let heads = |w: &QMatMul, n: usize| -> Result<Tensor> {
            Ok(linear(w, h)?
                .reshape((b, t, n, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let rope = |x: &Tensor| -> Result<Tensor> {
            Ok(match self.rope {
                RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(x, cos, sin)?,
                RopeStyle::HalfSplit => candle_nn::rotary_emb::rope(x, cos, sin)?,
            })
        };
        let q = rope(&heads(&blk.wq, nh)?)?;
        let k = repeat_kv(rope(&heads(&blk.wk, nkv)?)?, nh / nkv)?;
        let v = repeat_kv(heads(&blk.wv, nkv)?, nh / nkv)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let att = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        linear(&blk.wo, &y)
    }

    /// Logits (..., vocab) of final hidden states (..., d_model).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        linear(&self.head, hidden)
    }

    /// Logits (b, t, vocab) for every position of `ids` (b, t).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.logits(&self.hidden(ids)?)
    }
}

/// `x (..., k) W^T` as one 2-D product.
fn linear(w: &QMatMul, x: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let Some((&k, lead)) = dims.split_last() else {
        return Err(Error::InvalidArgument("linear of a scalar".into()));
    };
    let rows: usize = lead.iter().product();
    let y = w.forward(&x.contiguous()?.reshape((rows, k))?)?;
    let n = y.dim(1)?;
    let mut out = lead.to_vec();
    out.push(n);
    Ok(y.reshape(out)?)
}

/// KV heads (b, kv, t, hd) repeated to (b, kv * n_rep, t, hd); query head h uses KV head h / n_rep.
fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, kv, t, hd) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .broadcast_as((b, kv, n_rep, t, hd))?
        .reshape((b, kv * n_rep, t, hd))?)
}

/// (t, t) additive mask: 0 on and below the diagonal, -inf above.
fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(m, (t, t), device)?)
}

/// Row-wise log-softmax of `logits` (n, v) gathered at `targets` (n), as f32 values.
pub fn target_log_probs(logits: &Tensor, targets: &[u32]) -> Result<Vec<f32>> {
    let n = targets.len();
    let idx = Tensor::from_slice(targets, (n, 1), logits.device())?;
    let lsm = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok(lsm.gather(&idx, 1)?.squeeze(1)?.to_vec1::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_and_repeat_shapes() {
        let m = causal_mask(3, &Device::Cpu).unwrap();
        let v = m.to_vec2::<f32>().unwrap();
        assert_eq!(v[0][0], 0.0);
        assert!(v[0][1].is_infinite() && v[1][2].is_infinite());
        assert_eq!(v[2], [0.0, 0.0, 0.0]);
        // kv head j serves query heads j*n_rep .. (j+1)*n_rep.
        let x = Tensor::arange(0f32, 2.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 1, 1))
            .unwrap();
        let r = repeat_kv(x, 3).unwrap().flatten_all().unwrap();
        assert_eq!(r.to_vec1::<f32>().unwrap(), [0., 0., 0., 1., 1., 1.]);
    }

    #[test]
    fn target_log_probs_match_by_hand() {
        let l = Tensor::new(&[[0f32, 0.0], [0.0, 2f32.ln()]], &Device::Cpu).unwrap();
        let lp = target_log_probs(&l, &[0, 1]).unwrap();
        assert!((lp[0] - 0.5f32.ln()).abs() < 1e-6);
        assert!((lp[1] - (2.0f32 / 3.0).ln()).abs() < 1e-6);
    }
}
