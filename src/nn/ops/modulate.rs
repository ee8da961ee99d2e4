//! The adaLN gated residual `x + gate h` as one graph node, with a (B, 1, D) per-sequence gate
//! (composed, it is broadcast nodes whose backward reduces over the length with extra full-size
//! passes), and the modulation `x (1 + scale) + shift` composed: the oracle of `norm_modulate.rs`,
//! which fuses it with the LayerNorm before it.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::{f32_data, par_fill, par_new};

fn bld(x: &Layout, v: &Layout, name: &str) -> candle_core::Result<(usize, usize, usize)> {
    let (b, l, d) = x.shape().dims3()?;
    if v.shape().elem_count() != b * d {
        candle_core::bail!(
            "{name}: per-sequence vector {:?} does not fit {:?}",
            v.dims(),
            x.dims()
        )
    }
    Ok((b, l, d))
}

/// `x + gate h`.
struct GatedResidual;

impl CustomOp3 for GatedResidual {
    fn name(&self) -> &'static str {
        "gated-residual"
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
        let h = f32_data(s2, l2, self.name())?;
        let gate = f32_data(s3, l3, self.name())?;
        let (_, l, d) = bld(l1, l3, self.name())?;
        if h.len() != x.len() {
            candle_core::bail!("{}: branch and residual differ in size", self.name())
        }
        // SAFETY: chunk bi is sequence bi, l whole rows of d, each element written.
        let y = unsafe {
            par_new(
                x.len(),
                l * d,
                #[inline(always)]
                |bi, y| {
                    let r = bi * l * d..bi * l * d + y.len();
                    let (x, h) = (&x[r.clone()], &h[r]);
                    let gt = &gate[bi * d..(bi + 1) * d];
                    for ((y, x), h) in y
                        .chunks_exact_mut(d)
                        .zip(x.chunks_exact(d))
                        .zip(h.chunks_exact(d))
                    {
                        for j in 0..d {
                            y[j].write(x[j] + gt[j] * h[j]);
                        }
                    }
                },
            )
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        h: &Tensor,
        gate: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = h.elem_count();
        let m = gate.elem_count();
        let buf = h.apply_op3_no_bwd(gate, &g.contiguous()?, &GatedResidualBwd)?;
        Ok((
            Some(g.clone()),
            Some(buf.narrow(0, 0, n)?.reshape(h.shape())?),
            // Own buffer for the small part, as in ModulateBwd.
            Some(
                buf.narrow(0, n, m)?
                    .reshape(gate.shape())?
                    .force_contiguous()?,
            ),
        ))
    }
}

/// [dh | dgate] from (h, gate, g).
struct GatedResidualBwd;

impl CustomOp3 for GatedResidualBwd {
    fn name(&self) -> &'static str {
        "gated-residual-bwd"
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
        let h = f32_data(s1, l1, self.name())?;
        let gate = f32_data(s2, l2, self.name())?;
        let g = f32_data(s3, l3, self.name())?;
        let (b, l, d) = bld(l1, l2, self.name())?;
        let n = b * l * d + b * d;
        // SAFETY: task bi writes sequence bi's dh rows and its dgate entries, all of them and
        // nothing else.
        let buf = unsafe {
            par_fill(
                n,
                b,
                #[inline(always)]
                |bi, out| {
                    let gt = &gate[bi * d..(bi + 1) * d];
                    let hs = &h[bi * l * d..(bi + 1) * l * d];
                    let gs = &g[bi * l * d..(bi + 1) * l * d];
                    let dh = out.slice(bi * l * d, l * d);
                    let mut dg = vec![0f32; d];
                    for ((dh, h), g) in dh
                        .chunks_exact_mut(d)
                        .zip(hs.chunks_exact(d))
                        .zip(gs.chunks_exact(d))
                    {
                        for j in 0..d {
                            dh[j].write(g[j] * gt[j]);
                            dg[j] += g[j] * h[j];
                        }
                    }
                    out.put(b * l * d + bi * d, &dg);
                },
            )
        };
        Ok((CpuStorage::F32(buf), Shape::from(n)))
    }
}

fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// The modulation `x (1 + scale) + shift` composed (norm_modulate.rs fuses it with the norm).
pub fn modulate_composed(
    x: &Tensor,
    shift: &Tensor,
    scale: &Tensor,
) -> candle_core::Result<Tensor> {
    x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
}

/// `x + gate h` for x, h (B, L, D) and a (B, 1, D) gate.
pub fn gated_residual(x: &Tensor, h: &Tensor, gate: &Tensor) -> candle_core::Result<Tensor> {
    if fused(x) && x.rank() == 3 {
        x.contiguous()?
            .apply_op3(&h.contiguous()?, &gate.contiguous()?, GatedResidual)
    } else {
        x + h.broadcast_mul(gate)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn var(shape: (usize, usize, usize)) -> Var {
        Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()).unwrap()
    }

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
    fn gated_residual_matches_composed() {
        let (x, h) = (var((3, 5, 8)), var((3, 5, 8)));
        let (a, c) = (var((3, 1, 8)), var((3, 1, 8)));
        let r = Tensor::randn(0f32, 1.0, (3, 5, 8), &Device::Cpu).unwrap();
        let pairs = [(
            gated_residual(x.as_tensor(), h.as_tensor(), a.as_tensor()).unwrap(),
            (x.as_tensor() + h.as_tensor().broadcast_mul(a.as_tensor()).unwrap()).unwrap(),
        )];
        for (y, y_ref) in pairs {
            assert!(max_diff(&y, &y_ref) < 1e-6);
            let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (y_ref * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &h, &a, &c] {
                match (g.get(v.as_tensor()), g_ref.get(v.as_tensor())) {
                    (Some(p), Some(q)) => assert!(max_diff(p, q) < 1e-5),
                    (None, None) => {}
                    _ => panic!("gradient present in one version only"),
                }
            }
        }
    }
}
