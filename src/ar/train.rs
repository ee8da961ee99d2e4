//! Training of the autoregressive baseline beside the diffusion `Trainer`: the same AdamW with
//! warmup and clipping, EMA, random streams, data order and checkpoint layout, with next-token
//! cross-entropy on the same packed rows (predict tokens 1..L from 0..L-1; MASK is never a target
//! and is excluded from the softmax, so the model is a distribution over real tokens).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Checkpoint, CheckpointMeta, CheckpointTensors, DataInfo};
use crate::config::RunConfig;
use crate::data::PackedTokens;
use crate::nn::ops::nll::weighted_nll;
use crate::nn::{CausalLm, CausalLmConfig, DitConfig, DropoutRng, Ema, init::init_dit};
use crate::optim::{AdamW, AdamWParams, global_norm, warmup_lr};
use crate::process::ProcessKind;
use crate::train::permutation;
use crate::train::{StepStats, TrainRngs};
use crate::{Error, Result};

/// The name a process has in configs and checkpoints ("mdlm", "ar").
pub fn process_name(kind: ProcessKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{kind:?}"))
}

/// Refuse a checkpoint that does not hold an AR model.
pub fn check_is_ar(ck: &Checkpoint) -> Result<()> {
    if ck.meta.process != ProcessKind::Ar {
        return Err(Error::ckpt(
            &ck.dir,
            format!(
                "holds a diffusion model (process '{}'), not an autoregressive ('ar') one",
                process_name(ck.meta.process)
            ),
        ));
    }
    Ok(())
}

/// A frozen causal LM from plain tensors; every weight must be present with the right shape.
pub fn lm_from_tensors(
    w: &HashMap<String, Tensor>,
    arch: &DitConfig,
    origin: &Path,
) -> Result<CausalLm> {
    let vb = VarBuilder::from_tensors(w.clone(), DType::F32, &crate::runtime::device());
    CausalLm::new(vb, &CausalLmConfig::from_dit(arch))
        .map_err(|e| Error::ckpt(origin, format!("weights do not fit the AR model: {e}")))
}

/// The causal LM of an AR checkpoint, from its EMA weights (if present and `use_ema`) or raw ones.
pub fn lm_from_checkpoint(ck: &Checkpoint, use_ema: bool) -> Result<CausalLm> {
    check_is_ar(ck)?;
    let w = match (&ck.ema, use_ema) {
        (Some(e), true) => e,
        _ => &ck.weights,
    };
    lm_from_tensors(w, &ck.meta.model, &ck.dir)
}

/// A fresh causal LM with trainable variables, initialised as the DiT is (uniform fan-in bounds,
/// norms one, output projection zero) from `seed`.
pub fn init_lm(cfg: &CausalLmConfig, seed: u64) -> Result<(VarMap, CausalLm)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &crate::runtime::device());
    let model = CausalLm::new(vb, cfg)?;
    init_dit(&varmap, seed)?;
    Ok((varmap, model))
}

/// Per-target next-token NLL (B (L-1),) of rows (B x L, flat) and the number of real targets
/// (MASK targets, which packed data never holds, get weight 0).
pub fn next_token_losses(
    model: &CausalLm,
    rows: &[u32],
    b: usize,
    l: usize,
    mask_id: u32,
    dropout: Option<&mut DropoutRng>,
) -> Result<(Tensor, usize)> {
    if l < 2 || rows.len() != b * l {
        return Err(Error::InvalidArgument(format!(
            "next-token loss needs rows of at least 2 tokens, got {} ids for {b} rows of {l}",
            rows.len()
        )));
    }
    let dev = model.device().clone();
    let mut input = Vec::with_capacity(b * (l - 1));
    let mut target = Vec::with_capacity(b * (l - 1));
    for r in rows.chunks_exact(l) {
        input.extend_from_slice(&r[..l - 1]);
        target.extend_from_slice(&r[1..]);
    }
    let weights: Vec<f32> = target
        .iter()
        .map(|&t| if t == mask_id { 0.0 } else { 1.0 })
        .collect();
    let count = weights.iter().filter(|&&w| w > 0.0).count();
    // The last position predicts nothing inside the row, so it is never computed.
    let x = Tensor::from_vec(input, (b, l - 1), &dev)?;
    let feats = model.features(&x, dropout)?;
    let d = feats.dim(2)?;
    let logits = model.head(&feats.reshape((b * (l - 1), d))?)?;
    let n = target.len();
    let losses = weighted_nll(
        &logits,
        &Tensor::from_vec(target, n, &dev)?,
        &Tensor::from_vec(weights, n, &dev)?,
        Some(mask_id as usize).filter(|&m| m < model.config().vocab_size),
    )?;
    Ok((losses, count))
}

/// An exact validation NLL.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct NllStats {
    /// Mean NLL per predicted token (nats); tokens 1..L of each row are predicted.
    pub nll: f64,
    /// Standard error of the mean over rows.
    pub stderr: f64,
    /// Tokens scored.
    pub tokens: u64,
    /// exp(nll).
    pub perplexity: f64,
}

/// Exact NLL per token of `model` on the first `max_rows` rows of `data`.
pub fn ar_nll(
    model: &CausalLm,
    data: &PackedTokens,
    max_rows: usize,
    batch_size: usize,
    mask_id: u32,
) -> Result<NllStats> {
    let n = data.n_rows().min(max_rows);
    let l = data.row_len();
    if n == 0 || batch_size == 0 {
        return Err(Error::InvalidArgument(
            "NLL needs at least one row and a positive batch size".into(),
        ));
    }
    let (mut total, mut count) = (0f64, 0usize);
    let mut per_row = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let b = batch_size.min(n - start);
        let mut rows = vec![0u32; b * l];
        for r in 0..b {
            data.row_into(start + r, &mut rows[r * l..(r + 1) * l])?;
        }
        let (losses, c) = next_token_losses(model, &rows, b, l, mask_id, None)?;
        let losses = losses.to_vec1::<f32>()?;
        for (r, chunk) in losses.chunks_exact(l - 1).enumerate() {
            let s: f64 = chunk.iter().map(|&x| x as f64).sum();
            let k = rows[r * l + 1..(r + 1) * l]
                .iter()
                .filter(|&&t| t != mask_id)
                .count();
            per_row.push(s / k.max(1) as f64);
            total += s;
        }
        count += c;
        start += b;
    }
    let nll = total / count.max(1) as f64;
    let m = per_row.iter().sum::<f64>() / per_row.len() as f64;
    let var = per_row.iter().map(|x| (x - m).powi(2)).sum::<f64>()
        / per_row.len().saturating_sub(1).max(1) as f64;
    Ok(NllStats {
        nll,
        stderr: (var / per_row.len() as f64).sqrt(),
        tokens: count as u64,
        perplexity: nll.exp(),
    })
}

/// A causal LM being trained: variables, EMA, optimizer, streams, counters.
pub struct ArTrainer {
    /// Run configuration.
    pub cfg: RunConfig,
    /// The `[model]` sizes resolved for the data, as checkpoints record them.
    pub arch: DitConfig,
    /// The MASK id of the data: never a target, excluded from the softmax.
    pub mask_id: u32,
    /// The network (its weights are the variables).
    pub model: CausalLm,
    names: Vec<String>,
    vars: Vec<Var>,
    /// EMA of the weights.
    pub ema: Ema,
    /// Optimizer.
    pub opt: AdamW,
    /// Optimizer steps done.
    pub step: u64,
    /// Tokens trained on.
    pub tokens_seen: u64,
    /// Random streams (the time and noise streams are unused).
    pub rngs: TrainRngs,
    /// Seconds spent training (across resumes).
    pub train_seconds: f64,
    perm: Vec<usize>,
}

impl ArTrainer {
    /// A fresh network initialised from `cfg.train.seed`.
    pub fn new(cfg: &RunConfig, arch: &DitConfig, mask_id: u32) -> Result<Self> {
        let (varmap, model) = init_lm(&CausalLmConfig::from_dit(arch), cfg.train.seed)?;
        Self::assemble(cfg, arch, mask_id, varmap, model)
    }

    fn assemble(
        cfg: &RunConfig,
        arch: &DitConfig,
        mask_id: u32,
        varmap: VarMap,
        model: CausalLm,
    ) -> Result<Self> {
        let (names, vars) = {
            let data = varmap
                .data()
                .lock()
                .map_err(|_| Error::Config("variable map lock poisoned".into()))?;
            let mut names: Vec<String> = data.keys().cloned().collect();
            names.sort();
            let vars: Vec<Var> = names.iter().map(|n| data[n].clone()).collect();
            (names, vars)
        };
        let t = &cfg.train;
        let opt = AdamW::new(
            &vars,
            AdamWParams {
                beta1: t.beta1,
                beta2: t.beta2,
                eps: t.adam_eps,
                weight_decay: t.weight_decay,
            },
        );
        Ok(Self {
            cfg: cfg.clone(),
            arch: arch.clone(),
            mask_id,
            model,
            ema: Ema::new(&vars, t.ema_decay)?,
            names,
            vars,
            opt,
            step: 0,
            tokens_seen: 0,
            rngs: TrainRngs::new(t.seed),
            train_seconds: 0.0,
            perm: Vec::new(),
        })
    }

    /// Continue from an AR checkpoint: weights, EMA, optimizer state, streams and counters.
    pub fn from_checkpoint(ck: &Checkpoint, cfg: &RunConfig) -> Result<Self> {
        check_is_ar(ck)?;
        let m = &ck.meta;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &crate::runtime::device());
        let model = CausalLm::new(vb, &CausalLmConfig::from_dit(&m.model))?;
        let mut tr = Self::assemble(cfg, &m.model, m.data.mask_id, varmap, model)?;
        let optim = ck.optim()?;
        let ema = ck
            .ema
            .as_ref()
            .ok_or_else(|| Error::ckpt(&ck.dir, "no EMA weights: cannot resume"))?;
        let get = |map: &HashMap<String, Tensor>, key: &str| -> Result<Tensor> {
            map.get(key)
                .cloned()
                .ok_or_else(|| Error::ckpt(&ck.dir, format!("missing tensor '{key}'")))
        };
        for (i, name) in tr.names.iter().enumerate() {
            let w = get(&ck.weights, name)?;
            if w.shape() != tr.vars[i].shape() {
                return Err(Error::ckpt(
                    &ck.dir,
                    format!("tensor '{name}' has shape {:?}", w.shape()),
                ));
            }
            tr.vars[i].set(&w)?;
            tr.ema.shadow[i] = get(ema, name)?;
            tr.opt.m[i] = get(&optim, &format!("m.{name}"))?
                .flatten_all()?
                .to_vec1::<f32>()?;
            tr.opt.v[i] = get(&optim, &format!("v.{name}"))?
                .flatten_all()?
                .to_vec1::<f32>()?;
        }
        tr.opt.step = m.step;
        tr.ema.num_updates = m.ema_updates;
        tr.step = m.step;
        tr.tokens_seen = m.tokens_seen;
        tr.train_seconds = m.train_seconds;
        tr.rngs = serde_json::from_value(m.rng.clone())
            .map_err(|e| Error::ckpt(&ck.dir, format!("corrupt random state: {e}")))?;
        Ok(tr)
    }

    /// Next `b` rows of the shuffled training data, flattened.
    fn next_rows(&mut self, data: &PackedTokens, b: usize) -> Result<Vec<u32>> {
        let (n, l) = (data.n_rows(), data.row_len());
        if n == 0 {
            return Err(Error::Data("training split has no rows".into()));
        }
        let mut out = vec![0u32; b * l];
        for r in 0..b {
            if self.perm.len() != n || self.rngs.pos >= n {
                if self.rngs.pos >= n {
                    self.rngs.epoch += 1;
                    self.rngs.pos = 0;
                }
                self.perm = permutation(self.rngs.data_seed, self.rngs.epoch, n);
            }
            data.row_into(self.perm[self.rngs.pos], &mut out[r * l..(r + 1) * l])?;
            self.rngs.pos += 1;
        }
        Ok(out)
    }

    /// One optimizer step over `grad_accum` micro-batches: accumulate the mean next-token loss,
    /// check finiteness, clip, AdamW, EMA.
    pub fn train_step(&mut self, data: &PackedTokens) -> Result<StepStats> {
        let t = self.cfg.train.clone();
        let (b, l) = (t.batch_size, data.row_len());
        let mut acc: Option<Vec<Tensor>> = None;
        let mut loss_sum = 0.0;
        for _ in 0..t.grad_accum {
            let rows = self.next_rows(data, b)?;
            let mut drop = DropoutRng {
                p: self.arch.dropout,
                rng: &mut self.rngs.dropout,
            };
            let (losses, count) =
                next_token_losses(&self.model, &rows, b, l, self.mask_id, Some(&mut drop))?;
            let loss = (losses.sum_all()? / count.max(1) as f64)?;
            let lv = loss.to_scalar::<f32>()? as f64;
            if !lv.is_finite() {
                return Err(Error::NonFinite {
                    what: "loss",
                    step: self.step + 1,
                });
            }
            loss_sum += lv;
            let grads = (loss / t.grad_accum as f64)?.backward()?;
            let gs = self
                .vars
                .iter()
                .map(|v| match grads.get(v.as_tensor()) {
                    Some(g) => Ok(g.clone()),
                    None => v.as_tensor().zeros_like(),
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            acc = Some(match acc {
                None => gs,
                Some(a) => a
                    .iter()
                    .zip(&gs)
                    .map(|(x, y)| x + y)
                    .collect::<candle_core::Result<_>>()?,
            });
        }
        let grads = acc.ok_or_else(|| Error::Config("grad_accum must be at least 1".into()))?;
        let norm = global_norm(&grads)?;
        if !norm.is_finite() {
            return Err(Error::NonFinite {
                what: "gradient",
                step: self.step + 1,
            });
        }
        let scale = if t.grad_clip > 0.0 && norm > t.grad_clip {
            t.grad_clip / norm
        } else {
            1.0
        };
        let lr = warmup_lr(t.lr, t.warmup_steps, self.step);
        self.opt.step(&self.vars, &grads, lr, scale)?;
        self.ema.update(&self.vars)?;
        self.step += 1;
        let tokens = (b * l * t.grad_accum) as u64;
        self.tokens_seen += tokens;
        Ok(StepStats {
            step: self.step,
            loss: loss_sum / t.grad_accum as f64,
            grad_norm: norm,
            lr,
            tokens,
        })
    }

    /// Current raw weights by name.
    pub fn weights(&self) -> HashMap<String, Tensor> {
        self.names
            .iter()
            .zip(&self.vars)
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// EMA weights by name.
    pub fn ema_weights(&self) -> HashMap<String, Tensor> {
        self.names
            .iter()
            .cloned()
            .zip(self.ema.shadow.iter().cloned())
            .collect()
    }

    /// A frozen network with the EMA weights.
    pub fn ema_model(&self) -> Result<CausalLm> {
        lm_from_tensors(&self.ema_weights(), &self.arch, Path::new("EMA"))
    }

    /// Write a checkpoint (process "ar") of everything needed to resume; `val_nll` is stored as
    /// the checkpoint's `val_nelbo` (an exact NLL is the value every NELBO bounds).
    pub fn save(
        &self,
        run_dir: &Path,
        data: &DataInfo,
        tokenizer_json: &str,
        val_nll: Option<f64>,
    ) -> Result<PathBuf> {
        let mut optim = HashMap::new();
        for (i, n) in self.names.iter().enumerate() {
            let shape = self.vars[i].shape();
            // The moments live in host memory whatever the device: saved from there.
            optim.insert(
                format!("m.{n}"),
                Tensor::from_slice(&self.opt.m[i], shape, &Device::Cpu)?,
            );
            optim.insert(
                format!("v.{n}"),
                Tensor::from_slice(&self.opt.v[i], shape, &Device::Cpu)?,
            );
        }
        let mut config = self.cfg.clone();
        config.train.process = ProcessKind::Ar;
        let meta = CheckpointMeta {
            format_version: checkpoint::FORMAT_VERSION,
            process: ProcessKind::Ar,
            model: self.arch.clone(),
            config,
            data: data.clone(),
            step: self.step,
            tokens_seen: self.tokens_seen,
            ema_updates: self.ema.num_updates,
            rng: serde_json::to_value(&self.rngs)
                .map_err(|e| Error::Config(format!("cannot serialise random state: {e}")))?,
            val_nelbo: val_nll,
            train_seconds: self.train_seconds,
            distill: None,
        };
        let (w, e) = (self.weights(), self.ema_weights());
        checkpoint::save(
            run_dir,
            &meta,
            &CheckpointTensors {
                weights: &w,
                ema: &e,
                optim: &optim,
                inv_freq: self.model.inv_freq(),
                tokenizer_json,
                extra: &[],
            },
            self.cfg.train.keep_checkpoints,
        )
    }
}
