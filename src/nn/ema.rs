//! Exponential moving average of parameters with the reference warm-up (docs/algorithms.md §2.5).

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
            .map(|v| v.as_tensor().detach().copy())
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
            // Detached: the shadow must not keep a gradient graph that chains every past shadow.
            let diff = (&*s - v.as_tensor().detach())?;
            *s = (&*s - (diff * (1.0 - d))?)?.detach();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn update_follows_the_warmup_formula_and_keeps_no_graph() {
        let v = Var::new(&[0.0f32, 10.0], &Device::Cpu).unwrap();
        let mut e = Ema::new(std::slice::from_ref(&v), 0.9).unwrap();
        v.set(&Tensor::new(&[1.0f32, 0.0], &Device::Cpu).unwrap())
            .unwrap();
        e.update(std::slice::from_ref(&v)).unwrap();
        // First update: d = min(0.9, 2/11).
        let d = 2.0f32 / 11.0;
        let s = e.shadow[0].to_vec1::<f32>().unwrap();
        assert!((s[0] - (1.0 - d)).abs() < 1e-6 && (s[1] - 10.0 * d).abs() < 1e-5);
        // A shadow that tracked its op would chain every past shadow: a memory leak.
        assert!(!e.shadow[0].track_op());
    }
}
