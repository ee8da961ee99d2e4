//! Duo's Gaussian-to-uniform duality (algorithms.md §3.3).
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

use std::f64::consts::{FRAC_1_SQRT_2, PI};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

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

/// ln φ(z).
fn ln_norm_pdf(z: f64) -> f64 {
    -0.5 * z * z - 0.5 * (2.0 * PI).ln()
}

/// ln Φ(z), accurate in both tails (no underflow in the lower one).
fn ln_norm_cdf(z: f64) -> f64 {
    if z < -1.0 {
        ln_erfc(-z * FRAC_1_SQRT_2) - std::f64::consts::LN_2
    } else {
        (-0.5 * erfc(z * FRAC_1_SQRT_2)).ln_1p()
    }
}

// erfc after FreeBSD msun s_erf.c (Sun Microsystems, 1993: "Permission to use, copy, modify, and
// distribute this software is freely granted, provided that this notice is preserved."), as in
// the `libm` crate; relative error below 1 ulp-ish. Polynomials are listed from degree 0 up.
const ERX: f64 = 0.8450629115104675;
#[rustfmt::skip]
const PP: [f64; 5] = [
    0.12837916709551256, -0.3250421072470015, -0.02848174957559851,
    -0.005770270296489442, -2.3763016656650163e-05,
];
#[rustfmt::skip]
const QQ: [f64; 6] = [
    1.0, 0.39791722395915535, 0.0650222499887673,
    0.005081306281875766, 0.00013249473800432164, -3.960228278775368e-06,
];
#[rustfmt::skip]
const PA: [f64; 7] = [
    -0.0023621185607526594, 0.41485611868374833, -0.3722078760357013,
    0.31834661990116175, -0.11089469428239668, 0.035478304325618236,
    -0.002166375594868791,
];
#[rustfmt::skip]
const QA: [f64; 7] = [
    1.0, 0.10642088040084423, 0.540397917702171,
    0.07182865441419627, 0.12617121980876164, 0.01363708391202905,
    0.011984499846799107,
];
#[rustfmt::skip]
const RA: [f64; 8] = [
    -0.009864944034847148, -0.6938585727071818, -10.558626225323291,
    -62.375332450326006, -162.39666946257347, -184.60509290671104,
    -81.2874355063066, -9.814329344169145,
];
#[rustfmt::skip]
const SA: [f64; 9] = [
    1.0, 19.651271667439257, 137.65775414351904,
    434.56587747522923, 645.3872717332679, 429.00814002756783,
    108.63500554177944, 6.570249770319282, -0.0604244152148581,
];
#[rustfmt::skip]
const RB: [f64; 7] = [
    -0.0098649429247001, -0.799283237680523, -17.757954917754752,
    -160.63638485582192, -637.5664433683896, -1025.0951316110772,
    -483.5191916086514,
];
#[rustfmt::skip]
const SB: [f64; 8] = [
    1.0, 30.33806074348246, 325.7925129965739,
    1536.729586084437, 3199.8582195085955, 2553.0504064331644,
    474.52854120695537, -22.44095244658582,
];

/// Polynomial with coefficients from degree 0 up, by Horner's rule.
fn poly(c: &[f64], x: f64) -> f64 {
    c.iter().rev().fold(0.0, |acc, &ci| acc * x + ci)
}

/// For x ≥ 1.25: the g(x) with erfc(x) = exp(-x² - 0.5625 + g(x))/x. Beyond 28, where erfc
/// underflows, the rational function in 1/x² still tends to the asymptotic series.
fn erfc_tail_exponent(x: f64) -> f64 {
    let s = 1.0 / (x * x);
    if x < 1.0 / 0.35 {
        poly(&RA, s) / poly(&SA, s)
    } else {
        poly(&RB, s) / poly(&SB, s)
    }
}

/// Complementary error function.
fn erfc(x: f64) -> f64 {
    let ax = x.abs();
    if x.is_nan() {
        return x;
    }
    if ax < 0.84375 {
        let z = x * x;
        let y = poly(&PP, z) / poly(&QQ, z);
        return if x < 0.25 {
            1.0 - (x + x * y)
        } else {
            0.5 - (x - 0.5 + x * y)
        };
    }
    let tail = if ax < 1.25 {
        let s = ax - 1.0;
        1.0 - ERX - poly(&PA, s) / poly(&QA, s)
    } else if ax < 28.0 {
        // Split x² so that exp(-x²) keeps full relative accuracy.
        let hi = f64::from_bits(ax.to_bits() & 0xffff_ffff_0000_0000);
        (-hi * hi - 0.5625).exp() * ((hi - ax) * (hi + ax) + erfc_tail_exponent(ax)).exp() / ax
    } else {
        0.0
    };
    if x < 0.0 { 2.0 - tail } else { tail }
}

/// ln erfc(x), finite for every finite x.
fn ln_erfc(x: f64) -> f64 {
    if x < 1.25 {
        erfc(x).ln()
    } else {
        -x * x - 0.5625 + erfc_tail_exponent(x) - x.ln()
    }
}

/// (I, dI/dγ) tabulated on `linspace(gamma_min, gamma_max, num_points)`, linearly interpolated.
///
/// One N serves both the integral and the α formula. (The reference integrated its gpt2 table
/// with N = 50257 but applies the α formula with 50258; I differs by ≤ 2e-6 between the two.)
#[derive(Debug, Clone, PartialEq)]
pub struct DualityTable {
    n: usize,
    gamma_min: f64,
    gamma_max: f64,
    points: Vec<(f64, f64)>,
}

/// Cache file layout (little-endian): MAGIC, VERSION u32, N u64, γ_min f64, γ_max f64,
/// num_points u64, then num_points × (I f64, dI/dγ f64), then the SHA-256 of all that.
const MAGIC: &[u8; 8] = b"IDLMDUO\0";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 8 + 8 + 8;
const DIGEST_LEN: usize = 32;

impl DualityTable {
    /// Computes the table by quadrature (parallel over grid points).
    pub fn build(n: usize, gamma_min: f64, gamma_max: f64, num_points: usize) -> Result<Self> {
        check_params(n, gamma_min, gamma_max, num_points)?;
        let quad = DualityQuadrature::new(n)?;
        let last = (num_points - 1) as f64;
        let points = (0..num_points)
            .into_par_iter()
            .map(|k| {
                // numpy's linspace: the last point is exactly gamma_max.
                let g = if k + 1 == num_points {
                    gamma_max
                } else {
                    gamma_min + (gamma_max - gamma_min) * (k as f64 / last)
                };
                let v = quad.eval(g);
                (v.i, v.di_dgamma)
            })
            .collect();
        Ok(Self {
            n,
            gamma_min,
            gamma_max,
            points,
        })
    }

    /// Loads [`DualityTable::cache_path`], or builds the table and writes that file atomically.
    /// A file that fails its checks or holds other parameters is rebuilt and overwritten.
    pub fn load_or_build(
        cache_dir: &Path,
        n: usize,
        gamma_min: f64,
        gamma_max: f64,
        num_points: usize,
    ) -> Result<Self> {
        check_params(n, gamma_min, gamma_max, num_points)?;
        let path = Self::cache_path(cache_dir, n, gamma_min, gamma_max, num_points);
        match std::fs::read(&path) {
            Ok(bytes) => match Self::from_bytes(&bytes, &path) {
                Ok(t) if t.matches(n, gamma_min, gamma_max, num_points) => return Ok(t),
                Ok(_) => tracing::warn!("{}: other parameters; rebuilding", path.display()),
                Err(e) => tracing::warn!("{e}; rebuilding"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("read duality cache", &path, e)),
        }
        let table = Self::build(n, gamma_min, gamma_max, num_points)?;
        std::fs::create_dir_all(cache_dir)
            .map_err(|e| Error::io("create duality cache dir", cache_dir, e))?;
        table.save(&path)?;
        Ok(table)
    }

    /// `cache_dir/duo_integral_n{N}_g{γ_min}_{γ_max}_p{num_points}.bin` (floats in Rust's
    /// round-trip `{:?}` form, so distinct parameters never share a file).
    pub fn cache_path(dir: &Path, n: usize, g_min: f64, g_max: f64, points: usize) -> PathBuf {
        dir.join(format!(
            "duo_integral_n{n}_g{g_min:?}_{g_max:?}_p{points}.bin"
        ))
    }

    /// Writes the table to `path` atomically (temporary file in the same directory, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::atomic::write_file(path, &self.to_bytes())
    }

    /// Reads a table written by [`DualityTable::save`], checking its checksum and contents.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("read duality cache", path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Serialises to the cache file layout.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 16 * self.points.len() + DIGEST_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.n as u64).to_le_bytes());
        out.extend_from_slice(&self.gamma_min.to_le_bytes());
        out.extend_from_slice(&self.gamma_max.to_le_bytes());
        out.extend_from_slice(&(self.points.len() as u64).to_le_bytes());
        for &(i, di) in &self.points {
            out.extend_from_slice(&i.to_le_bytes());
            out.extend_from_slice(&di.to_le_bytes());
        }
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    /// Parses the cache file layout; every failure is a `Error::Data` naming `path`.
    fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |msg: &str| Error::Data(format!("duality cache {}: {msg}", path.display()));
        let Some(body_len) = bytes
            .len()
            .checked_sub(DIGEST_LEN)
            .filter(|&l| l >= HEADER_LEN)
        else {
            return Err(bad("truncated"));
        };
        let (body, digest) = bytes.split_at(body_len);
        if Sha256::digest(body).as_slice() != digest {
            return Err(bad("checksum mismatch (corrupt or truncated)"));
        }
        // In bounds: body_len >= HEADER_LEN here, and the point count is checked against it below.
        let word = |at: usize| <[u8; 8]>::try_from(&body[at..at + 8]).unwrap_or_default();
        let version = u32::from_le_bytes(<[u8; 4]>::try_from(&body[8..12]).unwrap_or_default());
        if &body[..8] != MAGIC || version != VERSION {
            return Err(bad(&format!("not a version-{VERSION} duality cache")));
        }
        let n = usize::try_from(u64::from_le_bytes(word(12))).unwrap_or(0);
        let (gamma_min, gamma_max) = (f64::from_le_bytes(word(20)), f64::from_le_bytes(word(28)));
        let count = usize::try_from(u64::from_le_bytes(word(36))).unwrap_or(usize::MAX);
        if count
            .checked_mul(16)
            .and_then(|b| b.checked_add(HEADER_LEN))
            != Some(body_len)
        {
            return Err(bad(&format!(
                "{count} points do not fit {} bytes",
                bytes.len()
            )));
        }
        check_params(n, gamma_min, gamma_max, count).map_err(|e| bad(&e.to_string()))?;
        let points: Vec<(f64, f64)> = (0..count)
            .map(|k| (HEADER_LEN + 16 * k, HEADER_LEN + 16 * k + 8))
            .map(|(a, b)| (f64::from_le_bytes(word(a)), f64::from_le_bytes(word(b))))
            .collect();
        if points
            .iter()
            .any(|(i, di)| !i.is_finite() || !di.is_finite())
        {
            return Err(bad("non-finite values"));
        }
        Ok(Self {
            n,
            gamma_min,
            gamma_max,
            points,
        })
    }

    /// True when the table was built with exactly these parameters.
    pub fn matches(&self, n: usize, gamma_min: f64, gamma_max: f64, num_points: usize) -> bool {
        self.n == n
            && self.gamma_min.to_bits() == gamma_min.to_bits()
            && self.gamma_max.to_bits() == gamma_max.to_bits()
            && self.points.len() == num_points
    }

    /// Vocabulary size N.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The γ range (gamma_min, gamma_max) of the grid.
    pub fn gamma_range(&self) -> (f64, f64) {
        (self.gamma_min, self.gamma_max)
    }

    /// Linear interpolation of (I, dI/dγ) at γ clipped to the grid's range (NaN gives NaN).
    fn interp(&self, gamma: f64) -> (f64, f64) {
        let last = self.points.len() - 1; // >= 1: check_params guarantees two points
        let g = gamma.clamp(self.gamma_min, self.gamma_max);
        let u = (g - self.gamma_min) / (self.gamma_max - self.gamma_min) * last as f64;
        let k = (u.floor() as usize).min(last - 1); // `as` saturates, NaN -> 0: in bounds
        let f = u - k as f64;
        let (a, b) = (self.points[k], self.points[k + 1]);
        (a.0 + f * (b.0 - a.0), a.1 + f * (b.1 - a.1))
    }

    /// I(γ) by linear interpolation.
    pub fn integral_i(&self, gamma: f64) -> f64 {
        self.interp(gamma).0
    }

    /// dI/dγ by linear interpolation.
    pub fn integral_di(&self, gamma: f64) -> f64 {
        self.interp(gamma).1
    }

    /// α = T(γ) = (N·I - 1)/(N - 1) from the interpolated I.
    pub fn alpha(&self, gamma: f64) -> f64 {
        let nf = self.n as f64;
        (nf * self.integral_i(gamma) - 1.0) / (nf - 1.0)
    }

    /// dα/dγ = N/(N - 1) · dI/dγ from the interpolated derivative.
    pub fn dalpha_dgamma(&self, gamma: f64) -> f64 {
        let nf = self.n as f64;
        nf / (nf - 1.0) * self.integral_di(gamma)
    }

    /// The reference's forward difference (T(γ + 0.001) - T(γ))/0.001, both clipped to the grid
    /// as there (so 0 within 0.001 of γ_max). It is dα/dγ: multiply by (γ_max - γ_min) for dα/dt.
    pub fn alpha_prime_fd(&self, gamma: f64) -> f64 {
        (self.alpha(gamma + FD_STEP) - self.alpha(gamma)) / FD_STEP
    }
}

/// Rejects parameters a table cannot be built from.
fn check_params(n: usize, gamma_min: f64, gamma_max: f64, num_points: usize) -> Result<()> {
    let msg = if n < 2 {
        format!("vocabulary size {n} < 2")
    } else if !(gamma_min.is_finite() && gamma_max.is_finite() && gamma_min < gamma_max) {
        format!("gamma range [{gamma_min}, {gamma_max}] is not a finite interval")
    } else if !(2..=MAX_POINTS).contains(&num_points) {
        format!("num_points {num_points} not in [2, {MAX_POINTS}]")
    } else {
        return Ok(());
    };
    Err(Error::InvalidArgument(format!("duality table: {msg}")))
}

#[cfg(test)]
mod tests {
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
