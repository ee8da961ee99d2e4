//! MAUVE (docs/algorithms.md §6.3) from two feature matrices: p = human/reference, q = model samples.
//!
//! Stack `[q; p]`, L2-normalise rows, PCA (thin SVD of the centred data, as sklearn's full PCA)
//! keeping the first k+1 components where k is the first index whose cumulative explained-variance
//! ratio reaches 0.9, k-means with K = max(2, round(min(n_p, n_q)/10)) (k-means++ init from a
//! ChaCha8 stream, 5 restarts keeping the lowest inertia, at most 500 Lloyd iterations),
//! normalised histograms, the divergence curve at `w in linspace(1e-6, 1-1e-6, 25)` plus the
//! extreme points (1, 0) and (0, 1), and MAUVE = ½[AUC(x sorted, y) + AUC(y sorted, x)].
//!
//! Differences from the reference that cannot change a well-posed result: faiss initialises by
//! random sampling, we by k-means++ (the brief's choice); faiss splits a big cluster when one
//! empties, we move the empty centroid onto the point farthest from its centroid.

use faer::Mat;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::cluster::{kmeans, l2_normalise_rows, pca_project};
use super::minilm::MiniLm;
use crate::error::{Error, Result};
use crate::progress::Progress;

/// The MAUVE parameters (defaults: the reference `compute_mauve`'s).
#[derive(Debug, Clone, PartialEq)]
pub struct MauveOptions {
    /// PCA keeps components up to this cumulative explained-variance ratio (0.9).
    pub explained_variance: f64,
    /// Number of k-means clusters; `None` = max(2, round(min(n_p, n_q)/10)).
    pub num_buckets: Option<usize>,
    /// k-means restarts; the lowest inertia wins (5).
    pub kmeans_restarts: usize,
    /// Lloyd iterations per restart at most (500).
    pub kmeans_max_iter: usize,
    /// Points of the divergence curve, extremes not counted (25).
    pub curve_points: usize,
    /// The scaling constant c of `exp(-c KL)` (5).
    pub scaling: f64,
    /// Seed; k-means draws from ChaCha8 seeded with `seed + 2` (the reference's faiss seed).
    pub seed: u64,
}

impl Default for MauveOptions {
    fn default() -> Self {
        MauveOptions {
            explained_variance: 0.9,
            num_buckets: None,
            kmeans_restarts: 5,
            kmeans_max_iter: 500,
            curve_points: 25,
            scaling: 5.0,
            seed: 25,
        }
    }
}

/// MAUVE of two feature sets and what it was computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct MauveResult {
    /// MAUVE in [0, 1].
    pub mauve: f64,
    /// The frontier integral (0 for identical histograms, 1 for disjoint ones).
    pub frontier_integral: f64,
    /// Points (exp(-c KL(q‖r)), exp(-c KL(p‖r))), extremes included, in mixture-weight order.
    pub divergence_curve: Vec<(f64, f64)>,
    /// Reference histogram over the K clusters.
    pub p_hist: Vec<f64>,
    /// Sample histogram over the K clusters.
    pub q_hist: Vec<f64>,
    /// K.
    pub num_buckets: usize,
    /// PCA components kept.
    pub pca_components: usize,
    /// Sum of squared distances to the centroids of the chosen k-means run.
    pub kmeans_inertia: f64,
    /// Number of reference rows.
    pub n_p: usize,
    /// Number of sample rows.
    pub n_q: usize,
}

/// K = max(2, round(min(n_p, n_q)/10)), with Python's round-half-to-even.
pub fn auto_num_buckets(n_p: usize, n_q: usize) -> usize {
    let m = n_p.min(n_q) as f64 / 10.0;
    (m.round_ties_even() as usize).max(2)
}

/// MAUVE of reference features `p` and sample features `q` (one row per text).
pub fn compute_mauve(p: &[Vec<f32>], q: &[Vec<f32>], opts: &MauveOptions) -> Result<MauveResult> {
    let bad = |m: String| Error::InvalidArgument(format!("MAUVE: {m}"));
    if p.len() < 2 || q.len() < 2 {
        return Err(bad(format!(
            "needs at least 2 rows per side, got {} references and {} samples",
            p.len(),
            q.len()
        )));
    }
    if !(opts.explained_variance > 0.0 && opts.explained_variance < 1.0) {
        return Err(bad(format!(
            "explained variance {} must be in (0, 1)",
            opts.explained_variance
        )));
    }
    if opts.kmeans_restarts == 0 || opts.kmeans_max_iter == 0 || opts.curve_points == 0 {
        return Err(bad(
            "restarts, iterations and curve points must be at least 1".into(),
        ));
    }
    let dim = q[0].len();
    if dim == 0 {
        return Err(bad("features have dimension 0".into()));
    }
    // Rows in the reference's order: samples first, then references.
    let rows: Vec<&Vec<f32>> = q.iter().chain(p).collect();
    for (i, r) in rows.iter().enumerate() {
        let (side, k) = if i < q.len() {
            ("sample", i)
        } else {
            ("reference", i - q.len())
        };
        if r.len() != dim {
            return Err(bad(format!(
                "{side} {k} has {} features, expected {dim}",
                r.len()
            )));
        }
        if r.iter().any(|x| !x.is_finite()) {
            return Err(bad(format!("{side} {k} has a non-finite feature")));
        }
    }
    let n = rows.len();
    let k = opts
        .num_buckets
        .unwrap_or_else(|| auto_num_buckets(p.len(), q.len()));
    if k < 2 || k > n {
        return Err(bad(format!(
            "{k} clusters for {n} points (need 2 <= K <= points)"
        )));
    }
    let data = Mat::<f64>::from_fn(n, dim, |i, j| rows[i][j] as f64);
    let data = l2_normalise_rows(data);
    let (proj, comps) = pca_project(&data, opts.explained_variance)?;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed.wrapping_add(2));
    let km = kmeans(
        &proj,
        k,
        opts.kmeans_restarts,
        opts.kmeans_max_iter,
        &mut rng,
    )?;
    let q_hist = histogram(&km.labels[..q.len()], k);
    let p_hist = histogram(&km.labels[q.len()..], k);
    let (mauve, curve) = mauve_from_histograms(&p_hist, &q_hist, opts.curve_points, opts.scaling);
    Ok(MauveResult {
        mauve,
        frontier_integral: frontier_integral(&p_hist, &q_hist),
        divergence_curve: curve,
        p_hist,
        q_hist,
        num_buckets: k,
        pca_components: comps,
        kmeans_inertia: km.inertia,
        n_p: p.len(),
        n_q: q.len(),
    })
}

/// MAUVE of `samples` (q) against `references` (p) on MiniLM features, `batch` texts per forward
/// pass; `progress` gets (texts featurised, samples + references).
pub fn mauve_of_texts(
    model: &MiniLm,
    samples: &[String],
    references: &[String],
    opts: &MauveOptions,
    batch: usize,
    progress: Option<Progress>,
) -> Result<MauveResult> {
    if samples.len() < 2 || references.len() < 2 {
        return Err(Error::InvalidArgument(format!(
            "MAUVE: needs at least 2 texts per side, got {} samples and {} references",
            samples.len(),
            references.len()
        )));
    }
    // One pass over both sets: batches sorted by length across all texts pad least.
    let all: Vec<String> = samples.iter().chain(references).cloned().collect();
    let feats = model.embed(&all, batch, progress)?;
    let (q, p) = feats.split_at(samples.len());
    compute_mauve(p, q, opts)
}

/// Normalised counts of `labels` over `k` bins.
pub fn histogram(labels: &[usize], k: usize) -> Vec<f64> {
    let mut h = vec![0f64; k];
    for &l in labels {
        h[l] += 1.0;
    }
    let n = labels.len().max(1) as f64;
    h.iter_mut().for_each(|x| *x /= n);
    h
}

/// KL(a‖b) in nats; `inf` when some a_i > 0 has b_i = 0; terms with a_i = 0 contribute 0.
pub fn kl_divergence(a: &[f64], b: &[f64]) -> f64 {
    let mut s = 0.0;
    for (&x, &y) in a.iter().zip(b) {
        if x > 0.0 {
            if y <= 0.0 {
                return f64::INFINITY;
            }
            s += x * (x / y).ln();
        }
    }
    s
}

/// `n` evenly spaced values from `a` to `b` inclusive (numpy's `linspace`).
pub fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![a],
        _ => {
            let step = (b - a) / (n - 1) as f64;
            (0..n)
                .map(|i| if i == n - 1 { b } else { a + i as f64 * step })
                .collect()
        }
    }
}

/// The divergence curve: (1, 0), then for each w in linspace(1e-6, 1-1e-6, `points`) with
/// r = w p + (1-w) q the point (exp(-c KL(q‖r)), exp(-c KL(p‖r))), then (0, 1).
pub fn divergence_curve(p: &[f64], q: &[f64], points: usize, c: f64) -> Vec<(f64, f64)> {
    let mut out = vec![(1.0, 0.0)];
    for w in linspace(1e-6, 1.0 - 1e-6, points) {
        let r: Vec<f64> = p
            .iter()
            .zip(q)
            .map(|(a, b)| w * a + (1.0 - w) * b)
            .collect();
        out.push((
            (-c * kl_divergence(q, &r)).exp(),
            (-c * kl_divergence(p, &r)).exp(),
        ));
    }
    out.push((0.0, 1.0));
    out
}

/// Trapezoid area under y(x) for x in non-decreasing order (sklearn's `auc`).
pub fn trapezoid(x: &[f64], y: &[f64]) -> f64 {
    x.windows(2)
        .zip(y.windows(2))
        .map(|(xs, ys)| (xs[1] - xs[0]) * (ys[0] + ys[1]) / 2.0)
        .sum()
}

/// Area under the curve with points sorted by the first coordinate. Ties in it are ordered by
/// the second coordinate descending, so a vertical run is climbed from the left and descended to
/// the right (p = q makes every interior point (1, 1), tied with the extreme (1, 0)).
fn sorted_area(pts: &[(f64, f64)]) -> f64 {
    let mut s = pts.to_vec();
    s.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    let x: Vec<f64> = s.iter().map(|p| p.0).collect();
    let y: Vec<f64> = s.iter().map(|p| p.1).collect();
    trapezoid(&x, &y)
}

/// MAUVE = ½[AUC(x sorted, y) + AUC(y sorted, x)] of the divergence curve of histograms p, q;
/// returns (MAUVE, curve).
pub fn mauve_from_histograms(
    p: &[f64],
    q: &[f64],
    points: usize,
    c: f64,
) -> (f64, Vec<(f64, f64)>) {
    let curve = divergence_curve(p, q, points, c);
    let swapped: Vec<(f64, f64)> = curve.iter().map(|&(x, y)| (y, x)).collect();
    let m = 0.5 * (sorted_area(&curve) + sorted_area(&swapped));
    (m, curve)
}

/// The frontier integral: 2 Σ_i [(p_i+q_i)/4 - ½ p_i q_i (ln p_i - ln q_i)/(p_i - q_i)], with
/// the reference's limits (a bin empty on one side adds the other's mass / 4; p_i ≈ q_i adds 0).
pub fn frontier_integral(p: &[f64], q: &[f64]) -> f64 {
    let mut total = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        if a == 0.0 && b == 0.0 {
            continue;
        } else if a == 0.0 {
            total += b / 4.0;
        } else if b == 0.0 {
            total += a / 4.0;
        } else if (a - b).abs() > 1e-8 {
            total += 0.25 * (a + b) - 0.5 * a * b * (a.ln() - b.ln()) / (a - b);
        }
    }
    2.0 * total
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use rand_distr::{Distribution, Normal};

    /// `n` rows drawn around the given centres in turn, with unit Gaussian noise.
    fn blobs(rng: &mut ChaCha8Rng, n: usize, centres: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let noise = Normal::new(0.0f32, 1.0).unwrap();
        (0..n)
            .map(|i| {
                centres[i % centres.len()]
                    .iter()
                    .map(|c| c + noise.sample(rng))
                    .collect()
            })
            .collect()
    }

    /// `m` centres in `dim` dimensions, coordinates uniform in [lo, hi).
    fn centres(rng: &mut ChaCha8Rng, m: usize, dim: usize, lo: f32, hi: f32) -> Vec<Vec<f32>> {
        (0..m)
            .map(|_| (0..dim).map(|_| rng.random_range(lo..hi)).collect())
            .collect()
    }

    #[test]
    fn bucket_rule_rounds_half_to_even_like_python() {
        assert_eq!(auto_num_buckets(25, 100), 2); // round(2.5) = 2
        assert_eq!(auto_num_buckets(35, 40), 4); // round(3.5) = 4
        assert_eq!(auto_num_buckets(5, 5), 2);
        assert_eq!(auto_num_buckets(1000, 1004), 100);
        assert_eq!(auto_num_buckets(149, 2000), 15);
    }

    #[test]
    fn identical_sample_sets_give_mauve_near_one() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let c = centres(&mut rng, 6, 16, -4.0, 4.0);
        let p = blobs(&mut rng, 200, &c);
        let r = compute_mauve(&p, &p, &MauveOptions::default()).unwrap();
        assert!(r.mauve > 0.95, "{r:?}");
        assert_eq!(r.num_buckets, 20);
        assert!(r.frontier_integral.abs() < 1e-12);
        assert_eq!(r.divergence_curve.len(), 27);
    }

    #[test]
    fn separated_clusters_give_mauve_near_zero() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let a = centres(&mut rng, 4, 16, 5.0, 15.0);
        let b = centres(&mut rng, 4, 16, -15.0, -5.0);
        let p = blobs(&mut rng, 200, &a);
        let q = blobs(&mut rng, 200, &b);
        let r = compute_mauve(&p, &q, &MauveOptions::default()).unwrap();
        assert!(r.mauve < 0.1, "{}", r.mauve);
        // Every cluster is pure: the histograms have disjoint supports.
        assert!(r.p_hist.iter().zip(&r.q_hist).all(|(a, b)| a * b == 0.0));
        assert!((r.frontier_integral - 1.0).abs() < 1e-12);
    }

    #[test]
    fn mixing_q_toward_p_raises_mauve_monotonically() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let a = centres(&mut rng, 5, 12, -6.0, 6.0);
        let b = centres(&mut rng, 5, 12, -6.0, 6.0);
        let n = 300;
        let p = blobs(&mut rng, n, &a);
        let from_p = blobs(&mut rng, n, &a);
        let far = blobs(&mut rng, n, &b);
        let mut last = -1.0;
        for alpha in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let m = (alpha * n as f64) as usize;
            let q: Vec<Vec<f32>> = from_p[..m].iter().chain(&far[m..]).cloned().collect();
            let r = compute_mauve(&p, &q, &MauveOptions::default()).unwrap();
            assert!(r.mauve > last, "alpha {alpha}: {} after {last}", r.mauve);
            last = r.mauve;
        }
        assert!(last > 0.9, "{last}");
    }

    #[test]
    fn divergence_curve_and_area_by_hand() {
        let c = 5.0;
        // p = (1/2, 1/2), q = (1, 0), w = 1/2: r = (3/4, 1/4).
        // KL(q‖r) = ln(4/3), so x = (3/4)^5; KL(p‖r) = ½ln(2/3) + ½ln 2 = ½ln(4/3), so y = (3/4)^2.5.
        let curve = divergence_curve(&[0.5, 0.5], &[1.0, 0.0], 3, c);
        assert_eq!(curve.len(), 5);
        assert_eq!(curve[0], (1.0, 0.0));
        assert_eq!(curve[4], (0.0, 1.0));
        assert!((curve[2].0 - 0.2373046875).abs() < 1e-12, "{curve:?}");
        assert!((curve[2].1 - 0.75f64.powf(2.5)).abs() < 1e-12, "{curve:?}");
        // w = 1e-6: r = (1 - ½w, ½w), KL(q‖r) = -ln(1 - ½w), so x = (1 - ½w)^5.
        let w: f64 = 1e-6;
        assert!((curve[1].0 - (1.0 - w / 2.0).powi(5)).abs() < 1e-12);

        // Disjoint p = (1, 0), q = (0, 1): r = (w, 1-w), the points are ((1-w)^5, w^5).
        // With w0 = 1e-6 and m = 1/32 (the w = ½ point), dropping the w0^5 = 1e-30 terms, the
        // x-sorted trapezoid over (0,1), (~0, a), (m, m), (a, ~0), (1, 0) with a = (1-w0)^5 is
        // m(a + m)/2 + (a - m)m/2 = a/32; the y-sorted one is the same by symmetry.
        let (m, curve) = mauve_from_histograms(&[1.0, 0.0], &[0.0, 1.0], 3, c);
        assert!((curve[2].0 - 1.0 / 32.0).abs() < 1e-15);
        assert!((m - (1.0 - w).powi(5) / 32.0).abs() < 1e-15, "{m}");

        // p = q: every interior point is (1, 1), the area is 1 on both sides.
        let (m, _) = mauve_from_histograms(&[0.3, 0.7], &[0.3, 0.7], 25, c);
        assert!((m - 1.0).abs() < 1e-15, "{m}");

        // Trapezoid: (0,2) (1,2) (3,0) has area 2 + 2.
        assert_eq!(trapezoid(&[0.0, 1.0, 3.0], &[2.0, 2.0, 0.0]), 4.0);
        let w = linspace(1e-6, 1.0 - 1e-6, 25);
        assert_eq!((w.len(), w[0], w[24]), (25, 1e-6, 1.0 - 1e-6));
        assert!((w[12] - 0.5).abs() < 1e-15);
    }

    #[test]
    fn frontier_integral_by_hand() {
        // Disjoint: each bin adds 1/4, times 2.
        assert_eq!(frontier_integral(&[1.0, 0.0], &[0.0, 1.0]), 1.0);
        assert_eq!(frontier_integral(&[0.2, 0.8], &[0.2, 0.8]), 0.0);
        // Bin 1 (½, ¼): 0.1875 - ½·(1/8)·ln2/(1/4) = 0.1875 - ¼ln2;
        // bin 2 (½, ¾): 0.3125 - ½·(3/8)·ln(2/3)/(-1/4) = 0.3125 - ¾ln1.5.
        let want = 2.0 * ((0.1875 - 0.25 * 2f64.ln()) + (0.3125 - 0.75 * 1.5f64.ln()));
        let got = frontier_integral(&[0.5, 0.5], &[0.25, 0.75]);
        assert!((got - want).abs() < 1e-15, "{got} {want}");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let o = MauveOptions::default();
        let two = vec![vec![1.0f32, 0.0], vec![0.0, 1.0]];
        let e = compute_mauve(&two[..1], &two, &o).unwrap_err().to_string();
        assert!(e.contains("at least 2 rows"), "{e}");
        let e = compute_mauve(&two, &[vec![1.0, 0.0], vec![1.0, 0.0, 2.0]], &o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sample 1 has 3 features, expected 2"), "{e}");
        let e = compute_mauve(&[vec![1.0, f32::NAN], vec![0.0, 1.0]], &two, &o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("reference 0 has a non-finite"), "{e}");
        let o5 = MauveOptions {
            num_buckets: Some(5),
            ..o.clone()
        };
        let e = compute_mauve(&two, &two, &o5).unwrap_err().to_string();
        assert!(e.contains("5 clusters for 4 points"), "{e}");
        // Degenerate but legal: every row identical.
        let same = vec![vec![1.0f32, 2.0]; 4];
        assert_eq!(compute_mauve(&same, &same, &o).unwrap().mauve, 1.0);
    }
}
