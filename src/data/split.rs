//! The train / validation split: by a hash of each document's name, so it is the same on every
//! machine and a document keeps its side when others are added.

use sha2::{Digest, Sha256};

use super::corpus::Document;

/// Resolution of the hash split: a document is in validation iff its hash bucket is below fraction x this.
const SPLIT_BUCKETS: u64 = 1_000_000;

/// Position of a document name in [0, SPLIT_BUCKETS): the same on every machine, and unaffected by other documents.
fn split_bucket(name: &str) -> u64 {
    let h = Sha256::digest(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    u64::from_be_bytes(b) % SPLIT_BUCKETS
}

/// Which documents go to validation: bucket < fraction x buckets, with at least one validation and
/// one training document when there are two or more.
pub fn split_documents(docs: &[Document], valid_fraction: f64) -> Vec<bool> {
    let threshold = (valid_fraction * SPLIT_BUCKETS as f64).round() as u64;
    let buckets: Vec<u64> = docs.iter().map(|d| split_bucket(&d.name)).collect();
    let mut is_valid: Vec<bool> = buckets.iter().map(|&b| b < threshold).collect();
    if docs.len() >= 2 {
        // Ties between equal names are broken by position so the choice is still deterministic.
        let by_bucket = |want_min: bool| {
            (0..docs.len()).min_by_key(|&i| {
                if want_min {
                    (buckets[i], i)
                } else {
                    (SPLIT_BUCKETS - buckets[i], i)
                }
            })
        };
        if !is_valid.iter().any(|&v| v)
            && let Some(i) = by_bucket(true)
        {
            is_valid[i] = true;
        }
        if is_valid.iter().all(|&v| v)
            && let Some(i) = by_bucket(false)
        {
            is_valid[i] = false;
        }
    }
    is_valid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(name: &str) -> Document {
        Document {
            name: name.into(),
            text: "x".into(),
        }
    }

    #[test]
    fn split_is_deterministic_stable_and_non_empty() {
        let docs: Vec<Document> = (0..2000).map(|i| doc(&format!("corp/{i}.txt"))).collect();
        let a = split_documents(&docs, 0.1);
        assert_eq!(a, split_documents(&docs, 0.1));
        let n = a.iter().filter(|&&v| v).count();
        assert!((150..250).contains(&n), "{n} of 2000 at fraction 0.1");
        // Adding documents does not move the existing ones.
        let mut more = docs.clone();
        more.extend((0..50).map(|i| doc(&format!("new/{i}.txt"))));
        assert_eq!(&split_documents(&more, 0.1)[..2000], &a[..]);
        // Pinned values (computed independently with Python's hashlib): the rule must not change
        // silently, it would reshuffle every data folder.
        assert_eq!(split_bucket("sotu/1790_george_washington_n.txt"), 924_444);
        assert_eq!(split_bucket("moby_dick/chapter_77.txt"), 15_723);
        assert_eq!(split_bucket("sotu/1992_george_bush_r.txt"), 17_194);
        // Tiny corpora still get one document on each side.
        let two = [doc("a"), doc("b")];
        for f in [1e-6, 0.5, 0.999_999] {
            let s = split_documents(&two, f);
            assert_eq!(s.iter().filter(|&&v| v).count(), 1, "fraction {f}");
        }
        assert_eq!(split_documents(&[doc("only")], 0.02), vec![false]);
    }
}
