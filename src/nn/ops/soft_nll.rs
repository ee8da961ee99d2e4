//! The soft-target loss of IDLM and DCD in one kernel: `-w_i sum_j g_ij log p_ij` with `p` the
//! softmax of the logits over the vocabulary, one column (MDLM's MASK) left out of the softmax as
//! SUBS does. The composed version (bias add, log-softmax, product, sum) makes five logits-sized
//! buffers and runs libm's exp and log per element; an IDLM alternation computes it three times.
//! Backward writes only the gradients that are needed: dz when the logits are trained (the fake
//! phase), dg when the target carries the gradient (the student phase), one buffer each.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::nll::{column_bias, row_lse};
use super::{f32_data, fast_exp, lanes, par_new, rows_per_task, simd};

/// The column left out of the softmax and the bias its logit gets (its log-probability is
/// `z_e + bias - lse`, so a target that puts mass there pays for it as the composed version does).
type Exclude = Option<(usize, f32)>;

/// Per-row soft NLL.
#[derive(Clone, Copy)]
struct SoftNll {
    exclude: Exclude,
}

/// The inputs of both kernels: logits and targets (M, V) and M row weights, checked, with the
/// vocabulary size and the excluded column if it lies inside it.
struct Rows<'a> {
    z: &'a [f32],
    g: &'a [f32],
    w: &'a [f32],
    m: usize,
    v: usize,
    ex: Exclude,
}

fn rows<'a>(
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
    (s3, l3): (&'a CpuStorage, &Layout),
    exclude: Exclude,
    op: &'static str,
) -> candle_core::Result<Rows<'a>> {
    let (z, g, w) = (
        f32_data(s1, l1, op)?,
        f32_data(s2, l2, op)?,
        f32_data(s3, l3, op)?,
    );
    let (m, v) = l1.shape().dims2()?;
    if l2.dims() != l1.dims() || w.len() != m || v == 0 {
        candle_core::bail!(
            "{op}: logits {:?}, targets {:?} and {} weights disagree",
            l1.dims(),
            l2.dims(),
            w.len()
        )
    }
    let ex = exclude.filter(|&(e, _)| e < v);
    Ok(Rows { z, g, w, m, v, ex })
}

/// `sum_j g_j log p_j` of one row, given its log-sum-exp.
#[inline(always)]
fn row_dot_logp(z: &[f32], g: &[f32], lse: f32, ex: Exclude) -> f32 {
    let mut s = lanes::dot(g, z) - lse * lanes::sum(g);
    if let Some((e, bias)) = ex {
        s += g[e] * bias;
    }
    s
}

impl CustomOp3 for SoftNll {
    fn name(&self) -> &'static str {
        "soft-nll"
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
        let Rows { z, g, w, m, v, ex } =
            rows((s1, l1), (s2, l2), (s3, l3), self.exclude, self.name())?;
        let mut out = vec![0f32; m];
        let rows = rows_per_task(v);
        out.par_chunks_mut(rows)
            .zip(z.par_chunks(v * rows).zip(g.par_chunks(v * rows)))
            .zip(w.par_chunks(rows))
            .for_each(|((o, (z, g)), w)| {
                simd::dispatch(
                    #[inline(always)]
                    || {
                        for (i, (z, g)) in z.chunks_exact(v).zip(g.chunks_exact(v)).enumerate() {
                            if w[i] != 0.0 {
                                let lse = row_lse(z, ex.map(|(e, _)| e));
                                o[i] = -w[i] * row_dot_logp(z, g, lse, ex);
                            }
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(out), Shape::from(m)))
    }

    fn bwd(
        &self,
        z: &Tensor,
        g: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        go: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The incoming gradient folded into the weights; each gradient only if something upstream
        // needs it (a detached network output or a constant target does not).
        let gw = (w * go)?.contiguous()?;
        let grad = |of: Of| {
            z.apply_op3_no_bwd(
                g,
                &gw,
                &SoftNllBwd {
                    exclude: self.exclude,
                    of,
                },
            )
        };
        let dz = if z.track_op() {
            Some(grad(Of::Logits)?)
        } else {
            None
        };
        let dg = if g.track_op() {
            Some(grad(Of::Target)?)
        } else {
            None
        };
        Ok((dz, dg, None))
    }
}

/// Which input a backward kernel differentiates.
#[derive(Clone, Copy, PartialEq)]
enum Of {
    Logits,
    Target,
}

struct SoftNllBwd {
    exclude: Exclude,
    of: Of,
}

impl CustomOp3 for SoftNllBwd {
    fn name(&self) -> &'static str {
        "soft-nll-bwd"
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
        let Rows {
            z, g, w: gw, v, ex, ..
        } = rows((s1, l1), (s2, l2), (s3, l3), self.exclude, self.name())?;
        let rows = rows_per_task(v);
        let of = self.of;
        // SAFETY: each chunk is whole rows (v * rows elements), every element written below.
        let d = unsafe {
            par_new(
                z.len(),
                v * rows,
                #[inline(always)]
                |c, d| {
                    let r0 = c * rows;
                    let span = r0 * v..r0 * v + d.len();
                    let (z, g) = (&z[span.clone()], &g[span]);
                    let rows = d
                        .chunks_exact_mut(v)
                        .zip(z.chunks_exact(v).zip(g.chunks_exact(v)));
                    for (i, (d, (z, g))) in rows.enumerate() {
                        let gw = gw[r0 + i];
                        if gw == 0.0 {
                            d.iter_mut().for_each(|d| {
                                d.write(0.0);
                            });
                            continue;
                        }
                        let lse = row_lse(z, ex.map(|(e, _)| e));
                        if of == Of::Logits {
                            // d/dz_j = gw (p_j sum(g) - g_j); p is 0 at the excluded column.
                            let sg = gw * lanes::sum(g);
                            for ((d, &z), &g) in d.iter_mut().zip(z).zip(g) {
                                d.write(sg * fast_exp(z - lse) - gw * g);
                            }
                            if let Some((e, _)) = ex {
                                d[e].write(-gw * g[e]);
                            }
                        } else {
                            // d/dg_j = -gw log p_j.
                            for (d, &z) in d.iter_mut().zip(z) {
                                d.write(-gw * (z - lse));
                            }
                            if let Some((e, bias)) = ex {
                                d[e].write(-gw * (z[e] + bias - lse));
                            }
                        }
                    }
                },
            )
        };
        Ok((CpuStorage::F32(d), l1.shape().clone()))
    }
}

/// Per-row `-w_i sum_j g_ij log softmax(z_i)_j` for logits and targets (M, V) and weights (M,),
/// the column of `exclude` (with its logit biased by the given amount) out of the softmax.
pub fn soft_nll(
    logits: &Tensor,
    target: &Tensor,
    weights: &Tensor,
    exclude: Exclude,
) -> candle_core::Result<Tensor> {
    let all_f32 = [logits, target, weights]
        .iter()
        .all(|t| t.dtype() == DType::F32);
    if logits.device().is_cpu() && all_f32 {
        logits.contiguous()?.apply_op3(
            &target.contiguous()?,
            &weights.contiguous()?,
            SoftNll { exclude },
        )
    } else {
        soft_nll_composed(logits, target, weights, exclude)
    }
}

/// The composed version: the oracle of the fused kernel, and the path on other devices.
pub fn soft_nll_composed(
    logits: &Tensor,
    target: &Tensor,
    weights: &Tensor,
    exclude: Exclude,
) -> candle_core::Result<Tensor> {
    let v = logits.dim(1)?;
    let z = logits.to_dtype(DType::F32)?;
    let z = match exclude.filter(|&(e, _)| e < v) {
        Some((e, bias)) => z.broadcast_add(&column_bias(v, e, bias, logits.device())?)?,
        None => z,
    };
    let logp = candle_nn::ops::log_softmax(&z, candle_core::D::Minus1)?;
    target.mul(&logp)?.sum(candle_core::D::Minus1)?.neg()? * weights
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Rows of a distribution over v - 1 classes (none on the last), some rows one-hot.
    fn targets(m: usize, v: usize, dev: &Device) -> Tensor {
        let mut g = vec![0f32; m * v];
        for i in 0..m {
            let row = &mut g[i * v..(i + 1) * v];
            if i % 3 == 1 {
                row[(i * 7) % (v - 1)] = 1.0;
            } else {
                let s: f32 = (0..v - 1).map(|j| ((i + 2 * j) % 5) as f32 + 0.1).sum();
                for (j, r) in row.iter_mut().take(v - 1).enumerate() {
                    *r = (((i + 2 * j) % 5) as f32 + 0.1) / s;
                }
            }
        }
        Tensor::from_vec(g, (m, v), dev).unwrap()
    }

    /// Largest |a - b| / (1 + |b|): the excluded column's log-probability is about -1e6, where
    /// one f32 ulp is 0.06.
    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let scale = (b.abs().unwrap() + 1.0).unwrap();
        ((a - b).unwrap().abs().unwrap() / scale)
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn matches_composed_forward_and_both_gradients() {
        // 40 rows of 1500: several parallel tasks, zero-weight rows among them.
        let (m, v) = (40usize, 1500usize);
        let dev = Device::Cpu;
        let z = Var::from_tensor(&Tensor::randn(0f32, 3.0, (m, v), &dev).unwrap()).unwrap();
        let g = Var::from_tensor(&targets(m, v, &dev)).unwrap();
        let w: Vec<f32> = (0..m)
            .map(|i| {
                if i % 7 == 3 {
                    0.0
                } else {
                    0.5 + i as f32 / 8.0
                }
            })
            .collect();
        let w = Tensor::new(w, &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, m, &dev).unwrap();
        for exclude in [None, Some((v - 1, -1e6f32))] {
            let a = soft_nll(z.as_tensor(), g.as_tensor(), &w, exclude).unwrap();
            let b = soft_nll_composed(z.as_tensor(), g.as_tensor(), &w, exclude).unwrap();
            assert!(max_diff(&a, &b) < 2e-3, "{exclude:?}");
            let ga = (a * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (b * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for t in [z.as_tensor(), g.as_tensor()] {
                let d = max_diff(ga.get(t).unwrap(), gb.get(t).unwrap());
                assert!(d < 1e-4, "{exclude:?}: {d}");
            }
        }
    }

    #[test]
    fn only_the_needed_gradient_is_computed() {
        let dev = Device::Cpu;
        let z = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 6), &dev).unwrap()).unwrap();
        let g = targets(3, 6, &dev);
        let w = Tensor::new(&[1f32, 2.0, 0.5], &dev).unwrap();
        let grads = soft_nll(z.as_tensor(), &g, &w, Some((5, -1e6)))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(z.as_tensor()).is_some());
        assert!(grads.get(&g).is_none());
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (m, v) = (2usize, 4usize);
        let dev = Device::Cpu;
        let z0: Vec<f32> = vec![0.3, -1.2, 2.0, 0.1, 0.7, -0.5, 0.2, 1.1];
        let g0: Vec<f32> = vec![0.2, 0.5, 0.3, 0.0, 0.6, 0.1, 0.3, 0.0];
        let w = Tensor::new(&[1.5f32, 0.5], &dev).unwrap();
        let ex = Some((3usize, -1e6f32));
        let f = |z: &[f32], g: &[f32]| -> f64 {
            let zt = Tensor::from_slice(z, (m, v), &dev).unwrap();
            let gt = Tensor::from_slice(g, (m, v), &dev).unwrap();
            soft_nll(&zt, &gt, &w, ex)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let z = Var::from_slice(&z0, (m, v), &dev).unwrap();
        let g = Var::from_slice(&g0, (m, v), &dev).unwrap();
        let y = soft_nll(z.as_tensor(), g.as_tensor(), &w, ex).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| {
            grads
                .get(t)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
        };
        let (dz, dg) = (flat(z.as_tensor()).unwrap(), flat(g.as_tensor()).unwrap());
        for i in 0..m * v {
            // The excluded column's logit is pushed 1e6 down: finite differences on its target
            // entry would measure that bias, so only its logit is checked.
            let (mut a, mut b) = (z0.clone(), z0.clone());
            a[i] += 1e-3;
            b[i] -= 1e-3;
            let fd = (f(&a, &g0) - f(&b, &g0)) / 2e-3;
            assert!(
                (dz[i] as f64 - fd).abs() < 2e-3,
                "dz {i}: {} vs {fd}",
                dz[i]
            );
            if i % v != 3 {
                let (mut a, mut b) = (g0.clone(), g0.clone());
                a[i] += 1e-3;
                b[i] -= 1e-3;
                let fd = (f(&z0, &a) - f(&z0, &b)) / 2e-3;
                assert!(
                    (dg[i] as f64 - fd).abs() < 2e-3,
                    "dg {i}: {} vs {fd}",
                    dg[i]
                );
            }
        }
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let dev = Device::Cpu;
        let z = Tensor::zeros((2, 5), DType::F32, &dev).unwrap();
        let g = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        let w = Tensor::ones(2, DType::F32, &dev).unwrap();
        let e = soft_nll(&z, &g, &w, None).unwrap_err().to_string();
        assert!(e.contains("disagree"), "{e}");
    }
}
