//! Noise schedule, training-time sampling and the sampling grid (docs/algorithms.md §1).

use rand::Rng;

/// Log-linear schedule alpha_t = 1 - (1 - eps) t.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogLinear {
    /// eps = 1e-3 in the reference ("to be consistent with SEDD").
    pub eps: f64,
}

impl Default for LogLinear {
    fn default() -> Self {
        Self { eps: 1e-3 }
    }
}

impl LogLinear {
    /// Signal alpha_t: the probability a token is kept.
    pub fn alpha(&self, t: f64) -> f64 {
        1.0 - (1.0 - self.eps) * t
    }

    /// d alpha / dt.
    pub fn dalpha(&self, _t: f64) -> f64 {
        -(1.0 - self.eps)
    }

    /// sigma_t = -log alpha_t, the time-embedding input.
    pub fn sigma(&self, t: f64) -> f64 {
        -self.alpha(t).ln()
    }
}

/// The `sampling_eps` of training-time sampling.
pub const SAMPLING_EPS: f64 = 1e-3;

/// Stratified ("antithetic") times: u_i = (r_i/n + i/n) mod 1, t = (1 - 1e-3) u + 1e-3.
pub fn antithetic_times<R: Rng>(n: usize, rng: &mut R) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let r: f64 = rng.random();
            let u = (r / n as f64 + i as f64 / n as f64).rem_euclid(1.0);
            (1.0 - SAMPLING_EPS) * u + SAMPLING_EPS
        })
        .collect()
}

/// The sampling grid linspace(1, 1e-5, K + 1).
pub fn sampling_grid(k: usize) -> Vec<f64> {
    let t0 = 1e-5;
    (0..=k)
        .map(|i| 1.0 + (t0 - 1.0) * i as f64 / k as f64)
        .collect()
}

/// Final noise-removal time.
pub const T_FINAL: f64 = 1e-5;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn antithetic_times_cover_every_stratum() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let n = 16;
        let t = antithetic_times(n, &mut rng);
        for (i, ti) in t.iter().enumerate() {
            let u = (ti - SAMPLING_EPS) / (1.0 - SAMPLING_EPS);
            assert!(u >= i as f64 / n as f64 - 1e-12 && u < (i + 1) as f64 / n as f64 + 1e-12);
        }
    }

    #[test]
    fn grid_ends_and_step() {
        let g = sampling_grid(4);
        assert_eq!(g.len(), 5);
        assert!((g[0] - 1.0).abs() < 1e-15 && (g[4] - 1e-5).abs() < 1e-15);
        assert!(((g[0] - g[1]) - (1.0 - 1e-5) / 4.0).abs() < 1e-15);
    }

    #[test]
    fn schedule_values() {
        let s = LogLinear::default();
        assert!((s.alpha(1.0) - 1e-3).abs() < 1e-15);
        assert!((s.sigma(0.0)).abs() < 1e-15);
    }
}
