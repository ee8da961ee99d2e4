//! Multi-head attention (bidirectional, or causal for the AR baseline) with rotate-half rotary on q
//! and k, as one kernel with a hand-written backward. Input is the packed qkv projection (B, L, 3D) in the reference layout
//! (three, head, dim); output is (B, L, D), ready for the output projection. No transposes, no
//! attention matrix kept between forward and backward (recomputed per head in the backward).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::{f32_data, gemm_strided, lanes, par_fill};

/// Single-threaded GEMM: attention runs one task per (batch, head) already.
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    accumulate: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
) {
    gemm_strided(m, n, k, c, accumulate, a, a_rs, a_cs, b, b_rs, b_cs, false)
}

/// Attention with rotary; `cos` / `sin` are (max_len, dh / 2) tables.
#[derive(Clone)]
pub struct RotaryAttention {
    n_heads: usize,
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    causal: bool,
}

impl RotaryAttention {
    /// Tables for head dimension `dh` and positions 0..max_len (base 10000, f32 angles).
    pub fn new(n_heads: usize, dh: usize, max_len: usize) -> Self {
        let half = dh / 2;
        let inv: Vec<f32> = (0..half)
            .map(|j| 10000f64.powf(-(2.0 * j as f64) / dh as f64) as f32)
            .collect();
        let mut cos = Vec::with_capacity(max_len * half);
        let mut sin = Vec::with_capacity(max_len * half);
        for p in 0..max_len {
            for &f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Self {
            n_heads,
            cos: Arc::new(cos),
            sin: Arc::new(sin),
            causal: false,
        }
    }

    /// The same attention with a causal mask: position i attends to positions 0..=i only.
    pub fn causal(n_heads: usize, dh: usize, max_len: usize) -> Self {
        Self {
            causal: true,
            ..Self::new(n_heads, dh, max_len)
        }
    }

    /// Rotate one head vector `x` (dh values) to position `pos` into `out`: the KV cache's rotation,
    /// the same tables as the full-sequence kernel so cached and uncached logits agree.
    pub(crate) fn rotate_at(&self, x: &[f32], pos: usize, out: &mut [f32]) {
        let h = x.len() / 2;
        let (c, s) = (
            &self.cos[pos * h..(pos + 1) * h],
            &self.sin[pos * h..(pos + 1) * h],
        );
        for j in 0..h {
            out[j] = x[j] * c[j] - x[j + h] * s[j];
            out[j + h] = x[j + h] * c[j] + x[j] * s[j];
        }
    }

    /// Rotate rows of one head: `out[i] = rot_i(src[i*rs + off ..])` (L x dh, dense).
    #[inline(always)]
    fn rotate(&self, src: &[f32], rs: usize, off: usize, l: usize, dh: usize, out: &mut [f32]) {
        let h = dh / 2;
        for (i, o) in out[..l * dh].chunks_exact_mut(dh).enumerate() {
            let (x1, x2) = src[i * rs + off..i * rs + off + dh].split_at(h);
            let (c, s) = (&self.cos[i * h..(i + 1) * h], &self.sin[i * h..(i + 1) * h]);
            let (o1, o2) = o.split_at_mut(h);
            // Zipped slices carry no index checks, so the loop vectorises (indexed, it ran at
            // ~1 ns per element: 4% of a sampler step).
            for ((o1, o2), ((&a, &b), (&c, &s))) in o1
                .iter_mut()
                .zip(o2.iter_mut())
                .zip(x1.iter().zip(x2).zip(c.iter().zip(s)))
            {
                *o1 = a * c - b * s;
                *o2 = b * c + a * s;
            }
        }
    }

    /// Gradient through the rotation (its transpose), added into `dst[i*rs + off ..]`.
    #[inline(always)]
    fn unrotate_into(
        &self,
        g: &[f32],
        l: usize,
        dh: usize,
        dst: &mut [f32],
        rs: usize,
        off: usize,
    ) {
        let h = dh / 2;
        for i in 0..l {
            let (g1, g2) = g[i * dh..(i + 1) * dh].split_at(h);
            let (c, s) = (&self.cos[i * h..(i + 1) * h], &self.sin[i * h..(i + 1) * h]);
            let (o1, o2) = dst[i * rs + off..i * rs + off + dh].split_at_mut(h);
            for ((o1, o2), ((&a, &b), (&c, &s))) in o1
                .iter_mut()
                .zip(o2.iter_mut())
                .zip(g1.iter().zip(g2).zip(c.iter().zip(s)))
            {
                *o1 = a * c + b * s;
                *o2 = b * c - a * s;
            }
        }
    }

    /// Softmax(scale q k^T) for one (batch, head): returns (P, q_rot, k_rot).
    #[inline(always)]
    fn probs(&self, x: &[f32], l: usize, d: usize, hd: usize, dh: usize) -> [Vec<f32>; 3] {
        let mut q = vec![0f32; l * dh];
        let mut k = vec![0f32; l * dh];
        self.rotate(x, 3 * d, hd * dh, l, dh, &mut q);
        self.rotate(x, 3 * d, d + hd * dh, l, dh, &mut k);
        let mut p = vec![0f32; l * l];
        matmul(l, l, dh, &mut p, false, &q, dh, 1, &k, 1, dh);
        let scale = 1.0 / (dh as f32).sqrt();
        for (i, row) in p.chunks_exact_mut(l).enumerate() {
            // Causal: keys after the query get probability exactly 0, so the backward (which
            // multiplies by P) needs no mask of its own.
            let n = if self.causal { i + 1 } else { l };
            let (row, masked) = row.split_at_mut(n);
            masked.fill(0.0);
            lanes::softmax_in_place(row, scale);
        }
        [p, q, k]
    }

    fn check(&self, l: &Layout, name: &str) -> candle_core::Result<(usize, usize, usize, usize)> {
        let (b, len, d3) = l.shape().dims3()?;
        let d = d3 / 3;
        if !d3.is_multiple_of(3)
            || !d.is_multiple_of(self.n_heads)
            || !(d / self.n_heads).is_multiple_of(2)
        {
            candle_core::bail!("{name}: bad qkv width {d3} for {} heads", self.n_heads)
        }
        if len * (d / self.n_heads / 2) > self.cos.len() {
            candle_core::bail!("{name}: sequence length {len} beyond the rotary table")
        }
        Ok((b, len, d, d / self.n_heads))
    }
}

impl CustomOp1 for RotaryAttention {
    fn name(&self) -> &'static str {
        "rotary-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, lay: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(s, lay, self.name())?;
        let (b, l, d, dh) = self.check(lay, self.name())?;
        let h = self.n_heads;
        // SAFETY: task (bi, hd) writes head hd's dh columns of sequence bi's l rows: together
        // every element once.
        let out = unsafe {
            par_fill(
                b * l * d,
                b * h,
                #[inline(always)]
                |bh, out| {
                    let (bi, hd) = (bh / h, bh % h);
                    let xb = &x[bi * l * 3 * d..(bi + 1) * l * 3 * d];
                    let [p, _, _] = self.probs(xb, l, d, hd, dh);
                    let mut o = vec![0f32; l * dh];
                    matmul(
                        l,
                        dh,
                        l,
                        &mut o,
                        false,
                        &p,
                        l,
                        1,
                        &xb[2 * d + hd * dh..],
                        3 * d,
                        1,
                    );
                    for (i, o) in o.chunks_exact(dh).enumerate() {
                        out.put((bi * l + i) * d + hd * dh, o);
                    }
                },
            )
        };
        Ok((CpuStorage::F32(out), Shape::from((b, l, d))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &g.contiguous()?,
            &RotaryAttentionBwd(self.clone()),
        )?))
    }
}

struct RotaryAttentionBwd(RotaryAttention);

impl CustomOp2 for RotaryAttentionBwd {
    fn name(&self) -> &'static str {
        "rotary-attention-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = &self.0;
        let x = f32_data(s1, l1, self.name())?;
        let go = f32_data(s2, l2, self.name())?;
        let (b, l, d, dh) = op.check(l1, self.name())?;
        let h = op.n_heads;
        let scale = 1.0 / (dh as f32).sqrt();
        // SAFETY: task (bi, hd) writes head hd's q, k and v columns of sequence bi's l rows:
        // together every element of dx once.
        let dx = unsafe {
            par_fill(
                b * l * 3 * d,
                b * h,
                #[inline(always)]
                |bh, out| {
                    let (bi, hd) = (bh / h, bh % h);
                    let xb = &x[bi * l * 3 * d..(bi + 1) * l * 3 * d];
                    let gb = &go[bi * l * d + hd * dh..];
                    let [p, q, k] = op.probs(xb, l, d, hd, dh);
                    let v = &xb[2 * d + hd * dh..];
                    // dV = P^T dO
                    let mut dv = vec![0f32; l * dh];
                    matmul(l, dh, l, &mut dv, false, &p, 1, l, gb, d, 1);
                    // dP = dO V^T, then dS = P (dP - rowdot(dP, P)) scale
                    let mut ds = vec![0f32; l * l];
                    matmul(l, l, dh, &mut ds, false, gb, d, 1, v, 1, 3 * d);
                    for (dr, pr) in ds.chunks_exact_mut(l).zip(p.chunks_exact(l)) {
                        let dot = lanes::dot(dr, pr);
                        for (dv, &pv) in dr.iter_mut().zip(pr) {
                            *dv = pv * (*dv - dot) * scale;
                        }
                    }
                    // dq_rot = dS k_rot, dk_rot = dS^T q_rot, each rotated back.
                    let mut dr = vec![0f32; l * dh];
                    let mut dq = vec![0f32; l * dh];
                    matmul(l, dh, l, &mut dr, false, &ds, l, 1, &k, dh, 1);
                    op.unrotate_into(&dr, l, dh, &mut dq, dh, 0);
                    let mut dk = vec![0f32; l * dh];
                    matmul(l, dh, l, &mut dr, false, &ds, 1, l, &q, dh, 1);
                    op.unrotate_into(&dr, l, dh, &mut dk, dh, 0);
                    for i in 0..l {
                        let o = (bi * l + i) * 3 * d + hd * dh;
                        let r = i * dh..(i + 1) * dh;
                        out.put(o, &dq[r.clone()]);
                        out.put(o + d, &dk[r.clone()]);
                        out.put(o + 2 * d, &dv[r]);
                    }
                },
            )
        };
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Fused attention on packed qkv (B, L, 3D) -> (B, L, D) on CPU f32.
pub fn rotary_attention(qkv: &Tensor, op: &RotaryAttention) -> candle_core::Result<Tensor> {
    qkv.contiguous()?.apply_op1(op.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::rotary::Rotary;
    use candle_core::{D, Device, Var};

    /// The composed attention of the DiT block (with a causal mask when asked): the oracle.
    fn composed(qkv: &Tensor, h: usize, causal: bool) -> Tensor {
        let (b, l, d3) = qkv.dims3().unwrap();
        let d = d3 / 3;
        let dh = d / h;
        let rot = Rotary::new(dh, l, &Device::Cpu).unwrap();
        let x = qkv.reshape((b, l, 3, h, dh)).unwrap();
        let take = |i: usize| {
            x.narrow(2, i, 1)
                .unwrap()
                .squeeze(2)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let q = rot.apply(&take(0)).unwrap();
        let k = rot.apply(&take(1)).unwrap();
        let v = take(2);
        let att = (q.matmul(&k.t().unwrap()).unwrap() * (1.0 / (dh as f64).sqrt())).unwrap();
        let att = if causal {
            let mask: Vec<f32> = (0..l * l)
                .map(|ij| if ij % l > ij / l { -1e9 } else { 0.0 })
                .collect();
            let mask = Tensor::from_vec(mask, (l, l), &Device::Cpu).unwrap();
            att.broadcast_add(&mask).unwrap()
        } else {
            att
        };
        let att = candle_nn::ops::softmax(&att, D::Minus1).unwrap();
        att.matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, l, d))
            .unwrap()
    }

    #[test]
    fn matches_composed_forward_and_gradient() {
        check_against_composed(false);
    }

    #[test]
    fn causal_matches_masked_composed_forward_and_gradient() {
        check_against_composed(true);
    }

    fn check_against_composed(causal: bool) {
        let (b, l, h, dh) = (2, 11, 3, 8);
        let d = h * dh;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, l, 3 * d), &Device::Cpu).unwrap())
            .unwrap();
        let r = Tensor::randn(0f32, 1.0, (b, l, d), &Device::Cpu).unwrap();
        let op = if causal {
            RotaryAttention::causal(h, dh, 16)
        } else {
            RotaryAttention::new(h, dh, 16)
        };
        let y = rotary_attention(x.as_tensor(), &op).unwrap();
        let y_ref = composed(x.as_tensor(), h, causal);
        let dmax = (&y - &y_ref)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(dmax < 1e-5, "forward diff {dmax}");
        let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (y_ref * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let dmax = (g.get(x.as_tensor()).unwrap() - g_ref.get(x.as_tensor()).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(dmax < 1e-4, "gradient diff {dmax}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for causal in [false, true] {
            finite_differences(causal);
        }
    }

    fn finite_differences(causal: bool) {
        let (b, l, h, dh) = (1, 4, 1, 4);
        let d = h * dh;
        let x0: Vec<f32> = (0..b * l * 3 * d)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 6.0)
            .collect();
        let r: Vec<f32> = (0..b * l * d)
            .map(|i| ((i * 13 % 7) as f32 - 3.0) / 2.0)
            .collect();
        let op = if causal {
            RotaryAttention::causal(h, dh, 8)
        } else {
            RotaryAttention::new(h, dh, 8)
        };
        let rt = Tensor::from_slice(&r, (b, l, d), &Device::Cpu).unwrap();
        let f = |x: &[f32]| -> f64 {
            let t = Tensor::from_slice(x, (b, l, 3 * d), &Device::Cpu).unwrap();
            let y = rotary_attention(&t, &op)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            y.iter().zip(&r).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let x = Var::from_slice(&x0, (b, l, 3 * d), &Device::Cpu).unwrap();
        let y = rotary_attention(x.as_tensor(), &op).unwrap();
        let g = (y * rt).unwrap().sum_all().unwrap().backward().unwrap();
        let g = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for i in 0..x0.len() {
            let (mut a, mut bb) = (x0.clone(), x0.clone());
            a[i] += 1e-3;
            bb[i] -= 1e-3;
            let fd = (f(&a) - f(&bb)) / 2e-3;
            assert!((g[i] as f64 - fd).abs() < 3e-3, "{i}: {} vs {fd}", g[i]);
        }
    }
}
