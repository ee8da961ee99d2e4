//! IDLM's relaxation for processes with hard states (masked diffusion, as coded in the reference,
//! docs/algorithms.md §4.2, §4.4): the student sees a hard x_t' ~ q_t'(. | x0); its simplex G (the
//! parameterisation's p(x0 | x_t') where x_t' can change, one-hot data elsewhere) is re-noised to a
//! hard x_t ~ q_t(. | G); the losses are the soft-target NELBO integrand at x_t's active positions,
//! so the gradient reaches the student only through the target G.

use candle_core::Tensor;
use rand_chacha::ChaCha8Rng;

use super::{Relaxation, active, corrupt, logits_at};
use crate::Result;
use crate::data::pairs::clamp_prompts;
use crate::nn::Denoiser;
use crate::nn::{Dit, DropoutRng};
use crate::process::ForwardProcess;

/// Hard re-noising for a process (MDLM's absorbing state).
#[derive(Clone, Copy)]
pub struct Hard<'a>(pub &'a dyn ForwardProcess);

/// One micro-batch's real data and the student's input eps = (x_t', t').
pub struct Input {
    x0: Vec<u32>,
    xtp: Vec<u32>,
    tp: Vec<f64>,
    t: Vec<f64>,
    l: usize,
    /// Each row's clamped prompt length (0: none).
    prompts: Vec<usize>,
}

/// The re-noised state built from a student sample, and the soft targets at its active positions.
pub struct Renoised {
    xt: Vec<u32>,
    /// Active positions of x_t: first those active in x_t' (G has a gradient there), then the rest.
    pos: Vec<u32>,
    /// How many of `pos` are active in x_t'.
    n_both: usize,
    /// For each of the first `n_both` positions, its row in the student's output.
    g_rows: Vec<u32>,
}

impl crate::process::Masked {
    /// IDLM's relaxation of this process: hard re-noising of the student's simplex.
    pub fn relaxation(&self) -> Hard<'_> {
        Hard(self)
    }
}

impl<'a> Relaxation for Hard<'a> {
    type Teacher = dyn Denoiser + 'a;
    type Job = Input;
    type FakeTarget = (Renoised, Tensor);

    fn job(
        &self,
        x0: Vec<u32>,
        l: usize,
        tp: &[f64],
        t: &[f64],
        prompts: &[usize],
        rng: &mut ChaCha8Rng,
    ) -> Result<Input> {
        let mut xtp = corrupt(self.0, &x0, l, tp, rng);
        // Clean prompts are not active: the student's sample is the data there.
        clamp_prompts(&x0, &mut xtp, l, prompts);
        Ok(Input {
            x0,
            xtp,
            tp: tp.to_vec(),
            t: t.to_vec(),
            l,
            prompts: prompts.to_vec(),
        })
    }

    fn fake_target(
        &self,
        student: &Dit,
        inp: &Input,
        rng: &mut ChaCha8Rng,
    ) -> Result<(Renoised, Tensor)> {
        let (process, l) = (self.0, inp.l);
        let b = inp.tp.len();
        let pos_p = active(process, &inp.xtp);
        let g = if pos_p.is_empty() {
            None
        } else {
            let sig: Vec<f32> = inp.tp.iter().map(|&t| process.sigma(t) as f32).collect();
            let dev = Denoiser::device(student);
            let logits = Denoiser::logits(
                student,
                &Tensor::from_slice(&inp.xtp, (b, l), &dev)?,
                &Tensor::from_vec(sig, b, &dev)?,
                Some(&pos_p),
            )?
            .detach();
            let at: Vec<u32> = pos_p.iter().map(|&p| inp.xtp[p as usize]).collect();
            Some(process.clean_probs(&logits, &at)?)
        };
        let simplex = Simplex::new(&inp.x0, &pos_p, g.as_deref(), process.vocab_size());
        let rn = renoise(process, &simplex, &inp.t, l, &inp.prompts, rng);
        let target = simplex.rows(&rn.pos)?;
        Ok((rn, target))
    }

    fn fake_loss(
        &self,
        fake: &Dit,
        inp: &Input,
        (rn, target): &(Renoised, Tensor),
        dropout: &mut DropoutRng,
    ) -> Result<Tensor> {
        let (b, l) = (inp.tp.len(), inp.l);
        if rn.pos.is_empty() {
            return Ok(Tensor::new(0f32, &crate::runtime::device())?);
        }
        let tr: Vec<f64> = rows_t(&inp.t, l, &rn.pos);
        let logits = logits_at(fake, self.0, &rn.xt, (b, l), &inp.t, &rn.pos, Some(dropout))?;
        let xs: Vec<u32> = rn.pos.iter().map(|&q| rn.xt[q as usize]).collect();
        let loss = self.0.soft_loss_rows(&logits, &xs, target, &tr)?;
        Ok((loss.sum_all()? / b as f64)?)
    }

    fn generator_loss(
        &self,
        student: &Dit,
        teacher: &(dyn Denoiser + 'a),
        fake: Option<&Dit>,
        inp: &Input,
        dropout: &mut DropoutRng,
        rng: &mut ChaCha8Rng,
    ) -> Result<Tensor> {
        let (process, b, l) = (self.0, inp.tp.len(), inp.l);
        let pos_p = active(process, &inp.xtp);
        let g = if pos_p.is_empty() {
            None
        } else {
            let logits = logits_at(
                student,
                process,
                &inp.xtp,
                (b, l),
                &inp.tp,
                &pos_p,
                Some(dropout),
            )?;
            let at: Vec<u32> = pos_p.iter().map(|&q| inp.xtp[q as usize]).collect();
            Some(process.probs_rows(&logits, &at)?)
        };
        let g_vals = match &g {
            Some(g) => Some(g.detach().flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        let simplex = Simplex::new(&inp.x0, &pos_p, g_vals.as_deref(), process.vocab_size());
        let rn = renoise(process, &simplex, &inp.t, l, &inp.prompts, rng);
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
        let fake = fake.map(|f| f as &dyn Denoiser);
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
    prompts: &[usize],
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
    // The prompt is clean in x_t too (the draw above keeps the stream identical either way).
    clamp_prompts(g.x0, &mut xt, l, prompts);
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
                &[0; 3],
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

    /// Prompt positions stay clean in x_t' and in x_t and never become loss positions, at times
    /// where every other position is masked.
    #[test]
    fn prompts_stay_clean_in_every_state_and_out_of_the_loss() {
        let (b, l, v) = (3usize, 6usize, 9usize);
        let process = Masked::new(v, (v - 1) as u32).unwrap();
        let x0: Vec<u32> = (0..b * l).map(|i| ((i * 7) % (v - 1)) as u32).collect();
        let prompts = [2usize, 0, 5];
        let t = [1.0, 1.0, 1.0];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let inp = Hard(&process)
            .job(x0.clone(), l, &t, &t, &prompts, &mut rng)
            .unwrap();
        let pos_p = active(&process, &inp.xtp);
        let s = Simplex::new(&inp.x0, &pos_p, None, v);
        let rn = renoise(&process, &s, &t, l, &prompts, &mut rng);
        for (r, &p) in prompts.iter().enumerate() {
            for i in 0..l {
                let q = r * l + i;
                if i < p {
                    assert_eq!(inp.xtp[q], x0[q], "x_t' row {r} position {i}");
                    assert_eq!(rn.xt[q], x0[q], "x_t row {r} position {i}");
                    assert!(!rn.pos.contains(&(q as u32)) && !pos_p.contains(&(q as u32)));
                } else {
                    assert_eq!(inp.xtp[q], (v - 1) as u32);
                    assert!(rn.pos.contains(&(q as u32)));
                }
            }
        }
    }
}
