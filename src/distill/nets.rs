//! Pieces every distiller shares: a trainable network's logits at chosen positions, batch
//! corruption, the time pairs of a phase, and the random streams of a distillation run.

use candle_core::Tensor;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::config::TimeCoupling;
use crate::Result;
use crate::nn::{Dit, DitInput, DropoutRng};
use crate::process::ForwardProcess;
use crate::process::schedule::antithetic_times;

/// Random streams of a distiller (the networks' dropout streams live in their trainers).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistillRngs {
    /// Diffusion times.
    pub time: ChaCha8Rng,
    /// Forward-process noise and re-noising draws.
    pub noise: ChaCha8Rng,
}

impl DistillRngs {
    /// Streams derived from one seed (distinct from the trainers' streams of the same seed).
    pub fn new(seed: u64) -> Self {
        let stream = |s: u64| {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            r.set_stream(s);
            r
        };
        Self {
            time: stream(11),
            noise: stream(12),
        }
    }
}

/// Logits (M, V) of `model` at the flat positions `pos` of `xt` (B, L), with the graph kept so a
/// loss can backpropagate into the model; dropout when given.
pub fn logits_at(
    model: &Dit,
    process: &dyn ForwardProcess,
    xt: &[u32],
    (b, l): (usize, usize),
    t: &[f64],
    pos: &[u32],
    dropout: Option<&mut DropoutRng>,
) -> Result<Tensor> {
    let dev = model.device().clone();
    let xtt = Tensor::from_slice(xt, (b, l), &dev)?;
    let sigma: Vec<f32> = t.iter().map(|&ti| process.sigma(ti) as f32).collect();
    let sigma = Tensor::from_vec(sigma, b, &dev)?;
    model.head(&model.features_at(DitInput::Ids(&xtt), &sigma, pos, dropout)?)
}

/// x_t ~ q_t(. | x0) for every row of a (B, L) batch.
pub fn corrupt(
    process: &dyn ForwardProcess,
    x0: &[u32],
    l: usize,
    t: &[f64],
    rng: &mut ChaCha8Rng,
) -> Vec<u32> {
    let mut xt = vec![0u32; x0.len()];
    for (r, &tr) in t.iter().enumerate() {
        let row = r * l..(r + 1) * l;
        process.corrupt_row(&x0[row.clone()], tr, rng, &mut xt[row]);
    }
    xt
}

/// The (t', t) pairs of one update's `n` samples: t' is stratified over the accumulated batch; t
/// is a second stratified draw paired with it by stratum (shared) or shuffled (independent).
pub fn phase_times(n: usize, coupling: TimeCoupling, rng: &mut ChaCha8Rng) -> (Vec<f64>, Vec<f64>) {
    let tp = antithetic_times(n, rng);
    let mut t = antithetic_times(n, rng);
    if coupling == TimeCoupling::Independent {
        t.shuffle(rng);
    }
    (tp, t)
}

/// Per-position times (B x L) from per-row times.
pub fn per_position(t: &[f64], l: usize) -> Vec<f64> {
    t.iter()
        .flat_map(|&ti| std::iter::repeat_n(ti, l))
        .collect()
}

/// Flat positions (into B x L) where the process can change a token (MDLM: the masked ones).
pub fn active(process: &dyn ForwardProcess, xt: &[u32]) -> Vec<u32> {
    process
        .active_positions(xt)
        .unwrap_or_else(|| (0..xt.len() as u32).collect())
}

/// A frozen copy of a student's current raw weights and the network built from them (the next
/// round's teacher in SDTT and DCD). A copy: the student's tensors share storage with its
/// variables, which the next updates overwrite in place.
pub fn snapshot(
    student: &crate::train::Trainer,
) -> Result<(std::collections::HashMap<String, Tensor>, Dit)> {
    let w: std::collections::HashMap<String, Tensor> = student
        .weights()
        .into_iter()
        .map(|(k, v)| Ok((k, v.detach().copy()?)))
        .collect::<Result<_>>()?;
    let net =
        crate::checkpoint::dit_from_tensors(&w, &student.dit_cfg, std::path::Path::new("student"))?;
    Ok((w, net))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_times_share_a_stratum_and_independent_ones_do_not() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let n = 64;
        let (tp, t) = phase_times(n, TimeCoupling::Shared, &mut rng);
        assert!(
            tp.iter()
                .zip(&t)
                .all(|(a, b)| (a - b).abs() < 1.0 / n as f64)
        );
        let (tp, t) = phase_times(n, TimeCoupling::Independent, &mut rng);
        let far = tp
            .iter()
            .zip(&t)
            .filter(|(a, b)| (*a - *b).abs() > 0.25)
            .count();
        assert!(far > n / 8, "{far}");
    }
}
