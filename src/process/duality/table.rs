//! The T(γ) table: (I, dI/dγ) on a grid, built by quadrature once and cached on disk with a
//! checksum.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{DualityQuadrature, FD_STEP, MAX_POINTS};
use crate::{Error, Result};

/// (I, dI/dγ) tabulated on `linspace(gamma_min, gamma_max, num_points)`, linearly interpolated.
///
/// One N serves both the integral and the α formula. (The reference integrated its gpt2 table
/// with N = 50257 but applies the α formula with 50258; I differs by ≤ 2e-6 between the two.)
#[derive(Debug, Clone, PartialEq)]
pub struct DualityTable {
    n: usize,
    gamma_min: f64,
    gamma_max: f64,
    pub(super) points: Vec<(f64, f64)>,
}

/// Cache file layout (little-endian): MAGIC, VERSION u32, N u64, γ_min f64, γ_max f64,
/// num_points u64, then num_points × (I f64, dI/dγ f64), then the SHA-256 of all that.
const MAGIC: &[u8; 8] = b"IDLMDUO\0";
const VERSION: u32 = 1;
pub(super) const HEADER_LEN: usize = 8 + 4 + 8 + 8 + 8 + 8;
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
