//! Exponential moving average of parameters with the reference warm-up (algorithms.md §2.5).

use candle_core::{Tensor, Var};

use crate::Result;

/// Shadow copies of a set of variables.
pub struct Ema {
    /// Target decay.
    pub decay: f64,
    /// Number of updates so far.
    pub num_updates: u64,
    /// Shadow tensors, in the order of the variables given to `new`.
    pub shadow: Vec<Tensor>,
}

impl Ema {
    /// Start the average at the current values of `vars`.
    pub fn new(vars: &[Var], decay: f64) -> Result<Self> {
        let shadow = vars
            .iter()
            .map(|v| v.as_tensor().copy())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            decay,
            num_updates: 0,
            shadow,
        })
    }

    /// The decay used at the next update: min(decay, (1 + n) / (10 + n)).
    pub fn effective_decay(&self) -> f64 {
        let n = (self.num_updates + 1) as f64;
        self.decay.min((1.0 + n) / (10.0 + n))
    }

    /// shadow -= (1 - d)(shadow - param).
    pub fn update(&mut self, vars: &[Var]) -> Result<()> {
        let d = self.effective_decay();
        self.num_updates += 1;
        for (s, v) in self.shadow.iter_mut().zip(vars) {
            let diff = (&*s - v.as_tensor())?;
            *s = (&*s - (diff * (1.0 - d))?)?;
        }
        Ok(())
    }
}
