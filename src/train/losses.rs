//! The diffusion teacher's losses: the NELBO integrand at the positions that can carry loss, its
//! batch mean (the training loss) and the validation NELBO estimate.

use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::PackedTokens;
use crate::data::pairs::{RowLayout, clamp_prompts, prompt_lens, unclamped_count};
use crate::nn::{Dit, DitInput, DropoutRng};
use crate::process::ForwardProcess;
use crate::process::schedule::antithetic_times;
use crate::{Error, Result};

/// NELBO integrand at the positions that can carry loss (all others are exactly zero): the
/// vocabulary projection runs only there. Returns the per-position losses (M,) and, for each, its
/// row in the batch; None when no position is active. `grad`: a backward will follow. `prompts`:
/// per row, the clamped positions at its start, left out of the loss (empty: none).
#[allow(clippy::too_many_arguments)]
pub fn active_losses(
    model: &Dit,
    process: &dyn ForwardProcess,
    x0: &[u32],
    xt: &[u32],
    b: usize,
    l: usize,
    t: &[f64],
    prompts: &[usize],
    dropout: Option<&mut DropoutRng>,
    grad: bool,
) -> Result<Option<(Tensor, Vec<usize>)>> {
    let mut pos: Vec<u32> = process
        .active_positions(xt)
        .unwrap_or_else(|| (0..(b * l) as u32).collect());
    if !prompts.is_empty() {
        pos.retain(|&p| (p as usize % l) >= prompts[p as usize / l]);
    }
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
    prompted_batch_loss(model, process, x0, xt, b, l, t, &[], dropout)
}

/// `batch_loss` of rows whose first `prompts[r]` positions are a clamped prompt: the mean over
/// the other positions (answer and padding), the prompt's left out.
#[allow(clippy::too_many_arguments)]
pub fn prompted_batch_loss(
    model: &Dit,
    process: &dyn ForwardProcess,
    x0: &[u32],
    xt: &[u32],
    b: usize,
    l: usize,
    t: &[f64],
    prompts: &[usize],
    dropout: Option<&mut DropoutRng>,
) -> Result<Tensor> {
    let counted = unclamped_count(b, l, prompts);
    match active_losses(model, process, x0, xt, b, l, t, prompts, dropout, true)? {
        Some((loss, _)) if counted > 0 => Ok((loss.sum_all()? / counted as f64)?),
        _ => Ok(Tensor::new(0f32, model.device())?),
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
/// independent (seeded) corruptions of each row; rows of a pairs `layout` have their prompt
/// clamped and are scored on the rest (per token of the rest).
#[allow(clippy::too_many_arguments)]
pub fn nelbo(
    model: &Dit,
    process: &dyn ForwardProcess,
    data: &PackedTokens,
    layout: &RowLayout,
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
            let prompts = prompt_lens(&x0, l, layout);
            clamp_prompts(&x0, &mut xt, l, &prompts);
            let mut sums = vec![0f64; b];
            if let Some((loss, rows)) =
                active_losses(model, process, &x0, &xt, b, l, &t, &prompts, None, false)?
            {
                for (v, r) in loss.to_vec1::<f32>()?.iter().zip(rows) {
                    sums[r] += *v as f64;
                }
            }
            let rows = sums
                .iter()
                .zip(&prompts)
                .map(|(s, &p)| s / (l - p.min(l - 1)) as f64);
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
    use crate::config::RunConfig;
    use crate::process::{ForwardProcess, Masked};
    use crate::train::Trainer;

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
        for ((name, var), g) in tr.names().iter().zip(tr.vars()).zip(&gs) {
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
