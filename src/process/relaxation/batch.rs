//! Batch helpers every distiller shares: corruption of a batch, the positions a process can
//! change, a network's logits there.

use candle_core::Tensor;
use rand_chacha::ChaCha8Rng;

use crate::Result;
use crate::nn::{Dit, DitInput, DropoutRng};
use crate::process::ForwardProcess;

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

/// Flat positions (into B x L) where the process can change a token (MDLM: the masked ones).
pub fn active(process: &dyn ForwardProcess, xt: &[u32]) -> Vec<u32> {
    process
        .active_positions(xt)
        .unwrap_or_else(|| (0..xt.len() as u32).collect())
}
