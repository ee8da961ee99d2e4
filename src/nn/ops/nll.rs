//! The vocabulary-sized part of the loss in one kernel: log-softmax over the vocabulary (the MASK
//! column excluded, as SUBS does), pick the target, times a per-row weight (the NELBO's 1/t).
//! Backward writes the one logits-sized gradient buffer directly; nothing else of that size exists.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_data, fast_exp, lanes, par_new, rows_per_task, simd, u32_data};

/// Weighted NLL of hard targets over rows of logits.
#[derive(Clone, Copy)]
struct WeightedNll {
    /// Column that is never a valid clean token (MDLM's MASK), or none.
    exclude: Option<usize>,
}

/// log-sum-exp of a row without the excluded column.
#[inline(always)]
pub(super) fn row_lse(z: &[f32], exclude: Option<usize>) -> f32 {
    let (a, b) = match exclude {
        Some(e) if e < z.len() => (&z[..e], &z[e + 1..]),
        _ => (z, &z[..0]),
    };
    let m = lanes::max(a).max(lanes::max(b));
    m + (lanes::sum_exp(a, 1.0, m) + lanes::sum_exp(b, 1.0, m)).ln()
}

/// Logits (M, V), M targets inside the vocabulary and M weights.
fn check_rows(z: &[f32], tgt: &[u32], w: &[f32], v: usize, op: &str) -> candle_core::Result<()> {
    if z.len() != tgt.len() * v {
        candle_core::bail!("{op}: logits, targets and weights disagree")
    }
    check_targets(tgt, w, v, op)
}

/// M targets inside a vocabulary of v, and M weights.
pub(super) fn check_targets(tgt: &[u32], w: &[f32], v: usize, op: &str) -> candle_core::Result<()> {
    if v == 0 || w.len() != tgt.len() {
        candle_core::bail!(
            "{op}: {} targets and {} weights disagree",
            tgt.len(),
            w.len()
        )
    }
    if let Some(&bad) = tgt.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("{op}: target {bad} outside the vocabulary of {v}")
    }
    Ok(())
}

impl CustomOp3 for WeightedNll {
    fn name(&self) -> &'static str {
        "weighted-nll"
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
        let z = f32_data(s1, l1, self.name())?;
        let tgt = u32_data(s2, l2, self.name())?;
        let w = f32_data(s3, l3, self.name())?;
        let v = *l1.dims().last().unwrap_or(&1);
        check_rows(z, tgt, w, v, self.name())?;
        let mut out = vec![0f32; tgt.len()];
        let rows = rows_per_task(v);
        out.par_chunks_mut(rows)
            .zip(z.par_chunks(v * rows))
            .zip(tgt.par_chunks(rows).zip(w.par_chunks(rows)))
            .for_each(|((o, z), (t, w))| {
                simd::dispatch(
                    #[inline(always)]
                    || {
                        for (i, z) in z.chunks_exact(v).enumerate() {
                            o[i] = if w[i] == 0.0 {
                                0.0
                            } else {
                                w[i] * (row_lse(z, self.exclude) - z[t[i] as usize])
                            };
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(out), Shape::from(tgt.len())))
    }

    fn bwd(
        &self,
        z: &Tensor,
        tgt: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Fold the incoming gradient into the weights: one logits-sized pass.
        let gw = (w * g)?.contiguous()?;
        let dz = z.apply_op3_no_bwd(
            tgt,
            &gw,
            &WeightedNllBwd {
                exclude: self.exclude,
            },
        )?;
        Ok((Some(dz), None, None))
    }
}

struct WeightedNllBwd {
    exclude: Option<usize>,
}

impl CustomOp3 for WeightedNllBwd {
    fn name(&self) -> &'static str {
        "weighted-nll-bwd"
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
        let z = f32_data(s1, l1, self.name())?;
        let tgt = u32_data(s2, l2, self.name())?;
        let gw = f32_data(s3, l3, self.name())?;
        let v = *l1.dims().last().unwrap_or(&1);
        let rows = rows_per_task(v);
        check_rows(z, tgt, gw, v, self.name())?;
        let exclude = self.exclude.filter(|&e| e < v);
        // SAFETY: each chunk is whole rows (v * rows elements, z.len() a multiple of v), and
        // every element of every row is written below.
        let dz = unsafe {
            par_new(
                z.len(),
                v * rows,
                #[inline(always)]
                |c, d| {
                    let r0 = c * rows;
                    let z = &z[r0 * v..r0 * v + d.len()];
                    for (i, (d, z)) in d.chunks_exact_mut(v).zip(z.chunks_exact(v)).enumerate() {
                        let (gw, t) = (gw[r0 + i], tgt[r0 + i] as usize);
                        if gw == 0.0 {
                            d.iter_mut().for_each(|d| {
                                d.write(0.0);
                            });
                            continue;
                        }
                        let lse = row_lse(z, exclude);
                        for (d, &z) in d.iter_mut().zip(z) {
                            d.write(gw * fast_exp(z - lse));
                        }
                        if let Some(e) = exclude {
                            d[e].write(0.0);
                        }
                        let p_t = if exclude == Some(t) {
                            0.0
                        } else {
                            gw * fast_exp(z[t] - lse)
                        };
                        d[t].write(p_t - gw);
                    }
                },
            )
        };
        Ok((CpuStorage::F32(dz), l1.shape().clone()))
    }
}

/// Per-row `w_i * (logsumexp_{v != exclude} z_iv - z_i[target_i])` for logits (M, V), targets (M,)
/// u32 and weights (M,) f32; rows with zero weight cost nothing.
pub fn weighted_nll(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    exclude: Option<usize>,
) -> candle_core::Result<Tensor> {
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        logits.contiguous()?.apply_op3(
            &targets.contiguous()?,
            &weights.contiguous()?,
            WeightedNll { exclude },
        )
    } else {
        weighted_nll_composed(logits, targets, weights, exclude)
    }
}

/// A (V,) bias that is `bias` at column `e` and 0 elsewhere: how the composed losses leave a
/// column (MDLM's MASK) out of the softmax.
pub(crate) fn column_bias(
    v: usize,
    e: usize,
    bias: f32,
    dev: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let mut b = vec![0f32; v];
    b[e] = bias;
    Tensor::from_vec(b, v, dev)
}

/// The composed version: the oracle of the fused kernel, and the path on other devices.
pub fn weighted_nll_composed(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    exclude: Option<usize>,
) -> candle_core::Result<Tensor> {
    let v = logits.dim(1)?;
    let z = match exclude {
        Some(e) => logits.broadcast_add(&column_bias(v, e, -1e6, logits.device())?)?,
        None => logits.clone(),
    };
    let lse = z.log_sum_exp(1)?;
    let pick = z
        .gather(&targets.unsqueeze(1)?.contiguous()?, 1)?
        .squeeze(1)?;
    (lse - pick)? * weights
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_composed_forward_and_gradient() {
        let (m, v) = (9, 37);
        let z = Var::from_tensor(&Tensor::randn(0f32, 2.0, (m, v), &Device::Cpu).unwrap()).unwrap();
        let t = Tensor::new(&[0u32, 5, 36, 7, 7, 2, 30, 1, 12], &Device::Cpu).unwrap();
        let w = Tensor::new(
            &[1.0f32, 0.0, 2.5, 0.3, 1.0, 1.0, 0.0, 4.0, 1.5],
            &Device::Cpu,
        )
        .unwrap();
        let r = Tensor::randn(0f32, 1.0, m, &Device::Cpu).unwrap();
        for exclude in [None, Some(36usize)] {
            // A target equal to the excluded column cannot happen in MDLM; keep targets valid.
            let t = if exclude.is_some() {
                t.minimum(35u32).unwrap()
            } else {
                t.clone()
            };
            let a = weighted_nll(z.as_tensor(), &t, &w, exclude).unwrap();
            let b = weighted_nll_composed(z.as_tensor(), &t, &w, exclude).unwrap();
            let d = (&a - &b).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
            let ga = (a * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (b * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let d = (ga.get(z.as_tensor()).unwrap() - gb.get(z.as_tensor()).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        }
    }

    #[test]
    fn many_rows_across_tasks_match_composed() {
        // 40 rows of 2000: several parallel tasks, zero-weight rows inside them.
        let (m, v) = (40usize, 2000usize);
        let dev = Device::Cpu;
        let z = Var::from_tensor(&Tensor::randn(0f32, 3.0, (m, v), &dev).unwrap()).unwrap();
        let t: Vec<u32> = (0..m).map(|i| ((i * 997) % (v - 1)) as u32).collect();
        let w: Vec<f32> = (0..m)
            .map(|i| {
                if i % 7 == 3 {
                    0.0
                } else {
                    1.0 + i as f32 / 10.0
                }
            })
            .collect();
        let (t, w) = (Tensor::new(t, &dev).unwrap(), Tensor::new(w, &dev).unwrap());
        let r = Tensor::randn(0f32, 1.0, m, &dev).unwrap();
        for exclude in [None, Some(v - 1)] {
            let a = weighted_nll(z.as_tensor(), &t, &w, exclude).unwrap();
            let b = weighted_nll_composed(z.as_tensor(), &t, &w, exclude).unwrap();
            let d = (&a - &b).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-3);
            let ga = (a * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (b * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let (ga, gb) = (
                ga.get(z.as_tensor()).unwrap(),
                gb.get(z.as_tensor()).unwrap(),
            );
            let d = (ga - gb).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-5, "{exclude:?}");
        }
    }

    #[test]
    fn out_of_range_targets_are_an_error() {
        let z = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
        let t = Tensor::new(&[1u32, 5], &Device::Cpu).unwrap();
        let w = Tensor::ones(2, DType::F32, &Device::Cpu).unwrap();
        let e = weighted_nll(&z, &t, &w, None).unwrap_err().to_string();
        assert!(e.contains("target 5 outside the vocabulary of 5"), "{e}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let z0: Vec<f32> = vec![0.3, -1.2, 2.0, 0.1, 0.7, -0.5];
        let t = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
        let w = Tensor::new(&[1.5f32, 0.5], &Device::Cpu).unwrap();
        let f = |z: &[f32]| -> f64 {
            let zt = Tensor::new(z, &Device::Cpu)
                .unwrap()
                .reshape((2, 3))
                .unwrap();
            weighted_nll(&zt, &t, &w, Some(1))
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let z = Var::new(z0.as_slice(), &Device::Cpu).unwrap();
        let y = weighted_nll(&z.as_tensor().reshape((2, 3)).unwrap(), &t, &w, Some(1)).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let g = g.get(z.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        for i in 0..6 {
            let (mut a, mut b) = (z0.clone(), z0.clone());
            a[i] += 1e-3;
            b[i] -= 1e-3;
            let fd = (f(&a) - f(&b)) / 2e-3;
            assert!((g[i] as f64 - fd).abs() < 2e-3, "{i}: {} vs {fd}", g[i]);
        }
    }
}
