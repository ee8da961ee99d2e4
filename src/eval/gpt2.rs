//! GPT-2 as a GenPPL scorer: the causal LM of a Hugging Face GPT-2 directory (`config.json`,
//! `model.safetensors`), every position's logits, for the reference protocol's gpt2-large.
//!
//! Layout (HF `GPT2Model`, optionally under `transformer.` as `GPT2LMHeadModel` saves it): learned
//! token (`wte`) and position (`wpe`) embeddings; pre-LayerNorm blocks whose projections are
//! `Conv1D`s, weights stored [in, out], so `y = x W + b`; tanh GELU (`gelu_new`); a final `ln_f`;
//! the head tied to `wte` (HF ties it on load, so a stored `lm_head.weight` is ignored, as are the
//! `attn.bias` / `attn.masked_bias` mask buffers). Weights in f16 / bf16 are widened to f32.
//! Batches are right-padded: attention is causal, so real positions never see the padding.

use std::collections::HashMap;
use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The weights file of a GPT-2 directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// GPT-2 hyper-parameters from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpt2Config {
    /// Model width.
    pub n_embd: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Learned positions: the longest input.
    pub n_positions: usize,
    /// Vocabulary size (rows of `wte`).
    pub vocab_size: usize,
    /// MLP width (`n_inner`, default 4 n_embd).
    pub n_inner: usize,
    /// LayerNorm epsilon.
    pub layer_norm_epsilon: f64,
}

/// One transformer block; projection weights are [in, out].
#[derive(Debug)]
struct Block {
    ln_1: (Tensor, Tensor),
    c_attn: (Tensor, Tensor),
    attn_proj: (Tensor, Tensor),
    ln_2: (Tensor, Tensor),
    c_fc: (Tensor, Tensor),
    mlp_proj: (Tensor, Tensor),
}

/// A GPT-2 causal LM in f32, for scoring.
#[derive(Debug)]
pub struct Gpt2 {
    cfg: Gpt2Config,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: (Tensor, Tensor),
    device: Device,
    sha256: Option<String>,
}

/// An eval-model error about `path`.
fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::EvalModel(format!("{}: {what}", path.display()))
}

/// A required positive integer key of `config.json`.
fn key_usize(cfg: &Value, key: &str) -> Result<usize> {
    match cfg.get(key) {
        None | Some(Value::Null) => Err(Error::EvalModel(format!(
            "config.json has no {key} (a GPT-2 config needs it)"
        ))),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => usize::try_from(n)
                .map_err(|_| Error::EvalModel(format!("config.json {key} = {n} is too large"))),
            _ => Err(Error::EvalModel(format!(
                "config.json {key} = {v} is not a positive integer"
            ))),
        },
    }
}

impl Gpt2Config {
    /// Read the GPT-2 keys of a parsed `config.json`; settings that change the math and that this
    /// implementation lacks are refused rather than ignored.
    pub fn from_json(cfg: &Value) -> Result<Self> {
        let n_embd = key_usize(cfg, "n_embd")?;
        let n_head = key_usize(cfg, "n_head")?;
        if n_embd % n_head != 0 {
            return Err(Error::EvalModel(format!(
                "config.json: n_embd {n_embd} is not a multiple of n_head {n_head}"
            )));
        }
        let n_inner = match cfg.get("n_inner") {
            None | Some(Value::Null) => 4 * n_embd,
            Some(_) => key_usize(cfg, "n_inner")?,
        };
        let layer_norm_epsilon = match cfg.get("layer_norm_epsilon") {
            None | Some(Value::Null) => {
                return Err(Error::EvalModel(
                    "config.json has no layer_norm_epsilon (a GPT-2 config needs it)".into(),
                ));
            }
            Some(v) => match v.as_f64() {
                Some(e) if e > 0.0 => e,
                _ => {
                    return Err(Error::EvalModel(format!(
                        "config.json layer_norm_epsilon = {v} is not a positive number"
                    )));
                }
            },
        };
        if let Some(a) = cfg.get("activation_function").and_then(|v| v.as_str())
            && a != "gelu_new"
            && a != "gelu_pytorch_tanh"
        {
            return Err(Error::EvalModel(format!(
                "config.json activation_function is {a:?}; only the tanh GELU (\"gelu_new\") is supported"
            )));
        }
        if cfg.get("scale_attn_by_inverse_layer_idx") == Some(&Value::Bool(true)) {
            return Err(Error::EvalModel(
                "config.json scale_attn_by_inverse_layer_idx = true is not supported".into(),
            ));
        }
        if cfg.get("tie_word_embeddings") == Some(&Value::Bool(false)) {
            return Err(Error::EvalModel(
                "config.json tie_word_embeddings = false is not supported (GPT-2's head is wte)"
                    .into(),
            ));
        }
        if cfg.get("scale_attn_weights") == Some(&Value::Bool(false)) {
            return Err(Error::EvalModel(
                "config.json scale_attn_weights = false is not supported".into(),
            ));
        }
        Ok(Gpt2Config {
            n_embd,
            n_layer: key_usize(cfg, "n_layer")?,
            n_head,
            n_positions: key_usize(cfg, "n_positions")?,
            vocab_size: key_usize(cfg, "vocab_size")?,
            n_inner,
            layer_norm_epsilon,
        })
    }

    /// Read `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(&path, e))?;
        Self::from_json(&v).map_err(|e| match e {
            Error::EvalModel(m) => bad(dir, m),
            other => other,
        })
    }
}

/// The named tensors of a GPT-2 checkpoint, taken out one by one with their shapes checked.
struct Weights {
    map: HashMap<String, Tensor>,
    /// Tensors of other dtypes (mask buffers may be bool), by name: their dtype.
    other: HashMap<String, String>,
    prefix: &'static str,
}

impl Weights {
    /// `map` in the bare (`GPT2Model`) or `transformer.`-prefixed (`GPT2LMHeadModel`) naming.
    fn new(map: HashMap<String, Tensor>, other: HashMap<String, String>) -> Result<Self> {
        let has = |n: &str| map.contains_key(n) || other.contains_key(n);
        let prefix = if has("wte.weight") {
            ""
        } else if has("transformer.wte.weight") {
            "transformer."
        } else {
            return Err(Error::EvalModel(
                "missing tensor wte.weight (nor transformer.wte.weight): not a GPT-2 checkpoint"
                    .into(),
            ));
        };
        Ok(Weights { map, other, prefix })
    }

    /// Tensor `name` as f32 on `device`, which must have shape `dims`.
    fn take(&mut self, name: &str, dims: &[usize], device: &Device) -> Result<Tensor> {
        let full = format!("{}{name}", self.prefix);
        let Some(t) = self.map.remove(&full) else {
            return Err(Error::EvalModel(match self.other.get(&full) {
                Some(d) => format!("tensor {full} is {d}; expected float32, float16 or bfloat16"),
                None => format!("missing tensor {full}"),
            }));
        };
        if t.dims() != dims {
            return Err(Error::EvalModel(format!(
                "tensor {full} has shape {:?}, expected {dims:?}",
                t.dims()
            )));
        }
        let t = match t.dtype() {
            DType::F32 => t,
            DType::F16 | DType::BF16 => t.to_dtype(DType::F32)?,
            other => {
                return Err(Error::EvalModel(format!(
                    "tensor {full} is {other:?}; expected float32, float16 or bfloat16"
                )));
            }
        };
        Ok(t.to_device(device)?)
    }

    /// LayerNorm `name` (weight, bias) of width `d`.
    fn norm(&mut self, name: &str, d: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        Ok((
            self.take(&format!("{name}.weight"), &[d], device)?,
            self.take(&format!("{name}.bias"), &[d], device)?,
        ))
    }

    /// Conv1D `name` (weight [n_in, n_out], bias [n_out]).
    fn conv(
        &mut self,
        name: &str,
        n_in: usize,
        n_out: usize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        Ok((
            self.take(&format!("{name}.weight"), &[n_in, n_out], device)?,
            self.take(&format!("{name}.bias"), &[n_out], device)?,
        ))
    }
}

/// The float tensors of a safetensors buffer, and the names and dtypes of the others.
fn float_tensors(bytes: &[u8]) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::EvalModel(format!("not a safetensors file: {e}")))?;
    let (mut map, mut other) = (HashMap::new(), HashMap::new());
    for (name, view) in st.tensors() {
        match view.dtype() {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => {
                let t = view
                    .load(&Device::Cpu)
                    .map_err(|e| Error::EvalModel(format!("tensor {name}: {e}")))?;
                map.insert(name, t);
            }
            d => {
                other.insert(name, format!("{d:?}"));
            }
        }
    }
    Ok((map, other))
}

impl Gpt2 {
    /// Load `dir/config.json` and `dir/model.safetensors` onto `device`, and hash the weights
    /// file (read whole, so the hash is of exactly the bytes loaded).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg = Gpt2Config::load(dir)?;
        let path = dir.join(WEIGHTS_FILE);
        if !path.is_file() {
            return Err(bad(&path, "no such file (a GPT-2 directory needs it)"));
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let in_path = |e: Error| match e {
            Error::EvalModel(m) => bad(&path, m),
            other => other,
        };
        let (map, other) = float_tensors(&bytes).map_err(in_path)?;
        drop(bytes);
        let mut model = Self::build(cfg, Weights::new(map, other).map_err(in_path)?, device)
            .map_err(in_path)?;
        model.sha256 = Some(sha256);
        Ok(model)
    }

    /// Build from named f32 / f16 / bf16 tensors (either naming); every tensor the config implies
    /// must be there, others are ignored.
    pub fn from_tensors(
        cfg: Gpt2Config,
        map: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        Self::build(cfg, Weights::new(map, HashMap::new())?, device)
    }

    /// Take the tensors the config implies out of `w`.
    fn build(cfg: Gpt2Config, mut w: Weights, device: &Device) -> Result<Self> {
        let (d, f) = (cfg.n_embd, cfg.n_inner);
        let wte = w.take("wte.weight", &[cfg.vocab_size, d], device)?;
        let wpe = w.take("wpe.weight", &[cfg.n_positions, d], device)?;
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("h.{i}");
            blocks.push(Block {
                ln_1: w.norm(&format!("{p}.ln_1"), d, device)?,
                c_attn: w.conv(&format!("{p}.attn.c_attn"), d, 3 * d, device)?,
                attn_proj: w.conv(&format!("{p}.attn.c_proj"), d, d, device)?,
                ln_2: w.norm(&format!("{p}.ln_2"), d, device)?,
                c_fc: w.conv(&format!("{p}.mlp.c_fc"), d, f, device)?,
                mlp_proj: w.conv(&format!("{p}.mlp.c_proj"), f, d, device)?,
            });
        }
        let ln_f = w.norm("ln_f", d, device)?;
        Ok(Gpt2 {
            cfg,
            wte,
            wpe,
            blocks,
            ln_f,
            device: device.clone(),
            sha256: None,
        })
    }

    /// sha256 (hex) of the `model.safetensors` it was loaded from ([`Self::load`] only).
    pub fn weights_sha256(&self) -> Option<&str> {
        self.sha256.as_deref()
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &Gpt2Config {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Final-LayerNorm hidden states (b, t, n_embd) of token ids `ids` (b, t), u32.
    pub fn hidden(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t == 0 {
            return Err(Error::InvalidArgument("empty sequence".into()));
        }
        if t > self.cfg.n_positions {
            return Err(Error::InvalidArgument(format!(
                "sequence of {t} tokens exceeds GPT-2's {} positions",
                self.cfg.n_positions
            )));
        }
        let max_id = ids.max_all()?.to_dtype(DType::U32)?.to_scalar::<u32>()?;
        if max_id as usize >= self.cfg.vocab_size {
            return Err(Error::InvalidArgument(format!(
                "token id {max_id} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        let eps = self.cfg.layer_norm_epsilon as f32;
        let d = self.cfg.n_embd;
        let tok = self
            .wte
            .embedding(&ids.flatten_all()?)?
            .reshape((b, t, d))?;
        let mut x = tok.broadcast_add(&self.wpe.narrow(0, 0, t)?)?;
        let mask = causal_mask(t, &self.device)?;
        for blk in &self.blocks {
            let h = candle_nn::ops::layer_norm(&x, &blk.ln_1.0, &blk.ln_1.1, eps)?;
            x = (x + self.attention(blk, &h, &mask, b, t)?)?;
            let h = candle_nn::ops::layer_norm(&x, &blk.ln_2.0, &blk.ln_2.1, eps)?;
            let m = conv1d(&conv1d(&h, &blk.c_fc)?.gelu()?, &blk.mlp_proj)?;
            x = (x + m)?;
        }
        Ok(candle_nn::ops::layer_norm(
            &x,
            &self.ln_f.0,
            &self.ln_f.1,
            eps,
        )?)
    }

    /// Causal self-attention of one block on normed input `h` (b, t, d).
    fn attention(
        &self,
        blk: &Block,
        h: &Tensor,
        mask: &Tensor,
        b: usize,
        t: usize,
    ) -> Result<Tensor> {
        let (d, nh) = (self.cfg.n_embd, self.cfg.n_head);
        let hd = d / nh;
        let qkv = conv1d(h, &blk.c_attn)?;
        // c_attn's output is [q | k | v], each d wide, heads contiguous within each.
        let heads = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, i * d, d)?
                .reshape((b, t, nh, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let scale = 1.0 / (hd as f64).sqrt();
        let att = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        conv1d(&y, &blk.attn_proj)
    }

    /// Logits (..., vocab) of final hidden states (..., n_embd): the head is `wte`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let dims = hidden.dims().to_vec();
        let Some((&k, lead)) = dims.split_last() else {
            return Err(Error::InvalidArgument("logits of a scalar".into()));
        };
        let rows: usize = lead.iter().product();
        let y = hidden
            .contiguous()?
            .reshape((rows, k))?
            .matmul(&self.wte.t()?)?;
        let mut out = lead.to_vec();
        out.push(self.cfg.vocab_size);
        Ok(y.reshape(out)?)
    }

    /// Logits (b, t, vocab) for every position of `ids` (b, t).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.logits(&self.hidden(ids)?)
    }
}

/// HF's Conv1D: `x (..., in) W (in, out) + b` as one 2-D product.
fn conv1d(x: &Tensor, (w, bias): &(Tensor, Tensor)) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let Some((&k, lead)) = dims.split_last() else {
        return Err(Error::InvalidArgument("Conv1D of a scalar".into()));
    };
    let rows: usize = lead.iter().product();
    let y = x
        .contiguous()?
        .reshape((rows, k))?
        .matmul(w)?
        .broadcast_add(bias)?;
    let mut out = lead.to_vec();
    out.push(w.dim(1)?);
    Ok(y.reshape(out)?)
}

/// (t, t) additive mask: 0 on and below the diagonal, -inf above.
fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(m, (t, t), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> Value {
        json!({"n_embd": 8, "n_layer": 1, "n_head": 2, "n_positions": 4, "vocab_size": 5,
               "layer_norm_epsilon": 1e-5, "n_inner": null, "activation_function": "gelu_new"})
    }

    #[test]
    fn config_keys_are_read_and_checked() {
        let c = Gpt2Config::from_json(&cfg()).unwrap();
        assert_eq!(c.n_inner, 32);
        assert_eq!(c.vocab_size, 5);
        for key in [
            "n_embd",
            "n_layer",
            "n_head",
            "n_positions",
            "vocab_size",
            "layer_norm_epsilon",
        ] {
            let mut v = cfg();
            v.as_object_mut().unwrap().remove(key);
            let e = Gpt2Config::from_json(&v).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let mut v = cfg();
        v["n_head"] = json!(3);
        assert!(Gpt2Config::from_json(&v).is_err());
        v = cfg();
        v["n_layer"] = json!("two");
        assert!(
            Gpt2Config::from_json(&v)
                .unwrap_err()
                .to_string()
                .contains("n_layer")
        );
        v = cfg();
        v["activation_function"] = json!("relu");
        assert!(Gpt2Config::from_json(&v).is_err());
        v = cfg();
        v["tie_word_embeddings"] = json!(false);
        assert!(Gpt2Config::from_json(&v).is_err());
    }

    #[test]
    fn conv1d_is_x_w_plus_b() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[[1f32, 2.0]]], &dev).unwrap();
        let w = Tensor::new(&[[1f32, 0.0, 3.0], [0.0, 1.0, -1.0]], &dev).unwrap();
        let b = Tensor::new(&[0.5f32, 0.0, 1.0], &dev).unwrap();
        let y = conv1d(&x, &(w, b)).unwrap();
        assert_eq!(y.dims(), [1, 1, 3]);
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [1.5, 2.0, 2.0]
        );
    }
}
