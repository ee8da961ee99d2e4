//! Row reductions written with eight running accumulators, so that LLVM vectorises them: an
//! in-order float sum (or max) is a dependency chain it may not reorder, which made the
//! vocabulary-sized log-sum-exp of the loss run one element at a time (perf: 18% of a train step).

use super::fast_exp;

const W: usize = 8;

/// Dot product of two equally long slices.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; W];
    let (ca, cb) = (a.chunks_exact(W), b.chunks_exact(W));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..W {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Sum of a slice.
#[inline(always)]
pub fn sum(a: &[f32]) -> f32 {
    let mut acc = [0f32; W];
    let c = a.chunks_exact(W);
    let tail: f32 = c.remainder().iter().sum();
    for x in c {
        for i in 0..W {
            acc[i] += x[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Sum of (x - c)^2 over a slice.
#[inline(always)]
pub fn sum_sq_dev(a: &[f32], c0: f32) -> f32 {
    let mut acc = [0f32; W];
    let c = a.chunks_exact(W);
    let tail: f32 = c.remainder().iter().map(|&x| (x - c0) * (x - c0)).sum();
    for x in c {
        for i in 0..W {
            acc[i] += (x[i] - c0) * (x[i] - c0);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Largest element (-inf for an empty slice).
#[inline(always)]
pub fn max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; W];
    let c = a.chunks_exact(W);
    let tail = c
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for x in c {
        for i in 0..W {
            acc[i] = acc[i].max(x[i]);
        }
    }
    acc.iter().fold(tail, |m, &x| m.max(x))
}

/// y += b elementwise; returns the largest y (-inf for an empty slice).
#[inline(always)]
pub fn add_max(y: &mut [f32], b: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; W];
    let (mut cy, cb) = (y.chunks_exact_mut(W), b.chunks_exact(W));
    let tb = cb.remainder();
    for (x, d) in cy.by_ref().zip(cb) {
        for i in 0..W {
            x[i] += d[i];
            acc[i] = acc[i].max(x[i]);
        }
    }
    let mut tail = f32::NEG_INFINITY;
    for (x, d) in cy.into_remainder().iter_mut().zip(tb) {
        *x += d;
        tail = tail.max(*x);
    }
    acc.iter().fold(tail, |m, &x| m.max(x))
}

/// y *= s, then acc += y, elementwise.
#[inline(always)]
pub fn scale_into(y: &mut [f32], s: f32, acc: &mut [f32]) {
    for (x, a) in y.iter_mut().zip(acc) {
        *x *= s;
        *a += *x;
    }
}

/// Sum of exp(scale x - m) over a slice.
#[inline(always)]
pub fn sum_exp(a: &[f32], scale: f32, m: f32) -> f32 {
    let mut acc = [0f32; W];
    let c = a.chunks_exact(W);
    let tail: f32 = c.remainder().iter().map(|&x| fast_exp(x * scale - m)).sum();
    for x in c {
        for i in 0..W {
            acc[i] += fast_exp(x[i] * scale - m);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// y = exp(scale x - m) in place over a slice; returns the sum of y.
#[inline(always)]
pub fn exp_in_place(y: &mut [f32], scale: f32, m: f32) -> f32 {
    let mut acc = [0f32; W];
    let mut c = y.chunks_exact_mut(W);
    for x in c.by_ref() {
        for i in 0..W {
            x[i] = fast_exp(x[i] * scale - m);
            acc[i] += x[i];
        }
    }
    let mut tail = 0f32;
    for x in c.into_remainder() {
        *x = fast_exp(*x * scale - m);
        tail += *x;
    }
    acc.iter().sum::<f32>() + tail
}

/// Softmax of a row in place: y = exp(scale y - max) / sum.
#[inline(always)]
pub fn softmax_in_place(y: &mut [f32], scale: f32) {
    let m = max(y) * scale;
    let inv = 1.0 / exp_in_place(y, scale, m);
    y.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect()
    }

    #[test]
    fn lane_reductions_match_plain_loops() {
        // Lengths around the lane width exercise the remainder paths.
        for n in [0, 1, 7, 8, 9, 16, 31, 100, 8192] {
            let a = data(n);
            let b: Vec<f32> = a.iter().map(|x| x * 0.5 - 1.0).collect();
            let plain_dot: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - plain_dot).abs() <= 1e-4 * (1.0 + plain_dot.abs()));
            let plain_sum: f64 = a.iter().map(|&x| x as f64).sum();
            assert!((sum(&a) as f64 - plain_sum).abs() <= 1e-4 * (1.0 + plain_sum.abs()));
            let plain_ssd: f64 = a.iter().map(|&x| (x as f64 - 0.3).powi(2)).sum();
            assert!((sum_sq_dev(&a, 0.3) as f64 - plain_ssd).abs() <= 1e-4 * (1.0 + plain_ssd));
            let plain_max = a.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            assert_eq!(max(&a), plain_max);
            let mut y = a.clone();
            assert_eq!(
                add_max(&mut y, &b),
                a.iter()
                    .zip(&b)
                    .fold(f32::NEG_INFINITY, |m, (x, d)| m.max(x + d))
            );
            assert!(
                y.iter()
                    .zip(a.iter().zip(&b))
                    .all(|(y, (x, d))| *y == x + d)
            );
            let mut acc = b.clone();
            scale_into(&mut y, 0.5, &mut acc);
            assert!(
                y.iter()
                    .zip(a.iter().zip(&b))
                    .all(|(y, (x, d))| *y == (x + d) * 0.5)
            );
            assert!(acc.iter().zip(&y).zip(&b).all(|((s, y), d)| *s == d + y));
            let (scale, m) = (0.7f32, 1.5f32);
            let plain_se: f64 = a.iter().map(|&x| ((x * scale - m) as f64).exp()).sum();
            let se = sum_exp(&a, scale, m) as f64;
            assert!(
                (se - plain_se).abs() <= 1e-5 * plain_se.max(1e-30),
                "{n}: {se} {plain_se}"
            );
            let mut y = a.clone();
            let s = exp_in_place(&mut y, scale, m) as f64;
            assert!((s - plain_se).abs() <= 1e-5 * plain_se.max(1e-30));
            for (yi, &x) in y.iter().zip(&a) {
                let want = ((x * scale - m) as f64).exp();
                assert!((*yi as f64 - want).abs() <= 1e-6 * want);
            }
            if n > 0 {
                let mut p = a.clone();
                softmax_in_place(&mut p, scale);
                let total: f64 = p.iter().map(|&v| v as f64).sum();
                assert!((total - 1.0).abs() < 1e-5);
            }
        }
    }
}
