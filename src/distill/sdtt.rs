//! SDTT, self-distillation through time (docs/algorithms.md §5.2): the student learns in one step what
//! the teacher does in `sdtt_teacher_steps` ancestral steps of size dt, by KL(student || teacher)
//! at the masked positions; every round the step size doubles and the teacher becomes the student.

use candle_core::{D, Tensor};

use super::config::DistillConfig;
use super::distiller::RoundDistiller;
use super::nets::{DistillRngs, active, corrupt, logits_at};
use super::rounds::{RoundNets, RoundStats, Weights};
use crate::Result;
use crate::checkpoint::Checkpoint;
use crate::data::PackedTokens;
use crate::data::pairs::{RowLayout, clamp_prompts, prompt_lens};
use crate::nn::{Dit, DropoutRng};
use crate::process::ForwardProcess;
use crate::process::schedule::antithetic_times;
use crate::sample::Denoiser;

/// The sampling floor of SDTT's step grid (`sampling_eps` = 1e-5).
const SDTT_EPS: f64 = 1e-5;

/// What one update measured.
pub type SdttStats = RoundStats;

/// The state of an SDTT run.
pub struct Sdtt {
    /// Settings.
    pub cfg: DistillConfig,
    /// Student, teacher and round.
    pub nets: RoundNets,
    /// Times and noise.
    pub rngs: DistillRngs,
    /// Row layout of the data: prompt/answer rows keep their prompts clamped.
    pub layout: RowLayout,
}

impl Sdtt {
    /// Student and round-0 teacher both from `weights` (the teacher's EMA weights).
    pub fn new(cfg: &DistillConfig, teacher: &Checkpoint, weights: &Weights) -> Result<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            nets: RoundNets::new(cfg, teacher, weights)?,
            rngs: DistillRngs::new(cfg.seed),
            layout: RowLayout::Stream,
        })
    }

    /// Resume from a distillation checkpoint.
    pub fn from_loaded(l: &super::state::Loaded) -> Result<Self> {
        Ok(Self {
            cfg: l.state.config.clone(),
            nets: RoundNets::from_loaded(l)?,
            rngs: l.state.rngs.clone(),
            layout: RowLayout::Stream,
        })
    }

    /// The teacher's step size in the current round.
    pub fn dt(&self) -> f64 {
        (1.0 - SDTT_EPS) / self.cfg.sdtt_base_steps as f64 * 2f64.powi(self.nets.round as i32)
    }

    /// Student steps per unit time that the current round distils into (1 / (k dt)).
    pub fn student_steps(&self) -> f64 {
        1.0 / (self.dt() * self.cfg.sdtt_teacher_steps as f64)
    }

    /// One student update; at the end of a round the step size doubles and the teacher becomes a
    /// copy of the student.
    pub fn step(&mut self, process: &dyn ForwardProcess, data: &PackedTokens) -> Result<SdttStats> {
        let (b, l, acc) = (self.cfg.batch_size, data.row_len(), self.cfg.grad_accum);
        let times = antithetic_times(b * acc, &mut self.rngs.time);
        let dt = self.dt();
        let mut jobs = Vec::with_capacity(acc);
        for m in 0..acc {
            let x0 = self.nets.student.next_rows(data, b)?;
            let t = times[m * b..(m + 1) * b].to_vec();
            let mut xt = corrupt(process, &x0, l, &t, &mut self.rngs.noise);
            // Clean prompts are never active: the teacher's steps and the KL leave them alone.
            clamp_prompts(&x0, &mut xt, l, &prompt_lens(&x0, l, &self.layout));
            let target = teacher_targets(
                &self.nets.teacher,
                process,
                &self.cfg,
                &xt,
                (b, l),
                &t,
                dt,
                &mut self.rngs.noise,
            )?;
            jobs.push((xt, t, target));
        }
        let p = self.cfg.dropout;
        let st = self
            .nets
            .student
            .optimize((b * l * acc) as u64, |model, micro, rng| {
                let (xt, t, target) = &jobs[micro];
                let Some((pos, tgt)) = target else {
                    return Ok(Tensor::new(0f32, &crate::runtime::device())?);
                };
                let mut drop = DropoutRng { p, rng };
                let logits = logits_at(model, process, xt, (b, l), t, pos, Some(&mut drop))?;
                let at: Vec<u32> = pos.iter().map(|&q| xt[q as usize]).collect();
                let lq = process.log_probs_rows(&logits, &at)?;
                // KL(student || teacher) summed over masked positions, averaged over the batch.
                let kl = lq.exp()?.mul(&(&lq - tgt)?)?.sum(D::Minus1)?;
                Ok((kl.sum_all()? / b as f64)?)
            })?;
        let round = self.nets.round;
        self.nets.end_update(self.cfg.sdtt_round_steps)?;
        Ok(SdttStats {
            step: self.nets.student.step,
            round,
            dt,
            loss: st.loss,
            grad_norm: st.grad_norm,
            lr: st.lr,
        })
    }
}

/// The teacher's targets at the masked positions of `xt`: from x_t it takes `k` ancestral steps
/// of size dt; a token revealed at step j gets the teacher's log p(x0 | .) of step j, a token
/// still masked at the end gets the last step's. None when nothing is masked.
#[allow(clippy::too_many_arguments)]
fn teacher_targets(
    teacher: &Dit,
    process: &dyn ForwardProcess,
    cfg: &DistillConfig,
    xt: &[u32],
    (b, l): (usize, usize),
    t: &[f64],
    dt: f64,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<Option<(Vec<u32>, Tensor)>> {
    let pos = active(process, xt);
    if pos.is_empty() {
        return Ok(None);
    }
    let v = process.vocab_size();
    let dev = Denoiser::device(teacher);
    let mut x = xt.to_vec();
    // For every position of `pos`: (step, row in that step's log-probs) of its target.
    let mut src: Vec<(usize, usize)> = vec![(0, 0); pos.len()];
    let mut index_of = vec![usize::MAX; b * l];
    for (i, &p) in pos.iter().enumerate() {
        index_of[p as usize] = i;
    }
    let mut logps = Vec::new();
    let mut offset = 0usize;
    for step in 0..cfg.sdtt_teacher_steps {
        let cur = active(process, &x);
        if cur.is_empty() {
            break;
        }
        let ts: Vec<f64> = t
            .iter()
            .map(|&ti| (ti - step as f64 * dt).max(0.0))
            .collect();
        let sig: Vec<f32> = ts.iter().map(|&ti| process.sigma(ti) as f32).collect();
        let logits = teacher.logits(
            &Tensor::from_slice(&x, (b, l), &dev)?,
            &Tensor::from_vec(sig, b, &dev)?,
            Some(&cur),
        )?;
        let at: Vec<u32> = cur.iter().map(|&q| x[q as usize]).collect();
        logps.push(process.log_probs_rows(&logits, &at)?);
        let probs = process.clean_probs(&logits, &at)?;
        for (r, &q) in cur.iter().enumerate() {
            src[index_of[q as usize]] = (step, offset + r);
        }
        offset += cur.len();
        // One ancestral step t -> t - dt of every row, from the rows' full probability tables.
        let mut table = vec![0f32; b * l * v];
        for (r, &q) in cur.iter().enumerate() {
            let q = q as usize;
            table[q * v..(q + 1) * v].copy_from_slice(&probs[r * v..(r + 1) * v]);
        }
        for (row, &ti) in ts.iter().enumerate() {
            let s = (ti - dt).max(0.0);
            let span = row * l..(row + 1) * l;
            process.posterior_row(
                &table[row * l * v..(row + 1) * l * v],
                &mut x[span],
                ti,
                s,
                rng,
            );
        }
    }
    let all = Tensor::cat(&logps.iter().collect::<Vec<_>>(), 0)?;
    let idx: Vec<u32> = src.iter().map(|&(_, r)| r as u32).collect();
    let tgt = all.index_select(
        &Tensor::from_slice(&idx, idx.len(), &crate::runtime::device())?,
        0,
    )?;
    Ok(Some((pos, tgt.detach())))
}

impl RoundDistiller for Sdtt {
    fn nets(&self) -> &RoundNets {
        &self.nets
    }
    fn rngs(&self) -> &DistillRngs {
        &self.rngs
    }
    fn config_mut(&mut self) -> &mut DistillConfig {
        &mut self.cfg
    }
    fn update(&mut self, process: &dyn ForwardProcess, data: &PackedTokens) -> Result<RoundStats> {
        self.step(process, data)
    }
    fn set_layout(&mut self, layout: RowLayout) -> Result<()> {
        self.layout = layout;
        Ok(())
    }
}
