//! Teacher training for any forward process: micro-batches with gradient accumulation, clipping,
//! AdamW with warmup, EMA, seeded streams saved in checkpoints so a resume continues exactly.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Checkpoint, CheckpointMeta, CheckpointTensors, DataInfo};
use crate::config::RunConfig;
use crate::data::PackedTokens;
use crate::nn::{Dit, DitConfig, DitInput, DropoutRng, Ema, init::init_dit};
use crate::optim::{AdamW, AdamWParams, global_norm, warmup_lr};
use crate::process::curriculum::DuoCurriculum;
use crate::process::schedule::antithetic_times;
use crate::process::{ForwardProcess, ProcessKind};
use crate::{Error, Result};

/// The random streams of a run, one per purpose, plus the position in the data order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainRngs {
    /// Data order (epoch permutations).
    pub data_seed: u64,
    /// Current epoch.
    pub epoch: u64,
    /// Next row of the epoch permutation.
    pub pos: usize,
    /// Diffusion times.
    pub time: ChaCha8Rng,
    /// Forward-process noise.
    pub noise: ChaCha8Rng,
    /// Dropout masks.
    pub dropout: ChaCha8Rng,
}

impl TrainRngs {
    /// Streams derived from one seed.
    pub fn new(seed: u64) -> Self {
        let stream = |s: u64| {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            r.set_stream(s);
            r
        };
        Self {
            data_seed: seed,
            epoch: 0,
            pos: 0,
            time: stream(1),
            noise: stream(2),
            dropout: stream(3),
        }
    }
}

/// Epoch permutation of `n` rows.
pub(crate) fn permutation(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(1000 + epoch);
    let mut p: Vec<usize> = (0..n).collect();
    p.shuffle(&mut r);
    p
}

/// What one optimizer step measured.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepStats {
    /// Step number after the update.
    pub step: u64,
    /// Mean loss over the micro-batches (nats/token).
    pub loss: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Tokens in the step.
    pub tokens: u64,
}

/// A DiT being trained: variables, EMA, optimizer, streams, counters.
pub struct Trainer {
    /// Run configuration.
    pub cfg: RunConfig,
    /// Architecture.
    pub dit_cfg: DitConfig,
    varmap: VarMap,
    /// The network (its weights are the variables).
    pub model: Dit,
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
    /// Random streams.
    pub rngs: TrainRngs,
    /// Seconds spent training (across resumes).
    pub train_seconds: f64,
    perm: Vec<usize>,
    /// Duo's Gaussian curriculum, when the config asks for one.
    curriculum: Option<DuoCurriculum>,
}

impl Trainer {
    /// A fresh network initialised from `cfg.train.seed`.
    pub fn new(cfg: &RunConfig, dit_cfg: &DitConfig) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &crate::runtime::device());
        let model = Dit::new(vb, dit_cfg)?;
        init_dit(&varmap, cfg.train.seed)?;
        Self::assemble(cfg, dit_cfg, varmap, model)
    }

    fn assemble(cfg: &RunConfig, dit_cfg: &DitConfig, varmap: VarMap, model: Dit) -> Result<Self> {
        let (names, vars) = sorted_vars(&varmap)?;
        let ema = Ema::new(&vars, cfg.train.ema_decay)?;
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
        let curriculum = if cfg.train.process == ProcessKind::Duo && cfg.duo.curriculum_end > 0 {
            let dir = crate::data::cache_dir().join("duality");
            Some(DuoCurriculum::new(&cfg.duo, dit_cfg.vocab_size, &dir)?)
        } else {
            None
        };
        Ok(Self {
            curriculum,
            cfg: cfg.clone(),
            dit_cfg: dit_cfg.clone(),
            varmap,
            model,
            names,
            vars,
            ema,
            opt,
            step: 0,
            tokens_seen: 0,
            rngs: TrainRngs::new(cfg.train.seed),
            train_seconds: 0.0,
            perm: Vec::new(),
        })
    }

    /// A network starting from given weights (e.g. a teacher's EMA), with fresh optimizer state.
    pub fn from_weights(
        cfg: &RunConfig,
        dit_cfg: &DitConfig,
        weights: &HashMap<String, Tensor>,
        origin: &std::path::Path,
    ) -> Result<Self> {
        let mut tr = Self::new(cfg, dit_cfg)?;
        for (i, name) in tr.names.iter().enumerate() {
            let w = take(weights, name, origin)?;
            check_shape(&w, &tr.vars[i], name, origin)?;
            tr.vars[i].set(&w)?;
        }
        // The EMA starts at the given weights, not at the random init.
        tr.ema = Ema::new(&tr.vars, cfg.train.ema_decay)?;
        Ok(tr)
    }

    /// Continue from a checkpoint: weights, EMA, optimizer state, streams and counters.
    pub fn from_checkpoint(ck: &Checkpoint, cfg: &RunConfig) -> Result<Self> {
        let m = &ck.meta;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &crate::runtime::device());
        let model = Dit::new(vb, &m.model)?;
        let mut tr = Self::assemble(cfg, &m.model, varmap, model)?;
        let optim = ck.optim()?;
        let ema = ck
            .ema
            .as_ref()
            .ok_or_else(|| Error::ckpt(&ck.dir, "no EMA weights: cannot resume"))?;
        tr.restore(&ck.weights, ema, &optim, "", &ck.dir)?;
        tr.opt.step = m.step;
        tr.ema.num_updates = m.ema_updates;
        tr.step = m.step;
        tr.tokens_seen = m.tokens_seen;
        tr.train_seconds = m.train_seconds;
        tr.rngs = serde_json::from_value(m.rng.clone())
            .map_err(|e| Error::ckpt(&ck.dir, format!("corrupt random state: {e}")))?;
        Ok(tr)
    }

    /// Set weights, EMA shadows and AdamW moments (optimizer keys `{prefix}m.<name>` and
    /// `{prefix}v.<name>`); every tensor must be present with the variable's shape.
    pub fn restore(
        &mut self,
        weights: &HashMap<String, Tensor>,
        ema: &HashMap<String, Tensor>,
        optim: &HashMap<String, Tensor>,
        prefix: &str,
        origin: &std::path::Path,
    ) -> Result<()> {
        for (i, name) in self.names.iter().enumerate() {
            let w = take(weights, name, origin)?;
            check_shape(&w, &self.vars[i], name, origin)?;
            self.vars[i].set(&w)?;
            let e = take(ema, name, origin)?;
            check_shape(&e, &self.vars[i], name, origin)?;
            self.ema.shadow[i] = e;
            let vec = |key: String| -> Result<Vec<f32>> {
                let t = take(optim, &key, origin)?;
                check_shape(&t, &self.vars[i], &key, origin)?;
                Ok(t.flatten_all()?.to_vec1::<f32>()?)
            };
            self.opt.m[i] = vec(format!("{prefix}m.{name}"))?;
            self.opt.v[i] = vec(format!("{prefix}v.{name}"))?;
        }
        Ok(())
    }

    /// The AdamW moments as tensors named `{prefix}m.<name>` / `{prefix}v.<name>`.
    pub fn optim_tensors(&self, prefix: &str) -> Result<HashMap<String, Tensor>> {
        let mut optim = HashMap::new();
        for (i, n) in self.names.iter().enumerate() {
            let shape = self.vars[i].shape();
            // The moments live in host memory whatever the device: saved from there.
            optim.insert(
                format!("{prefix}m.{n}"),
                Tensor::from_slice(&self.opt.m[i], shape, &Device::Cpu)?,
            );
            optim.insert(
                format!("{prefix}v.{n}"),
                Tensor::from_slice(&self.opt.v[i], shape, &Device::Cpu)?,
            );
        }
        Ok(optim)
    }

    /// Next `b` rows of the shuffled training data, flattened.
    pub fn next_rows(&mut self, data: &PackedTokens, b: usize) -> Result<Vec<u32>> {
        let n = data.n_rows();
        let l = data.row_len();
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

    /// One optimizer step over `grad_accum` micro-batches.
    pub fn train_step(
        &mut self,
        process: &dyn ForwardProcess,
        data: &PackedTokens,
    ) -> Result<StepStats> {
        let t = self.cfg.train.clone();
        let (b, l) = (t.batch_size, data.row_len());
        // Strata cover the whole accumulated batch; each micro-batch takes a contiguous run.
        let times = antithetic_times(b * t.grad_accum, &mut self.rngs.time);
        let tau = self.curriculum.as_ref().and_then(|c| c.tau(self.step + 1));
        if let Some(tau) = tau {
            return self.curriculum_step(data, &times, tau);
        }
        let mut batches = Vec::with_capacity(t.grad_accum);
        for micro in 0..t.grad_accum {
            let x0 = self.next_rows(data, b)?;
            let tt = times[micro * b..(micro + 1) * b].to_vec();
            let mut xt = vec![0u32; b * l];
            for (r, &tr) in tt.iter().enumerate() {
                let row = r * l..(r + 1) * l;
                process.corrupt_row(&x0[row.clone()], tr, &mut self.rngs.noise, &mut xt[row]);
            }
            batches.push((x0, xt, tt));
        }
        let p = self.dit_cfg.dropout;
        self.optimize((b * l * t.grad_accum) as u64, |model, micro, rng| {
            let (x0, xt, tt) = &batches[micro];
            let mut drop = DropoutRng { p, rng };
            batch_loss(model, process, x0, xt, b, l, tt, Some(&mut drop))
        })
    }

    /// A training step of Duo's curriculum: Gaussian-latent corruption, soft inputs at `tau`.
    fn curriculum_step(
        &mut self,
        data: &PackedTokens,
        times: &[f64],
        tau: f64,
    ) -> Result<StepStats> {
        let t = self.cfg.train.clone();
        let (b, l) = (t.batch_size, data.row_len());
        let dev = self.model.device().clone();
        let mut batches = Vec::with_capacity(t.grad_accum);
        for micro in 0..t.grad_accum {
            let x0 = self.next_rows(data, b)?;
            let tt = &times[micro * b..(micro + 1) * b];
            let c = self
                .curriculum
                .as_ref()
                .ok_or_else(|| Error::Config("no Duo curriculum configured".into()))?;
            let relaxed = c.corrupt(&x0, l, tt, tau, &mut self.rngs.noise, &dev)?;
            batches.push((x0, relaxed));
        }
        let p = self.dit_cfg.dropout;
        let curriculum = self.curriculum.take();
        let out = match &curriculum {
            Some(c) => self.optimize((b * l * t.grad_accum) as u64, |model, micro, rng| {
                let (x0, relaxed) = &batches[micro];
                let mut drop = DropoutRng { p, rng };
                c.batch_loss(model, x0, relaxed, Some(&mut drop))
            }),
            None => Err(Error::Config("no Duo curriculum configured".into())),
        };
        self.curriculum = curriculum;
        out
    }

    /// One optimizer step whose loss comes from `loss(model, micro_batch, dropout_rng)` for each
    /// of `grad_accum` micro-batches: accumulate, check finiteness, clip, AdamW, EMA.
    pub fn optimize<F>(&mut self, tokens: u64, mut loss: F) -> Result<StepStats>
    where
        F: FnMut(&Dit, usize, &mut ChaCha8Rng) -> Result<Tensor>,
    {
        let t = self.cfg.train.clone();
        let mut acc: Option<Vec<Tensor>> = None;
        let mut loss_sum = 0.0;
        for micro in 0..t.grad_accum {
            let l = loss(&self.model, micro, &mut self.rngs.dropout)?;
            let lv = l.to_scalar::<f32>()? as f64;
            if !lv.is_finite() {
                return Err(Error::NonFinite {
                    what: "loss",
                    step: self.step + 1,
                });
            }
            loss_sum += lv;
            let grads = (l / t.grad_accum as f64)?.backward()?;
            let gs = self.collect_grads(&grads)?;
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
        self.tokens_seen += tokens;
        Ok(StepStats {
            step: self.step,
            loss: loss_sum / t.grad_accum as f64,
            grad_norm: norm,
            lr,
            tokens,
        })
    }

    /// The gradient of every variable, in variable order (zeros where a variable got none).
    fn collect_grads(&self, grads: &candle_core::backprop::GradStore) -> Result<Vec<Tensor>> {
        Ok(self
            .vars
            .iter()
            .map(|v| match grads.get(v.as_tensor()) {
                Some(g) => Ok(g.clone()),
                None => v.as_tensor().zeros_like(),
            })
            .collect::<candle_core::Result<_>>()?)
    }

    /// Apply one set of gradients (no accumulation, no clipping): AdamW and EMA. For benchmarks.
    pub fn apply_grads(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        let gs = self.collect_grads(grads)?;
        let lr = warmup_lr(self.cfg.train.lr, self.cfg.train.warmup_steps, self.step);
        self.opt.step(&self.vars, &gs, lr, 1.0)?;
        self.ema.update(&self.vars)?;
        self.step += 1;
        Ok(())
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
    pub fn ema_model(&self) -> Result<Dit> {
        checkpoint::dit_from_tensors(
            &self.ema_weights(),
            &self.dit_cfg,
            std::path::Path::new("EMA"),
        )
    }

    /// meta.json of a checkpoint of this network.
    pub fn checkpoint_meta(
        &self,
        data: &DataInfo,
        val_nelbo: Option<f64>,
    ) -> Result<CheckpointMeta> {
        Ok(CheckpointMeta {
            format_version: checkpoint::FORMAT_VERSION,
            process: self.cfg.train.process,
            model: self.dit_cfg.clone(),
            config: self.cfg.clone(),
            data: data.clone(),
            step: self.step,
            tokens_seen: self.tokens_seen,
            ema_updates: self.ema.num_updates,
            rng: serde_json::to_value(&self.rngs)
                .map_err(|e| Error::Config(format!("cannot serialise random state: {e}")))?,
            val_nelbo,
            train_seconds: self.train_seconds,
            distill: None,
        })
    }

    /// Write a checkpoint of everything needed to resume.
    pub fn save(
        &self,
        run_dir: &std::path::Path,
        data: &DataInfo,
        tokenizer_json: &str,
        val_nelbo: Option<f64>,
    ) -> Result<std::path::PathBuf> {
        let optim = self.optim_tensors("")?;
        let meta = self.checkpoint_meta(data, val_nelbo)?;
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

    /// The variable map (for tests that poke at weights).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }
}

fn take(map: &HashMap<String, Tensor>, key: &str, origin: &std::path::Path) -> Result<Tensor> {
    map.get(key)
        .cloned()
        .ok_or_else(|| Error::ckpt(origin, format!("missing tensor '{key}'")))
}

fn check_shape(t: &Tensor, var: &Var, name: &str, origin: &std::path::Path) -> Result<()> {
    if t.shape() != var.shape() {
        return Err(Error::ckpt(
            origin,
            format!(
                "tensor '{name}' has shape {:?}, the model expects {:?}",
                t.shape(),
                var.shape()
            ),
        ));
    }
    Ok(())
}

fn sorted_vars(varmap: &VarMap) -> Result<(Vec<String>, Vec<Var>)> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::Config("variable map lock poisoned".into()))?;
    let mut names: Vec<String> = data.keys().cloned().collect();
    names.sort();
    let vars = names.iter().map(|n| data[n].clone()).collect();
    Ok((names, vars))
}

/// NELBO integrand at the positions that can carry loss (all others are exactly zero): the
/// vocabulary projection runs only there. Returns the per-position losses (M,) and, for each, its
/// row in the batch; None when no position is active. `grad`: a backward will follow.
#[allow(clippy::too_many_arguments)]
pub fn active_losses(
    model: &Dit,
    process: &dyn ForwardProcess,
    x0: &[u32],
    xt: &[u32],
    b: usize,
    l: usize,
    t: &[f64],
    dropout: Option<&mut DropoutRng>,
    grad: bool,
) -> Result<Option<(Tensor, Vec<usize>)>> {
    let pos: Vec<u32> = process
        .active_positions(xt)
        .unwrap_or_else(|| (0..(b * l) as u32).collect());
    if pos.is_empty() {
        return Ok(None);
    }
    let dev = model.device().clone();
    let xtt = Tensor::from_slice(xt, (b, l), &dev)?;
    let sigma: Vec<f32> = t.iter().map(|&ti| process.sigma(ti) as f32).collect();
    let sigma = Tensor::from_vec(sigma, b, &dev)?;
    let sel = model.features_at(DitInput::Ids(&xtt), &sigma, &pos, dropout)?;
    // Untracked features tell the fused head that no backward follows (it then makes no
    // gradients in the forward).
    let sel = if grad { sel } else { sel.detach() };
    let rows: Vec<usize> = pos.iter().map(|&p| p as usize / l).collect();
    let xs: Vec<u32> = pos.iter().map(|&p| xt[p as usize]).collect();
    let ys: Vec<u32> = pos.iter().map(|&p| x0[p as usize]).collect();
    let ts: Vec<f64> = rows.iter().map(|&r| t[r]).collect();
    let loss = match process.hard_loss_as_nll(&xs, &ys, &ts) {
        Some(nll) => model.head_nll(&sel, &nll)?,
        None => process.hard_loss_rows(&model.head(&sel)?, &xs, &ys, &ts)?,
    };
    Ok(Some((loss, rows)))
}

/// Mean NELBO integrand over all tokens of a batch (the reference's mean over valid tokens).
#[allow(clippy::too_many_arguments)]
pub fn batch_loss(
    model: &Dit,
    process: &dyn ForwardProcess,
    x0: &[u32],
    xt: &[u32],
    b: usize,
    l: usize,
    t: &[f64],
    dropout: Option<&mut DropoutRng>,
) -> Result<Tensor> {
    match active_losses(model, process, x0, xt, b, l, t, dropout, true)? {
        Some((loss, _)) => Ok((loss.sum_all()? / (b * l) as f64)?),
        None => Ok(Tensor::new(0f32, model.device())?),
    }
}

/// A validation NELBO estimate.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct NelboStats {
    /// Mean NELBO per token (nats).
    pub nelbo: f64,
    /// Standard error of the mean over sequences x time samples.
    pub stderr: f64,
    /// Tokens scored (per time sample).
    pub tokens: u64,
    /// Time samples per sequence.
    pub time_samples: usize,
}

/// NELBO per token of `model` on the first `max_rows` rows of `data`, with `time_samples`
/// independent (seeded) corruptions of each row.
pub fn nelbo(
    model: &Dit,
    process: &dyn ForwardProcess,
    data: &PackedTokens,
    max_rows: usize,
    batch_size: usize,
    time_samples: usize,
    seed: u64,
) -> Result<NelboStats> {
    let n = data.n_rows().min(max_rows);
    let l = data.row_len();
    if n == 0 || time_samples == 0 || batch_size == 0 {
        return Err(Error::InvalidArgument(
            "NELBO needs at least one row, one time sample and a positive batch size".into(),
        ));
    }
    let mut trng = ChaCha8Rng::seed_from_u64(seed);
    let mut nrng = ChaCha8Rng::seed_from_u64(seed);
    nrng.set_stream(1);
    let mut per_seq: Vec<f64> = Vec::with_capacity(n * time_samples);
    for _ in 0..time_samples {
        let mut start = 0;
        while start < n {
            let b = batch_size.min(n - start);
            let mut x0 = vec![0u32; b * l];
            for r in 0..b {
                data.row_into(start + r, &mut x0[r * l..(r + 1) * l])?;
            }
            let t = antithetic_times(b, &mut trng);
            let mut xt = vec![0u32; b * l];
            for (r, &tr) in t.iter().enumerate() {
                let row = r * l..(r + 1) * l;
                process.corrupt_row(&x0[row.clone()], tr, &mut nrng, &mut xt[row]);
            }
            let mut sums = vec![0f64; b];
            if let Some((loss, rows)) =
                active_losses(model, process, &x0, &xt, b, l, &t, None, false)?
            {
                for (v, r) in loss.to_vec1::<f32>()?.iter().zip(rows) {
                    sums[r] += *v as f64;
                }
            }
            let rows = sums.iter().map(|s| s / l as f64);
            per_seq.extend(rows);
            start += b;
        }
    }
    let m = per_seq.iter().sum::<f64>() / per_seq.len() as f64;
    let var = per_seq.iter().map(|x| (x - m).powi(2)).sum::<f64>()
        / (per_seq.len().saturating_sub(1).max(1)) as f64;
    Ok(NelboStats {
        nelbo: m,
        stderr: (var / per_seq.len() as f64).sqrt(),
        tokens: (n * l) as u64,
        time_samples,
    })
}

#[cfg(test)]
mod gradient_tests {
    use super::*;
    use crate::process::{ForwardProcess, Masked};
    use rand::SeedableRng;

    /// The whole model's backward (fused kernels and candle's backprop, with the vendored
    /// first-gradient patch) against central differences of the MDLM loss: every variable gets a
    /// gradient, and along each variable's own gradient direction the loss changes at |g_v|.
    #[test]
    fn every_weight_gradient_matches_finite_differences() {
        let cfg = RunConfig::load("tiny")
            .unwrap()
            .with_overrides(&[
                "model.time_conditioning=true".into(),
                "train.lr=1e-2".into(),
                "train.warmup_steps=0".into(),
            ])
            .unwrap();
        let (v, b, l) = (40usize, 3usize, 16usize);
        let dit = cfg.model.dit(v, l);
        let mut tr = Trainer::new(&cfg, &dit).unwrap();
        let process = Masked::new(v, (v - 1) as u32).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let x0: Vec<u32> = (0..b * l)
            .map(|i| ((i * 7 + i / 5) % (v - 1)) as u32)
            .collect();
        let t = [0.3, 0.6, 0.9];
        let mut xt = vec![0u32; b * l];
        for (r, &tr_) in t.iter().enumerate() {
            let rows = r * l..(r + 1) * l;
            process.corrupt_row(&x0[rows.clone()], tr_, &mut rng, &mut xt[rows]);
        }
        let loss = |m: &Dit| batch_loss(m, &process, &x0, &xt, b, l, &t, None).unwrap();
        // Leave the zero-initialised output layer and adaLN, so every weight matters.
        for _ in 0..5 {
            tr.optimize((b * l) as u64, |m, _, _| Ok(loss(m))).unwrap();
        }
        let grads = loss(&tr.model).backward().unwrap();
        let gs = tr.collect_grads(&grads).unwrap();
        let value = |m: &Dit| loss(m).to_scalar::<f32>().unwrap() as f64;
        let eps = 1e-2;
        for ((name, var), g) in tr.names.iter().zip(&tr.vars).zip(&gs) {
            let gn = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            let gn = gn.sqrt();
            assert!(gn > 1e-6, "{name}: no gradient");
            let w0 = var.as_tensor().copy().unwrap();
            let u = (g / gn).unwrap();
            var.set(&(&w0 + (&u * eps).unwrap()).unwrap()).unwrap();
            let up = value(&tr.model);
            var.set(&(&w0 - (&u * eps).unwrap()).unwrap()).unwrap();
            let down = value(&tr.model);
            var.set(&w0).unwrap();
            let fd = (up - down) / (2.0 * eps);
            assert!(
                (fd - gn).abs() < 0.05 * gn + 2e-4,
                "{name}: finite difference {fd} vs |g| {gn}"
            );
        }
    }
}
