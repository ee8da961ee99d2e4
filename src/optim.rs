//! AdamW (decoupled weight decay, PyTorch semantics), global-norm clipping, warmup schedule.

use std::sync::Mutex;

use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;

use crate::nn::ops::f32_data;

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

    /// One update of every variable with its gradient times `grad_scale` at learning rate `lr`:
    /// one pass over (weight, gradient, m, v) per variable, the weight updated in place (on the
    /// CPU; elsewhere with composed tensor ops and the same arithmetic).
    pub fn step(&mut self, vars: &[Var], grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(self.step as i32);
        let bc2 = 1.0 - p.beta2.powi(self.step as i32);
        let k = Coeffs {
            step_size: (lr / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            b1: p.beta1 as f32,
            b2: p.beta2 as f32,
            eps: p.eps as f32,
            decay: (1.0 - lr * p.weight_decay) as f32,
            gs: grad_scale as f32,
        };
        for (i, (var, g)) in vars.iter().zip(grads).enumerate() {
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            let w = var.as_tensor();
            if w.device().is_cpu() && w.dtype() == DType::F32 && w.is_contiguous() {
                let g = g.to_dtype(DType::F32)?.contiguous()?;
                let op = InPlace {
                    k,
                    mv: Mutex::new((m.as_mut_slice(), v.as_mut_slice())),
                };
                w.inplace_op2(&g, &op)?;
            } else {
                let gv = g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                let mut wv = w.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                k.apply(&mut wv, m, v, &gv);
                let t = Tensor::from_vec(wv, w.shape(), w.device())?.to_dtype(w.dtype())?;
                var.set(&t)?;
            }
        }
        Ok(())
    }
}

/// The per-step constants of the update.
#[derive(Clone, Copy)]
struct Coeffs {
    step_size: f32,
    bc2_sqrt: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    decay: f32,
    gs: f32,
}

impl Coeffs {
    /// The AdamW update of one variable's flat weights, moments and gradient, in parallel chunks.
    fn apply(&self, w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        const CH: usize = 4096;
        let k = *self;
        w.par_chunks_mut(CH)
            .zip(m.par_chunks_mut(CH))
            .zip(v.par_chunks_mut(CH))
            .zip(g.par_chunks(CH))
            .for_each(|(((w, m), v), g)| {
                crate::nn::ops::simd::dispatch(
                    #[inline(always)]
                    || {
                        for j in 0..w.len().min(g.len()) {
                            let gj = g[j] * k.gs;
                            m[j] = k.b1 * m[j] + (1.0 - k.b1) * gj;
                            v[j] = k.b2 * v[j] + (1.0 - k.b2) * gj * gj;
                            let denom = v[j].sqrt() / k.bc2_sqrt + k.eps;
                            w[j] = w[j] * k.decay - k.step_size * m[j] / denom;
                        }
                    },
                )
            });
    }
}

/// The update as an in-place op on the weight's own storage: no copies of the weights.
struct InPlace<'a> {
    k: Coeffs,
    mv: Mutex<(&'a mut [f32], &'a mut [f32])>,
}

impl InplaceOp2 for InPlace<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let g = f32_data(s2, l2, self.name())?;
        let CpuStorage::F32(w) = s1 else {
            candle_core::bail!("adamw: expected f32 weights")
        };
        let Some((a, b)) = l1.contiguous_offsets() else {
            candle_core::bail!("adamw: weights must be contiguous")
        };
        let w = &mut w[a..b];
        let mut guard = self
            .mv
            .lock()
            .map_err(|_| candle_core::Error::Msg("adamw: state lock poisoned".into()))?;
        let (m, v) = &mut *guard;
        if g.len() != w.len() || m.len() != w.len() || v.len() != w.len() {
            candle_core::bail!(
                "adamw: weight {} vs gradient {} vs state {} elements",
                w.len(),
                g.len(),
                m.len()
            )
        }
        self.k.apply(w, m, v, g);
        Ok(())
    }
}

/// Global L2 norm of a list of gradients.
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut total = 0f64;
    for g in grads {
        total += match sum_sq_cpu(g) {
            Some(s) => s,
            None => g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64,
        };
    }
    Ok(total.sqrt())
}

/// Sum of squares of a contiguous CPU f32 tensor read in place (no squared copy), by parallel
/// chunks summed in f64; None for anything else.
fn sum_sq_cpu(g: &Tensor) -> Option<f64> {
    let (storage, layout) = g.storage_and_layout();
    let candle_core::Storage::Cpu(CpuStorage::F32(v)) = &*storage else {
        return None;
    };
    let (a, b) = layout.contiguous_offsets()?;
    Some(
        v[a..b]
            .par_chunks(1 << 15)
            .map(|c| crate::nn::ops::lanes::dot(c, c) as f64)
            .sum(),
    )
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
    fn global_norm_reads_contiguous_and_strided_gradients() {
        let dev = Device::Cpu;
        let a: Vec<f32> = (0..70_000)
            .map(|i| ((i % 97) as f32 - 48.0) / 13.0)
            .collect();
        let want: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() * 2.0 + 30.0;
        let big = Tensor::from_vec(a.clone(), 70_000, &dev).unwrap();
        // A transposed view takes the composed path; a narrowed one the in-place path.
        let t = Tensor::from_vec(a, (700, 100), &dev).unwrap().t().unwrap();
        let small = Tensor::new(&[1f32, 2.0, 3.0, 4.0, 0.0, 0.0], &dev).unwrap();
        let n = global_norm(&[big, t, small.narrow(0, 0, 4).unwrap()]).unwrap();
        assert!(
            (n - want.sqrt()).abs() < 1e-4 * want.sqrt(),
            "{n} vs {}",
            want.sqrt()
        );
    }

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

    /// AdamW written with tensor ops, the oracle of the in-place kernel.
    #[allow(clippy::too_many_arguments)]
    fn composed_step(
        w: &Tensor,
        m: &Tensor,
        v: &Tensor,
        g: &Tensor,
        p: AdamWParams,
        lr: f64,
        step: i32,
        gs: f64,
    ) -> (Tensor, Tensor, Tensor) {
        let g = (g * gs).unwrap();
        let m = ((m * p.beta1).unwrap() + (&g * (1.0 - p.beta1)).unwrap()).unwrap();
        let v = ((v * p.beta2).unwrap() + (g.sqr().unwrap() * (1.0 - p.beta2)).unwrap()).unwrap();
        let bc1 = 1.0 - p.beta1.powi(step);
        let bc2 = 1.0 - p.beta2.powi(step);
        let denom = ((v.sqrt().unwrap() / bc2.sqrt()).unwrap() + p.eps).unwrap();
        let upd = ((&m / &denom).unwrap() * (lr / bc1)).unwrap();
        let w = ((w * (1.0 - lr * p.weight_decay)).unwrap() - upd).unwrap();
        (w, m, v)
    }

    #[test]
    fn in_place_update_matches_composed_adamw_over_steps() {
        let dev = Device::Cpu;
        let p = AdamWParams {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.05,
        };
        // Two variables, one larger than a parallel chunk.
        let vars = [
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 5), &dev).unwrap()).unwrap(),
            Var::from_tensor(&Tensor::randn(0f32, 1.0, 10_000, &dev).unwrap()).unwrap(),
        ];
        let mut reference: Vec<(Tensor, Tensor, Tensor)> = vars
            .iter()
            .map(|v| {
                let z = v.as_tensor().zeros_like().unwrap();
                (v.as_tensor().copy().unwrap(), z.clone(), z)
            })
            .collect();
        let mut opt = AdamW::new(&vars, p);
        for step in 1..=4 {
            let grads: Vec<Tensor> = vars
                .iter()
                .map(|v| Tensor::randn(0f32, 1.0, v.shape(), &dev).unwrap())
                .collect();
            opt.step(&vars, &grads, 1e-2, 0.5).unwrap();
            for (r, g) in reference.iter_mut().zip(&grads) {
                *r = composed_step(&r.0, &r.1, &r.2, g, p, 1e-2, step, 0.5);
            }
            for (v, r) in vars.iter().zip(&reference) {
                let d = (v.as_tensor() - &r.0)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap();
                assert!(d.to_scalar::<f32>().unwrap() < 1e-6, "step {step}");
            }
        }
    }

    #[test]
    fn warmup_starts_at_zero() {
        assert_eq!(warmup_lr(1.0, 10, 0), 0.0);
        assert_eq!(warmup_lr(1.0, 10, 5), 0.5);
        assert_eq!(warmup_lr(1.0, 10, 20), 1.0);
        assert_eq!(warmup_lr(1.0, 0, 0), 1.0);
    }
}
