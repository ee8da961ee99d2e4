//! Bias-free LayerNorm times its weight, then the adaLN modulation, as one node:
//! `y = LN(x) w (1 + scale) + shift` with x (N, L, D) and [shift | scale] (N, 1, 2D) per sequence.
//! Separately the norm and the modulation each made a full (N, L, D) pass and buffer both ways;
//! fused, the forward reads x once and the backward reads x and dy once.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::layer_norm::stats;
use super::{f32_data, par_fill, rows_per_task};

/// (N, L, D) of x against w (D) and the (N, 1, 2D) shift-and-scale.
fn dims(
    x: &Layout,
    w: &Layout,
    ss: &Layout,
    name: &str,
) -> candle_core::Result<(usize, usize, usize)> {
    let (n, l, d) = x.shape().dims3()?;
    if w.shape().elem_count() != d || ss.shape().elem_count() != n * 2 * d {
        candle_core::bail!(
            "{name}: weight {:?} or shift-and-scale {:?} does not fit {:?}",
            w.dims(),
            ss.dims(),
            x.dims()
        )
    }
    Ok((n, l, d))
}

/// Sequences per task: about `rows_per_task` rows, whole sequences.
fn seqs_per_task(l: usize, d: usize) -> usize {
    (rows_per_task(d) / l.max(1)).max(1)
}

struct NormModulate;

impl CustomOp3 for NormModulate {
    fn name(&self) -> &'static str {
        "norm-modulate"
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
        let (n, l, d) = dims(l1, l2, l3, self.name())?;
        let x = f32_data(s1, l1, self.name())?;
        let w = f32_data(s2, l2, self.name())?;
        let ss = f32_data(s3, l3, self.name())?;
        let spt = seqs_per_task(l, d);
        // SAFETY: task t writes the rows of sequences t*spt.. (disjoint), every element of them.
        let y = unsafe {
            par_fill(
                n * l * d,
                n.div_ceil(spt),
                #[inline(always)]
                |t, out| {
                    let mut a = vec![0f32; d];
                    for s in t * spt..((t + 1) * spt).min(n) {
                        let (shift, scale) = ss[s * 2 * d..(s + 1) * 2 * d].split_at(d);
                        for ((a, w), c) in a.iter_mut().zip(w).zip(scale) {
                            *a = w * (1.0 + c);
                        }
                        let rows = &x[s * l * d..(s + 1) * l * d];
                        let y = out.slice(s * l * d, l * d);
                        for (y, x) in y.chunks_exact_mut(d).zip(rows.chunks_exact(d)) {
                            let (m, r) = stats(x);
                            for (((y, &x), a), b) in y.iter_mut().zip(x).zip(&a).zip(shift) {
                                y.write((x - m) * r * a + b);
                            }
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
        ss: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (nx, nw, nss) = (x.elem_count(), w.elem_count(), ss.elem_count());
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let all = x.apply_op3_no_bwd(ss, &g.contiguous()?, &NormModulateBwd(wv))?;
        let dx = all.narrow(0, 0, nx)?.reshape(x.shape())?;
        let dss = all.narrow(0, nx, nss)?.reshape(ss.shape())?;
        let dw = all.narrow(0, nx + nss, nw)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw), Some(dss)))
    }
}

/// Inputs x, [shift | scale], dy; the weight inside. Output: dx, d[shift | scale], dw, flattened.
struct NormModulateBwd(Vec<f32>);

impl CustomOp3 for NormModulateBwd {
    fn name(&self) -> &'static str {
        "norm-modulate-bwd"
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
        let w = &self.0;
        let (n, l, d) = x_dims(l1, w.len(), l2, self.name())?;
        let x = f32_data(s1, l1, self.name())?;
        let ss = f32_data(s2, l2, self.name())?;
        let g = f32_data(s3, l3, self.name())?;
        if g.len() != x.len() {
            candle_core::bail!("{}: gradient and input sizes differ", self.name())
        }
        let (nx, nss) = (n * l * d, n * 2 * d);
        let spt = seqs_per_task(l, d);
        let tasks = n.div_ceil(spt);
        // SAFETY: task t writes dx rows and the d[shift | scale] rows of its own sequences, and
        // its partial dw in slot t after them, every element of them.
        let mut out = unsafe {
            par_fill(
                nx + nss + tasks * d,
                tasks,
                #[inline(always)]
                |t, out| {
                    let (mut a, mut xhat, mut dw) = (vec![0f32; d], vec![0f32; d], vec![0f32; d]);
                    for s in t * spt..((t + 1) * spt).min(n) {
                        let scale = &ss[s * 2 * d + d..(s + 1) * 2 * d];
                        for ((a, w), c) in a.iter_mut().zip(w).zip(scale) {
                            *a = w * (1.0 + c);
                        }
                        // d shift = sum_l dy; d scale = sum_l dy LN(x) w.
                        let (mut dshift, mut dscale) = (vec![0f32; d], vec![0f32; d]);
                        let rows = s * l * d..(s + 1) * l * d;
                        let dx = out.slice(s * l * d, l * d);
                        for ((dx, x), g) in dx
                            .chunks_exact_mut(d)
                            .zip(x[rows.clone()].chunks_exact(d))
                            .zip(g[rows].chunks_exact(d))
                        {
                            let (m, r) = stats(x);
                            let (mut s1, mut s2) = (0f32, 0f32);
                            for i in 0..d {
                                xhat[i] = (x[i] - m) * r;
                                let gh = g[i] * a[i];
                                s1 += gh;
                                s2 += gh * xhat[i];
                                let gx = g[i] * xhat[i];
                                dshift[i] += g[i];
                                dscale[i] += gx * w[i];
                                dw[i] += gx * (1.0 + scale[i]);
                            }
                            let (m1, m2) = (s1 / d as f32, s2 / d as f32);
                            for i in 0..d {
                                dx[i].write(r * (g[i] * a[i] - m1 - xhat[i] * m2));
                            }
                        }
                        let dss = out.slice(nx + s * 2 * d, 2 * d);
                        for (o, v) in dss.iter_mut().zip(dshift.iter().chain(&dscale)) {
                            o.write(*v);
                        }
                    }
                    out.put(nx + nss + t * d, &dw);
                },
            )
        };
        // The partials summed in task order, not in the order tasks finish: a run's weights then
        // do not depend on thread timing.
        let mut dw = vec![0f32; d];
        for part in out[nx + nss..].chunks_exact(d) {
            dw.iter_mut().zip(part).for_each(|(t, v)| *t += v);
        }
        out.truncate(nx + nss);
        out.extend_from_slice(&dw);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// (N, L, D) of x against a weight of `d` and the (N, 1, 2D) shift-and-scale.
fn x_dims(
    x: &Layout,
    d: usize,
    ss: &Layout,
    name: &str,
) -> candle_core::Result<(usize, usize, usize)> {
    let (n, l, dx) = x.shape().dims3()?;
    if dx != d || ss.shape().elem_count() != n * 2 * d {
        candle_core::bail!(
            "{name}: shift-and-scale {:?} does not fit {:?}",
            ss.dims(),
            x.dims()
        )
    }
    Ok((n, l, d))
}

/// `LN(x) w (1 + scale) + shift` for x (N, L, D), w (D) and `shift_scale` (N, 1, 2D) holding
/// [shift | scale]; one fused node on CPU f32, the composed ops elsewhere.
pub fn norm_modulate(x: &Tensor, w: &Tensor, shift_scale: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && x.rank() == 3 {
        x.contiguous()?
            .apply_op3(&w.contiguous()?, &shift_scale.contiguous()?, NormModulate)
    } else {
        norm_modulate_composed(x, w, shift_scale)
    }
}

/// The composed version (the fused kernel's oracle): LayerNorm, then the modulation.
pub fn norm_modulate_composed(
    x: &Tensor,
    w: &Tensor,
    shift_scale: &Tensor,
) -> candle_core::Result<Tensor> {
    let d = w.elem_count();
    let h = super::layer_norm::layer_norm_composed(x, w)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let (shift, scale) = (shift_scale.narrow(2, 0, d)?, shift_scale.narrow(2, d, d)?);
    super::modulate::modulate_composed(&h, &shift, &scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn matches_composed_forward_and_gradients() {
        // Several sequences per task and a ragged last task (rows_per_task at D 24 is large, so
        // L 3 puts many sequences in one task; N 37 leaves a remainder).
        let dev = Device::Cpu;
        for (n, l) in [(37, 3), (2, 50), (5, 1)] {
            let x =
                Var::from_tensor(&Tensor::randn(0.5f32, 2.0, (n, l, 24), &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 24, &dev).unwrap()).unwrap();
            let ss =
                Var::from_tensor(&Tensor::randn(0f32, 0.5, (n, 1, 48), &dev).unwrap()).unwrap();
            let r = Tensor::randn(0f32, 1.0, (n, l, 24), &dev).unwrap();
            let y = norm_modulate(x.as_tensor(), w.as_tensor(), ss.as_tensor()).unwrap();
            let y_ref =
                norm_modulate_composed(x.as_tensor(), w.as_tensor(), ss.as_tensor()).unwrap();
            assert!(max_diff(&y, &y_ref) < 1e-5);
            let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (y_ref * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &w, &ss] {
                let (a, b) = (
                    g.get(v.as_tensor()).unwrap(),
                    g_ref.get(v.as_tensor()).unwrap(),
                );
                let scale = b
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(
                    max_diff(a, b) < 1e-4 * scale.max(1.0),
                    "n {n} l {l}: {:?}",
                    v.dims()
                );
            }
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        // f = sum(r * y) over (2, 3, 4); central differences in f64 of every input entry.
        let dev = Device::Cpu;
        let x0: Vec<f32> = (0..24).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let w0: Vec<f32> = vec![0.9, 1.1, -0.4, 0.6];
        let ss0: Vec<f32> = (0..16).map(|i| ((i * 5 % 7) as f32 - 3.0) / 5.0).collect();
        let r: Vec<f32> = (0..24).map(|i| ((i * 3 % 5) as f32 - 2.0) / 2.0).collect();
        let rt = Tensor::from_vec(r.clone(), (2, 3, 4), &dev).unwrap();
        let f = |x: &[f32], w: &[f32], ss: &[f32]| -> f64 {
            let y = norm_modulate(
                &Tensor::from_slice(x, (2, 3, 4), &dev).unwrap(),
                &Tensor::from_slice(w, 4, &dev).unwrap(),
                &Tensor::from_slice(ss, (2, 1, 8), &dev).unwrap(),
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
            y.iter().zip(&r).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let x = Var::from_tensor(&Tensor::from_slice(&x0, (2, 3, 4), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::from_slice(&w0, 4, &dev).unwrap()).unwrap();
        let ss = Var::from_tensor(&Tensor::from_slice(&ss0, (2, 1, 8), &dev).unwrap()).unwrap();
        let y = norm_modulate(x.as_tensor(), w.as_tensor(), ss.as_tensor()).unwrap();
        let g = (y * rt).unwrap().sum_all().unwrap().backward().unwrap();
        let grad = |v: &Var| {
            g.get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (gx, gw, gss) = (grad(&x), grad(&w), grad(&ss));
        let h = 1e-3f32;
        for which in 0..3 {
            let (base, an) = match which {
                0 => (&x0, &gx),
                1 => (&w0, &gw),
                _ => (&ss0, &gss),
            };
            for i in 0..base.len() {
                let (mut a, mut b) = (base.clone(), base.clone());
                a[i] += h;
                b[i] -= h;
                let fd = match which {
                    0 => (f(&a, &w0, &ss0) - f(&b, &w0, &ss0)) / (2.0 * h as f64),
                    1 => (f(&x0, &a, &ss0) - f(&x0, &b, &ss0)) / (2.0 * h as f64),
                    _ => (f(&x0, &w0, &a) - f(&x0, &w0, &b)) / (2.0 * h as f64),
                };
                assert!(
                    (an[i] as f64 - fd).abs() < 3e-3,
                    "input {which} entry {i}: {} vs {fd}",
                    an[i]
                );
            }
        }
    }
}
