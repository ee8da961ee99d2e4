//! PCA and k-means for MAUVE (docs/algorithms.md §6.3): PCA as sklearn's full PCA (thin SVD of the
//! centred data, by faer), k-means as k-means++ seeding and Lloyd iterations, best of several runs.

use faer::Mat;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Rows scaled to unit L2 norm; zero rows stay zero (sklearn's `normalize`).
pub fn l2_normalise_rows(mut m: Mat<f64>) -> Mat<f64> {
    for i in 0..m.nrows() {
        let norm = (0..m.ncols())
            .map(|j| m[(i, j)] * m[(i, j)])
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            for j in 0..m.ncols() {
                m[(i, j)] /= norm;
            }
        }
    }
    m
}

/// Project the centred rows on the first k+1 principal axes, k the first index whose cumulative
/// explained-variance ratio reaches `explained`; returns (rows, k+1).
pub fn pca_project(data: &Mat<f64>, explained: f64) -> Result<(Vec<Vec<f64>>, usize)> {
    let (n, d) = (data.nrows(), data.ncols());
    let mean: Vec<f64> = (0..d)
        .map(|j| (0..n).map(|i| data[(i, j)]).sum::<f64>() / n as f64)
        .collect();
    let centred = Mat::<f64>::from_fn(n, d, |i, j| data[(i, j)] - mean[j]);
    let svd = centred
        .thin_svd()
        .map_err(|e| Error::InvalidArgument(format!("MAUVE: PCA did not converge: {e:?}")))?;
    let s = svd.S().column_vector();
    let var: Vec<f64> = (0..s.nrows()).map(|i| s[i] * s[i]).collect();
    let total: f64 = var.iter().sum();
    // All rows equal: no direction has variance; one (zero) component keeps k-means well-posed.
    let keep = if total > 0.0 {
        let mut cum = 0.0;
        let mut idx = var.len() - 1;
        for (i, v) in var.iter().enumerate() {
            cum += v / total;
            if cum >= explained {
                idx = i;
                break;
            }
        }
        idx + 1
    } else {
        1
    };
    let proj = &centred * svd.V().subcols(0, keep);
    // The reference casts the projection to float32 before k-means.
    let rows = (0..n)
        .map(|i| (0..keep).map(|c| proj[(i, c)] as f32 as f64).collect())
        .collect();
    Ok((rows, keep))
}

/// A k-means clustering.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeans {
    /// Cluster of each row.
    pub labels: Vec<usize>,
    /// Centroids, one row per cluster.
    pub centroids: Vec<Vec<f64>>,
    /// Sum of squared distances of the rows to their centroids.
    pub inertia: f64,
}

/// Squared Euclidean distance.
fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Nearest centroid and its squared distance (lowest index on ties).
fn nearest(x: &[f64], centroids: &[Vec<f64>]) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    for (c, m) in centroids.iter().enumerate() {
        let d = sq_dist(x, m);
        if d < best.1 {
            best = (c, d);
        }
    }
    best
}

/// Best of `restarts` k-means++ / Lloyd runs of at most `max_iter` iterations, by inertia.
pub fn kmeans(
    data: &[Vec<f64>],
    k: usize,
    restarts: usize,
    max_iter: usize,
    rng: &mut ChaCha8Rng,
) -> Result<KMeans> {
    if k == 0 || k > data.len() {
        return Err(Error::InvalidArgument(format!(
            "k-means: {k} clusters for {} points",
            data.len()
        )));
    }
    let mut best: Option<KMeans> = None;
    for _ in 0..restarts.max(1) {
        let run = lloyd(data, kmeans_pp(data, k, rng), max_iter);
        if best.as_ref().is_none_or(|b| run.inertia < b.inertia) {
            best = Some(run);
        }
    }
    best.ok_or_else(|| Error::InvalidArgument("k-means: no run".into()))
}

/// k-means++ seeding: the first centre uniformly, each next one with probability ∝ D².
fn kmeans_pp(data: &[Vec<f64>], k: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<f64>> {
    let mut centres = vec![data[rng.random_range(0..data.len())].clone()];
    let mut d2: Vec<f64> = data.iter().map(|x| sq_dist(x, &centres[0])).collect();
    while centres.len() < k {
        let total: f64 = d2.iter().sum();
        let pick = if total > 0.0 {
            let mut u = rng.random::<f64>() * total;
            let mut pick = d2.len() - 1;
            for (i, &w) in d2.iter().enumerate() {
                if u < w {
                    pick = i;
                    break;
                }
                u -= w;
            }
            pick
        } else {
            // Fewer distinct points than clusters: any point will do.
            rng.random_range(0..data.len())
        };
        let c = data[pick].clone();
        for (x, dx) in data.iter().zip(d2.iter_mut()) {
            *dx = dx.min(sq_dist(x, &c));
        }
        centres.push(c);
    }
    centres
}

/// Lloyd iterations from `centroids` until the assignment is stable or `max_iter` is reached.
fn lloyd(data: &[Vec<f64>], mut centroids: Vec<Vec<f64>>, max_iter: usize) -> KMeans {
    let (k, d) = (centroids.len(), data[0].len());
    let mut labels: Vec<usize> = vec![usize::MAX; data.len()];
    let mut dists = vec![0f64; data.len()];
    for _ in 0..max_iter {
        let assign: Vec<(usize, f64)> = data.par_iter().map(|x| nearest(x, &centroids)).collect();
        let changed = assign.iter().zip(&labels).any(|(a, &l)| a.0 != l);
        for (i, (l, dist)) in assign.into_iter().enumerate() {
            labels[i] = l;
            dists[i] = dist;
        }
        if !changed {
            break;
        }
        let mut sums = vec![vec![0f64; d]; k];
        let mut counts = vec![0usize; k];
        for (x, &l) in data.iter().zip(&labels) {
            counts[l] += 1;
            for (s, v) in sums[l].iter_mut().zip(x) {
                *s += v;
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                centroids[c] = sums[c].iter().map(|s| s / counts[c] as f64).collect();
            } else {
                // An empty cluster takes the worst-served point, so all K bins stay in use.
                let far = (0..data.len())
                    .filter(|&i| counts[labels[i]] > 1)
                    .max_by(|&a, &b| dists[a].total_cmp(&dists[b]));
                if let Some(i) = far {
                    counts[labels[i]] -= 1;
                    counts[c] = 1;
                    labels[i] = c;
                    dists[i] = 0.0;
                    centroids[c] = data[i].clone();
                }
            }
        }
    }
    // Final assignment against the final centroids.
    let assign: Vec<(usize, f64)> = data.par_iter().map(|x| nearest(x, &centroids)).collect();
    let labels: Vec<usize> = assign.iter().map(|a| a.0).collect();
    let inertia = assign.iter().map(|a| a.1).sum();
    KMeans {
        labels,
        centroids,
        inertia,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    #[test]
    fn kmeans_recovers_separated_blobs_and_is_seeded() {
        // Point i lies near (20 (i mod 3), 0, 0): three blobs far apart relative to the noise.
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let noise = Normal::new(0.0, 1.0).unwrap();
        let x: Vec<Vec<f64>> = (0..90)
            .map(|i| {
                (0..3)
                    .map(|j| {
                        noise.sample(&mut rng) + if j == 0 { 20.0 * (i % 3) as f64 } else { 0.0 }
                    })
                    .collect()
            })
            .collect();
        let km = kmeans(&x, 3, 5, 500, &mut ChaCha8Rng::seed_from_u64(9)).unwrap();
        for i in 0..90 {
            assert_eq!(km.labels[i], km.labels[i % 3], "point {i}");
        }
        let again = kmeans(&x, 3, 5, 500, &mut ChaCha8Rng::seed_from_u64(9)).unwrap();
        assert_eq!(km, again);
        assert!(kmeans(&x, 91, 1, 10, &mut ChaCha8Rng::seed_from_u64(9)).is_err());
    }

    #[test]
    fn pca_keeps_components_to_the_variance_threshold() {
        // Variance 100, 1 and ~0 along three axes: the first axis explains ~99%.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let noise = Normal::new(0.0, 1.0).unwrap();
        let m = Mat::<f64>::from_fn(200, 3, |_, j| [10.0, 1.0, 1e-3][j] * noise.sample(&mut rng));
        assert_eq!(pca_project(&m, 0.9).unwrap().1, 1);
        assert_eq!(pca_project(&m, 0.999).unwrap().1, 2);
    }
}
