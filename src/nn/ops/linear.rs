//! Linear layer `y = x W^T + b` as one node with a hand-written backward (GEMMs straight into the
//! gradient buffers, bias folded into the output GEMM): candle's composed version is three graph
//! nodes (transpose, matmul, broadcast add), each paying a zero-fill and an add in the backward.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{column_sums, f32_data, gemm_append_short_rows, gemm_new, lanes, rows_per_task, simd};

/// Inputs of at most this many rows take [`few_rows_xwt`] (KV-cache decoding: one row per sequence).
const FEW_ROWS: usize = 8;
/// Weight rows per parallel task of [`few_rows_xwt`].
const W_ROWS_PER_TASK: usize = 64;

/// `x W^T` (rows x out) for a few rows of `x`: each weight row is read once, contiguously, and
/// dotted with every input row. A GEMV-shaped call is bound by reading W, which the GEMM kernel
/// first packs (an extra pass over W per call); this reads it once (docs/engineering.md).
fn few_rows_xwt(rows: usize, out: usize, k: usize, x: &[f32], w: &[f32]) -> Vec<f32> {
    // Column-major result first (one contiguous run per weight row), transposed after: rows is small.
    let mut yt = vec![0f32; out * rows];
    yt.par_chunks_mut(W_ROWS_PER_TASK * rows)
        .enumerate()
        .for_each(|(c, ys)| {
            simd::dispatch(
                #[inline(always)]
                || {
                    for (j, yr) in ys.chunks_exact_mut(rows).enumerate() {
                        let n = c * W_ROWS_PER_TASK + j;
                        let wr = &w[n * k..(n + 1) * k];
                        for (r, y) in yr.iter_mut().enumerate() {
                            *y = lanes::dot(&x[r * k..(r + 1) * k], wr);
                        }
                    }
                },
            )
        });
    if rows == 1 {
        return yt;
    }
    let mut y = vec![0f32; rows * out];
    for (n, yr) in yt.chunks_exact(rows).enumerate() {
        for (r, v) in yr.iter().enumerate() {
            y[r * out + n] = *v;
        }
    }
    y
}

/// `x W^T` (rows x out) with W in PyTorch's `[out, k]` layout.
fn xwt(rows: usize, out: usize, k: usize, x: &[f32], w: &[f32]) -> Vec<f32> {
    if rows <= FEW_ROWS && k > 0 {
        few_rows_xwt(rows, out, k, x, w)
    } else {
        gemm_new(rows, out, k, x, k, 1, w, 1, k)
    }
}

#[inline(always)]
fn add_assign(r: &mut [f32], b: &[f32]) {
    r.iter_mut().zip(b).for_each(|(a, b)| *a += b);
}

/// The input's shape with the last dimension replaced by `out`.
fn out_shape(x: &Layout, out: usize) -> Shape {
    let mut shape = x.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = out;
    }
    Shape::from(shape)
}

fn dims(x: &Layout, w: &Layout, name: &str) -> candle_core::Result<(usize, usize, usize)> {
    let wd = w.dims();
    if wd.len() != 2 {
        candle_core::bail!("{name}: weight must be 2-d")
    }
    let (out, k) = (wd[0], wd[1]);
    let xd = x.dims();
    if xd.last() != Some(&k) {
        candle_core::bail!(
            "{name}: input width {:?} does not match weight {k}",
            xd.last()
        )
    }
    Ok((x.shape().elem_count() / k.max(1), k, out))
}

/// `y = x W^T + b` over the last dimension of x.
struct LinearBias;

impl CustomOp3 for LinearBias {
    fn name(&self) -> &'static str {
        "linear-bias"
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
        let b = f32_data(s3, l3, self.name())?;
        let (rows, k, out) = dims(l1, l2, self.name())?;
        // The GEMM into fresh memory, then the bias added in the same (cache-warm) row order.
        let mut y = xwt(rows, out, k, x, w);
        y.par_chunks_mut(out * rows_per_task(out)).for_each(|r| {
            simd::dispatch(
                #[inline(always)]
                || r.chunks_exact_mut(out).for_each(|r| add_assign(r, b)),
            )
        });
        Ok((CpuStorage::F32(y), out_shape(l1, out)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = linear_backward(x, w, g, true)?;
        Ok((Some(dx), Some(dw), db))
    }
}

/// `y = x W^T` over the last dimension of x.
struct LinearNoBias;

impl CustomOp2 for LinearNoBias {
    fn name(&self) -> &'static str {
        "linear"
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
        let (rows, k, out) = dims(l1, l2, self.name())?;
        let y = xwt(rows, out, k, x, w);
        Ok((CpuStorage::F32(y), out_shape(l1, out)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = linear_backward(x, w, g, false)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// One part of the backward: dx = g W, or [dW | db] with dW = g^T x and db the column sums of g.
/// Two ops, not one buffer [dx | dW | db], so the weight's gradient has a buffer of its own (kept
/// as it is by backprop) and dx is freed as soon as the layer below has used it.
struct LinearBwd {
    bias: bool,
    weight: bool,
}

impl CustomOp3 for LinearBwd {
    fn name(&self) -> &'static str {
        "linear-bwd"
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
        let (rows, k, out) = dims(l1, l2, self.name())?;
        if !self.weight {
            // dx straight from the GEMM (no zero pass).
            let dx = gemm_new(rows, k, out, g, out, 1, w, k, 1);
            return Ok((CpuStorage::F32(dx), l1.shape().clone()));
        }
        let nb = if self.bias { out } else { 0 };
        let mut buf = Vec::with_capacity(out * k + nb);
        gemm_append_short_rows(&mut buf, out, k, rows, g, 1, out, x, k, 1);
        if self.bias {
            buf.extend_from_slice(&column_sums(g, out));
        }
        let n = buf.len();
        Ok((CpuStorage::F32(buf), Shape::from(n)))
    }
}

fn linear_backward(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    bias: bool,
) -> candle_core::Result<(Tensor, Tensor, Option<Tensor>)> {
    let (out, k) = w.dims2()?;
    let g = g.contiguous()?;
    let dx = x.apply_op3_no_bwd(
        w,
        &g,
        &LinearBwd {
            bias,
            weight: false,
        },
    )?;
    let buf = x.apply_op3_no_bwd(w, &g, &LinearBwd { bias, weight: true })?;
    let dw = buf.narrow(0, 0, out * k)?.reshape((out, k))?;
    let db = if bias {
        Some(buf.narrow(0, out * k, out)?)
    } else {
        None
    };
    Ok((dx, dw, db))
}

/// `x W^T (+ b)` with one graph node on CPU f32; composed ops elsewhere.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        let x = x.contiguous()?;
        let w = w.contiguous()?;
        match b {
            Some(b) => x.apply_op3(&w, &b.contiguous()?, LinearBias),
            None => x.apply_op2(&w, LinearNoBias),
        }
    } else {
        linear_composed(x, w, b)
    }
}

/// The composed linear layer: the fused op's oracle.
pub fn linear_composed(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = *dims.last().unwrap_or(&1);
    let rows = x.elem_count() / k.max(1);
    let y = x.reshape((rows, k))?.matmul(&w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = w.dim(0)?;
    }
    y.reshape(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_composed_forward_and_gradients() {
        let dev = Device::Cpu;
        // The second shape takes the threaded GEMM and several bias-add tasks; the others the
        // few-rows path (1, 2 and 8 rows; several weight-row tasks and a ragged last one).
        for (b0, l, k, out) in [
            (3, 5, 7, 9),
            (4, 75, 64, 130),
            (1, 1, 37, 150),
            (2, 1, 64, 129),
            (8, 1, 19, 200),
        ] {
            check_linear(&dev, b0, l, k, out);
        }
    }

    fn check_linear(dev: &Device, b0: usize, l: usize, k: usize, out: usize) {
        let dev = dev.clone();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b0, l, k), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (out, k), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, out, &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (b0, l, out), &dev).unwrap();
        let tol = 1e-5 * (k as f32).sqrt() * (b0 * l) as f32;
        for bias in [true, false] {
            let bb = bias.then(|| b.as_tensor());
            let y = linear(x.as_tensor(), w.as_tensor(), bb).unwrap();
            let y_ref = linear_composed(x.as_tensor(), w.as_tensor(), bb).unwrap();
            let d = (&y - &y_ref).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-5 * (k as f32).sqrt());
            let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (y_ref * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let mut vars = vec![&x, &w];
            if bias {
                vars.push(&b);
            }
            for v in vars {
                let d = (g.get(v.as_tensor()).unwrap() - g_ref.get(v.as_tensor()).unwrap())
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap();
                assert!(d.to_scalar::<f32>().unwrap() < tol, "{b0}x{l}x{k}->{out}");
            }
        }
    }
}
