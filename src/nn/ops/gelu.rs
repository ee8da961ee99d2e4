//! tanh-approximated GELU with a fused backward (candle's spends its time in libm).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::{f32_data, fast_exp, par_new};

const C: f32 = 0.797_884_6; // sqrt(2 / pi)
const A: f32 = 0.044_715;
const CHUNK: usize = 16384;

#[inline(always)]
fn tanh_fast(u: f32) -> f32 {
    // tanh(u) = 1 - 2 / (exp(2u) + 1); exact limits at +-inf.
    1.0 - 2.0 / (fast_exp(2.0 * u) + 1.0)
}

#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh_fast(C * (x + A * x * x * x)))
}

#[inline(always)]
fn gelu_grad(x: f32) -> f32 {
    let t = tanh_fast(C * (x + A * x * x * x));
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * C * (1.0 + 3.0 * A * x * x)
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, self.name())?;
        // SAFETY: chunk i of the output is zipped with chunk i of x, of the same length.
        let y = unsafe {
            par_new(
                x.len(),
                CHUNK,
                #[inline(always)]
                |i, y| {
                    let x = &x[i * CHUNK..i * CHUNK + y.len()];
                    y.iter_mut().zip(x).for_each(|(y, &x)| {
                        y.write(gelu(x));
                    })
                },
            )
        };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&g.contiguous()?, &GeluBwd)?))
    }
}

struct GeluBwd;

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        "gelu-tanh-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, self.name())?;
        let g = f32_data(s2, l2, self.name())?;
        // SAFETY: every element of each chunk is written.
        let dx = unsafe {
            par_new(
                x.len(),
                CHUNK,
                #[inline(always)]
                |c, d| {
                    let r = c * CHUNK..c * CHUNK + d.len();
                    for ((d, &x), &g) in d.iter_mut().zip(&x[r.clone()]).zip(&g[r]) {
                        d.write(g * gelu_grad(x));
                    }
                },
            )
        };
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// GELU with the tanh approximation; fused kernel on CPU, composed op elsewhere.
pub fn gelu_tanh(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(Gelu)
    } else {
        x.gelu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_composed_forward_and_gradient() {
        let x = Var::new(
            (0..4000)
                .map(|i| (i as f32 - 2000.0) / 300.0)
                .collect::<Vec<_>>(),
            &Device::Cpu,
        )
        .unwrap();
        let y = gelu_tanh(x.as_tensor()).unwrap();
        let y_ref = x.as_tensor().gelu().unwrap();
        let d = (&y - &y_ref).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        let w = Tensor::randn(0f32, 1.0, 4000, &Device::Cpu).unwrap();
        let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (y_ref * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (
            g.get(x.as_tensor()).unwrap(),
            g_ref.get(x.as_tensor()).unwrap(),
        );
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for &x in &[-5.0f32, -1.3, -0.2, 0.0, 0.4, 1.7, 6.0] {
            let h = 1e-3f64;
            let fd = (gelu((x as f64 + h) as f32) as f64 - gelu((x as f64 - h) as f32) as f64)
                / (2.0 * h);
            assert!(
                (gelu_grad(x) as f64 - fd).abs() < 2e-3,
                "x {x}: {} vs {fd}",
                gelu_grad(x)
            );
        }
    }
}
