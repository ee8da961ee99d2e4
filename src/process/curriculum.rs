//! Duo's training curriculum (docs/algorithms.md §3.5): the Gaussian latent w = alpha~ e_x0 + sigma~ xi
//! over one-hot vectors, seen by the network as softmax(w / tau), with the loss at the hard token
//! argmax w and the discrete signal alpha_t = T(gamma_t) of the duality (§3.3).

use candle_core::Tensor;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::ForwardProcess;
use super::duality::{DualityTable, alpha_tilde, sigma_tilde, t_of_gamma};
use super::uniform::{Signal, Uniform};
use crate::data::pairs::{answer_mask, unclamped_count};
use crate::nn::{Dit, DitInput, DropoutRng};
use crate::{Error, Result};

/// Curriculum settings (`[duo]` of a run config); the defaults are the reference OWT recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DuoConfig {
    /// First step of the tau schedule.
    pub curriculum_start: u64,
    /// Last curriculum step; later steps (and validation) use the plain NELBO. 0: no curriculum.
    pub curriculum_end: u64,
    /// log10 tau at and before `curriculum_start`.
    pub tau_log10_start: f64,
    /// log10 tau at `curriculum_end`.
    pub tau_log10_end: f64,
    /// Discrete signal at gamma_min. The reference fixes gamma in [-3.55, -1.85] for GPT-2's
    /// N = 50257, where T gives alpha 0.9455 .. 0.0493; the window is kept in alpha so that it
    /// carries over to other vocabularies (gamma found by bisection on T for the model's N).
    pub alpha_max: f64,
    /// Discrete signal at gamma_max.
    pub alpha_min: f64,
    /// Points of the T(gamma) table (linear interpolation; 1e5 keeps alpha within 3e-10).
    pub table_points: usize,
}

impl Default for DuoConfig {
    fn default() -> Self {
        Self {
            curriculum_start: 0,
            curriculum_end: 0,
            tau_log10_start: -3.0,
            tau_log10_end: -3.0,
            alpha_max: 0.9455,
            alpha_min: 0.0493,
            table_points: super::duality::DEFAULT_NUM_POINTS,
        }
    }
}

/// gamma with T(gamma) = alpha for vocabulary `n`, by bisection (T falls with gamma).
pub fn gamma_for_alpha(n: usize, alpha: f64) -> Result<f64> {
    if !(alpha > 0.0 && alpha < 1.0) {
        return Err(Error::Config(format!(
            "duo: a signal of {alpha} has no gamma; alpha must be in (0, 1)"
        )));
    }
    let (mut lo, mut hi) = (-30.0f64, 30.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_of_gamma(n, mid) > alpha {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(0.5 * (lo + hi))
}

/// The soft-input logit of a clamped position's token (0 elsewhere): softmax of it is exactly
/// one-hot in f32 (exp(-1e4) underflows to 0), so the network embeds exactly the clean token, as
/// it would from its id.
pub const CLAMP_LOGIT: f32 = 1e4;

/// Whether position `pos` of a row with a clamped prefix of `prompt` tokens is clamped.
fn clamped(pos: usize, prompt: usize) -> bool {
    pos < prompt
}

/// A batch corrupted through the Gaussian latent.
pub struct Relaxed {
    /// w / tau, (B, L, V): the network input (softmaxed inside the embedding).
    pub input: Tensor,
    /// argmax w per position, (B x L): where the loss is evaluated.
    pub xt: Vec<u32>,
    /// alpha_t = T(gamma_t) and its time derivative, per row.
    pub signals: Vec<Signal>,
    /// sigma = -log alpha_t per row, the time-conditioning input.
    pub sigma: Vec<f32>,
}

/// Hard states at two times of one Gaussian trajectory (DCD's shared xi).
pub struct LatentPair {
    /// argmax w_t per position (B x L).
    pub xt: Vec<u32>,
    /// argmax w_s per position (B x L).
    pub xs: Vec<u32>,
    /// -log T(gamma_t) per row.
    pub sigma_t: Vec<f32>,
    /// -log T(gamma_s) per row.
    pub sigma_s: Vec<f32>,
}

/// The curriculum for one vocabulary.
pub struct DuoCurriculum {
    cfg: DuoConfig,
    table: DualityTable,
    process: Uniform,
}

impl DuoCurriculum {
    /// Build (or read from `cache_dir`) the T(gamma) table of the window for vocabulary `n`.
    pub fn new(cfg: &DuoConfig, n: usize, cache_dir: &std::path::Path) -> Result<Self> {
        if cfg.alpha_max <= cfg.alpha_min {
            return Err(Error::Config(format!(
                "duo.alpha_max ({}) must exceed duo.alpha_min ({})",
                cfg.alpha_max, cfg.alpha_min
            )));
        }
        if cfg.curriculum_end > 0 && cfg.curriculum_end < cfg.curriculum_start {
            return Err(Error::Config(
                "duo.curriculum_end must not come before duo.curriculum_start".into(),
            ));
        }
        let g_min = gamma_for_alpha(n, cfg.alpha_max)?;
        let g_max = gamma_for_alpha(n, cfg.alpha_min)?;
        let table = DualityTable::load_or_build(cache_dir, n, g_min, g_max, cfg.table_points)?;
        Ok(Self {
            cfg: cfg.clone(),
            table,
            process: Uniform::new(n)?,
        })
    }

    /// The uniform process whose integrand the curriculum's losses use.
    pub fn process(&self) -> &Uniform {
        &self.process
    }

    /// The gamma window [gamma_min, gamma_max].
    pub fn gamma_range(&self) -> (f64, f64) {
        self.table.gamma_range()
    }

    /// tau at optimizer step `step`, or None once the curriculum is over (plain NELBO).
    pub fn tau(&self, step: u64) -> Option<f64> {
        let c = &self.cfg;
        if c.curriculum_end == 0 || step > c.curriculum_end {
            return None;
        }
        let span = (c.curriculum_end - c.curriculum_start).max(1) as f64;
        let frac = (step.saturating_sub(c.curriculum_start) as f64 / span).clamp(0.0, 1.0);
        Some(10f64.powf(c.tau_log10_start + frac * (c.tau_log10_end - c.tau_log10_start)))
    }

    /// gamma_t = gamma_min + t (gamma_max - gamma_min), alpha_t = T(gamma_t), and alpha'_t as the
    /// reference computes it: a forward difference of T in gamma with step 1e-3, times the
    /// window width.
    pub fn signal(&self, t: f64) -> (f64, Signal) {
        let (g0, g1) = self.gamma_range();
        let g = g0 + t * (g1 - g0);
        let alpha = self.table.alpha(g);
        let dalpha = (g1 - g0) * (self.table.alpha(g + 1e-3) - alpha) / 1e-3;
        (g, Signal { alpha, dalpha })
    }

    /// Corrupt rows `x0` (B x L) at times `t` (one per row) through the Gaussian latent; the
    /// first `prompts[r]` positions of row r stay clean (soft input one-hot, hard state x0). The
    /// noise is drawn for every position, so clamping changes no other position's draw.
    #[allow(clippy::too_many_arguments)]
    pub fn corrupt(
        &self,
        x0: &[u32],
        l: usize,
        t: &[f64],
        prompts: &[usize],
        tau: f64,
        rng: &mut ChaCha8Rng,
        dev: &candle_core::Device,
    ) -> Result<Relaxed> {
        let b = t.len();
        let v = self.process.vocab_size();
        if x0.len() != b * l || prompts.len() != b {
            return Err(Error::InvalidArgument(format!(
                "{} tokens and {} prompt lengths for {b} rows of {l}",
                x0.len(),
                prompts.len()
            )));
        }
        let mut input = vec![0f32; b * l * v];
        let mut xt = vec![0u32; b * l];
        let mut signals = Vec::with_capacity(b);
        let mut sigma = Vec::with_capacity(b);
        for (r, &tr) in t.iter().enumerate() {
            let (g, s) = self.signal(tr);
            let (a, sd) = (alpha_tilde(g), sigma_tilde(g));
            let inv_tau = 1.0 / tau;
            for pos in 0..l {
                let i = r * l + pos;
                let row = &mut input[i * v..(i + 1) * v];
                let mut best = (0usize, f64::NEG_INFINITY);
                for (k, o) in row.iter_mut().enumerate() {
                    let z: f64 = StandardNormal.sample(rng);
                    let w = sd * z + if k == x0[i] as usize { a } else { 0.0 };
                    if w > best.1 {
                        best = (k, w);
                    }
                    *o = (w * inv_tau) as f32;
                }
                xt[i] = best.0 as u32;
                if clamped(pos, prompts[r]) {
                    row.fill(0.0);
                    row[x0[i] as usize] = CLAMP_LOGIT;
                    xt[i] = x0[i];
                }
            }
            signals.push(s);
            sigma.push(-(s.alpha.ln()) as f32);
        }
        Ok(Relaxed {
            input: Tensor::from_vec(input, (b, l, v), dev)?,
            xt,
            signals,
            sigma,
        })
    }

    /// DCD's pair (docs/algorithms.md §3.7): w_t = alpha~_t x0 + sigma~_t xi and w_s = alpha~_s x0 +
    /// sigma~_s xi with one shared xi per position, taken to their hard argmax tokens; the first
    /// `prompts[r]` positions of row r are x0 in both.
    pub fn pair(
        &self,
        x0: &[u32],
        l: usize,
        t: &[f64],
        s: &[f64],
        prompts: &[usize],
        rng: &mut ChaCha8Rng,
    ) -> Result<LatentPair> {
        let b = t.len();
        let v = self.process.vocab_size();
        if x0.len() != b * l || s.len() != b || prompts.len() != b {
            return Err(Error::InvalidArgument(format!(
                "{} tokens and {} / {} times for {b} rows of {l}",
                x0.len(),
                t.len(),
                s.len()
            )));
        }
        let mut out = LatentPair {
            xt: vec![0; b * l],
            xs: vec![0; b * l],
            sigma_t: Vec::with_capacity(b),
            sigma_s: Vec::with_capacity(b),
        };
        for r in 0..b {
            let (gt, st) = self.signal(t[r]);
            let (gs, ss) = self.signal(s[r]);
            let (at, sdt) = (alpha_tilde(gt), sigma_tilde(gt));
            let (as_, sds) = (alpha_tilde(gs), sigma_tilde(gs));
            for pos in 0..l {
                let i = r * l + pos;
                let (mut bt, mut bs) = ((0usize, f64::NEG_INFINITY), (0usize, f64::NEG_INFINITY));
                for k in 0..v {
                    let z: f64 = StandardNormal.sample(rng);
                    let hit = k == x0[i] as usize;
                    let wt = sdt * z + if hit { at } else { 0.0 };
                    let ws = sds * z + if hit { as_ } else { 0.0 };
                    if wt > bt.1 {
                        bt = (k, wt);
                    }
                    if ws > bs.1 {
                        bs = (k, ws);
                    }
                }
                (out.xt[i], out.xs[i]) = if clamped(pos, prompts[r]) {
                    (x0[i], x0[i])
                } else {
                    (bt.0 as u32, bs.0 as u32)
                };
            }
            out.sigma_t.push(-(st.alpha.ln()) as f32);
            out.sigma_s.push(-(ss.alpha.ln()) as f32);
        }
        Ok(out)
    }

    /// Mean NELBO integrand over the batch's unclamped tokens for a relaxed batch: the network
    /// sees the soft input, the loss is the hard-target integrand at argmax w with the T(gamma)
    /// signal; the first `prompts[r]` positions of row r are left out (as `prompted_batch_loss`).
    pub fn batch_loss(
        &self,
        model: &Dit,
        x0: &[u32],
        batch: &Relaxed,
        prompts: &[usize],
        dropout: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let (b, l, _) = batch.input.dims3()?;
        let dev = model.device().clone();
        let sigma = Tensor::from_slice(&batch.sigma, b, &dev)?;
        let feats = model.features(DitInput::Soft(&batch.input), &sigma, dropout)?;
        let d = feats.dim(2)?;
        let logits = model.head(&feats.reshape((b * l, d))?)?;
        let v = logits.dim(1)?;
        let mut g = vec![0f32; b * l * v];
        for (i, &x) in x0.iter().enumerate() {
            g[i * v + x as usize] = 1.0;
        }
        let g = Tensor::from_vec(g, (b * l, v), &dev)?;
        let sig: Vec<Signal> = (0..b * l).map(|i| batch.signals[i / l]).collect();
        let loss = self.process.integrand_rows(&logits, &batch.xt, &g, &sig)?;
        let counted = unclamped_count(b, l, prompts);
        if counted == 0 {
            return Ok(Tensor::new(0f32, &dev)?);
        }
        if counted < b * l {
            let keep = prompt_mask(prompts, l, &dev)?;
            return Ok(((loss * keep)?.sum_all()? / counted as f64)?);
        }
        Ok((loss.sum_all()? / (b * l) as f64)?)
    }
}

/// 1 at every unclamped position of rows of length `l` with prompts `prompts`, 0 at the
/// prompts: (B x L,) f32, to weight per-position losses.
pub fn prompt_mask(prompts: &[usize], l: usize, dev: &candle_core::Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        answer_mask(prompts, l),
        prompts.len() * l,
        dev,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::duality::dt_dgamma;
    use candle_core::Device;
    use rand::SeedableRng;

    fn curriculum(n: usize, start: u64, end: u64) -> (tempfile::TempDir, DuoCurriculum) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DuoConfig {
            curriculum_start: start,
            curriculum_end: end,
            tau_log10_start: -1.0,
            tau_log10_end: -3.0,
            table_points: 4000,
            ..Default::default()
        };
        let c = DuoCurriculum::new(&cfg, n, dir.path()).unwrap();
        (dir, c)
    }

    #[test]
    fn gamma_window_and_tau_schedule() {
        let (_d, c) = curriculum(50258, 10, 20);
        let (g0, g1) = c.gamma_range();
        // The reference's window for GPT-2, recovered from its alpha ends.
        assert!(
            (g0 + 3.55).abs() < 2e-3 && (g1 + 1.85).abs() < 2e-3,
            "{g0} {g1}"
        );
        assert!((t_of_gamma(50258, g0) - 0.9455).abs() < 1e-9);
        assert_eq!(c.tau(5), Some(0.1));
        assert_eq!(c.tau(10), Some(0.1));
        assert!((c.tau(15).unwrap() - 0.01).abs() < 1e-12);
        assert!((c.tau(20).unwrap() - 1e-3).abs() < 1e-15);
        assert_eq!(c.tau(21), None);
        assert!(gamma_for_alpha(8, 1.5).is_err());
        let bad = DuoConfig {
            alpha_max: 0.1,
            alpha_min: 0.5,
            ..Default::default()
        };
        assert!(DuoCurriculum::new(&bad, 8, std::path::Path::new("/nonexistent")).is_err());
    }

    #[test]
    fn signal_derivative_is_the_reference_forward_difference() {
        let (_d, c) = curriculum(512, 0, 10);
        let (g0, g1) = c.gamma_range();
        for t in [0.1, 0.5, 0.9] {
            let (g, s) = c.signal(t);
            assert!((g - (g0 + t * (g1 - g0))).abs() < 1e-12);
            assert!((s.alpha - t_of_gamma(512, g)).abs() < 1e-7);
            // A forward difference of step 1e-3: within O(1e-3) of the analytic derivative.
            let exact = (g1 - g0) * dt_dgamma(512, g);
            assert!(
                (s.dalpha - exact).abs() < 2e-3 * exact.abs() + 1e-6,
                "{} vs {exact}",
                s.dalpha
            );
            assert!(s.dalpha < 0.0);
        }
    }

    #[test]
    fn argmax_of_the_latent_is_the_uniform_process() {
        // The duality: P(argmax w = x0) = alpha + (1 - alpha)/N with alpha = T(gamma_t).
        let n = 16;
        let (_d, c) = curriculum(n, 0, 10);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (rows, l) = (8, 500);
        let x0: Vec<u32> = (0..rows * l).map(|i| (i % n) as u32).collect();
        for t in [0.2, 0.6] {
            let times = vec![t; rows];
            let r = c
                .corrupt(&x0, l, &times, &vec![0; rows], 1e-3, &mut rng, &Device::Cpu)
                .unwrap();
            let kept = r.xt.iter().zip(&x0).filter(|(a, b)| a == b).count() as f64;
            let total = (rows * l) as f64;
            let a = r.signals[0].alpha;
            let p = a + (1.0 - a) / n as f64;
            let se = (p * (1.0 - p) / total).sqrt();
            assert!(
                (kept / total - p).abs() < 4.0 * se,
                "{} vs {p}",
                kept / total
            );
            assert!((r.sigma[0] as f64 + a.ln()).abs() < 1e-6);
            // The input is w / tau: its argmax is x_t.
            let inp = r.input.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for i in 0..20 {
                let row = &inp[i * n..(i + 1) * n];
                assert_eq!(crate::process::argmax(row) as u32, r.xt[i]);
            }
        }
        assert!(
            c.corrupt(&x0, 7, &[0.5], &[0], 1.0, &mut rng, &Device::Cpu)
                .is_err()
        );
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn clamped_prompts_stay_clean_and_out_of_the_loss() {
        let n = 12;
        let (_d, c) = curriculum(n, 0, 10);
        let (b, l) = (3, 9);
        let x0: Vec<u32> = (0..b * l).map(|i| ((i * 5 + 1) % n) as u32).collect();
        let prompts = [4, 0, 9];
        let t = [0.9, 0.7, 1.0];
        let mut r1 = ChaCha8Rng::seed_from_u64(3);
        let mut r2 = r1.clone();
        let free = c
            .corrupt(&x0, l, &t, &[0; 3], 0.1, &mut r1, &Device::Cpu)
            .unwrap();
        let kept = c
            .corrupt(&x0, l, &t, &prompts, 0.1, &mut r2, &Device::Cpu)
            .unwrap();
        let inp = kept.input.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let free_inp = free.input.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let probs = crate::nn::ops::softmax::softmax_last(&kept.input).unwrap();
        let probs = probs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for r in 0..b {
            for pos in 0..l {
                let i = r * l + pos;
                let row = i * n..(i + 1) * n;
                if pos < prompts[r] {
                    assert_eq!(kept.xt[i], x0[i]);
                    // The network sees the clean token's one-hot (the kernel's exp leaves < 1e-30).
                    for (k, &p) in probs[row].iter().enumerate() {
                        if k == x0[i] as usize {
                            assert_eq!(p, 1.0);
                        } else {
                            assert!(p < 1e-30, "{p}");
                        }
                    }
                } else {
                    // Clamping changes no other position's draw.
                    assert_eq!(kept.xt[i], free.xt[i]);
                    assert_eq!(inp[row.clone()], free_inp[row]);
                }
            }
        }
        let pair = c.pair(&x0, l, &t, &[0.5; 3], &prompts, &mut r1).unwrap();
        for r in 0..b {
            for pos in 0..prompts[r] {
                assert_eq!(pair.xt[r * l + pos], x0[r * l + pos]);
                assert_eq!(pair.xs[r * l + pos], x0[r * l + pos]);
            }
        }
        // The loss is the mean integrand over the unclamped positions only: the per-position
        // terms, from the same network output, reproduce it.
        let cfg = crate::nn::DitConfig {
            vocab_size: n,
            hidden_size: 16,
            cond_dim: 8,
            n_blocks: 1,
            n_heads: 2,
            mlp_ratio: 2,
            length: l,
            dropout: 0.0,
            time_conditioning: true,
        };
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu);
        let model = Dit::new(vb, &cfg).unwrap();
        // Non-zero output weights, so every position's term differs.
        for v in vm.all_vars() {
            let noise = Tensor::randn(0f32, 0.3, v.shape(), &Device::Cpu).unwrap();
            v.set(&noise).unwrap();
        }
        let all = c.batch_loss(&model, &x0, &kept, &[0; 3], None).unwrap();
        let part = c.batch_loss(&model, &x0, &kept, &prompts, None).unwrap();
        let sigma = Tensor::from_slice(&kept.sigma, b, &Device::Cpu).unwrap();
        let feats = model
            .features(DitInput::Soft(&kept.input), &sigma, None)
            .unwrap();
        let logits = model
            .head(&feats.reshape((b * l, cfg.hidden_size)).unwrap())
            .unwrap();
        let mut g = vec![0f32; b * l * n];
        for (i, &x) in x0.iter().enumerate() {
            g[i * n + x as usize] = 1.0;
        }
        let g = Tensor::from_vec(g, (b * l, n), &Device::Cpu).unwrap();
        let sig: Vec<Signal> = (0..b * l).map(|i| kept.signals[i / l]).collect();
        let terms = c
            .process()
            .integrand_rows(&logits, &kept.xt, &g, &sig)
            .unwrap();
        let terms = terms.to_vec1::<f32>().unwrap();
        let (mut sum, mut count) = (0f64, 0usize);
        for r in 0..b {
            for pos in prompts[r]..l {
                sum += terms[r * l + pos] as f64;
                count += 1;
            }
        }
        let part = part.to_scalar::<f32>().unwrap() as f64;
        assert!(
            (part - sum / count as f64).abs() < 1e-5 * (1.0 + part.abs()),
            "{part}"
        );
        let all = all.to_scalar::<f32>().unwrap() as f64;
        let every = terms.iter().map(|&x| x as f64).sum::<f64>() / (b * l) as f64;
        assert!((all - every).abs() < 1e-5 * (1.0 + all.abs()));
        assert!(
            (part - all).abs() > 1e-6,
            "the prompts' terms were in the loss"
        );
        // A row that is all prompt has nothing to learn.
        let x = &x0[..l];
        let only = c
            .corrupt(x, l, &[0.5], &[l], 0.1, &mut r1, &Device::Cpu)
            .unwrap();
        let none = c.batch_loss(&model, x, &only, &[l], None).unwrap();
        assert_eq!(none.to_scalar::<f32>().unwrap(), 0.0);
        // ... and the network reads it exactly as the clean ids.
        let sig = Tensor::from_slice(&only.sigma, 1, &Device::Cpu).unwrap();
        let soft = model
            .features(DitInput::Soft(&only.input), &sig, None)
            .unwrap();
        let ids = Tensor::from_slice(x, (1, l), &Device::Cpu).unwrap();
        let hard = model.features(DitInput::Ids(&ids), &sig, None).unwrap();
        let diff = (soft - hard).unwrap().abs().unwrap().flatten_all().unwrap();
        assert!(diff.max(0).unwrap().to_scalar::<f32>().unwrap() < 1e-6);
    }
}
