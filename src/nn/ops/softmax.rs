//! Softmax over the last dimension with a fused backward (candle's fused softmax has none, and the
//! composed one makes ~6 passes forward and ~8 backward over the attention matrix).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_data, lanes, par_new, rows_per_task, simd};

struct Softmax;

/// Softmax outputs below this are zeroed. A sharp softmax (Duo's relaxed inputs at tau 1e-3)
/// leaves ~1e-38 at every other class; times a weight those products are subnormal, which x86
/// multiplies ~100x slower, and a Duo curriculum step spent most of its time there. A row's largest
/// output is at least 1/n, so for any n below 1e22 a value under 1e-30 is below f32 resolution
/// of every sum it enters.
pub const FLUSH: f32 = 1e-30;

fn softmax_rows(y: &mut [f32], n: usize) {
    let rows = rows_per_task(n);
    y.par_chunks_mut(n * rows).for_each(|y| {
        simd::dispatch(
            #[inline(always)]
            || {
                for y in y.chunks_exact_mut(n) {
                    lanes::softmax_in_place(y, 1.0);
                    for v in y.iter_mut() {
                        if *v < FLUSH {
                            *v = 0.0;
                        }
                    }
                }
            },
        )
    });
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, self.name())?;
        let n = *l.dims().last().unwrap_or(&1);
        let mut y = x.to_vec();
        softmax_rows(&mut y, n);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxBwd)?))
    }
}

struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "softmax-last-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = f32_data(s1, l1, self.name())?;
        let g = f32_data(s2, l2, self.name())?;
        let n = *l1.dims().last().unwrap_or(&1);
        let rows = rows_per_task(n);
        if n == 0 || !y.len().is_multiple_of(n) || g.len() != y.len() {
            candle_core::bail!("{}: gradient and output disagree", self.name())
        }
        // dx = y * (g - sum(g * y)) row by row.
        // SAFETY: chunks are whole rows of n (y.len() a multiple of n), each element written.
        let dx = unsafe {
            par_new(
                y.len(),
                n * rows,
                #[inline(always)]
                |c, d| {
                    let r = c * n * rows..c * n * rows + d.len();
                    let (y, g) = (&y[r.clone()], &g[r]);
                    for ((d, y), g) in d
                        .chunks_exact_mut(n)
                        .zip(y.chunks_exact(n))
                        .zip(g.chunks_exact(n))
                    {
                        let dot = lanes::dot(y, g);
                        for i in 0..n {
                            d[i].write(y[i] * (g[i] - dot));
                        }
                    }
                },
            )
        };
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Softmax over the last dimension; fused kernel on CPU f32, composed op elsewhere.
pub fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(Softmax)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_composed_forward_and_gradient() {
        let x = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (3, 5, 17), &Device::Cpu).unwrap()))
            .unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 5, 17), &Device::Cpu).unwrap();
        let y = softmax_last(x.as_tensor()).unwrap();
        let y_ref = candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap();
        let d = (&y - &y_ref).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
        let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (y_ref * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let d = (g.get(x.as_tensor()).unwrap() - g_ref.get(x.as_tensor()).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn sharp_rows_have_no_tiny_outputs() {
        // Logits 0, -90, -95, -100, ...: the reference gives 8e-40, 5e-42, ... (subnormal).
        let x: Vec<f32> = (0..40)
            .map(|i| if i == 0 { 0.0 } else { -85.0 - 5.0 * i as f32 })
            .collect();
        let t = Tensor::from_vec(x, (1, 40), &Device::Cpu).unwrap();
        let y = softmax_last(&t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(y[0], 1.0);
        assert!(y.iter().all(|&v| v == 0.0 || v >= FLUSH), "{y:?}");
        let y_ref = candle_nn::ops::softmax(&t, D::Minus1).unwrap();
        let y_ref = y_ref.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            y_ref.iter().any(|v| v.is_subnormal()),
            "the case must produce subnormals"
        );
        for (a, b) in y.iter().zip(&y_ref) {
            assert!((a - b).abs() < FLUSH, "{a} vs {b}");
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let x0: Vec<f32> = vec![0.3, -1.2, 2.0, 0.1];
        let w = [0.5f32, -1.0, 2.0, 0.25];
        let f = |x: &[f32]| -> f64 {
            let t = Tensor::new(x, &Device::Cpu)
                .unwrap()
                .reshape((1, 4))
                .unwrap();
            let y = softmax_last(&t)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            y.iter()
                .zip(&w)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum()
        };
        let x = Var::new(x0.as_slice(), &Device::Cpu).unwrap();
        let xr = x.as_tensor().reshape((1, 4)).unwrap();
        let wt = Tensor::new(&w, &Device::Cpu)
            .unwrap()
            .reshape((1, 4))
            .unwrap();
        let g = (softmax_last(&xr).unwrap() * wt)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        for i in 0..4 {
            let (mut a, mut b) = (x0.clone(), x0.clone());
            a[i] += 1e-3;
            b[i] -= 1e-3;
            let fd = (f(&a) - f(&b)) / 2e-3;
            assert!((g[i] as f64 - fd).abs() < 1e-3, "{i}: {} vs {fd}", g[i]);
        }
    }
}
