//! Exactly enumerable toy worlds (docs/design.md §7, docs/toy-world.md): a small vocabulary plus MASK, a short
//! length and an explicit joint p*. Everything here is computed by enumeration, not sampling, so it
//! serves as the oracle for the loss, the trainer and the samplers.

use candle_core::{Device, Tensor};

use crate::process::LogLinear;
use crate::sample::Denoiser;
use crate::{Error, Result};

/// A joint distribution over `v^l` clean sequences; MASK is id `v`.
#[derive(Debug, Clone)]
pub struct ToyWorld {
    /// Clean tokens (MASK is `v`).
    pub v: usize,
    /// Sequence length.
    pub l: usize,
    /// p*(x) for x in lexicographic order (first position most significant).
    pub p: Vec<f64>,
}

/// log(0) stand-in that stays finite in f32 arithmetic.
const LOG_ZERO: f32 = -1e9;

impl ToyWorld {
    /// A world from unnormalised weights.
    pub fn new(v: usize, l: usize, weights: Vec<f64>) -> Result<Self> {
        if weights.len() != v.pow(l as u32) || weights.iter().any(|w| *w < 0.0) {
            return Err(Error::InvalidArgument(
                "toy world needs v^l non-negative weights".into(),
            ));
        }
        let z: f64 = weights.iter().sum();
        Ok(Self {
            v,
            l,
            p: weights.iter().map(|w| w / z).collect(),
        })
    }

    /// The world of docs/toy-world.md: {A, B}, L = 2, AA .45, AB .05, BA .05, BB .45.
    pub fn two_by_two() -> Self {
        Self {
            v: 2,
            l: 2,
            p: vec![0.45, 0.05, 0.05, 0.45],
        }
    }

    /// The MASK id.
    pub fn mask(&self) -> u32 {
        self.v as u32
    }

    /// Clean sequence number `i`.
    pub fn decode(&self, mut i: usize) -> Vec<u32> {
        let mut x = vec![0u32; self.l];
        for pos in (0..self.l).rev() {
            x[pos] = (i % self.v) as u32;
            i /= self.v;
        }
        x
    }

    /// Index of a clean sequence.
    pub fn encode(&self, x: &[u32]) -> usize {
        x.iter().fold(0, |acc, &t| acc * self.v + t as usize)
    }

    /// Every noisy state in {0..v, MASK}^l.
    pub fn noisy_states(&self) -> Vec<Vec<u32>> {
        let n = (self.v + 1).pow(self.l as u32);
        (0..n)
            .map(|mut i| {
                let mut x = vec![0u32; self.l];
                for pos in (0..self.l).rev() {
                    x[pos] = (i % (self.v + 1)) as u32;
                    i /= self.v + 1;
                }
                x
            })
            .collect()
    }

    /// Exact denoiser p*(x0_l = k | x_t) for every position (l x v, row-major); None if x_t is
    /// impossible under p*.
    pub fn denoiser(&self, xt: &[u32]) -> Option<Vec<f64>> {
        let mut out = vec![0f64; self.l * self.v];
        let mut z = 0.0;
        for (i, &pi) in self.p.iter().enumerate() {
            let x0 = self.decode(i);
            if xt
                .iter()
                .zip(&x0)
                .any(|(&a, &b)| a != self.mask() && a != b)
            {
                continue;
            }
            z += pi;
            for (pos, &tok) in x0.iter().enumerate() {
                out[pos * self.v + tok as usize] += pi;
            }
        }
        if z <= 0.0 {
            return None;
        }
        out.iter_mut().for_each(|o| *o /= z);
        Some(out)
    }

    /// Exact denoiser of the uniform process (Duo, "mean" parameterisation) at signal `alpha`,
    /// over the v + 1 states (the MASK id is an ordinary state with no data mass, like Duo's PAD):
    /// f_l(k) = p*(x0_l = k | x_t without position l). That, not p*(x0_l | x_t), is what makes
    /// the model's reverse rates q_t(y|f)/q_t(x_t|f) equal the true ones, since
    /// q_t(x_t^l = y | rest) = alpha f_l(y) + (1 - alpha)/N; it minimises the UDLM NELBO.
    /// l x (v + 1), row-major.
    pub fn uniform_denoiser(&self, xt: &[u32], alpha: f64) -> Vec<f64> {
        let n = self.v + 1;
        let lik = |a: u32, b: u32| alpha * f64::from(u8::from(a == b)) + (1.0 - alpha) / n as f64;
        let mut out = vec![0f64; self.l * n];
        for (pos, row) in out.chunks_mut(n).enumerate() {
            for (i, &pi) in self.p.iter().enumerate() {
                let x0 = self.decode(i);
                let w: f64 = pi
                    * xt.iter()
                        .zip(&x0)
                        .enumerate()
                        .filter(|(m, _)| *m != pos)
                        .map(|(_, (&a, &b))| lik(a, b))
                        .product::<f64>();
                row[x0[pos] as usize] += w;
            }
            let z: f64 = row.iter().sum();
            row.iter_mut().for_each(|o| *o /= z);
        }
        out
    }

    /// Per-position marginals p*(x_l = k) (the denoiser at the all-MASK state).
    pub fn marginals(&self) -> Vec<f64> {
        let all = vec![self.mask(); self.l];
        self.denoiser(&all).unwrap_or_default()
    }

    /// Product of the per-position marginals, as a distribution over clean sequences.
    pub fn product_of_marginals(&self) -> Vec<f64> {
        let m = self.marginals();
        (0..self.p.len())
            .map(|i| {
                self.decode(i)
                    .iter()
                    .enumerate()
                    .map(|(pos, &t)| m[pos * self.v + t as usize])
                    .product()
            })
            .collect()
    }

    /// Entropy of p* in nats (per sequence).
    pub fn entropy(&self) -> f64 {
        -self
            .p
            .iter()
            .filter(|&&q| q > 0.0)
            .map(|q| q * q.ln())
            .sum::<f64>()
    }

    /// Expected per-token MDLM loss of the exact denoiser, with t ~ U[t_min, 1] as the trainer
    /// draws it: E_t E_{x0} E_{x_t} [sum over masked l of -log p*(x0_l | x_t) / t] / L, integrated
    /// over t by Gauss-Legendre quadrature.
    pub fn exact_nelbo_per_token(&self, schedule: LogLinear, t_min: f64) -> f64 {
        let (nodes, weights) = gauss_legendre(64);
        let mut total = 0.0;
        for (xi, wi) in nodes.iter().zip(&weights) {
            let t = t_min + (1.0 - t_min) * (xi + 1.0) / 2.0;
            let a = schedule.alpha(t);
            let mut inner = 0.0;
            for (i, &pi) in self.p.iter().enumerate() {
                if pi == 0.0 {
                    continue;
                }
                let x0 = self.decode(i);
                for pattern in 0..(1usize << self.l) {
                    let mut xt = x0.clone();
                    let mut prob = 1.0;
                    for (pos, x) in xt.iter_mut().enumerate() {
                        if pattern >> pos & 1 == 1 {
                            *x = self.mask();
                            prob *= 1.0 - a;
                        } else {
                            prob *= a;
                        }
                    }
                    let Some(den) = self.denoiser(&xt) else {
                        continue;
                    };
                    let mut nll = 0.0;
                    for (pos, &tok) in x0.iter().enumerate() {
                        if xt[pos] == self.mask() {
                            nll -= den[pos * self.v + tok as usize].ln();
                        }
                    }
                    inner += pi * prob * nll / t;
                }
            }
            // Mean over t ~ U[t_min, 1]: the quadrature weight over [-1, 1] sums to 2.
            total += wi / 2.0 * inner;
        }
        total / self.l as f64
    }
}

/// Gauss-Legendre nodes and weights on [-1, 1] (Newton iteration on P_n).
pub fn gauss_legendre(n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut x = vec![0.0; n];
    let mut w = vec![0.0; n];
    for i in 0..n {
        let mut z = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        for _ in 0..100 {
            let (mut p1, mut p2) = (1.0, 0.0);
            for j in 0..n {
                let p3 = p2;
                p2 = p1;
                p1 = ((2 * j + 1) as f64 * z * p2 - j as f64 * p3) / (j + 1) as f64;
            }
            let pp = n as f64 * (z * p1 - p2) / (z * z - 1.0);
            let dz = p1 / pp;
            z -= dz;
            if dz.abs() < 1e-15 {
                let (mut q1, mut q2) = (1.0, 0.0);
                for j in 0..n {
                    let q3 = q2;
                    q2 = q1;
                    q1 = ((2 * j + 1) as f64 * z * q2 - j as f64 * q3) / (j + 1) as f64;
                }
                let qp = n as f64 * (z * q1 - q2) / (z * z - 1.0);
                x[i] = z;
                w[i] = 2.0 / ((1.0 - z * z) * qp * qp);
                break;
            }
        }
    }
    (x, w)
}

/// The exact denoiser of a toy world as a network: logits = log p*(x0 | x_t), no time input.
pub struct ExactDenoiser<'a> {
    /// The world.
    pub world: &'a ToyWorld,
}

impl Denoiser for ExactDenoiser<'_> {
    fn logits(&self, xt: &Tensor, _sigma: &Tensor, positions: Option<&[u32]>) -> Result<Tensor> {
        let (b, l) = xt.dims2()?;
        let w = self.world;
        let vv = w.v + 1;
        let ids = xt.flatten_all()?.to_vec1::<u32>()?;
        let mut out = vec![LOG_ZERO; b * l * vv];
        for r in 0..b {
            let row = &ids[r * l..(r + 1) * l];
            let den = w.denoiser(row).ok_or_else(|| {
                Error::InvalidArgument(format!("state {row:?} is impossible under p*"))
            })?;
            for pos in 0..l {
                for k in 0..w.v {
                    let p = den[pos * w.v + k];
                    out[(r * l + pos) * vv + k] = if p > 0.0 { p.ln() as f32 } else { LOG_ZERO };
                }
            }
        }
        let all = Tensor::from_vec(out, (b * l, vv), &Device::Cpu)?;
        Ok(match positions {
            Some(p) => all.index_select(&Tensor::from_slice(p, p.len(), &Device::Cpu)?, 0)?,
            None => all,
        })
    }

    fn time_conditioned(&self) -> bool {
        false
    }

    fn max_len(&self) -> usize {
        self.world.l
    }

    fn device(&self) -> Device {
        Device::Cpu
    }
}

/// The exact uniform-process denoiser as a time-conditioned network: alpha = exp(-sigma).
pub struct ExactUniformDenoiser<'a> {
    /// The world.
    pub world: &'a ToyWorld,
}

impl Denoiser for ExactUniformDenoiser<'_> {
    fn logits(&self, xt: &Tensor, sigma: &Tensor, positions: Option<&[u32]>) -> Result<Tensor> {
        let (b, l) = xt.dims2()?;
        let w = self.world;
        let n = w.v + 1;
        let ids = xt.flatten_all()?.to_vec1::<u32>()?;
        let sig = sigma.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        let mut out = vec![LOG_ZERO; b * l * n];
        for r in 0..b {
            let den = w.uniform_denoiser(&ids[r * l..(r + 1) * l], (-sig[r]).exp());
            for (o, &p) in out[r * l * n..(r + 1) * l * n].iter_mut().zip(&den) {
                if p > 0.0 {
                    *o = p.ln() as f32;
                }
            }
        }
        let all = Tensor::from_vec(out, (b * l, n), &Device::Cpu)?;
        Ok(match positions {
            Some(p) => all.index_select(&Tensor::from_slice(p, p.len(), &Device::Cpu)?, 0)?,
            None => all,
        })
    }

    fn time_conditioned(&self) -> bool {
        true
    }

    fn max_len(&self) -> usize {
        self.world.l
    }

    fn device(&self) -> Device {
        Device::Cpu
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauss_legendre_integrates_polynomials_exactly() {
        let (x, w) = gauss_legendre(8);
        let s: f64 = x.iter().zip(&w).map(|(x, w)| w * x.powi(6)).sum();
        assert!((s - 2.0 / 7.0).abs() < 1e-13);
        assert!((w.iter().sum::<f64>() - 2.0).abs() < 1e-13);
    }

    #[test]
    fn denoiser_of_the_two_by_two_world() {
        let w = ToyWorld::two_by_two();
        let d = w.denoiser(&[0, 2]).unwrap();
        // Given A first: second is A w.p. 0.45 / 0.5.
        assert!((d[2] - 0.9).abs() < 1e-12 && (d[0] - 1.0).abs() < 1e-12);
        assert_eq!(w.product_of_marginals(), vec![0.25; 4]);
    }
}
