//! AdamW (decoupled weight decay, PyTorch semantics), global-norm clipping, warmup schedule.

use candle_core::{Tensor, Var};
use rayon::prelude::*;

use crate::Result;

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    /// beta1.
    pub beta1: f64,
    /// beta2.
    pub beta2: f64,
    /// epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

/// AdamW state for a list of variables (first and second moments, step count).
pub struct AdamW {
    /// Hyper-parameters.
    pub params: AdamWParams,
    /// Optimizer steps taken.
    pub step: u64,
    /// First moments, one flat vector per variable.
    pub m: Vec<Vec<f32>>,
    /// Second moments.
    pub v: Vec<Vec<f32>>,
}

impl AdamW {
    /// Zero state for `vars`.
    pub fn new(vars: &[Var], params: AdamWParams) -> Self {
        let m = vars.iter().map(|v| vec![0f32; v.elem_count()]).collect();
        let v = vars.iter().map(|v| vec![0f32; v.elem_count()]).collect();
        Self {
            params,
            step: 0,
            m,
            v,
        }
    }

    /// One update of every variable with its gradient times `grad_scale` at learning rate `lr`.
    pub fn step(&mut self, vars: &[Var], grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(self.step as i32);
        let bc2 = 1.0 - p.beta2.powi(self.step as i32);
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let (b1, b2, eps) = (p.beta1 as f32, p.beta2 as f32, p.eps as f32);
        let decay = (1.0 - lr * p.weight_decay) as f32;
        let gs = grad_scale as f32;
        for (i, (var, g)) in vars.iter().zip(grads).enumerate() {
            let g = g.flatten_all()?.to_vec1::<f32>()?;
            let mut w = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            const CH: usize = 4096;
            w.par_chunks_mut(CH)
                .zip(m.par_chunks_mut(CH))
                .zip(v.par_chunks_mut(CH))
                .zip(g.par_chunks(CH))
                .for_each(|(((w, m), v), g)| {
                    for j in 0..w.len() {
                        let gj = g[j] * gs;
                        m[j] = b1 * m[j] + (1.0 - b1) * gj;
                        v[j] = b2 * v[j] + (1.0 - b2) * gj * gj;
                        let denom = v[j].sqrt() / bc2_sqrt + eps;
                        w[j] = w[j] * decay - step_size * m[j] / denom;
                    }
                });
            var.set(&Tensor::from_vec(w, var.shape(), var.device())?)?;
        }
        Ok(())
    }
}

/// Global L2 norm of a list of gradients.
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut total = 0f64;
    for g in grads {
        total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    Ok(total.sqrt())
}

/// Constant learning rate after a linear warmup, as `get_constant_schedule_with_warmup`:
/// the n-th update (n = 0, 1, ...) uses lr * min(n / warmup, 1).
pub fn warmup_lr(base: f64, warmup: u64, completed_steps: u64) -> f64 {
    if warmup == 0 || completed_steps >= warmup {
        base
    } else {
        base * completed_steps as f64 / warmup as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adamw_matches_a_hand_computed_step() {
        let var = Var::from_vec(vec![1.0f32, -2.0], 2, &Device::Cpu).unwrap();
        let p = AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(std::slice::from_ref(&var), p);
        let g = Tensor::new(&[0.5f32, -0.25], &Device::Cpu).unwrap();
        opt.step(std::slice::from_ref(&var), &[g], 0.01, 1.0)
            .unwrap();
        // First step: m_hat = g, v_hat = g^2, so the update is lr * sign(g) (up to eps),
        // after the decoupled decay w (1 - lr wd).
        let w = var.as_tensor().to_vec1::<f32>().unwrap();
        assert!((w[0] - (1.0 * (1.0 - 0.001) - 0.01)).abs() < 1e-6);
        assert!((w[1] - (-2.0 * (1.0 - 0.001) + 0.01)).abs() < 1e-6);
    }

    #[test]
    fn warmup_starts_at_zero() {
        assert_eq!(warmup_lr(1.0, 10, 0), 0.0);
        assert_eq!(warmup_lr(1.0, 10, 5), 0.5);
        assert_eq!(warmup_lr(1.0, 10, 20), 1.0);
        assert_eq!(warmup_lr(1.0, 0, 0), 1.0);
    }
}
