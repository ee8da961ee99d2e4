//! The one trainer core every network is trained with (teacher, AR baseline, each distiller's
//! student and fake): variables, AdamW with warmup and clipping, EMA, counters, seeded random
//! streams saved in checkpoints so a resume continues exactly. What is trained and how the loss is
//! computed is the caller's: it hands `optimize` a closure per micro-batch. `job` runs a trainer
//! and an [`Objective`] through the run loop.

pub mod job;

pub use job::{Objective, start_or_resume, train_run};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Checkpoint, CheckpointMeta, CheckpointTensors, DataInfo};
use crate::config::RunConfig;
use crate::data::PackedTokens;
use crate::nn::{CausalLm, Dit, DitConfig, Ema, Network, frozen, init::init_dit};
use crate::optim::{AdamW, AdamWParams, global_norm, warmup_lr};
use crate::process::ModelFamily;
use crate::{Error, Result};

/// A network the trainer core trains, and the family its checkpoints record.
pub trait Trainable: Network {
    /// The family a checkpoint of this network records, given the one its config names.
    fn family(configured: ModelFamily) -> Result<ModelFamily>;
    /// Refuse a checkpoint at `origin` of another family, naming what it holds.
    fn check(held: ModelFamily, origin: &Path) -> Result<()>;
}

impl Trainable for Dit {
    fn family(configured: ModelFamily) -> Result<ModelFamily> {
        match configured {
            ModelFamily::Diffusion(_) => Ok(configured),
            ModelFamily::Ar => Err(Error::Config(
                "a diffusion network cannot be trained with process 'ar'".into(),
            )),
        }
    }
    fn check(held: ModelFamily, origin: &Path) -> Result<()> {
        held.diffusion(origin).map(|_| ())
    }
}

impl Trainable for CausalLm {
    fn family(_: ModelFamily) -> Result<ModelFamily> {
        Ok(ModelFamily::Ar)
    }
    fn check(held: ModelFamily, origin: &Path) -> Result<()> {
        held.expect_ar(origin)
    }
}

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

/// A network being trained: variables, EMA, optimizer, streams, counters.
pub struct TrainerCore<N: Trainable> {
    /// Run configuration (its `train.process` is the family checkpoints record).
    pub cfg: RunConfig,
    /// Architecture (the `[model]` sizes resolved for the data, as checkpoints record them).
    pub arch: DitConfig,
    varmap: VarMap,
    /// The network (its weights are the variables).
    pub model: N,
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
    /// The last validation loss, as checkpoints record it (`val_nelbo`; kept across a resume so
    /// a checkpoint written before the next validation records it as an uninterrupted run does).
    pub last_val: Option<f64>,
    perm: Vec<usize>,
}

/// The diffusion trainer (teachers, students, fakes).
pub type Trainer = TrainerCore<Dit>;
/// The autoregressive baseline's trainer.
pub type ArTrainer = TrainerCore<CausalLm>;

impl<N: Trainable> TrainerCore<N> {
    /// A fresh network initialised from `cfg.train.seed`.
    pub fn new(cfg: &RunConfig, arch: &DitConfig) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &crate::runtime::device());
        let model = N::build(vb, arch)?;
        init_dit(&varmap, cfg.train.seed)?;
        let mut cfg = cfg.clone();
        cfg.train.process = N::family(cfg.train.process)?;
        let (names, vars) = sorted_vars(&varmap)?;
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
            ema: Ema::new(&vars, t.ema_decay)?,
            rngs: TrainRngs::new(t.seed),
            cfg,
            arch: arch.clone(),
            varmap,
            model,
            names,
            vars,
            opt,
            step: 0,
            tokens_seen: 0,
            train_seconds: 0.0,
            last_val: None,
            perm: Vec::new(),
        })
    }

    /// A network starting from given weights (e.g. a teacher's EMA), with fresh optimizer state.
    pub fn from_weights(
        cfg: &RunConfig,
        arch: &DitConfig,
        weights: &HashMap<String, Tensor>,
        origin: &Path,
    ) -> Result<Self> {
        let mut tr = Self::new(cfg, arch)?;
        for (i, name) in tr.names.iter().enumerate() {
            let w = take(weights, name, origin)?;
            check_shape(&w, &tr.vars[i], name, origin)?;
            tr.vars[i].set(&w)?;
        }
        // The EMA starts at the given weights, not at the random init.
        tr.ema = Ema::new(&tr.vars, cfg.train.ema_decay)?;
        Ok(tr)
    }

    /// Continue from a checkpoint of this kind of network: weights, EMA, optimizer state,
    /// streams and counters. `cfg` is the run's config (the architecture is the checkpoint's).
    pub fn from_checkpoint(ck: &Checkpoint, cfg: &RunConfig) -> Result<Self> {
        let m = &ck.meta;
        N::check(m.process, &ck.dir)?;
        let mut tr = Self::new(cfg, &m.model)?;
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
        tr.last_val = m.val_nelbo;
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
        origin: &Path,
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

    /// One optimizer step whose loss comes from `loss(model, micro_batch, dropout_rng)` for each
    /// of `grad_accum` micro-batches: accumulate, check finiteness, clip, AdamW, EMA.
    pub fn optimize<F>(&mut self, tokens: u64, mut loss: F) -> Result<StepStats>
    where
        F: FnMut(&N, usize, &mut ChaCha8Rng) -> Result<Tensor>,
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
    pub fn collect_grads(&self, grads: &candle_core::backprop::GradStore) -> Result<Vec<Tensor>> {
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

    /// The variables' names, sorted (the order of [`Self::collect_grads`]).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The variables, in the order of [`Self::names`].
    pub fn vars(&self) -> &[Var] {
        &self.vars
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
    pub fn ema_model(&self) -> Result<N> {
        frozen(&self.ema_weights(), &self.arch, Path::new("EMA"))
    }

    /// A frozen network on the current raw weights, sharing their storage: valid until the next
    /// update (which overwrites the variables in place), with no copy and no graph.
    pub fn frozen_view(&self) -> Result<N> {
        let w: HashMap<String, Tensor> = self
            .weights()
            .into_iter()
            .map(|(k, v)| (k, v.detach()))
            .collect();
        frozen(&w, &self.arch, Path::new("frozen view"))
    }

    /// A frozen network with a copy of the current raw weights (later updates do not reach it:
    /// the variables are overwritten in place), and that copy.
    pub fn snapshot(&self) -> Result<(HashMap<String, Tensor>, N)> {
        let w: HashMap<String, Tensor> = self
            .weights()
            .into_iter()
            .map(|(k, v)| Ok((k, v.detach().copy()?)))
            .collect::<Result<_>>()?;
        let net = frozen(&w, &self.arch, Path::new("snapshot"))?;
        Ok((w, net))
    }

    /// meta.json of a checkpoint of this network.
    pub fn checkpoint_meta(&self, data: &DataInfo, val: Option<f64>) -> Result<CheckpointMeta> {
        Ok(CheckpointMeta {
            format_version: checkpoint::FORMAT_VERSION,
            process: self.cfg.train.process,
            model: self.arch.clone(),
            config: self.cfg.clone(),
            data: data.clone(),
            step: self.step,
            tokens_seen: self.tokens_seen,
            ema_updates: self.ema.num_updates,
            rng: serde_json::to_value(&self.rngs)
                .map_err(|e| Error::Config(format!("cannot serialise random state: {e}")))?,
            val_nelbo: val,
            train_seconds: self.train_seconds,
            distill: None,
            source: None,
            files: Default::default(),
        })
    }

    /// Write a checkpoint of everything needed to resume, with `extra` safetensors files
    /// beside it (a distiller's fake and teacher) and `meta` adjusted by the caller's state.
    pub fn save_with(
        &self,
        run_dir: &Path,
        meta: &CheckpointMeta,
        tokenizer_json: &str,
        extra: &[(&str, HashMap<String, Tensor>)],
        keep: usize,
    ) -> Result<PathBuf> {
        let optim = self.optim_tensors("")?;
        let (w, e) = (self.weights(), self.ema_weights());
        checkpoint::save(
            run_dir,
            meta,
            &CheckpointTensors {
                weights: &w,
                ema: &e,
                optim: &optim,
                inv_freq: self.model.inv_freq(),
                tokenizer_json,
                extra,
            },
            keep,
        )
    }

    /// Write a checkpoint of everything needed to resume; `val` is the last validation NELBO
    /// (or the AR baseline's exact NLL, the value every NELBO bounds).
    pub fn save(
        &self,
        run_dir: &Path,
        data: &DataInfo,
        tokenizer_json: &str,
        val: Option<f64>,
    ) -> Result<PathBuf> {
        let meta = self.checkpoint_meta(data, val)?;
        self.save_with(
            run_dir,
            &meta,
            tokenizer_json,
            &[],
            self.cfg.train.keep_checkpoints,
        )
    }

    /// The variable map (for tests that poke at weights).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }
}

fn take(map: &HashMap<String, Tensor>, key: &str, origin: &Path) -> Result<Tensor> {
    map.get(key)
        .cloned()
        .ok_or_else(|| Error::ckpt(origin, format!("missing tensor '{key}'")))
}

fn check_shape(t: &Tensor, var: &Var, name: &str, origin: &Path) -> Result<()> {
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
