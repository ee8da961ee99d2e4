//! `idlm prepare --format pairs`: one `[BOS] prompt [SEP] answer [EOS] [PAD]...` row per pair
//! (`data::pairs`), split by pair, written atomically like the stream layout.

use std::time::Instant;

use super::corpus::Document;
use super::datadir::{SplitInfo, SplitStats, TOKENIZER_JSON, TRAIN_BIN, Timings, VALID_BIN};
use super::packed::PackedHeader;
use super::packed_writer::PackedWriter;
use super::pairs::{Pair, RowLayout, pair_row};
use super::prepare::{PrepareOptions, PrepareReport, publish, staging_dir};
use super::tokenizer::TextTokenizer;
use crate::error::{Error, Result};

/// Encode, split and write the pairs; `times`: seconds spent reading and on the tokenizer.
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare_pairs(
    opts: &PrepareOptions,
    pairs: &[Pair],
    docs: &[Document],
    is_valid: &[bool],
    tokenizer: TextTokenizer,
    origin: String,
    t0: Instant,
    [t_read, t_tok]: [f64; 2],
) -> Result<PrepareReport> {
    let t2 = Instant::now();
    let (bos, sep, l) = (tokenizer.bos_id(), tokenizer.eos_id(), opts.seq_len);
    let prompts: Vec<&str> = pairs.iter().map(|p| p.prompt.as_str()).collect();
    let answers: Vec<&str> = pairs.iter().map(|p| p.answer.as_str()).collect();
    let prompts = tokenizer.encode_batch(&prompts)?;
    let answers = tokenizer.encode_batch(&answers)?;
    let mut rows: [Vec<Vec<u32>>; 2] = [Vec::new(), Vec::new()];
    let mut stats = [SplitStats::default(), SplitStats::default()];
    for (i, ((p, a), &v)) in prompts.iter().zip(&answers).zip(is_valid).enumerate() {
        // The prompt's end is found as its first SEP: a SEP inside it would cut it short.
        if p.contains(&sep) {
            return Err(Error::Data(format!(
                "{}: the prompt contains the end-of-text token (id {sep}), which separates \
                 prompt and answer",
                docs[i].name
            )));
        }
        let s = v as usize;
        stats[s].documents += 1;
        stats[s].stream_tokens += (p.len() + a.len() + 3) as u64;
        match pair_row(p, a, bos, sep, l) {
            Some(row) => rows[s].push(row),
            None => stats[s].dropped_tokens += (p.len() + a.len() + 3) as u64,
        }
    }
    for (name, r) in [("training", &rows[0]), ("validation", &rows[1])] {
        if r.is_empty() {
            return Err(Error::Data(format!(
                "the {name} split has no pair that fits a row of {l} tokens \
                 ([BOS] prompt [SEP] answer [EOS]): use a longer --seq-len"
            )));
        }
    }
    let t_enc = t2.elapsed().as_secs_f64();

    let t3 = Instant::now();
    let (staged, final_dir) = staging_dir(&opts.out_dir)?;
    let tmp_dir = staged.path().to_path_buf();
    tokenizer.save(&tmp_dir.join(TOKENIZER_JSON))?;
    let header = PackedHeader::new(
        tokenizer.model_vocab_size() as u32,
        tokenizer.mask_id(),
        bos,
        sep,
        l as u32,
        tokenizer.sha256(),
    );
    let mut counts = vec![0u64; tokenizer.model_vocab_size()];
    for (s, name) in [TRAIN_BIN, VALID_BIN].into_iter().enumerate() {
        let mut w = PackedWriter::create(&tmp_dir.join(name), header.clone())?;
        for row in &rows[s] {
            w.push_row(row)?;
            if s == 0 {
                for &t in row {
                    counts[t as usize] += 1;
                }
            }
        }
        let h = w.finish()?;
        stats[s].rows = h.n_rows;
        stats[s].row_tokens = h.n_rows * l as u64;
    }
    let t_write = t3.elapsed().as_secs_f64();
    let valid_documents = docs
        .iter()
        .zip(is_valid)
        .filter(|(_, v)| **v)
        .map(|(d, _)| d.name.clone())
        .collect();
    let split = SplitInfo {
        rule: "by pair: sha256(file:line)[0..8] as big-endian u64 mod 1e6 < valid_fraction*1e6; \
               at least one pair in each split; pairs longer than a row are dropped"
            .into(),
        valid_fraction: opts.valid_fraction,
    };
    let seconds = Timings {
        read: t_read,
        tokenizer: t_tok,
        encode: t_enc,
        write: t_write,
        total: t0.elapsed().as_secs_f64(),
    };
    publish(
        opts,
        (staged, final_dir),
        &tokenizer,
        origin,
        split,
        stats,
        valid_documents,
        &counts,
        RowLayout::Pairs { sep_id: sep },
        seconds,
    )
}
