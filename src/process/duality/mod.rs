//! Duo's Gaussian-to-uniform duality (docs/algorithms.md §3.3).
//!
//! With `w = α̃ e_0 + σ̃ ξ`, ξ ~ N(0, I_N), `argmax w` follows the uniform discrete process with
//! `α = T(γ) = (N·I(γ) - 1)/(N - 1)`, where `I(γ) = ∫ φ(z - ν) Φ(z)^(N-1) dz`, `ν = e^(-γ/2)`.
//!
//! Integrating by parts moves all the sharpness onto the density of the maximum of N - 1 standard
//! normals, `p_M(z) = (N-1) φ(z) Φ(z)^(N-2)`, which does not depend on γ:
//! `I = ∫ p_M(z) Q(z - ν) dz`, `1 - I = ∫ p_M(z) Φ(z - ν) dz` and
//! `dI/dγ = -(ν/2) ∫ p_M(z) φ(z - ν) dz`. Every integrand is positive (no cancellation, so small
//! derivatives keep their relative accuracy), and one composite Gauss–Legendre rule on p_M's
//! support serves every γ. Accuracy against 30-digit values: see the tests.
//!
//! [`DualityTable`] tabulates (I, dI/dγ) on a γ grid, interpolates linearly, and is cached on disk
//! in a plain checksummed binary file (never pickle).

mod special;
mod table;

use std::f64::consts::{FRAC_1_SQRT_2, PI};

use crate::{Error, Result};
use special::{erfc, ln_norm_cdf, ln_norm_pdf};
pub use table::DualityTable;

/// Default table size, as in the reference. Measured max interpolation error in I on [-5, -1]
/// (N = 50258): 2.5e-8 at 1e4 points (too coarse for 1e-8), 3e-10 at 1e5. A build of 1e5
/// points takes ~1.6 s on one core; loading the cache ~4 ms.
pub const DEFAULT_NUM_POINTS: usize = 100_000;
/// Step of the reference's forward difference `(T(γ + h) - T(γ))/h`.
pub const FD_STEP: f64 = 0.001;
/// Largest table accepted (16 bytes a point), so a bad argument cannot exhaust memory.
const MAX_POINTS: usize = 50_000_000;
/// p_M is cut where its log falls below this (e^-70 ≈ 4e-31).
const LOG_CUT: f64 = -70.0;
/// Gauss–Legendre nodes per panel.
const GL_ORDER: usize = 20;
/// Panel width in units of p_M's width at its mode: 2 agrees with a far finer rule to 1e-14,
/// 4 still to 1e-13, 6 only to 5e-9 (about 400-500 nodes for N from 2 to 1e6).
const PANEL_WIDTH: f64 = 2.0;

/// α̃ = sqrt(sigmoid(-γ)), the Gaussian signal scale.
pub fn alpha_tilde(gamma: f64) -> f64 {
    (1.0 / (1.0 + gamma.exp())).sqrt()
}

/// σ̃ = sqrt(sigmoid(γ)), the Gaussian noise scale.
pub fn sigma_tilde(gamma: f64) -> f64 {
    (1.0 / (1.0 + (-gamma).exp())).sqrt()
}

/// I(γ) = P(argmax w = x_0) for vocabulary `n` (NaN when n < 2).
pub fn integral_i(n: usize, gamma: f64) -> f64 {
    DualityQuadrature::new(n).map_or(f64::NAN, |q| q.eval(gamma).i)
}

/// dI/dγ for vocabulary `n` (NaN when n < 2).
pub fn integral_di(n: usize, gamma: f64) -> f64 {
    DualityQuadrature::new(n).map_or(f64::NAN, |q| q.eval(gamma).di_dgamma)
}

/// The discrete α = T(γ) = (N·I(γ) - 1)/(N - 1) (NaN when n < 2).
pub fn t_of_gamma(n: usize, gamma: f64) -> f64 {
    DualityQuadrature::new(n).map_or(f64::NAN, |q| q.eval(gamma).alpha(n))
}

/// dT/dγ = N/(N - 1) · dI/dγ (NaN when n < 2).
pub fn dt_dgamma(n: usize, gamma: f64) -> f64 {
    integral_di(n, gamma) * n as f64 / (n as f64 - 1.0)
}

/// The integrals at one γ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntegralValues {
    /// I(γ).
    pub i: f64,
    /// 1 - I(γ), with full relative accuracy when I is close to 1.
    pub one_minus_i: f64,
    /// dI/dγ.
    pub di_dgamma: f64,
}

impl IntegralValues {
    /// T(γ) = (N·I - 1)/(N - 1), written as 1 - N(1 - I)/(N - 1) when that is more accurate.
    pub fn alpha(&self, n: usize) -> f64 {
        let nf = n as f64;
        if self.i > 0.5 {
            1.0 - nf * self.one_minus_i / (nf - 1.0)
        } else {
            (nf * self.i - 1.0) / (nf - 1.0)
        }
    }
}

/// A quadrature rule for one vocabulary size: nodes z_k and weights w_k·p_M(z_k).
#[derive(Debug, Clone)]
pub struct DualityQuadrature {
    nodes: Vec<f64>,
    weights: Vec<f64>,
}

impl DualityQuadrature {
    /// Builds the rule for vocabulary `n` (needs n ≥ 2).
    pub fn new(n: usize) -> Result<Self> {
        Self::with_resolution(n, GL_ORDER, PANEL_WIDTH, LOG_CUT)
    }

    /// The rule with a given panel width (in units of p_M's width) and log cut-off.
    fn with_resolution(n: usize, order: usize, panel_width: f64, log_cut: f64) -> Result<Self> {
        if n < 2 {
            return Err(Error::InvalidArgument(format!(
                "duality needs a vocabulary of at least 2, got {n}"
            )));
        }
        let m = n as f64 - 2.0;
        let ln_n1 = (n as f64 - 1.0).ln();
        let log_pm =
            |z: f64| ln_n1 + ln_norm_pdf(z) + if m > 0.0 { m * ln_norm_cdf(z) } else { 0.0 };
        // Mode: d/dz log p_M = -z + m φ(z)/Φ(z) = 0, decreasing in z (p_M is log-concave).
        let zm = bisect(-1.0, 40.0, |z| {
            -z + m * (ln_norm_pdf(z) - ln_norm_cdf(z)).exp() > 0.0
        });
        // At the mode (log p_M)'' = -1 - z(z + φ/Φ), with m·φ/Φ = z there.
        let ratio = if m > 0.0 { zm / m } else { 0.0 };
        let width = 1.0 / (1.0 + zm * (zm + ratio)).sqrt();
        let lo = bisect(zm - 60.0, zm, |z| log_pm(z) < log_cut);
        let hi = bisect(zm, zm + 60.0, |z| log_pm(z) > log_cut);
        let panels = ((hi - lo) / (panel_width * width)).ceil().max(1.0) as usize;
        let h = (hi - lo) / panels as f64;
        let (gx, gw) = gauss_legendre(order);
        let mut nodes = Vec::with_capacity(panels * order);
        let mut weights = Vec::with_capacity(panels * order);
        for p in 0..panels {
            let mid = lo + (p as f64 + 0.5) * h;
            for (x, w) in gx.iter().zip(&gw) {
                let z = mid + 0.5 * h * x;
                nodes.push(z);
                weights.push(0.5 * h * w * log_pm(z).exp());
            }
        }
        Ok(Self { nodes, weights })
    }

    /// I, 1 - I and dI/dγ at `gamma`.
    pub fn eval(&self, gamma: f64) -> IntegralValues {
        let nu = (-0.5 * gamma).exp();
        let (mut a, mut b, mut d) = (0.0, 0.0, 0.0);
        for (&z, &w) in self.nodes.iter().zip(&self.weights) {
            let x = z - nu;
            // Take the smaller tail from erfc so that both Φ and Q keep relative accuracy.
            let (q, p) = if x >= 0.0 {
                let q = 0.5 * erfc(x * FRAC_1_SQRT_2);
                (q, 1.0 - q)
            } else {
                let p = 0.5 * erfc(-x * FRAC_1_SQRT_2);
                (1.0 - p, p)
            };
            a += w * q;
            b += w * p;
            d += w * ln_norm_pdf(x).exp();
        }
        // a + b = ∫ p_M = 1 up to rounding; dividing makes I and 1 - I exactly complementary.
        let s = a + b;
        // As γ → -∞, ν = ∞ and d = 0: the derivative is 0 there, not 0·∞ = NaN.
        let di_dgamma = if d == 0.0 { 0.0 } else { -0.5 * nu * d / s };
        IntegralValues {
            i: a / s,
            one_minus_i: b / s,
            di_dgamma,
        }
    }
}

/// Root of a monotone predicate on [lo, hi]: the point where `below_root` turns false.
fn bisect(mut lo: f64, mut hi: f64, below_root: impl Fn(f64) -> bool) -> f64 {
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if below_root(mid) { lo = mid } else { hi = mid }
    }
    0.5 * (lo + hi)
}

/// Gauss–Legendre nodes and weights on [-1, 1] by Newton's method on P_n.
fn gauss_legendre(n: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut xs, mut ws) = (vec![0.0; n], vec![0.0; n]);
    for i in 0..n.div_ceil(2) {
        let mut x = (PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        let mut dp = 1.0;
        for _ in 0..100 {
            let (mut p0, mut p1) = (1.0, x);
            for k in 2..=n {
                let kf = k as f64;
                (p0, p1) = (p1, ((2.0 * kf - 1.0) * x * p1 - (kf - 1.0) * p0) / kf);
            }
            dp = n as f64 * (x * p1 - p0) / (x * x - 1.0);
            let dx = p1 / dp;
            x -= dx;
            if dx.abs() < 1e-16 {
                break;
            }
        }
        let w = 2.0 / ((1.0 - x * x) * dp * dp);
        (xs[i], xs[n - 1 - i], ws[i], ws[n - 1 - i]) = (x, -x, w, w);
    }
    (xs, ws)
}

#[cfg(test)]
mod tests {
    use super::special::ln_erfc;
    use super::table::HEADER_LEN;
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    /// Asserts |got - want| <= rel·|want| + abs.
    fn close(got: f64, want: f64, rel: f64, abs: f64, what: &str) {
        let ok = (got - want).abs() <= rel * want.abs() + abs;
        assert!(ok, "{what}: {got:e} vs {want:e}");
    }

    #[test]
    fn erfc_matches_30_digit_values() {
        #[rustfmt::skip]
        let cases = [
            (-3.0, 1.9999779095030015), (-0.5, 1.5204998778130465), (0.1, 0.887537083981715),
            (0.3, 0.6713732405408726), (0.9, 0.20309178757716786), (1.3, 0.06599205505934755),
            (2.9, 4.109787809945886e-05), (5.0, 1.537459794428035e-12),
            (20.0, 5.395865611607901e-176),
        ];
        for (x, want) in cases {
            close(erfc(x), want, 4e-16, 0.0, &format!("erfc({x})"));
        }
        #[rustfmt::skip]
        let logs = [
            (1.3, -2.7182209220903846), (27.0, -732.8688865078974), (30.0, -903.9741171106439),
            (1e3, -1000007.4801207219),
        ];
        for (x, want) in logs {
            close(ln_erfc(x), want, 1e-15, 0.0, &format!("ln erfc({x})"));
        }
    }

    #[test]
    fn matches_fixture() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/duo_integral.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut worst = [0.0f64; 5];
        for r in json["rows"].as_array().unwrap() {
            let get = |k: &str| r[k].as_f64().unwrap();
            let (n, g, di) = (get("N") as usize, get("gamma"), get("dI_dgamma"));
            let (di_rel, di_abs) = if di.abs() > 1e-9 {
                (1e-6, 0.0)
            } else {
                (0.0, 1e-12)
            };
            let checks = [
                (integral_i(n, g), get("I"), 0.0, 1e-8),
                (t_of_gamma(n, g), get("alpha"), 0.0, 1e-8),
                (integral_di(n, g), di, di_rel, di_abs),
                (alpha_tilde(g), get("alpha_tilde"), 0.0, 1e-15),
                (sigma_tilde(g), get("sigma_tilde"), 0.0, 1e-15),
            ];
            for (k, (got, want, rel, abs)) in checks.into_iter().enumerate() {
                close(got, want, rel, abs, &format!("quantity {k} at N={n} γ={g}"));
                let err = (got - want).abs() / if rel > 0.0 { want.abs() } else { 1.0 };
                worst[k] = worst[k].max(err);
            }
        }
        eprintln!("max error vs fixture (I, alpha, rel dI/dgamma, alpha~, sigma~): {worst:?}");
    }

    #[test]
    fn converged_against_a_finer_rule_on_minus_10_to_10() {
        for n in [2, 3, 8, 4097, 50258, 1_000_000, 1 << 24] {
            let q = DualityQuadrature::new(n).unwrap();
            let fine = DualityQuadrature::with_resolution(n, 24, PANEL_WIDTH / 8.0, 2.0 * LOG_CUT);
            let fine = fine.unwrap();
            close(
                q.weights.iter().sum(),
                1.0,
                0.0,
                1e-14,
                &format!("∫ p_M, N={n}"),
            );
            for k in 0..=80 {
                let g = -10.0 + 0.25 * k as f64;
                let (a, b, at) = (q.eval(g), fine.eval(g), format!("N={n} γ={g}"));
                close(a.i, b.i, 0.0, 1e-14, &at);
                // Relative where it matters; the cut at e^-70 only shows below ~1e-28.
                close(a.one_minus_i, b.one_minus_i, 1e-12, 1e-28, &at);
                close(a.di_dgamma, b.di_dgamma, 1e-12, 1e-28, &at);
                if n == 2 {
                    // Closed form: I = P(ν + ξ_0 > ξ_1) = Φ(ν/√2).
                    let x = (-0.5 * g).exp() * FRAC_1_SQRT_2;
                    close(a.i, 0.5 * erfc(-x * FRAC_1_SQRT_2), 1e-14, 0.0, &at);
                    let di = -0.5 * x * ln_norm_pdf(x).exp();
                    close(a.di_dgamma, di, 1e-13, 1e-28, &at);
                }
            }
        }
    }

    #[test]
    fn t_decreases_and_matches_its_derivative() {
        let q = DualityQuadrature::new(50258).unwrap();
        let t = |g: f64| q.eval(g).alpha(50258);
        let (h, mut prev) = (1e-4, f64::INFINITY);
        for k in 0..=400 {
            let g = -5.0 + 0.01 * k as f64;
            assert!(t(g) < prev, "T not decreasing at {g}");
            prev = t(g);
            let central = (t(g + h) - t(g - h)) / (2.0 * h);
            close(
                dt_dgamma(50258, g),
                central,
                1e-6,
                1e-10,
                &format!("dT/dγ({g})"),
            );
        }
        // The reference's gpt2 table (N = 50257): pt(-5) = 1.0, pt(-1) = 0.0062.
        close(integral_i(50257, -5.0), 1.0, 0.0, 1e-12, "pt(-5)");
        close(integral_i(50257, -1.0), 0.0062, 0.0, 5e-5, "pt(-1)");
    }

    #[test]
    fn monte_carlo_argmax_probability() {
        let (n, draws) = (8, 200_000);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for g in [-3.0, -2.0, -1.0, 0.0, 1.5] {
            let (at, st) = (alpha_tilde(g), sigma_tilde(g));
            let mut hits = 0usize;
            for _ in 0..draws {
                let w0 = at + st * rng.sample::<f64, _>(StandardNormal);
                hits += (1..n).all(|_| st * rng.sample::<f64, _>(StandardNormal) < w0) as usize;
            }
            let (p, i) = (hits as f64 / draws as f64, integral_i(n, g));
            let se = (i * (1.0 - i) / draws as f64).sqrt();
            close(p, i, 0.0, 4.0 * se, &format!("Monte Carlo at γ={g}"));
        }
    }

    #[test]
    fn table_interpolates_within_1e8() {
        let start = std::time::Instant::now();
        let table = DualityTable::build(50258, -5.0, -1.0, DEFAULT_NUM_POINTS).unwrap();
        eprintln!("built {DEFAULT_NUM_POINTS} points in {:?}", start.elapsed());
        let q = DualityQuadrature::new(50258).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut worst = [0.0f64; 3];
        for _ in 0..1000 {
            let g = rng.random_range(-5.0..-1.0);
            let v = q.eval(g);
            let exact = [v.i, v.alpha(50258), v.di_dgamma * 50258.0 / 50257.0];
            let got = [table.integral_i(g), table.alpha(g), table.dalpha_dgamma(g)];
            for k in 0..3 {
                worst[k] = worst[k].max((got[k] - exact[k]).abs());
            }
        }
        eprintln!("interpolation errors (I, alpha, dalpha/dgamma): {worst:?}");
        assert!(worst[0] < 1e-8 && worst[1] < 1e-8 && worst[2] < 1e-6);
        // Clipping; the reference's forward difference is the derivative half a step on.
        assert_eq!(table.alpha(-9.0), table.alpha(-5.0));
        assert_eq!(table.alpha(3.0), table.alpha(-1.0));
        let central = table.dalpha_dgamma(-3.0 + FD_STEP / 2.0);
        close(
            table.alpha_prime_fd(-3.0),
            central,
            1e-6,
            0.0,
            "forward difference",
        );
    }

    #[test]
    fn cache_round_trip_corruption_and_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let (n, lo, hi, np) = (4097, -3.55, -1.85, 1000);
        let load_or_build = || DualityTable::load_or_build(dir.path(), n, lo, hi, np).unwrap();
        let built = load_or_build();
        let path = DualityTable::cache_path(dir.path(), n, lo, hi, np);
        let loaded = DualityTable::load(&path).unwrap();
        let bits = |t: &DualityTable| {
            t.points
                .iter()
                .map(|p| [p.0, p.1].map(f64::to_bits))
                .collect::<Vec<_>>()
        };
        assert!(bits(&built) == bits(&loaded) && loaded.matches(n, lo, hi, np));
        assert_eq!(built, load_or_build());
        let good = std::fs::read(&path).unwrap();

        // Truncated, a flipped bit, garbage: a Data error naming the file, then a rebuild.
        let mut flipped = good.clone();
        flipped[HEADER_LEN + 100] ^= 1;
        for bad in [good[..good.len() - 7].to_vec(), flipped, vec![1, 2, 3]] {
            std::fs::write(&path, &bad).unwrap();
            let err = DualityTable::load(&path).unwrap_err();
            let named = matches!(&err, Error::Data(m) if m.contains("duo_integral_n4097_g-3.55"));
            assert!(named, "{err}");
            assert_eq!(built, load_or_build());
            assert_eq!(std::fs::read(&path).unwrap(), good);
        }

        // A valid file holding other parameters is detected and replaced.
        let other = DualityTable::build(n, lo, hi + 0.5, np).unwrap();
        assert!(!other.matches(n, lo, hi, np));
        other.save(&path).unwrap();
        assert_eq!(built, load_or_build());
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 1, "temporary file left");
    }

    #[test]
    fn rejects_bad_parameters() {
        #[rustfmt::skip]
        let bad = [(1, -5.0, -1.0, 9), (8, -1.0, -1.0, 9), (8, f64::NAN, 1.0, 9), (8, -5.0, -1.0, 1)];
        for (n, lo, hi, np) in bad {
            let r = DualityTable::build(n, lo, hi, np);
            assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
        }
        assert!(integral_i(1, 0.0).is_nan() && t_of_gamma(0, 0.0).is_nan());
        assert_eq!(
            (integral_i(8, -3000.0), integral_di(8, -3000.0)),
            (1.0, 0.0)
        );
        let t = DualityTable::build(8, -5.0, -1.0, 2).unwrap();
        assert!(t.alpha(f64::NAN).is_nan());
    }
}
