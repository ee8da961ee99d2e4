//! A denoiser that computes only its first K calls and answers the rest with zero logits, logging
//! every call's size and time, so a long sampler run (1024 steps at batch 8: hours on two cores)
//! is timed on K real calls and extrapolated over the calls it really makes. The count is real
//! because the masked sampler's reveal pattern does not depend on the network's outputs: the
//! stay/reveal events are drawn before the call (`Masked::plan_step`, one uniform per masked
//! position), each revealed position takes exactly one uniform (`draw_f64`, whose weights sum to
//! a positive finite total), and SUBS gives MASK zero mass, so a revealed position never re-masks.

use std::sync::Mutex;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::nn::Denoiser;
use crate::{Error, Result};

/// One network call as the sampler made it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Call {
    /// Rows (sequences) of the input batch.
    pub rows: usize,
    /// Positions whose logits were asked for.
    pub positions: usize,
    /// Seconds inside the call.
    pub seconds: f64,
    /// Whether the network ran (false: zero logits past the budget).
    pub real: bool,
}

/// `inner`, computed for at most `limit` calls (None: every call).
pub struct Budgeted<'a> {
    inner: &'a dyn Denoiser,
    vocab: usize,
    limit: Option<usize>,
    log: Mutex<Vec<Call>>,
}

impl<'a> Budgeted<'a> {
    /// Wrap `inner`, whose logits have `vocab` columns.
    pub fn new(inner: &'a dyn Denoiser, vocab: usize, limit: Option<usize>) -> Self {
        Self {
            inner,
            vocab,
            limit,
            log: Mutex::new(Vec::new()),
        }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Result<Vec<Call>> {
        self.log
            .lock()
            .map(|l| l.clone())
            .map_err(|_| Error::InvalidArgument("call log lock poisoned".into()))
    }
}

impl Denoiser for Budgeted<'_> {
    fn logits(&self, xt: &Tensor, sigma: &Tensor, positions: Option<&[u32]>) -> Result<Tensor> {
        let (b, l) = xt.dims2()?;
        let m = positions.map_or(b * l, <[u32]>::len);
        let made = self.calls()?.len();
        let real = self.limit.is_none_or(|k| made < k);
        let t0 = Instant::now();
        let out = if real {
            // candle on the CPU is eager: the logits are computed when this returns.
            self.inner.logits(xt, sigma, positions)?
        } else {
            Tensor::zeros((m, self.vocab), DType::F32, &self.inner.device())?
        };
        let call = Call {
            rows: b,
            positions: m,
            seconds: t0.elapsed().as_secs_f64(),
            real,
        };
        self.log
            .lock()
            .map_err(|_| Error::InvalidArgument("call log lock poisoned".into()))?
            .push(call);
        Ok(out)
    }
    fn time_conditioned(&self) -> bool {
        self.inner.time_conditioned()
    }
    fn max_len(&self) -> usize {
        self.inner.max_len()
    }
    fn device(&self) -> Device {
        self.inner.device()
    }
}

/// The run's wall time with every zero-logit call replaced by an estimate of the real one: the
/// mean time of the measured calls with the same number of rows, or, if none had that many, the
/// measured seconds per row times its rows (a call's work is linear in its rows of L tokens).
/// Returns (estimated seconds, whether any part was estimated).
pub fn extrapolate(wall: f64, calls: &[Call]) -> (f64, bool) {
    let real: Vec<&Call> = calls.iter().filter(|c| c.real).collect();
    let rows: usize = real.iter().map(|c| c.rows).sum();
    let secs: f64 = real.iter().map(|c| c.seconds).sum();
    let per_row = if rows > 0 { secs / rows as f64 } else { 0.0 };
    let mut est = wall;
    let mut any = false;
    for c in calls.iter().filter(|c| !c.real) {
        let same: Vec<f64> = real
            .iter()
            .filter(|r| r.rows == c.rows)
            .map(|r| r.seconds)
            .collect();
        let guess = if same.is_empty() {
            per_row * c.rows as f64
        } else {
            same.iter().sum::<f64>() / same.len() as f64
        };
        est += guess - c.seconds;
        any = true;
    }
    (est, any)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{Masked, NoiseRemoval};
    use crate::sample::{SamplerOptions, sample};

    /// Logits that depend on every token of the row (so a budgeted run sees other predictions and
    /// draws other tokens), without time input, as MDLM's default network.
    struct Toy;
    const V: usize = 12;

    impl Denoiser for Toy {
        fn logits(&self, xt: &Tensor, _: &Tensor, positions: Option<&[u32]>) -> Result<Tensor> {
            let (b, l) = xt.dims2()?;
            let ids = xt.flatten_all()?.to_vec1::<u32>()?;
            let flat: Vec<u32> =
                positions.map_or_else(|| (0..(b * l) as u32).collect(), |p| p.to_vec());
            let mut z = Vec::with_capacity(flat.len() * V);
            for &f in &flat {
                let row = &ids[(f as usize / l) * l..(f as usize / l + 1) * l];
                let h = row.iter().fold(f as u64 + 1, |a, &x| {
                    a.wrapping_mul(31).wrapping_add(x as u64)
                });
                z.extend((0..V).map(|v| ((h >> (v % 16)) & 7) as f32));
            }
            Ok(Tensor::from_vec(z, (flat.len(), V), &Device::Cpu)?)
        }
        fn time_conditioned(&self) -> bool {
            false
        }
        fn max_len(&self) -> usize {
            64
        }
        fn device(&self) -> Device {
            Device::Cpu
        }
    }

    fn run(
        limit: Option<usize>,
        steps: usize,
        batch: usize,
    ) -> (Vec<Call>, Vec<usize>, Vec<Vec<u32>>) {
        let process = Masked::new(V, (V - 1) as u32).unwrap();
        let den = Budgeted::new(&Toy, V, limit);
        let opts = SamplerOptions {
            steps,
            noise_removal: NoiseRemoval::Ancestral,
            cache: true,
            batch_size: batch,
            seed: 3,
        };
        let s = sample(&den, &process, batch, 24, &opts, None).unwrap();
        let nfe = s.iter().map(|s| s.nfe).collect();
        let ids = s.into_iter().map(|s| s.ids).collect();
        (den.calls().unwrap(), nfe, ids)
    }

    #[test]
    fn budgeted_runs_make_the_same_calls_as_full_ones() {
        // 64 steps over 24 positions: most steps reveal nothing and are skipped, so the count is
        // well below 64; a run computing only 2 calls must make the same calls of the same sizes
        // (and the same NFE per sequence), though it draws other tokens.
        for batch in [1, 3] {
            let (full, nfe_full, ids_full) = run(None, 64, batch);
            let (cut, nfe_cut, ids_cut) = run(Some(2), 64, batch);
            let shape = |c: &[Call]| c.iter().map(|c| (c.rows, c.positions)).collect::<Vec<_>>();
            assert_eq!(shape(&full), shape(&cut), "batch {batch}");
            assert_eq!(nfe_full, nfe_cut, "batch {batch}");
            assert_ne!(
                ids_full, ids_cut,
                "batch {batch}: the outputs were not used"
            );
            assert!(full.len() < 64 && full.len() > 4, "{} calls", full.len());
            assert_eq!(cut.iter().filter(|c| c.real).count(), 2);
            // Every position is revealed exactly once over the run.
            let revealed: usize = full.iter().map(|c| c.positions).sum();
            assert_eq!(revealed, 24 * batch);
        }
    }

    #[test]
    fn extrapolation_replaces_zero_calls_by_measured_ones() {
        let c = |rows, seconds, real| Call {
            rows,
            positions: 1,
            seconds,
            real,
        };
        // Two measured 8-row calls of 2 s; one fake 8-row call (0.1 s) and one fake 4-row call.
        let calls = [
            c(8, 2.0, true),
            c(8, 2.0, true),
            c(8, 0.1, false),
            c(4, 0.1, false),
        ];
        let (est, any) = extrapolate(10.0, &calls);
        assert!(any);
        assert!((est - (10.0 + 1.9 + 0.9)).abs() < 1e-12, "{est}");
        assert_eq!(extrapolate(5.0, &calls[..2]), (5.0, false));
    }
}
