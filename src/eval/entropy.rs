//! Unigram entropy of token sequences (docs/algorithms.md §6.2): per sample, the entropy in nats of the
//! sample's own token-frequency distribution, `H = -Σ p ln p`; reported as the mean over samples,
//! plus the pooled entropy of all samples' tokens together.

// Counts in id order: the entropy is a float sum, and a hash table's order (seeded per table and
// per process) would change its last bits from one run to the next.
use std::collections::BTreeMap;

/// Entropy figures over a set of samples.
#[derive(Debug, Clone, PartialEq)]
pub struct EntropyResult {
    /// Per-sample entropy in nats (0 for an empty sample).
    pub per_sample: Vec<f64>,
    /// Mean of `per_sample` (the protocol's "entropy"); 0 when there are no samples.
    pub mean: f64,
    /// Entropy of the token frequencies pooled over all samples.
    pub pooled: f64,
}

/// Entropy in nats of a count table with `total` entries.
fn entropy_of_counts<'a>(counts: impl Iterator<Item = &'a usize>, total: usize) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let n = total as f64;
    let h: f64 = counts
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum();
    // Sums of tiny negative rounding errors would print as -0.
    h.max(0.0)
}

/// Unigram entropy in nats of one sequence's own token ids (0 for an empty sequence).
pub fn unigram_entropy(ids: &[u32]) -> f64 {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for &t in ids {
        *counts.entry(t).or_insert(0) += 1;
    }
    entropy_of_counts(counts.values(), ids.len())
}

/// Per-sample entropies, their mean, and the pooled entropy of all tokens.
pub fn entropy_stats<S: AsRef<[u32]>>(samples: &[S]) -> EntropyResult {
    let per_sample: Vec<f64> = samples
        .iter()
        .map(|s| unigram_entropy(s.as_ref()))
        .collect();
    let mean = if per_sample.is_empty() {
        0.0
    } else {
        per_sample.iter().sum::<f64>() / per_sample.len() as f64
    };
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    let mut total = 0usize;
    for s in samples {
        for &t in s.as_ref() {
            *counts.entry(t).or_insert(0) += 1;
            total += 1;
        }
    }
    EntropyResult {
        per_sample,
        mean,
        pooled: entropy_of_counts(counts.values(), total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn hand_computed_entropies() {
        assert!(close(unigram_entropy(&[1, 1, 2, 2]), 2f64.ln()));
        assert_eq!(unigram_entropy(&[5, 5, 5]), 0.0);
        assert!(close(unigram_entropy(&[1, 2, 3, 4]), 4f64.ln()));
        assert_eq!(unigram_entropy(&[]), 0.0);
        assert_eq!(unigram_entropy(&[7]), 0.0);
        // p = (3/4, 1/4): H = -(3/4 ln 3/4 + 1/4 ln 1/4) = ln 4 - (3/4) ln 3.
        assert!(close(
            unigram_entropy(&[9, 9, 4, 9]),
            4f64.ln() - 0.75 * 3f64.ln()
        ));
        // Order does not matter.
        assert!(close(
            unigram_entropy(&[1, 2, 1, 3, 1, 2]),
            unigram_entropy(&[3, 2, 2, 1, 1, 1])
        ));
    }

    #[test]
    fn mean_and_pooled() {
        let r = entropy_stats(&[vec![1u32, 1], vec![2, 2]]);
        assert_eq!(r.per_sample, [0.0, 0.0]);
        assert_eq!(r.mean, 0.0);
        assert!(close(r.pooled, 2f64.ln()));

        let r = entropy_stats(&[vec![1u32, 2], vec![3, 3, 3, 3]]);
        assert!(close(r.mean, 2f64.ln() / 2.0));
        // Pooled p = (1/6, 1/6, 4/6).
        let want = -(2.0 * (1.0 / 6.0) * (1f64 / 6.0).ln() + (4.0 / 6.0) * (4f64 / 6.0).ln());
        assert!(close(r.pooled, want));

        let empty: Vec<Vec<u32>> = Vec::new();
        let r = entropy_stats(&empty);
        assert_eq!((r.mean, r.pooled), (0.0, 0.0));
        assert!(r.per_sample.is_empty());
    }

    #[test]
    fn the_same_tokens_give_the_same_bits_every_time() {
        // Many distinct tokens with uneven counts, so the order of the sum shows in the last
        // bits; the order must be the ids', not a hash table's (seeded anew per table and per
        // process: validation entropy differed between a resumed and an uninterrupted run).
        let ids: Vec<u32> = (0..600u32).map(|i| (i * i * 7 + i / 3) % 97).collect();
        let first = unigram_entropy(&ids);
        let pooled = entropy_stats(&[ids.clone(), ids[..211].to_vec()]).pooled;
        for _ in 0..64 {
            assert_eq!(unigram_entropy(&ids).to_bits(), first.to_bits());
            let again = entropy_stats(&[ids.clone(), ids[..211].to_vec()]).pooled;
            assert_eq!(again.to_bits(), pooled.to_bits());
        }
    }

    #[test]
    fn maximum_is_ln_of_length() {
        let ids: Vec<u32> = (0..1024).collect();
        assert!((unigram_entropy(&ids) - 1024f64.ln()).abs() < 1e-9);
    }
}
