//! Bias-free LayerNorm times a weight (the DiT's norm1 / norm2 / norm_final) with a fused backward:
//! candle's fused layer norm has no backward, and the composed one makes ~10 passes each way.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, D, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_data, lanes, par_new, rows_per_task, simd};

/// LayerNorm epsilon of the reference (`F.layer_norm` default).
pub const LN_EPS: f64 = 1e-5;

struct LayerNorm;

/// Mean and 1 / std of a row.
#[inline(always)]
pub(super) fn stats(x: &[f32]) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = lanes::sum(x) / n;
    let var = lanes::sum_sq_dev(x, mean) / n;
    (mean, 1.0 / (var + LN_EPS as f32).sqrt())
}

impl CustomOp2 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm-no-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, self.name())?;
        let w = f32_data(s2, l2, self.name())?;
        let d = w.len();
        let rows = rows_per_task(d);
        if d == 0 || !x.len().is_multiple_of(d) {
            candle_core::bail!("{}: input width is not the weight's {d}", self.name())
        }
        // SAFETY: chunks are whole rows of d (x.len() a multiple of d), each element written.
        let y = unsafe {
            par_new(
                x.len(),
                d * rows,
                #[inline(always)]
                |c, y| {
                    let x = &x[c * d * rows..c * d * rows + y.len()];
                    for (y, x) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                        let (m, r) = stats(x);
                        for i in 0..d {
                            y[i].write((x[i] - m) * r * w[i]);
                        }
                    }
                },
            )
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let n = x.elem_count();
        let both = x.apply_op3_no_bwd(w, &g.contiguous()?, &LayerNormBwd)?;
        let dx = both.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = both.narrow(0, n, d)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// Output: dx (flattened) followed by dw.
struct LayerNormBwd;

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "layer-norm-no-bias-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, self.name())?;
        let w = f32_data(s2, l2, self.name())?;
        let g = f32_data(s3, l3, self.name())?;
        let d = w.len();
        let rows = rows_per_task(d);
        let mut out: Vec<f32> = Vec::with_capacity(x.len() + d);
        let partial: Vec<Vec<f32>> = out.spare_capacity_mut()[..x.len()]
            .par_chunks_mut(d * rows)
            .zip(x.par_chunks(d * rows).zip(g.par_chunks(d * rows)))
            .map(|(dx, (x, g))| {
                simd::dispatch(
                    #[inline(always)]
                    || {
                        let mut dw = vec![0f32; d];
                        let mut xhat = vec![0f32; d];
                        for ((dx, x), g) in dx
                            .chunks_exact_mut(d)
                            .zip(x.chunks_exact(d))
                            .zip(g.chunks_exact(d))
                        {
                            let (m, r) = stats(x);
                            let (mut s1, mut s2) = (0f32, 0f32);
                            for i in 0..d {
                                xhat[i] = (x[i] - m) * r;
                                let gh = g[i] * w[i];
                                s1 += gh;
                                s2 += gh * xhat[i];
                                dw[i] += g[i] * xhat[i];
                            }
                            let (m1, m2) = (s1 / d as f32, s2 / d as f32);
                            for i in 0..d {
                                dx[i].write(r * (g[i] * w[i] - m1 - xhat[i] * m2));
                            }
                        }
                        dw
                    },
                )
            })
            .collect();
        // SAFETY: the chunks above cover dx (x.len() elements, whole rows) and wrote each.
        unsafe { out.set_len(x.len()) };
        let mut dw = vec![0f32; d];
        for p in partial {
            for (o, v) in dw.iter_mut().zip(p) {
                *o += v;
            }
        }
        out.extend_from_slice(&dw);
        Ok((CpuStorage::F32(out), Shape::from(x.len() + d)))
    }
}

/// LayerNorm without bias over the last dimension, times `weight`; fused on CPU f32.
pub fn layer_norm_fused(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op2(&weight.contiguous()?, LayerNorm)
    } else {
        layer_norm_composed(x, weight)
    }
}

/// The composed bias-free LayerNorm: the fused kernel's oracle and the path on other devices.
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + LN_EPS)?.sqrt()?.recip()?;
    xc.broadcast_mul(&inv)?.broadcast_mul(weight)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_composed_forward_and_gradients() {
        let x = Var::from_tensor(&Tensor::randn(0.5f32, 2.0, (4, 7, 24), &Device::Cpu).unwrap())
            .unwrap();
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 24, &Device::Cpu).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (4, 7, 24), &Device::Cpu).unwrap();
        let y = layer_norm_fused(x.as_tensor(), w.as_tensor()).unwrap();
        let y_ref = layer_norm_composed(x.as_tensor(), w.as_tensor()).unwrap();
        let d = (&y - &y_ref).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (y_ref * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w] {
            let d = (g.get(v.as_tensor()).unwrap() - g_ref.get(v.as_tensor()).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let x0: Vec<f32> = vec![0.3, -1.2, 2.0, 0.1, 0.7];
        let w = [0.9f32, 1.1, -0.4, 1.0, 0.5];
        let r = [0.5f64, -1.0, 2.0, 0.25, 1.5];
        let wt = Tensor::new(&w, &Device::Cpu).unwrap();
        let f = |x: &[f32]| -> f64 {
            let t = Tensor::new(x, &Device::Cpu)
                .unwrap()
                .reshape((1, 5))
                .unwrap();
            let y = layer_norm_fused(&t, &wt)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            y.iter().zip(&r).map(|(a, b)| *a as f64 * b).sum()
        };
        let x = Var::new(x0.as_slice(), &Device::Cpu).unwrap();
        let rt = Tensor::new(&r.map(|v| v as f32), &Device::Cpu)
            .unwrap()
            .reshape((1, 5))
            .unwrap();
        let y = layer_norm_fused(&x.as_tensor().reshape((1, 5)).unwrap(), &wt).unwrap();
        let g = (y * rt).unwrap().sum_all().unwrap().backward().unwrap();
        let g = g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        for i in 0..5 {
            let (mut a, mut b) = (x0.clone(), x0.clone());
            a[i] += 1e-3;
            b[i] -= 1e-3;
            let fd = (f(&a) - f(&b)) / 2e-3;
            assert!((g[i] as f64 - fd).abs() < 2e-3, "{i}: {} vs {fd}", g[i]);
        }
    }
}
