//! Duo: uniform-state diffusion with the "mean" parameterisation (docs/algorithms.md §3.1-3.2, §3.6).
//! A token is kept with probability alpha_t and otherwise replaced by a uniform id; the network
//! outputs f = softmax(logits) with no carry-over, since every token can be revised.

use candle_core::{D, DType, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{ForwardProcess, LogLinear, NoiseRemoval, ProcessKind, Target, argmax};
use crate::{Error, Result};

/// Uniform-state diffusion over `vocab` ids (every id, the data's MASK/PAD id included, is a
/// state, as Duo's N = len(tokenizer)).
#[derive(Debug, Clone)]
pub struct Uniform {
    vocab: usize,
    schedule: LogLinear,
    /// Nucleus mass applied to f before the posterior (1 = none).
    top_p: f64,
}

/// Per-row signal and its time derivative, the two numbers the integrand needs (log-linear in
/// plain training, T(gamma) under the Gaussian curriculum).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Signal {
    /// alpha_t.
    pub alpha: f64,
    /// d alpha / dt (negative).
    pub dalpha: f64,
}

impl Uniform {
    /// A uniform process over `vocab` ids with the log-linear schedule.
    pub fn new(vocab: usize) -> Result<Self> {
        if vocab < 2 {
            return Err(Error::InvalidArgument(format!(
                "a uniform process needs at least 2 states, got {vocab}"
            )));
        }
        Ok(Self {
            vocab,
            schedule: LogLinear::default(),
            top_p: 1.0,
        })
    }

    /// The same process whose sampler keeps only the top-p nucleus of f (Duo's `p_nucleus`).
    pub fn with_top_p(mut self, top_p: f64) -> Result<Self> {
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "nucleus mass {top_p} must be in (0, 1]"
            )));
        }
        self.top_p = top_p;
        Ok(self)
    }

    fn signal(&self, t: f64) -> Signal {
        Signal {
            alpha: self.schedule.alpha(t),
            dalpha: self.schedule.dalpha(t),
        }
    }

    /// The NELBO integrand at M positions in its KL + Itakura-Saito form (§3.2):
    /// (-alpha'/alpha) [KL(q_t(.|x0) || q_t(.|f)) + D_IS(q_t(x_t|x0) || q_t(x_t|f))] / (N q_t(x_t|x0)),
    /// computed in the dtype of `logits` (f64 for reference checks), against a simplex target
    /// `g` (M, V) (one-hot for a hard x0). Differentiable in `logits` and in `g`. Returns (M,).
    pub fn integrand_rows(
        &self,
        logits: &Tensor,
        xt: &[u32],
        g: &Tensor,
        signal: &[Signal],
    ) -> Result<Tensor> {
        let (m, v) = logits.dims2()?;
        if xt.len() != m || signal.len() != m || g.dims() != logits.dims() || v != self.vocab {
            return Err(Error::InvalidArgument(format!(
                "Duo loss rows: logits {:?} (vocabulary {}), target {:?}, {} noisy ids, {} times",
                logits.dims(),
                self.vocab,
                g.dims(),
                xt.len(),
                signal.len()
            )));
        }
        let dt = logits.dtype();
        let dev = logits.device();
        let n = v as f64;
        let col = |f: &dyn Fn(&Signal) -> f64| -> Result<Tensor> {
            let x: Vec<f64> = signal.iter().map(f).collect();
            Ok(Tensor::from_vec(x, (m, 1), dev)?.to_dtype(dt)?)
        };
        let na = col(&|s| n * s.alpha)?;
        let oma = col(&|s| 1.0 - s.alpha)?;
        let g = g.to_dtype(dt)?;
        // x_bar = N q_t(.|x0) and x_bar_theta = N q_t(.|f): both sum to N over the vocabulary.
        // Composed (differentiable) softmax: candle's fused softmax_last_dim has no backward.
        let f = candle_nn::ops::log_softmax(logits, D::Minus1)?.exp()?;
        let xbt = f.broadcast_mul(&na)?.broadcast_add(&oma)?;
        let xb = g.broadcast_mul(&na)?.broadcast_add(&oma)?;
        let idx = Tensor::from_slice(xt, (m, 1), dev)?;
        let xb_xt = xb.gather(&idx, 1)?.squeeze(1)?;
        let xbt_xt = xbt.gather(&idx, 1)?.squeeze(1)?;
        // N KL = sum_j x_bar_j (log x_bar_j - log x_bar_theta_j); x_bar > 0 while alpha < 1, the
        // floor only guards 0 log 0 at alpha = 1.
        let log_xb = xb.clamp(1e-30, f64::MAX)?.log()?;
        let n_kl = xb.mul(&(log_xb - xbt.log()?)?)?.sum(D::Minus1)?;
        let r = (&xb_xt / &xbt_xt)?;
        let d_is = ((&r - r.log()?)? - 1.0)?;
        let coef: Vec<f64> = signal.iter().map(|s| -s.dalpha / s.alpha).collect();
        let coef = Tensor::from_vec(coef, m, dev)?.to_dtype(dt)?;
        Ok(((n_kl / n)? + d_is)?.div(&xb_xt)?.mul(&coef)?)
    }

    /// One-hot (M, V) of `ids` in `dtype`.
    fn one_hot(&self, ids: &[u32], dtype: DType, dev: &candle_core::Device) -> Result<Tensor> {
        let m = ids.len();
        let mut x = vec![0f32; m * self.vocab];
        for (i, &id) in ids.iter().enumerate() {
            x[i * self.vocab + id as usize] = 1.0;
        }
        Ok(Tensor::from_vec(x, (m, self.vocab), dev)?.to_dtype(dtype)?)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&x| x as usize >= self.vocab) {
            Some(x) => Err(Error::InvalidArgument(format!(
                "token id {x} outside the vocabulary of {}",
                self.vocab
            ))),
            None => Ok(()),
        }
    }

    /// q(x_s | x_t, f) over the vocabulary in f64 (§3.6), at one position with clean-token
    /// distribution `f` (already nucleus-filtered), noisy token `xt` and signals alpha_t < alpha_s.
    pub fn posterior(&self, f: &[f64], xt: u32, at: f64, as_: f64) -> Vec<f64> {
        let n = self.vocab as f64;
        let ats = at / as_;
        let x = xt as usize;
        let base = (1.0 - ats) * (1.0 - as_) / n;
        let den = at * n * f[x] + 1.0 - at;
        let mut p: Vec<f64> = f.iter().map(|&fv| ((as_ - at) * fv + base) / den).collect();
        p[x] += (at * n * f[x] + (ats - at)) / den;
        p
    }

    /// f at one position in f64, restricted to its top-p nucleus and renormalised.
    fn nucleus(&self, probs: &[f32]) -> Vec<f64> {
        let mut f: Vec<f64> = probs.iter().map(|&p| p as f64).collect();
        if self.top_p < 1.0 {
            let mut order: Vec<usize> = (0..f.len()).collect();
            order.sort_by(|&a, &b| f[b].total_cmp(&f[a]));
            let total: f64 = f.iter().sum();
            let mut cum = 0.0;
            let mut keep = f.len();
            for (k, &i) in order.iter().enumerate() {
                cum += f[i];
                if cum >= self.top_p * total {
                    keep = k + 1;
                    break;
                }
            }
            for &i in &order[keep..] {
                f[i] = 0.0;
            }
        }
        let s: f64 = f.iter().sum();
        if s > 0.0 {
            f.iter_mut().for_each(|x| *x /= s);
        }
        f
    }

    /// Ancestral update of a row from signal `at` to `as_` (as_ = 1: the final noise removal).
    fn update_row(&self, probs: &[f32], xt: &mut [u32], at: f64, as_: f64, rng: &mut ChaCha8Rng) {
        let v = self.vocab;
        for (l, x) in xt.iter_mut().enumerate() {
            let f = self.nucleus(&probs[l * v..(l + 1) * v]);
            let p = self.posterior(&f, *x, at, as_);
            *x = super::draw_f64(&p, rng) as u32;
        }
    }
}

impl ForwardProcess for Uniform {
    fn kind(&self) -> ProcessKind {
        ProcessKind::Duo
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn schedule(&self) -> LogLinear {
        self.schedule
    }

    fn corrupt_row(&self, x0: &[u32], t: f64, rng: &mut ChaCha8Rng, out: &mut [u32]) {
        let move_p = 1.0 - self.schedule.alpha(t);
        for (o, &x) in out.iter_mut().zip(x0) {
            *o = if rng.random::<f64>() < move_p {
                rng.random_range(0..self.vocab as u32)
            } else {
                x
            };
        }
    }

    fn prior_row(&self, out: &mut [u32], rng: &mut ChaCha8Rng) {
        for o in out.iter_mut() {
            *o = rng.random_range(0..self.vocab as u32);
        }
    }

    fn is_final(&self, _xt: &[u32]) -> bool {
        false
    }

    fn log_probs(&self, logits: &Tensor, _xt: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::log_softmax(logits, D::Minus1)?)
    }

    fn clean_probs(&self, logits: &Tensor, xt: &[u32]) -> Result<Vec<f32>> {
        let (m, _) = logits.dims2()?;
        if xt.len() != m {
            return Err(Error::InvalidArgument(format!(
                "{m} rows of logits for {} positions",
                xt.len()
            )));
        }
        let p = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
        Ok(p.flatten_all()?.to_vec1::<f32>()?)
    }

    fn hard_loss_rows(&self, logits: &Tensor, xt: &[u32], x0: &[u32], t: &[f64]) -> Result<Tensor> {
        self.check_ids(x0)?;
        self.check_ids(xt)?;
        let g = self.one_hot(x0, logits.dtype(), logits.device())?;
        let s: Vec<Signal> = t.iter().map(|&t| self.signal(t)).collect();
        self.integrand_rows(logits, xt, &g, &s)
    }

    fn soft_loss_rows(&self, logits: &Tensor, xt: &[u32], g: &Tensor, t: &[f64]) -> Result<Tensor> {
        self.check_ids(xt)?;
        let s: Vec<Signal> = t.iter().map(|&t| self.signal(t)).collect();
        self.integrand_rows(logits, xt, g, &s)
    }

    fn log_probs_rows(&self, logits: &Tensor, xt: &[u32]) -> Result<Tensor> {
        let (m, _) = logits.dims2()?;
        if xt.len() != m {
            return Err(Error::InvalidArgument(format!(
                "{m} rows of logits for {} positions",
                xt.len()
            )));
        }
        Ok(candle_nn::ops::log_softmax(logits, D::Minus1)?)
    }

    fn renoise_row(&self, g: &[f32], t: f64, rng: &mut ChaCha8Rng, out: &mut [u32]) {
        // A hard draw from alpha_t g + (1 - alpha_t)/N (IDLM-Duo itself re-noises through the
        // Gaussian latent, with gradient; this is the discrete process's own q_t(. | g)).
        let keep = self.schedule.alpha(t);
        let v = self.vocab;
        for (l, o) in out.iter_mut().enumerate() {
            *o = if rng.random::<f64>() < keep {
                super::draw_f64(&g[l * v..(l + 1) * v], rng) as u32
            } else {
                rng.random_range(0..v as u32)
            };
        }
    }

    fn loss_per_token(
        &self,
        logits: &Tensor,
        xt: &Tensor,
        target: Target,
        t: &[f64],
    ) -> Result<Tensor> {
        let (b, l) = xt.dims2()?;
        if t.len() != b {
            return Err(Error::InvalidArgument(format!(
                "{} times for a batch of {b}",
                t.len()
            )));
        }
        let ids = xt.flatten_all()?.to_vec1::<u32>()?;
        let t_pos: Vec<f64> = (0..b * l).map(|i| t[i / l]).collect();
        let v = logits.dim(2)?;
        let flat = logits.reshape((b * l, v))?;
        let out = match target {
            Target::Hard(x0) => {
                let x0 = x0.flatten_all()?.to_vec1::<u32>()?;
                self.hard_loss_rows(&flat, &ids, &x0, &t_pos)?
            }
            Target::Soft(g) => self.soft_loss_rows(&flat, &ids, &g.reshape((b * l, v))?, &t_pos)?,
        };
        Ok(out.reshape((b, l))?)
    }

    fn posterior_row(
        &self,
        probs: &[f32],
        xt: &mut [u32],
        t: f64,
        s: f64,
        rng: &mut ChaCha8Rng,
    ) -> bool {
        let (at, as_) = (self.schedule.alpha(t), self.schedule.alpha(s));
        self.update_row(probs, xt, at, as_, rng);
        // Every position is redrawn; the prediction is stale even where a token was kept.
        true
    }

    fn noise_removal_row(
        &self,
        probs: &[f32],
        xt: &mut [u32],
        t: f64,
        mode: NoiseRemoval,
        rng: &mut ChaCha8Rng,
    ) -> bool {
        match mode {
            NoiseRemoval::Ancestral => {
                self.update_row(probs, xt, self.schedule.alpha(t), 1.0, rng);
            }
            NoiseRemoval::Greedy => {
                let v = self.vocab;
                for (l, x) in xt.iter_mut().enumerate() {
                    *x = argmax(&probs[l * v..(l + 1) * v]) as u32;
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::SeedableRng;

    fn softmax(z: &[f64]) -> Vec<f64> {
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    /// The general form of §3.2 as written (soft x0): alpha'/(N alpha) [N/xb[xt] - N/xbt[xt]
    /// - sum_j (xb_j/xb[xt]) log(xbt[xt] xb_j / (xbt_j xb[xt]))].
    fn general_form(f: &[f64], g: &[f64], xt: usize, a: f64, da: f64) -> f64 {
        let n = f.len() as f64;
        let xb: Vec<f64> = g.iter().map(|&x| n * a * x + 1.0 - a).collect();
        let xbt: Vec<f64> = f.iter().map(|&x| n * a * x + 1.0 - a).collect();
        let s: f64 = (0..f.len())
            .map(|j| (xb[j] / xb[xt]) * (xbt[xt] * xb[j] / (xbt[j] * xb[xt])).ln())
            .sum();
        da / (n * a) * (n / xb[xt] - n / xbt[xt] - s)
    }

    /// The hard-x0 closed form, derived by splitting the sum at j = x0 (weights 1 and
    /// c = (1 - alpha)/(N alpha + 1 - alpha), or 1/c and 1 when x_t != x0).
    fn hard_form(f: &[f64], x0: usize, xt: usize, a: f64, da: f64) -> f64 {
        let n = f.len() as f64;
        let xbt: Vec<f64> = f.iter().map(|&x| n * a * x + 1.0 - a).collect();
        let c = (1.0 - a) / (n * a + 1.0 - a);
        let w = |j: usize| -> f64 {
            match (xt == x0, j == x0) {
                (true, true) => 1.0,
                (true, false) => c,
                (false, true) => 1.0 / c,
                (false, false) => 1.0,
            }
        };
        let lr: f64 = (0..f.len()).map(|j| w(j) * (xbt[xt] / xbt[j]).ln()).sum();
        let (xb_xt, offset) = if xt == x0 {
            (n * a + 1.0 - a, (n - 1.0) * c * c.ln())
        } else {
            (1.0 - a, -(1.0 / c) * c.ln())
        };
        da / (n * a) * (n / xb_xt - n / xbt[xt] - lr - offset)
    }

    #[test]
    fn three_forms_of_the_integrand_agree_and_soft_one_hot_is_hard() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let dev = Device::Cpu;
        for &n in &[2usize, 7, 61] {
            let p = Uniform::new(n).unwrap();
            for case in 0..20 {
                let z: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 6.0 - 3.0).collect();
                let f = softmax(&z);
                let gz: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 4.0 - 2.0).collect();
                let g = softmax(&gz);
                let x0 = rng.random_range(0..n);
                let xt = if case % 2 == 0 {
                    x0
                } else {
                    rng.random_range(0..n)
                };
                let t: f64 = 1e-3 + rng.random::<f64>() * 0.998;
                let s = p.signal(t);
                let logits = Tensor::from_vec(z.clone(), (1, n), &dev).unwrap();
                let ours = |g: &[f64]| -> f64 {
                    let gt = Tensor::from_vec(g.to_vec(), (1, n), &dev).unwrap();
                    p.integrand_rows(&logits, &[xt as u32], &gt, &[s])
                        .unwrap()
                        .to_vec1::<f64>()
                        .unwrap()[0]
                };
                let mut one = vec![0.0; n];
                one[x0] = 1.0;
                let hard = hard_form(&f, x0, xt, s.alpha, s.dalpha);
                for (a, b) in [
                    (ours(&g), general_form(&f, &g, xt, s.alpha, s.dalpha)),
                    (ours(&one), hard),
                    (general_form(&f, &one, xt, s.alpha, s.dalpha), hard),
                ] {
                    assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
                }
                assert!(hard >= 0.0);
                let hl = p
                    .hard_loss_rows(&logits, &[xt as u32], &[x0 as u32], &[t])
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()[0];
                assert!((hl - hard).abs() <= 1e-12 * hard.abs().max(1.0));
            }
        }
    }

    #[test]
    fn integrand_gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let (m, n) = (3, 6);
        let p = Uniform::new(n).unwrap();
        let z: Vec<f64> = (0..m * n)
            .map(|_| rng.random::<f64>() * 4.0 - 2.0)
            .collect();
        let gz: Vec<f64> = (0..m * n)
            .map(|_| rng.random::<f64>() * 4.0 - 2.0)
            .collect();
        let xt = [1u32, 4, 0];
        let sig: Vec<Signal> = [0.2, 0.5, 0.9].iter().map(|&t| p.signal(t)).collect();
        type Grads = Option<(Vec<f64>, Vec<f64>)>;
        let total = |z: &[f64], gz: &[f64]| -> (f64, Grads) {
            let zv = candle_core::Var::from_vec(z.to_vec(), (m, n), &dev).unwrap();
            let gv = candle_core::Var::from_vec(gz.to_vec(), (m, n), &dev).unwrap();
            let g = candle_nn::ops::softmax(gv.as_tensor(), D::Minus1).unwrap();
            let l = p
                .integrand_rows(zv.as_tensor(), &xt, &g, &sig)
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = l.backward().unwrap();
            let flat = |v: &candle_core::Var| {
                grads
                    .get(v.as_tensor())
                    .map(|t| t.flatten_all().unwrap().to_vec1::<f64>().unwrap())
            };
            let both = flat(&zv).zip(flat(&gv));
            (l.to_scalar::<f64>().unwrap(), both)
        };
        let (_, grads) = total(&z, &gz);
        let (dz, dg) = grads.expect("gradients reach both the logits and the target");
        let h = 1e-6;
        for i in 0..m * n {
            for (which, grad) in [(0, &dz), (1, &dg)] {
                let (mut a, mut b) = (z.clone(), gz.clone());
                let (mut a2, mut b2) = (z.clone(), gz.clone());
                if which == 0 {
                    a[i] += h;
                    a2[i] -= h;
                } else {
                    b[i] += h;
                    b2[i] -= h;
                }
                let fd = (total(&a, &b).0 - total(&a2, &b2).0) / (2.0 * h);
                assert!(
                    (fd - grad[i]).abs() < 1e-6 * fd.abs().max(1.0),
                    "input {which} entry {i}: autograd {} vs finite difference {fd}",
                    grad[i]
                );
            }
        }
        assert!(
            dz.iter().any(|g| g.abs() > 1e-3),
            "a gradient that is not all zero"
        );
    }

    #[test]
    fn integrand_is_zero_at_the_truth_and_rejects_bad_ids() {
        let dev = Device::Cpu;
        let p = Uniform::new(5).unwrap();
        // f = g: KL = 0 and D_IS = 0.
        let z = vec![0.3f64, -1.0, 2.0, 0.0, 0.5];
        let logits = Tensor::from_vec(z.clone(), (1, 5), &dev).unwrap();
        let g = candle_nn::ops::softmax_last_dim(&logits).unwrap();
        let l = p.soft_loss_rows(&logits, &[2], &g, &[0.4]).unwrap();
        assert!(l.to_vec1::<f64>().unwrap()[0].abs() < 1e-14);
        let e = p
            .hard_loss_rows(&logits, &[2], &[9], &[0.4])
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the vocabulary"), "{e}");
        assert!(Uniform::new(1).is_err());
        assert!(Uniform::new(5).unwrap().with_top_p(0.0).is_err());
    }

    #[test]
    fn posterior_sums_to_one_and_reduces_to_the_prior_and_clean_ends() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let n = 11;
        let p = Uniform::new(n).unwrap();
        for _ in 0..50 {
            let z: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 4.0 - 2.0).collect();
            let f = softmax(&z);
            let xt = rng.random_range(0..n) as u32;
            let t: f64 = rng.random::<f64>() * 0.9 + 0.1;
            let s = t * rng.random::<f64>();
            let (at, as_) = (p.schedule.alpha(t), p.schedule.alpha(s));
            let q = p.posterior(&f, xt, at, as_);
            let sum: f64 = q.iter().sum();
            assert!((sum - 1.0).abs() < 1e-12, "sum {sum}");
            assert!(q.iter().all(|&x| x >= 0.0));
            // alpha_s = 1 with a one-hot f: the clean token for sure.
            let mut one = vec![0.0; n];
            one[3] = 1.0;
            let q = p.posterior(&one, xt, at, 1.0);
            assert!((q[3] - 1.0).abs() < 1e-12);
        }
        // alpha_t = alpha_s: nothing moves.
        let f = softmax(&[0.1; 11]);
        let q = p.posterior(&f, 4, 0.3, 0.3);
        assert!((q[4] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn nucleus_keeps_the_smallest_top_set() {
        let p = Uniform::new(4).unwrap().with_top_p(0.7).unwrap();
        let f = p.nucleus(&[0.1, 0.5, 0.3, 0.1]);
        assert_eq!(f[0], 0.0);
        assert_eq!(f[3], 0.0);
        assert!((f[1] - 0.625).abs() < 1e-7 && (f[2] - 0.375).abs() < 1e-7);
    }
}
