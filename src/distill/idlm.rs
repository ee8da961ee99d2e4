//! IDLM for masked diffusion, as coded in the reference (algorithms.md §4.2, §4.4): a frozen
//! teacher f*, a fake f refitted on the student's samples, and the student G; one fake update then
//! one student update, the student loss L(f*, G) - L(f, G) with gradient only through G.

use std::collections::HashMap;

use candle_core::Tensor;
use serde::Serialize;

use super::config::{DistillConfig, GeneratorLoss};
use super::distiller::Distiller;
use super::nets::{
    DistillRngs, Role, active, corrupt, logits_at, phase_times, resume_net, start_net,
};
use crate::checkpoint::{CheckpointMeta, dit_from_tensors};
use crate::config::RunConfig;
use crate::data::PackedTokens;
use crate::nn::{Dit, DitConfig, DropoutRng};
use crate::process::curriculum::DuoCurriculum;
use crate::process::{ForwardProcess, ModelFamily};
use crate::sample::Denoiser;
use crate::trainer::Trainer;
use crate::{Error, Result};

/// What one alternation measured.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct IdlmStats {
    /// Student updates after this alternation.
    pub step: u64,
    /// Fake loss L(f, G) per sequence (masked positions; NaN for the naive ablation).
    pub fake_loss: f64,
    /// Student loss L(f*, G) - L(f, G) per sequence.
    pub student_loss: f64,
    /// Gradient norm of the fake update.
    pub fake_grad_norm: f64,
    /// Gradient norm of the student update.
    pub student_grad_norm: f64,
    /// Learning rate of both updates.
    pub lr: f64,
}

/// The trainable state of an IDLM run: student and fake with their optimisers and EMAs.
pub struct Idlm {
    /// Settings.
    pub cfg: DistillConfig,
    /// The student G (its trainer also owns the data order).
    pub student: Trainer,
    /// The fake f (None for the naive ablation, which has no fake).
    pub fake: Option<Trainer>,
    /// Times and noise.
    pub rngs: DistillRngs,
}

/// One micro-batch's real data and the student's input eps = (x_t', t').
struct Input {
    x0: Vec<u32>,
    xtp: Vec<u32>,
    tp: Vec<f64>,
    t: Vec<f64>,
}

/// The re-noised state built from a student sample, and the soft targets at its active positions.
struct Renoised {
    xt: Vec<u32>,
    /// Active positions of x_t: first those active in x_t' (G has a gradient there), then the rest.
    pos: Vec<u32>,
    /// How many of `pos` are active in x_t'.
    n_both: usize,
    /// For each of the first `n_both` positions, its row in the student's output.
    g_rows: Vec<u32>,
}

impl Idlm {
    /// Student and fake both start from `weights` (the teacher's EMA weights).
    pub fn new(
        cfg: &DistillConfig,
        teacher_cfg: &RunConfig,
        dit_cfg: &DitConfig,
        weights: &HashMap<String, Tensor>,
        origin: &std::path::Path,
    ) -> Result<Self> {
        cfg.validate()?;
        let net = |role| start_net(cfg, teacher_cfg, dit_cfg, weights, origin, role);
        let student = net(Role::Student)?;
        let fake = match cfg.generator {
            GeneratorLoss::Idlm => Some(net(Role::Fake)?),
            GeneratorLoss::Naive => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            student,
            fake,
            rngs: DistillRngs::new(cfg.seed),
        })
    }

    /// Student updates done.
    pub fn step_count(&self) -> u64 {
        self.student.step
    }

    /// Fresh real rows, their times and the student's input x_t'.
    fn inputs(&mut self, process: &dyn ForwardProcess, data: &PackedTokens) -> Result<Vec<Input>> {
        let (b, l, acc) = (self.cfg.batch_size, data.row_len(), self.cfg.grad_accum);
        let (tp, t) = phase_times(b * acc, self.cfg.coupling, &mut self.rngs.time);
        let mut out = Vec::with_capacity(acc);
        for m in 0..acc {
            let x0 = self.student.next_rows(data, b)?;
            let tp = tp[m * b..(m + 1) * b].to_vec();
            let xtp = corrupt(process, &x0, l, &tp, &mut self.rngs.noise);
            out.push(Input {
                x0,
                xtp,
                tp,
                t: t[m * b..(m + 1) * b].to_vec(),
            });
        }
        Ok(out)
    }

    /// One alternation: a fake update on the current student's samples, then a student update.
    pub fn step(
        &mut self,
        teacher: &dyn Denoiser,
        process: &dyn ForwardProcess,
        data: &PackedTokens,
    ) -> Result<IdlmStats> {
        let (b, l) = (self.cfg.batch_size, data.row_len());
        let tokens = (b * l * self.cfg.grad_accum) as u64;
        let v = process.vocab_size();

        // Fake phase: the student frozen (no dropout, no graph), the fake fitted with the
        // soft-label loss on re-noised student samples.
        let (fake_loss, fake_norm) = if self.fake.is_some() {
            let inputs = self.inputs(process, data)?;
            let mut jobs = Vec::with_capacity(inputs.len());
            for inp in &inputs {
                let pos_p = active(process, &inp.xtp);
                let g = if pos_p.is_empty() {
                    None
                } else {
                    let sig: Vec<f32> = inp.tp.iter().map(|&t| process.sigma(t) as f32).collect();
                    let dev = Denoiser::device(&self.student.model);
                    let logits = Denoiser::logits(
                        &self.student.model,
                        &Tensor::from_slice(&inp.xtp, (b, l), &dev)?,
                        &Tensor::from_vec(sig, b, &dev)?,
                        Some(&pos_p),
                    )?
                    .detach();
                    let at: Vec<u32> = pos_p.iter().map(|&p| inp.xtp[p as usize]).collect();
                    Some(process.clean_probs(&logits, &at)?)
                };
                let simplex = Simplex::new(&inp.x0, &pos_p, g.as_deref(), v);
                let rn = renoise(process, &simplex, &inp.t, l, &mut self.rngs.noise);
                let target = simplex.rows(&rn.pos)?;
                jobs.push((rn, target));
            }
            let fake = self
                .fake
                .as_mut()
                .ok_or_else(|| Error::Config("fake network missing".into()))?;
            let p = self.cfg.dropout;
            let st = fake.optimize(tokens, |model, micro, rng| {
                let (rn, target) = &jobs[micro];
                if rn.pos.is_empty() {
                    return Ok(Tensor::new(0f32, &crate::runtime::device())?);
                }
                let mut drop = DropoutRng { p, rng };
                let tr: Vec<f64> = rows_t(&inputs[micro].t, l, &rn.pos);
                let logits = logits_at(
                    model,
                    process,
                    &rn.xt,
                    (b, l),
                    &inputs[micro].t,
                    &rn.pos,
                    Some(&mut drop),
                )?;
                let xs: Vec<u32> = rn.pos.iter().map(|&q| rn.xt[q as usize]).collect();
                let loss = process.soft_loss_rows(&logits, &xs, target, &tr)?;
                Ok((loss.sum_all()? / b as f64)?)
            })?;
            (st.loss, st.grad_norm)
        } else {
            (f64::NAN, f64::NAN)
        };

        // Student phase: G with gradient, the frozen teacher and fake on the hard re-noised state.
        let inputs = self.inputs(process, data)?;
        let p = self.cfg.dropout;
        let fake_model = self.fake.as_ref().map(|f| &f.model);
        let noise = &mut self.rngs.noise;
        let st = self.student.optimize(tokens, |model, micro, rng| {
            let inp = &inputs[micro];
            let pos_p = active(process, &inp.xtp);
            let mut drop = DropoutRng { p, rng };
            let g = if pos_p.is_empty() {
                None
            } else {
                let logits = logits_at(
                    model,
                    process,
                    &inp.xtp,
                    (b, l),
                    &inp.tp,
                    &pos_p,
                    Some(&mut drop),
                )?;
                let at: Vec<u32> = pos_p.iter().map(|&q| inp.xtp[q as usize]).collect();
                Some(process.probs_rows(&logits, &at)?)
            };
            let g_vals = match &g {
                Some(g) => Some(g.detach().flatten_all()?.to_vec1::<f32>()?),
                None => None,
            };
            let simplex = Simplex::new(&inp.x0, &pos_p, g_vals.as_deref(), v);
            let rn = renoise(process, &simplex, &inp.t, l, noise);
            if rn.pos.is_empty() {
                return Ok(Tensor::new(0f32, &crate::runtime::device())?);
            }
            // Targets: G's rows (with gradient) where x_t' was active, one-hot data elsewhere.
            let rest = simplex.rows(&rn.pos[rn.n_both..])?;
            // The loss below holds three networks' activations; free the sample's values first.
            std::mem::drop(simplex);
            std::mem::drop(g_vals);
            let target = match (&g, rn.n_both) {
                (Some(g), n) if n > 0 => {
                    let idx = Tensor::from_slice(&rn.g_rows, n, g.device())?;
                    let sel = g.index_select(&idx, 0)?;
                    if rn.pos.len() > n {
                        Tensor::cat(&[&sel, &rest], 0)?
                    } else {
                        sel
                    }
                }
                _ => rest,
            };
            let fake: Option<&dyn Denoiser> = fake_model.map(|f| f as &dyn Denoiser);
            generator_loss(
                process,
                teacher,
                fake,
                &rn.xt,
                (b, l),
                &inp.t,
                &rn.pos,
                &target,
            )
        })?;
        Ok(IdlmStats {
            step: self.student.step,
            fake_loss,
            student_loss: st.loss,
            fake_grad_norm: fake_norm,
            student_grad_norm: st.grad_norm,
            lr: st.lr,
        })
    }
}

/// IDLM-MDLM's student loss on a re-noised state `xt` (B, L) at its positions `pos`:
/// sum over positions of [l(f*, G) - l(f, G)] / B, with l the soft-target NELBO integrand and
/// `target` (M, V) the student's simplex at those positions. The networks' outputs are constants:
/// the gradient reaches the student only through `target`. Without a fake (the naive ablation)
/// only l(f*, G) remains. Positions unmasked in `xt` carry weight 0 (SUBS cancellation), so `pos`
/// may be the masked positions only.
#[allow(clippy::too_many_arguments)]
pub fn generator_loss(
    process: &dyn ForwardProcess,
    teacher: &dyn Denoiser,
    fake: Option<&dyn Denoiser>,
    xt: &[u32],
    (b, l): (usize, usize),
    t: &[f64],
    pos: &[u32],
    target: &Tensor,
) -> Result<Tensor> {
    let dev = teacher.device();
    let xtt = Tensor::from_slice(xt, (b, l), &dev)?;
    let sig: Vec<f32> = t.iter().map(|&ti| process.sigma(ti) as f32).collect();
    let sig = Tensor::from_vec(sig, b, &dev)?;
    let xs: Vec<u32> = pos.iter().map(|&q| xt[q as usize]).collect();
    let tr = rows_t(t, l, pos);
    let lt = teacher.logits(&xtt, &sig, Some(pos))?.detach();
    let mut loss = process.soft_loss_rows(&lt, &xs, target, &tr)?;
    if let Some(f) = fake {
        let lf = f.logits(&xtt, &sig, Some(pos))?.detach();
        loss = (loss - process.soft_loss_rows(&lf, &xs, target, &tr)?)?;
    }
    Ok((loss.sum_all()? / b as f64)?)
}

/// The student's relaxed sample over the whole batch (B x L x V), never materialised: its
/// distribution at the positions active in x_t' (`g`, row-major, one row per entry of `pos`),
/// one-hot data elsewhere.
struct Simplex<'a> {
    x0: &'a [u32],
    g: Option<&'a [f32]>,
    /// Each position's row in `g` (u32::MAX: not active in x_t').
    row_of: Vec<u32>,
    v: usize,
}

impl<'a> Simplex<'a> {
    fn new(x0: &'a [u32], pos: &[u32], g: Option<&'a [f32]>, v: usize) -> Self {
        let mut row_of = vec![u32::MAX; x0.len()];
        for (r, &p) in pos.iter().enumerate() {
            row_of[p as usize] = r as u32;
        }
        Self { x0, g, row_of, v }
    }

    /// Position p's row of the simplex, written into `out` (V).
    fn row_into(&self, p: usize, out: &mut [f32]) {
        let (v, r) = (self.v, self.row_of[p] as usize);
        match self.g {
            Some(g) if self.row_of[p] != u32::MAX => out.copy_from_slice(&g[r * v..(r + 1) * v]),
            _ => {
                out.fill(0.0);
                out[self.x0[p] as usize] = 1.0;
            }
        }
    }

    /// The rows at `pos`, as an (M, V) tensor without gradient.
    fn rows(&self, pos: &[u32]) -> Result<Tensor> {
        let mut out = vec![0f32; pos.len() * self.v];
        for (&p, o) in pos.iter().zip(out.chunks_exact_mut(self.v)) {
            self.row_into(p as usize, o);
        }
        Ok(Tensor::from_vec(
            out,
            (pos.len(), self.v),
            &crate::runtime::device(),
        )?)
    }
}

/// Draw x_t from q_t(. | G) row by row (each sequence's simplex built in one reused buffer) and
/// order its active positions (those also active in x_t' first, with their row in the student's
/// output).
fn renoise(
    process: &dyn ForwardProcess,
    g: &Simplex,
    t: &[f64],
    l: usize,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Renoised {
    let (n, v) = (g.x0.len(), g.v);
    let mut xt = vec![0u32; n];
    let mut seq = vec![0f32; l * v];
    for (r, &tr) in t.iter().enumerate() {
        for (i, row) in seq.chunks_exact_mut(v).enumerate() {
            g.row_into(r * l + i, row);
        }
        process.renoise_row(&seq, tr, rng, &mut xt[r * l..(r + 1) * l]);
    }
    let act = active(process, &xt);
    let (mut both, mut only) = (Vec::new(), Vec::new());
    let mut g_rows = Vec::new();
    for p in act {
        if g.row_of[p as usize] != u32::MAX {
            both.push(p);
            g_rows.push(g.row_of[p as usize]);
        } else {
            only.push(p);
        }
    }
    let n_both = both.len();
    both.extend(only);
    Renoised {
        xt,
        pos: both,
        n_both,
        g_rows,
    }
}

/// The time of each position's row.
fn rows_t(t: &[f64], l: usize, pos: &[u32]) -> Vec<f64> {
    pos.iter().map(|&p| t[p as usize / l]).collect()
}

impl Idlm {
    /// Resume from a distillation checkpoint.
    pub fn from_loaded(l: &super::state::Loaded) -> Result<Self> {
        Ok(Self {
            cfg: l.state.config.clone(),
            student: resume_net(l, Role::Student)?,
            fake: match l.state.fake {
                Some(_) => Some(resume_net(l, Role::Fake)?),
                None => None,
            },
            rngs: l.state.rngs.clone(),
        })
    }
}

/// An IDLM run: the trainable state, the frozen teacher and its weights, and for Duo teachers the
/// Gaussian latent of the teacher's window with its temperature tau.
pub struct IdlmRun {
    idlm: Idlm,
    teacher: Dit,
    teacher_weights: HashMap<String, Tensor>,
    latent: Option<(DuoCurriculum, f64)>,
}

/// The Gaussian latent IDLM uses with a Duo teacher: the teacher's own gamma window and final tau.
fn duo_latent(meta: &CheckpointMeta) -> Result<Option<(DuoCurriculum, f64)>> {
    if meta.process != ModelFamily::DUO {
        return Ok(None);
    }
    let dir = crate::data::cache_dir().join("duality");
    let tau = 10f64.powf(meta.config.duo.tau_log10_end);
    let c = DuoCurriculum::new(&meta.config.duo, meta.model.vocab_size, &dir)?;
    Ok(Some((c, tau)))
}

impl IdlmRun {
    /// A fresh run from a teacher checkpoint's metadata and (EMA) weights.
    pub fn start(
        cfg: &DistillConfig,
        meta: &CheckpointMeta,
        weights: HashMap<String, Tensor>,
        origin: &std::path::Path,
    ) -> Result<Self> {
        Ok(Self {
            idlm: Idlm::new(cfg, &meta.config, &meta.model, &weights, origin)?,
            teacher: dit_from_tensors(&weights, &meta.model, origin)?,
            teacher_weights: weights,
            latent: duo_latent(meta)?,
        })
    }

    /// Resume from a distillation checkpoint.
    pub fn from_loaded(l: &super::state::Loaded) -> Result<Self> {
        Ok(Self {
            idlm: Idlm::from_loaded(l)?,
            teacher: dit_from_tensors(&l.teacher, &l.ck.meta.model, &l.ck.dir)?,
            teacher_weights: l.teacher.clone(),
            latent: duo_latent(&l.ck.meta)?,
        })
    }
}

impl Distiller for IdlmRun {
    fn student(&self) -> &Trainer {
        &self.idlm.student
    }
    fn fake(&self) -> Option<&Trainer> {
        self.idlm.fake.as_ref()
    }
    fn teacher_weights(&self) -> &HashMap<String, Tensor> {
        &self.teacher_weights
    }
    fn record(&self, st: &mut super::state::DistillState) {
        st.rngs = self.idlm.rngs.clone();
    }
    fn set_config(&mut self, cfg: &DistillConfig) {
        self.idlm.cfg = cfg.clone();
    }
    fn advance(
        &mut self,
        process: &dyn ForwardProcess,
        data: &PackedTokens,
    ) -> Result<(serde_json::Value, String)> {
        let i = &mut self.idlm;
        let s = match &self.latent {
            Some((lat, tau)) => {
                let mode = i.cfg.duo_gradient;
                i.step_duo(&self.teacher, lat, *tau, mode, data)?
            }
            None => i.step(&self.teacher, process, data)?,
        };
        let fake_ok = i.fake.is_none() || s.fake_loss.is_finite();
        if !fake_ok || !s.student_loss.is_finite() {
            return Err(Error::NonFinite {
                what: "distillation loss",
                step: s.step,
            });
        }
        let msg = format!("fake {:.3} | student {:.4}", s.fake_loss, s.student_loss);
        let v = serde_json::to_value(s).map_err(|e| Error::Config(e.to_string()))?;
        Ok((v, msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Masked;
    use rand::SeedableRng;

    /// The dense B x L x V simplex the sample used to be built as: the oracle of [`Simplex`].
    fn dense(x0: &[u32], pos: &[u32], g: Option<&[f32]>, v: usize) -> Vec<f32> {
        let mut full = vec![0f32; x0.len() * v];
        for (i, &x) in x0.iter().enumerate() {
            full[i * v + x as usize] = 1.0;
        }
        if let Some(g) = g {
            for (r, &p) in pos.iter().enumerate() {
                let p = p as usize;
                full[p * v..(p + 1) * v].copy_from_slice(&g[r * v..(r + 1) * v]);
            }
        }
        full
    }

    /// Rows and re-noised draws equal those of the dense simplex, with and without G's rows.
    #[test]
    fn simplex_rows_and_draws_match_the_dense_oracle() {
        let (b, l, v) = (3usize, 5usize, 7usize);
        let process = Masked::new(v, (v - 1) as u32).unwrap();
        let x0: Vec<u32> = (0..b * l).map(|i| ((i * 5) % (v - 1)) as u32).collect();
        let pos: Vec<u32> = vec![1, 4, 7, 8, 14];
        let g: Vec<f32> = (0..pos.len() * v)
            .map(|i| ((i * 13) % 11) as f32 / 10.0)
            .collect();
        let t = [0.9, 0.5, 0.99];
        for g in [None, Some(g.as_slice())] {
            let full = dense(&x0, &pos, g, v);
            let s = Simplex::new(&x0, &pos, g, v);
            let all: Vec<u32> = (0..(b * l) as u32).collect();
            let rows = s.rows(&all).unwrap().flatten_all().unwrap();
            assert_eq!(rows.to_vec1::<f32>().unwrap(), full);
            let rn = renoise(
                &process,
                &s,
                &t,
                l,
                &mut rand_chacha::ChaCha8Rng::seed_from_u64(9),
            );
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
            let mut want = vec![0u32; b * l];
            for (r, &tr) in t.iter().enumerate() {
                let seq = &full[r * l * v..(r + 1) * l * v];
                process.renoise_row(seq, tr, &mut rng, &mut want[r * l..(r + 1) * l]);
            }
            assert_eq!(rn.xt, want);
            // Active positions also active in x_t' come first, each with its row in G.
            for (i, &p) in rn.pos[..rn.n_both].iter().enumerate() {
                assert_eq!(pos[rn.g_rows[i] as usize], p);
            }
        }
    }
}
