//! The output projection fused with the weighted NLL: `w_i (lse_{v != exclude}(z_i) - z_i[t_i])`
//! for `z = x W^T + b`, one node whose logits are never a whole (M, V) buffer in the usual case.
//!
//! When the features are being trained, the forward also computes the gradients for an upstream
//! gradient of one, chunk by chunk while each chunk's logits are in cache
//! ([`super::head_chunks`]); every training loss is a sum or mean of these rows, so the backward
//! only scales them. Any other upstream gradient (or a second backward) runs the same chunks
//! again with the row weights times the upstream gradient.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::f32_data;
use super::head_chunks::{UnitGrads, head_chunks};
use super::nll::{check_targets, weighted_nll};

/// Targets, per-row weights and the excluded column of a weighted NLL over M rows.
#[derive(Debug, Clone, PartialEq)]
pub struct NllRows {
    /// The clean token of each row.
    pub targets: Vec<u32>,
    /// The NELBO weight of each row (0: the row costs nothing).
    pub weights: Vec<f32>,
    /// A column that is never a valid clean token (MDLM's MASK), left out of the softmax.
    pub exclude: Option<usize>,
}

/// Forward: per-row loss; with `eager`, also the unit-upstream gradients for the backward.
struct HeadNll {
    rows: Arc<NllRows>,
    eager: bool,
    saved: Arc<Mutex<Option<UnitGrads>>>,
}

/// (rows, width, vocabulary) of x (M, D), W (V, D), b (V).
fn dims(
    x: &Layout,
    w: &Layout,
    b: &Layout,
    op: &str,
) -> candle_core::Result<(usize, usize, usize)> {
    let (m, k) = x.shape().dims2()?;
    let (v, k2) = w.shape().dims2()?;
    if k != k2 || b.shape().elem_count() != v {
        candle_core::bail!(
            "{op}: features {:?}, weight {:?} and bias {:?} disagree",
            x.dims(),
            w.dims(),
            b.dims()
        )
    }
    Ok((m, k, v))
}

impl CustomOp3 for HeadNll {
    fn name(&self) -> &'static str {
        "head-nll"
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
        let (x, w, b) = (
            f32_data(s1, l1, self.name())?,
            f32_data(s2, l2, self.name())?,
            f32_data(s3, l3, self.name())?,
        );
        let (m, k, v) = dims(l1, l2, l3, self.name())?;
        let r = &self.rows;
        if r.targets.len() != m {
            candle_core::bail!(
                "{}: {m} feature rows, {} targets",
                self.name(),
                r.targets.len()
            )
        }
        check_targets(&r.targets, &r.weights, v, self.name())?;
        let ex = r.exclude.filter(|&e| e < v);
        let (out, grads) = head_chunks(x, w, b, m, k, v, &r.targets, &r.weights, ex, self.eager);
        *self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("head-nll: poisoned".into()))? = grads;
        Ok((CpuStorage::F32(out), Shape::from(m)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (m, k) = x.dims2()?;
        let v = w.dim(0)?;
        let g = g.to_vec1::<f32>()?;
        let kept = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("head-nll: poisoned".into()))?
            .take();
        let same = g
            .first()
            .filter(|g0| g.iter().all(|g| g.to_bits() == g0.to_bits()));
        if let (Some(u), Some(&c)) = (kept, same) {
            let dev = x.device();
            let t = |mut d: Vec<f32>, shape: &[usize]| {
                if c != 1.0 {
                    d.par_chunks_mut(1 << 14)
                        .for_each(|d| d.iter_mut().for_each(|d| *d *= c));
                }
                Tensor::from_vec(d, shape, dev)
            };
            return Ok((
                Some(t(u.dx, &[m, k])?),
                Some(t(u.dw, &[v, k])?),
                Some(t(u.db, b.dims())?),
            ));
        }
        let gw: Vec<f32> = g
            .iter()
            .zip(&self.rows.weights)
            .map(|(g, w)| g * w)
            .collect();
        let bwd = HeadNllBwd {
            rows: self.rows.clone(),
            gw,
        };
        let buf = x.apply_op3_no_bwd(w, b, &bwd)?;
        Ok((
            Some(buf.narrow(0, 0, m * k)?.reshape((m, k))?),
            Some(buf.narrow(0, m * k, v * k)?.reshape((v, k))?),
            Some(buf.narrow(0, m * k + v * k, v)?.reshape(b.shape())?),
        ))
    }
}

/// Backward for any upstream gradient: [dx | dW | db], the logits recomputed chunk by chunk.
struct HeadNllBwd {
    rows: Arc<NllRows>,
    /// Incoming gradient times the row weight.
    gw: Vec<f32>,
}

impl CustomOp3 for HeadNllBwd {
    fn name(&self) -> &'static str {
        "head-nll-bwd"
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
        let (x, w, b) = (
            f32_data(s1, l1, self.name())?,
            f32_data(s2, l2, self.name())?,
            f32_data(s3, l3, self.name())?,
        );
        let (m, k, v) = dims(l1, l2, l3, self.name())?;
        let ex = self.rows.exclude.filter(|&e| e < v);
        // The chunked kernel with the weights g_i w_i gives the gradients of sum_i g_i loss_i.
        let (_, grads) = head_chunks(x, w, b, m, k, v, &self.rows.targets, &self.gw, ex, true);
        let mut buf = Vec::with_capacity(m * k + v * k + v);
        if let Some(u) = grads {
            buf.extend_from_slice(&u.dx);
            buf.extend_from_slice(&u.dw);
            buf.extend_from_slice(&u.db);
        }
        let n = buf.len();
        Ok((CpuStorage::F32(buf), Shape::from(n)))
    }
}

/// Per-row weighted NLL of `x W^T + b` for features x (M, D): one node on CPU f32, its
/// gradients made in the forward when x is tracked (detach x when no backward will follow); the
/// composed projection and [`weighted_nll`] elsewhere (its oracle).
pub fn head_nll(x: &Tensor, w: &Tensor, b: &Tensor, rows: &NllRows) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() == 2 {
        x.contiguous()?.apply_op3(
            &w.contiguous()?,
            &b.contiguous()?,
            HeadNll {
                rows: Arc::new(rows.clone()),
                eager: x.track_op(),
                saved: Arc::new(Mutex::new(None)),
            },
        )
    } else {
        head_nll_composed(x, w, b, rows)
    }
}

/// The composed version: [`super::linear::linear_composed`] then the composed weighted NLL.
pub fn head_nll_composed(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    rows: &NllRows,
) -> candle_core::Result<Tensor> {
    let z = super::linear::linear_composed(x, w, Some(b))?;
    let (t, wt) = rows.tensors(x.device())?;
    super::nll::weighted_nll_composed(&z, &t, &wt, rows.exclude)
}

impl NllRows {
    /// Targets and weights as (M,) tensors on `dev`.
    fn tensors(&self, dev: &candle_core::Device) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            Tensor::from_slice(&self.targets, self.targets.len(), dev)?,
            Tensor::from_slice(&self.weights, self.weights.len(), dev)?,
        ))
    }

    /// The loss of given logits (M, V): [`weighted_nll`] (fused on CPU f32).
    pub fn of_logits(&self, logits: &Tensor) -> candle_core::Result<Tensor> {
        let (t, wt) = self.tensors(logits.device())?;
        weighted_nll(logits, &t, &wt, self.exclude)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs(&(a - b).unwrap())
    }

    /// Loss and all three gradients against the composed linear + NLL, at a size with several
    /// row tasks and the threaded GEMMs, with zero-weight rows and an excluded column.
    #[test]
    fn matches_composed_loss_and_gradients() {
        let dev = Device::Cpu;
        for (m, k, v) in [(7usize, 5usize, 11usize), (70, 48, 1500)] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (v, k), &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, v, &dev).unwrap()).unwrap();
            let r = Tensor::randn(0f32, 1.0, m, &dev).unwrap();
            for exclude in [None, Some(v - 1)] {
                let rows = NllRows {
                    targets: (0..m).map(|i| ((i * 31) % (v - 1)) as u32).collect(),
                    weights: (0..m)
                        .map(|i| {
                            if i % 5 == 2 {
                                0.0
                            } else {
                                0.5 + i as f32 / 7.0
                            }
                        })
                        .collect(),
                    exclude,
                };
                let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
                let a = head_nll(xt, wt, bt, &rows).unwrap();
                let c = head_nll_composed(xt, wt, bt, &rows).unwrap();
                assert!(max_diff(&a, &c) < 1e-3, "{m}x{k}->{v} loss");
                let ga = (a * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let gc = (c * &r).unwrap().sum_all().unwrap().backward().unwrap();
                for (name, var) in [("x", &x), ("W", &w), ("b", &b)] {
                    let (p, q) = (
                        ga.get(var.as_tensor()).unwrap(),
                        gc.get(var.as_tensor()).unwrap(),
                    );
                    assert!(max_diff(p, q) < 1e-4, "{m}x{k}->{v} d{name} {exclude:?}");
                }
            }
        }
    }

    /// A sum or mean over the rows (a constant upstream gradient) takes the gradients made in the
    /// forward: checked against the composed loss at a size with several chunks per thread and a
    /// ragged last chunk; an untracked x makes no gradients and gives the same loss.
    #[test]
    fn constant_upstream_uses_forward_gradients() {
        let dev = Device::Cpu;
        let (m, k, v) = (1100usize, 40usize, 1500usize);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (v, k), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, v, &dev).unwrap()).unwrap();
        let rows = NllRows {
            targets: (0..m).map(|i| ((i * 37) % (v - 1)) as u32).collect(),
            weights: (0..m)
                .map(|i| {
                    if i % 7 == 3 {
                        0.0
                    } else {
                        0.25 + (i % 5) as f32
                    }
                })
                .collect(),
            exclude: Some(v - 1),
        };
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        for scale in [1.0, 1.0 / m as f64] {
            let a = (head_nll(xt, wt, bt, &rows).unwrap().sum_all().unwrap() * scale).unwrap();
            let c = (head_nll_composed(xt, wt, bt, &rows)
                .unwrap()
                .sum_all()
                .unwrap()
                * scale)
                .unwrap();
            let rel = max_diff(&a, &c) / max_abs(&c);
            assert!(rel < 1e-5, "loss {rel}");
            let (ga, gc) = (a.backward().unwrap(), c.backward().unwrap());
            for (name, var) in [("x", &x), ("W", &w), ("b", &b)] {
                let (p, q) = (
                    ga.get(var.as_tensor()).unwrap(),
                    gc.get(var.as_tensor()).unwrap(),
                );
                assert!(
                    max_diff(p, q) < 1e-4 * max_abs(q),
                    "d{name} at scale {scale}"
                );
            }
        }
        let eval = head_nll(&xt.detach(), wt, bt, &rows).unwrap();
        let c = head_nll_composed(xt, wt, bt, &rows).unwrap();
        assert!(max_diff(&eval, &c) < 1e-3);
    }

    /// The same graph differentiated twice: the second backward recomputes the logits.
    #[test]
    fn second_backward_recomputes() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (6, 4), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (9, 4), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 9, &dev).unwrap();
        let rows = NllRows {
            targets: vec![0, 3, 8, 2, 2, 5],
            weights: vec![1.0, 2.0, 0.5, 1.0, 0.0, 3.0],
            exclude: Some(8),
        };
        let loss = head_nll(x.as_tensor(), &w, &b, &rows)
            .unwrap()
            .sum_all()
            .unwrap();
        let g1 = loss.backward().unwrap();
        let g2 = loss.backward().unwrap();
        let (g1, g2) = (
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        assert!(max_diff(g1, g2) < 1e-6);
    }

    #[test]
    fn bad_targets_and_shapes_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((5, 3), DType::F32, &dev).unwrap();
        let b = Tensor::zeros(5, DType::F32, &dev).unwrap();
        let rows = |t: Vec<u32>| NllRows {
            weights: vec![1.0; t.len()],
            targets: t,
            exclude: None,
        };
        let e = head_nll(&x, &w, &b, &rows(vec![1, 5]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("target 5 outside the vocabulary of 5"), "{e}");
        let e = head_nll(&x, &w, &b, &rows(vec![1]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 feature rows, 1 targets"), "{e}");
        let w4 = Tensor::zeros((5, 4), DType::F32, &dev).unwrap();
        let e = head_nll(&x, &w4, &b, &rows(vec![1, 2]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("disagree"), "{e}");
    }
}
