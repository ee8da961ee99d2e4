//! The autoregressive baseline's objective for the one trainer core (`crate::trainer`): next-token
//! cross-entropy on the same packed rows (predict tokens 1..L from 0..L-1; MASK is never a target
//! and is excluded from the softmax, so the model is a distribution over real tokens), and its
//! exact validation NLL.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::data::PackedTokens;
use crate::data::pairs::{RowLayout, prompt_lens};
use crate::nn::ops::nll::weighted_nll;
use crate::nn::{CausalLm, CausalLmConfig, DitConfig, DropoutRng, frozen, init::init_dit};
use crate::trainer::{ArTrainer, StepStats};
use crate::{Error, Result};

/// A frozen causal LM from plain tensors; every weight must be present with the right shape.
pub fn lm_from_tensors(
    w: &HashMap<String, Tensor>,
    arch: &DitConfig,
    origin: &Path,
) -> Result<CausalLm> {
    frozen(w, arch, origin)
}

/// The causal LM of an AR checkpoint, from its EMA weights (if present and `use_ema`) or raw ones.
pub fn lm_from_checkpoint(ck: &Checkpoint, use_ema: bool) -> Result<CausalLm> {
    ck.meta.process.expect_ar(&ck.dir)?;
    let w = match (&ck.ema, use_ema) {
        (Some(e), true) => e,
        _ => &ck.weights,
    };
    lm_from_tensors(w, &ck.meta.model, &ck.dir)
}

/// The AR baseline's training objective: mean next-token NLL over the real targets.
#[derive(Debug, Clone)]
pub struct ArObjective {
    /// The MASK id of the data: never a target, excluded from the softmax.
    pub mask_id: u32,
    /// Row layout: a pairs row's prompt is context only, never a target.
    pub layout: RowLayout,
}

impl ArObjective {
    /// One optimizer step over `grad_accum` micro-batches of fresh rows.
    pub fn step(&self, tr: &mut ArTrainer, data: &PackedTokens) -> Result<StepStats> {
        let t = tr.cfg.train.clone();
        let (b, l) = (t.batch_size, data.row_len());
        let batches = (0..t.grad_accum)
            .map(|_| tr.next_rows(data, b))
            .collect::<Result<Vec<_>>>()?;
        let prompts: Vec<Vec<usize>> = batches
            .iter()
            .map(|x| prompt_lens(x, l, &self.layout))
            .collect();
        let (p, mask_id) = (tr.arch.dropout, self.mask_id);
        tr.optimize((b * l * t.grad_accum) as u64, |model, micro, rng| {
            let mut drop = DropoutRng { p, rng };
            let (losses, count) = prompted_next_token_losses(
                model,
                &batches[micro],
                b,
                l,
                mask_id,
                &prompts[micro],
                Some(&mut drop),
            )?;
            Ok((losses.sum_all()? / count.max(1) as f64)?)
        })
    }
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

/// A causal LM initialised as [`init_lm`] does, on plain tensors (no autograd graph): what the
/// sampling benchmarks decode with, as `idlm sample` does with a checkpoint.
pub fn random_frozen_lm(cfg: &CausalLmConfig, seed: u64) -> Result<CausalLm> {
    let (vars, _) = init_lm(cfg, seed)?;
    let w = crate::nn::init::detached(&vars)?;
    drop(vars);
    let vb = VarBuilder::from_tensors(w, DType::F32, &crate::runtime::device());
    CausalLm::new(vb, cfg)
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
    prompted_next_token_losses(model, rows, b, l, mask_id, &[], dropout)
}

/// `next_token_losses` where the first `prompts[r]` tokens of row r are a prompt: context, never
/// targets (weight 0). Empty `prompts`: none.
pub fn prompted_next_token_losses(
    model: &CausalLm,
    rows: &[u32],
    b: usize,
    l: usize,
    mask_id: u32,
    prompts: &[usize],
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
    // Target j of a row is token j + 1: a prompt token when j + 1 < its prompt length.
    let weights: Vec<f32> = target
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let prompt = prompts.get(i / (l - 1)).copied().unwrap_or(0);
            if t == mask_id || i % (l - 1) + 1 < prompt {
                0.0
            } else {
                1.0
            }
        })
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

/// Exact NLL per token of `model` on the first `max_rows` rows of `data` (of a pairs `layout`:
/// per answer token, the prompt being context).
pub fn ar_nll(
    model: &CausalLm,
    data: &PackedTokens,
    layout: &RowLayout,
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
        let prompts = prompt_lens(&rows, l, layout);
        let (losses, c) = prompted_next_token_losses(model, &rows, b, l, mask_id, &prompts, None)?;
        let losses = losses.to_vec1::<f32>()?;
        for (r, chunk) in losses.chunks_exact(l - 1).enumerate() {
            let s: f64 = chunk.iter().map(|&x| x as f64).sum();
            let k = rows[r * l + 1..(r + 1) * l]
                .iter()
                .enumerate()
                .filter(|&(j, &t)| t != mask_id && j + 1 >= prompts[r])
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
