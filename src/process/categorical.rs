//! Categorical draws from unnormalised probability rows, in f64 whatever the row's type (f32
//! tables, Duo's f64 posterior). The reference draws by an exponential race (docs/algorithms.md §0:
//! one uniform and one log per class, in f64 so the tail is not truncated); `draw_f64` draws from
//! the same distribution by the inverse CDF in f64 (one uniform per draw), which took the race's
//! 8192 logs per token from 25% of a 4-step sampler's time to nothing. The race is kept as its
//! oracle.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Entries per block of the running sum: the draw finds its block among the block sums, then its
/// entry within the block.
const BLOCK: usize = 256;
const LANES: usize = 8;

/// p as a weight: negative entries and NaN count as 0.
#[inline(always)]
fn weight<T: Copy + Into<f64>>(x: T) -> f64 {
    let v: f64 = x.into();
    if v > 0.0 { v } else { 0.0 }
}

/// Sum of the weights of a block, in eight running lanes (vectorises).
#[inline(always)]
fn block_sum<T: Copy + Into<f64>>(p: &[T]) -> f64 {
    let mut acc = [0f64; LANES];
    let c = p.chunks_exact(LANES);
    let tail: f64 = c.remainder().iter().map(|&x| weight(x)).sum();
    for x in c {
        for i in 0..LANES {
            acc[i] += weight(x[i]);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// The last entry of `p` with positive weight, offset by `start` (0 if none).
fn last_positive<T: Copy + Into<f64>>(p: &[T], start: usize) -> usize {
    p.iter()
        .rposition(|&x| weight(x) > 0.0)
        .map_or(start, |j| start + j)
}

/// Categorical draw with probabilities proportional to p (unnormalised; entries <= 0 never win),
/// by the inverse CDF in f64: one uniform u, then the first entry where the running sum exceeds
/// u times the total. Index 0 if no entry is positive.
pub fn draw_f64<T: Copy + Into<f64>>(p: &[T], rng: &mut ChaCha8Rng) -> usize {
    let sums: Vec<f64> = p.chunks(BLOCK).map(block_sum).collect();
    let total: f64 = sums.iter().sum();
    // Weights are never NaN or negative, so neither is the total.
    if total <= 0.0 {
        return 0;
    }
    if total.is_infinite() {
        // Infinite weights share all the mass; the first one stands for them (as in the race).
        return p.iter().position(|&x| weight(x).is_infinite()).unwrap_or(0);
    }
    let u: f64 = rng.random();
    let target = u * total;
    let mut acc = 0.0;
    for (b, &s) in sums.iter().enumerate() {
        if acc + s > target {
            let start = b * BLOCK;
            let block = &p[start..(start + BLOCK).min(p.len())];
            let mut a = acc;
            for (j, &x) in block.iter().enumerate() {
                let w = weight(x);
                if w > 0.0 {
                    a += w;
                    if a > target {
                        return start + j;
                    }
                }
            }
            // The in-order sum fell a rounding short of the lane sum: the block's last entry.
            return last_positive(block, start);
        }
        acc += s;
    }
    // u * total rounded up to the total.
    last_positive(p, 0)
}

/// The reference's categorical draw, an f64 exponential race (Gumbel-max): argmax_v p_v / E_v
/// with E_v = 1e-10 - log(U_v + 1e-10); accepts unnormalised p; entries with p <= 0 never win.
/// `draw_f64`'s oracle.
pub fn race_f64<T: Copy + Into<f64>>(p: &[T], rng: &mut ChaCha8Rng) -> usize {
    let mut best = 0usize;
    let mut best_score = f64::NEG_INFINITY;
    for (v, &pv) in p.iter().enumerate() {
        let pv: f64 = pv.into();
        if pv <= 0.0 {
            continue;
        }
        let u: f64 = rng.random();
        let e = 1e-10 - (u + 1e-10).ln();
        let score = pv / e;
        if score > best_score {
            best_score = score;
            best = v;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Frequencies of `n` draws of `draw` from p.
    fn freqs(
        p: &[f32],
        n: usize,
        seed: u64,
        draw: fn(&[f32], &mut ChaCha8Rng) -> usize,
    ) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut c = vec![0f64; p.len()];
        for _ in 0..n {
            c[draw(p, &mut rng)] += 1.0;
        }
        c.iter().map(|x| x / n as f64).collect()
    }

    #[test]
    fn the_inverse_cdf_draws_the_distribution_the_race_draws() {
        // 700 classes over three blocks, mass on both sides of the block edges (255 | 256,
        // 511 | 512), zeros and negatives that must never win, and a thin spread elsewhere.
        let mut p = vec![0f32; 700];
        for (v, x) in p.iter_mut().enumerate() {
            *x = if v % 7 == 0 {
                0.0
            } else if v % 11 == 0 {
                -1.0
            } else {
                0.001
            };
        }
        for (v, w) in [
            (0, 0.5),
            (255, 2.0),
            (256, 1.0),
            (511, 0.7),
            (512, 3.0),
            (699, 0.9),
        ] {
            p[v] = w;
        }
        let total: f64 = p.iter().map(|&x| weight(x)).sum();
        let n = 200_000;
        let draw = freqs(&p, n, 3, draw_f64::<f32>);
        let race = freqs(&p, n, 4, race_f64::<f32>);
        for (v, &x) in p.iter().enumerate() {
            let want = weight(x) / total;
            let sd = (want * (1.0 - want) / n as f64).sqrt();
            if want == 0.0 {
                assert_eq!(draw[v], 0.0, "class {v} has no mass but was drawn");
                assert_eq!(race[v], 0.0);
                continue;
            }
            assert!(
                (draw[v] - want).abs() < 5.0 * sd + 1e-9,
                "class {v}: {} vs {want}",
                draw[v]
            );
            assert!(
                (race[v] - want).abs() < 5.0 * sd + 1e-9,
                "class {v}: race {} vs {want}",
                race[v]
            );
        }
    }

    #[test]
    fn degenerate_rows_draw_what_the_race_draws() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // One positive entry: always it, in any block.
        let mut p = vec![0f64; 1000];
        p[777] = 1e-300;
        assert_eq!(draw_f64(&p, &mut rng), 777);
        assert_eq!(race_f64(&p, &mut rng), 777);
        // Nothing positive: index 0, as the race.
        assert_eq!(draw_f64(&[0f32, -1.0, f32::NAN], &mut rng), 0);
        assert_eq!(race_f64(&[0f32, -1.0, f32::NAN], &mut rng), 0);
        // An infinite weight takes all the mass.
        assert_eq!(draw_f64(&[1f32, f32::INFINITY, 2.0], &mut rng), 1);
        assert_eq!(race_f64(&[1f32, f32::INFINITY, 2.0], &mut rng), 1);
        assert_eq!(draw_f64::<f32>(&[], &mut rng), 0);
    }
}
