//! Held-out corpus text as a samples file: the "data" row of a results table (what real text
//! scores under the protocol) and, with its words shuffled, the sanity row GenPPL must rank far
//! worse. Rows are the midpoints between MAUVE's reference rows, so the two sets never overlap.

use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::data::DataDir;
use crate::sample::record::SampleRecord;
use crate::{Error, Result};

/// `n` validation rows of a prepared data folder, rows `floor((2i + 1) N / 2n)` of its N (the
/// references of [`super::protocol::read_references`] are rows `floor(i N / n)`), decoded as
/// `idlm sample` decodes samples. With `shuffle_seed`, each text's whitespace-separated words are
/// put in a seeded random order and the generator ids are dropped (they no longer match).
pub fn heldout_records(
    data_dir: &Path,
    n: usize,
    shuffle_seed: Option<u64>,
) -> Result<Vec<SampleRecord>> {
    let data = DataDir::open(data_dir)?;
    let rows = data.valid.n_rows();
    if n == 0 || 2 * n > rows {
        return Err(Error::InvalidArgument(format!(
            "{}: {rows} validation rows; held-out text takes 1 to {} of them (half, so MAUVE's \
             references stay disjoint), not {n}",
            data_dir.display(),
            rows / 2
        )));
    }
    let mut rng = shuffle_seed.map(ChaCha8Rng::seed_from_u64);
    (0..n)
        .map(|i| {
            let ids = data.valid.row((2 * i + 1) * rows / (2 * n))?;
            let text = data.tokenizer.decode(&ids)?;
            Ok(match rng.as_mut() {
                None => SampleRecord::new(i, text, Some(ids)),
                Some(r) => {
                    let mut words: Vec<&str> = text.split_whitespace().collect();
                    words.shuffle(r);
                    SampleRecord::new(i, words.join(" "), None)
                }
            })
        })
        .collect()
}
