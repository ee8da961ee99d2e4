//! `idlm prepare`: documents -> tokenizer -> packed train/validation rows `[BOS] chunk [EOS]`
//! (docs/algorithms.md §2.5), written atomically into a data folder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::corpus::{Document, read_sources};
use super::datadir::{
    DATA_FORMAT, DATA_JSON, DataInfo, SplitInfo, SplitStats, TOKENIZER_JSON, TRAIN_BIN, Timings,
    TokenizerInfo, VALID_BIN,
};
use super::packed::PackedHeader;
use super::packed_writer::PackedWriter;
use super::pairs::{RowLayout, read_pairs};
use super::prepare_pairs::prepare_pairs;
use super::split::split_documents;
use super::tokenizer::TextTokenizer;
use crate::atomic::{Staging, write_file};
use crate::error::{Error, Result};

/// Default share of documents held out for validation.
pub const DEFAULT_VALID_FRACTION: f64 = 0.02;

/// Where the tokenizer comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizerChoice {
    /// Train a byte-level BPE of this many tokens (`<|endoftext|>` included) on the training documents.
    Train {
        /// Tokenizer vocabulary size; the model vocabulary is one more (the mask).
        vocab_size: usize,
    },
    /// Load an HF tokenizer.json (e.g. GPT-2's).
    Load(PathBuf),
}

/// Everything `prepare` needs.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// The corpus as the user named it (recorded in data.json).
    pub source: String,
    /// Folders / files to read (from `resolve_corpus`).
    pub sources: Vec<PathBuf>,
    /// Tokenizer to train or load.
    pub tokenizer: TokenizerChoice,
    /// Row length L (>= 3): BOS + L-2 tokens + EOS.
    pub seq_len: usize,
    /// Share of documents for validation (0 < f < 1).
    pub valid_fraction: f64,
    /// Output folder.
    pub out_dir: PathBuf,
    /// Replace an existing non-empty output folder.
    pub overwrite: bool,
    /// The sources are JSONL prompt/answer pairs: one row each (`data::pairs`), not a stream.
    pub pairs: bool,
}

impl PrepareOptions {
    /// Options with the default validation fraction and no overwrite.
    pub fn new(
        source: &str,
        sources: Vec<PathBuf>,
        tokenizer: TokenizerChoice,
        seq_len: usize,
        out_dir: &Path,
    ) -> Self {
        PrepareOptions {
            source: source.to_string(),
            sources,
            tokenizer,
            seq_len,
            valid_fraction: DEFAULT_VALID_FRACTION,
            out_dir: out_dir.to_path_buf(),
            overwrite: false,
            pairs: false,
        }
    }
}

/// What `prepare` wrote.
#[derive(Debug, Clone)]
pub struct PrepareReport {
    /// The data folder.
    pub out_dir: PathBuf,
    /// The data.json written there.
    pub info: DataInfo,
}

impl std::fmt::Display for PrepareReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.info;
        let t = &i.tokenizer;
        writeln!(f, "data folder      {}", self.out_dir.display())?;
        writeln!(
            f,
            "tokenizer        {} (vocab {}, model vocab {} with mask {}, bos = eos = {}), sha256 {}",
            t.origin,
            t.vocab_size,
            t.model_vocab_size,
            t.mask_id,
            t.bos_id,
            t.sha256.get(..16).unwrap_or(&t.sha256)
        )?;
        for (name, s) in [("train", &i.train), ("valid", &i.valid)] {
            writeln!(
                f,
                "{name:<16} {} documents, {} tokens -> {} rows of {} ({} tokens of the final partial row dropped)",
                s.documents, s.stream_tokens, s.rows, i.seq_len, s.dropped_tokens
            )?;
        }
        writeln!(
            f,
            "unigram entropy  {:.4} nats/token (training rows)",
            i.unigram_entropy_nats
        )?;
        let s = &i.seconds;
        write!(
            f,
            "time             {:.1} s (read {:.1}, tokenizer {:.1}, encode {:.1}, write {:.1})",
            s.total, s.read, s.tokenizer, s.encode, s.write
        )
    }
}

/// Run the whole preparation; see the module doc.
pub fn prepare(opts: &PrepareOptions) -> Result<PrepareReport> {
    let t0 = Instant::now();
    check_options(opts)?;
    let (docs, pairs) = if opts.pairs {
        let (p, d) = read_pairs(&opts.sources)?;
        (d, Some(p))
    } else {
        (read_sources(&opts.sources)?, None)
    };
    let t_read = t0.elapsed().as_secs_f64();

    let is_valid = split_documents(&docs, opts.valid_fraction);
    let t1 = Instant::now();
    let (tokenizer, origin) = match &opts.tokenizer {
        TokenizerChoice::Train { vocab_size } => {
            // Train on training documents only, so validation text never shapes the tokenizer
            // (a one-document corpus has no other choice).
            let train_docs: Vec<Document> = docs
                .iter()
                .zip(&is_valid)
                .filter(|(_, v)| !**v || docs.len() == 1)
                .map(|(d, _)| d.clone())
                .collect();
            let t = TextTokenizer::train_bpe(&train_docs, *vocab_size)?;
            let origin = format!("trained byte-level BPE (requested vocab {vocab_size})");
            (t, origin)
        }
        // `gpt2` names GPT-2's BPE (the released OpenWebText models' tokenizer) unless a file has
        // that name.
        TokenizerChoice::Load(p) if p.as_os_str() == "gpt2" && !p.exists() => (
            super::gpt2_bpe::gpt2_tokenizer(&super::cache_dir())?,
            "GPT-2's BPE (gpt2_bpe)".to_string(),
        ),
        TokenizerChoice::Load(p) => (
            TextTokenizer::load(p)?,
            format!("loaded from {}", p.display()),
        ),
    };
    let t_tok = t1.elapsed().as_secs_f64();

    if let Some(pairs) = &pairs {
        return prepare_pairs(
            opts,
            pairs,
            &docs,
            &is_valid,
            tokenizer,
            origin,
            t0,
            [t_read, t_tok],
        );
    }
    let t2 = Instant::now();
    let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
    let encoded = tokenizer.encode_batch(&texts)?;
    let eos = tokenizer.eos_id();
    let mut train_stream = Vec::new();
    let mut valid_stream = Vec::new();
    for (ids, &v) in encoded.iter().zip(&is_valid) {
        let s = if v {
            &mut valid_stream
        } else {
            &mut train_stream
        };
        s.extend_from_slice(ids);
        s.push(eos);
    }
    drop(encoded);
    let n_valid_docs = is_valid.iter().filter(|&&v| v).count();
    let (rule, train_docs, valid_docs) = if docs.len() == 1 {
        // One document (e.g. Tiny Shakespeare): hold out its tail, at least one row's worth.
        let n = train_stream.len();
        let k = ((n as f64 * opts.valid_fraction).ceil() as usize)
            .max(opts.seq_len - 2)
            .min(n);
        valid_stream = train_stream.split_off(n - k);
        ("one document: the last valid_fraction of its tokens (at least seq_len-2) are validation".to_string(), 1, 1)
    } else {
        (
            "by document: sha256(name)[0..8] as big-endian u64 mod 1e6 < valid_fraction*1e6; \
             at least one document in each split"
                .to_string(),
            docs.len() - n_valid_docs,
            n_valid_docs,
        )
    };
    let t_enc = t2.elapsed().as_secs_f64();

    let chunk = opts.seq_len - 2;
    for (name, s) in [("training", &train_stream), ("validation", &valid_stream)] {
        if s.len() < chunk {
            return Err(Error::Data(format!(
                "the {name} split has {} tokens, fewer than one row needs ({chunk} = seq_len - 2): \
                 use a smaller seq_len, a larger valid fraction or a bigger corpus",
                s.len()
            )));
        }
    }

    let t3 = Instant::now();
    let (staged, final_dir) = staging_dir(&opts.out_dir)?;
    // Removed on any early return; after publishing it is already gone.
    let tmp_dir = staged.path().to_path_buf();
    tokenizer.save(&tmp_dir.join(TOKENIZER_JSON))?;
    let header = PackedHeader::new(
        tokenizer.model_vocab_size() as u32,
        tokenizer.mask_id(),
        tokenizer.bos_id(),
        tokenizer.eos_id(),
        opts.seq_len as u32,
        tokenizer.sha256(),
    );
    let mut counts = vec![0u64; tokenizer.model_vocab_size()];
    let mut train = write_rows(
        &tmp_dir.join(TRAIN_BIN),
        &header,
        &train_stream,
        Some(&mut counts),
    )?;
    let mut valid = write_rows(&tmp_dir.join(VALID_BIN), &header, &valid_stream, None)?;
    train.documents = train_docs;
    valid.documents = valid_docs;
    let t_write = t3.elapsed().as_secs_f64();

    let valid_documents = docs
        .iter()
        .zip(&is_valid)
        .filter(|(_, v)| **v || docs.len() == 1)
        .map(|(d, _)| d.name.clone())
        .collect();
    let seconds = Timings {
        read: t_read,
        tokenizer: t_tok,
        encode: t_enc,
        write: t_write,
        total: t0.elapsed().as_secs_f64(),
    };
    let split = SplitInfo {
        rule,
        valid_fraction: opts.valid_fraction,
    };
    let stats = [train, valid];
    publish(
        opts,
        (staged, final_dir),
        &tokenizer,
        origin,
        split,
        stats,
        valid_documents,
        &counts,
        RowLayout::Stream,
        seconds,
    )
}

/// Write data.json into the staged folder and move it into place.
#[allow(clippy::too_many_arguments)]
pub(super) fn publish(
    opts: &PrepareOptions,
    (staged, final_dir): (Staging, PathBuf),
    tokenizer: &TextTokenizer,
    origin: String,
    split: SplitInfo,
    [train, valid]: [SplitStats; 2],
    valid_documents: Vec<String>,
    counts: &[u64],
    rows: RowLayout,
    seconds: Timings,
) -> Result<PrepareReport> {
    let tmp_dir = staged.path().to_path_buf();
    let info = DataInfo {
        format: DATA_FORMAT.to_string(),
        source: opts.source.clone(),
        source_paths: opts
            .sources
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        tokenizer: TokenizerInfo {
            origin,
            sha256: tokenizer.sha256_hex(),
            vocab_size: tokenizer.vocab_size(),
            model_vocab_size: tokenizer.model_vocab_size(),
            mask_id: tokenizer.mask_id(),
            bos_id: tokenizer.bos_id(),
            eos_id: tokenizer.eos_id(),
        },
        seq_len: opts.seq_len,
        split,
        train,
        valid,
        valid_documents,
        unigram_entropy_nats: unigram_entropy(counts),
        rows,
        seconds,
        idlm_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let json = serde_json::to_string_pretty(&info)
        .map_err(|e| Error::Data(format!("serialising data.json: {e}")))?;
    write_file(&tmp_dir.join(DATA_JSON), json.as_bytes())?;
    if final_dir.exists() && is_nonempty_dir(&final_dir) && !opts.overwrite {
        return Err(Error::Data(format!(
            "{} appeared while preparing; not replaced",
            final_dir.display()
        )));
    }
    staged.publish(&final_dir)?;
    Ok(PrepareReport {
        out_dir: final_dir,
        info,
    })
}

/// Validate the options before any work is done.
fn check_options(opts: &PrepareOptions) -> Result<()> {
    if opts.seq_len < 3 || opts.seq_len > u32::MAX as usize {
        return Err(Error::InvalidArgument(format!(
            "seq_len {} must be at least 3 (BOS + one token + EOS)",
            opts.seq_len
        )));
    }
    if !(opts.valid_fraction > 0.0 && opts.valid_fraction < 1.0) {
        return Err(Error::InvalidArgument(format!(
            "valid fraction {} must be strictly between 0 and 1",
            opts.valid_fraction
        )));
    }
    if opts.sources.is_empty() {
        return Err(Error::InvalidArgument("no corpus sources given".into()));
    }
    if !opts.overwrite && is_nonempty_dir(&opts.out_dir) {
        return Err(Error::Data(format!(
            "{} already exists and is not empty (choose another output folder or overwrite it)",
            opts.out_dir.display()
        )));
    }
    Ok(())
}

/// True for an existing folder with at least one entry (or anything that is not a folder).
fn is_nonempty_dir(p: &Path) -> bool {
    match std::fs::read_dir(p) {
        Ok(mut rd) => rd.next().is_some(),
        Err(_) => p.exists(),
    }
}

/// Cut `stream` into `[BOS] chunk [EOS]` rows and write them; the final partial chunk is dropped.
/// Adds the written tokens to `counts` when given.
fn write_rows(
    path: &Path,
    header: &PackedHeader,
    stream: &[u32],
    mut counts: Option<&mut Vec<u64>>,
) -> Result<SplitStats> {
    let l = header.row_len as usize;
    let mut w = PackedWriter::create(path, header.clone())?;
    let mut row = vec![0u32; l];
    row[0] = header.bos_id;
    row[l - 1] = header.eos_id;
    let chunks = stream.chunks_exact(l - 2);
    let dropped = chunks.remainder().len() as u64;
    for c in chunks {
        row[1..l - 1].copy_from_slice(c);
        w.push_row(&row)?;
        if let Some(counts) = counts.as_deref_mut() {
            for &t in &row {
                counts[t as usize] += 1;
            }
        }
    }
    let h = w.finish()?;
    Ok(SplitStats {
        documents: 0,
        stream_tokens: stream.len() as u64,
        rows: h.n_rows,
        row_tokens: h.n_rows * l as u64,
        dropped_tokens: dropped,
    })
}

/// Entropy in nats of the distribution given by `counts`.
pub fn unigram_entropy(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let n = total as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum()
}

/// A fresh staging folder beside `out_dir` (same file system, so the final rename is atomic),
/// and the final path.
pub(super) fn staging_dir(out_dir: &Path) -> Result<(Staging, PathBuf)> {
    let name = out_dir
        .file_name()
        .ok_or_else(|| {
            Error::InvalidArgument(format!("output folder {} has no name", out_dir.display()))
        })?
        .to_string_lossy()
        .into_owned();
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((Staging::new(&parent, &name)?, parent.join(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::datadir::DataDir;

    /// A word-level tokenizer whose ids are predictable: `<|endoftext|>` = 0, then the words.
    pub(crate) fn word_tokenizer(dir: &Path, words: &[&str]) -> PathBuf {
        let mut vocab = serde_json::Map::new();
        vocab.insert("<|endoftext|>".into(), 0.into());
        for (i, w) in words.iter().enumerate() {
            vocab.insert((*w).into(), (i + 1).into());
        }
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<|endoftext|>"}
        });
        let p = dir.join("words.json");
        std::fs::write(&p, json.to_string()).unwrap();
        p
    }

    #[test]
    fn entropy_of_known_distributions() {
        assert!((unigram_entropy(&[5, 5, 0]) - 2f64.ln()).abs() < 1e-12);
        assert!((unigram_entropy(&[1, 1, 1, 1]) - 4f64.ln()).abs() < 1e-12);
        assert_eq!(unigram_entropy(&[7, 0]), 0.0);
        assert_eq!(unigram_entropy(&[]), 0.0);
    }

    #[test]
    fn rows_are_bos_chunk_eos_over_the_concatenated_documents() {
        let dir = tempfile::tempdir().unwrap();
        let corp = dir.path().join("c");
        std::fs::create_dir(&corp).unwrap();
        let words = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let tok = word_tokenizer(dir.path(), &words);
        // Enough documents that both splits get some; ids are word index + 1.
        let texts: Vec<String> = (0..12).map(|i| words[..(i % 7) + 2].join(" ")).collect();
        for (i, t) in texts.iter().enumerate() {
            std::fs::write(corp.join(format!("{i:02}.txt")), t).unwrap();
        }
        let out = dir.path().join("out");
        let mut opts = PrepareOptions::new(
            "test",
            vec![corp.clone()],
            TokenizerChoice::Load(tok),
            6,
            &out,
        );
        opts.valid_fraction = 0.25;
        let rep = prepare(&opts).unwrap();

        // Expected streams, computed independently of prepare's code path.
        let docs = crate::data::corpus::read_documents(&corp).unwrap();
        let is_valid = split_documents(&docs, 0.25);
        let (mut tr, mut va) = (Vec::new(), Vec::new());
        for (d, v) in docs.iter().zip(&is_valid) {
            let s = if *v { &mut va } else { &mut tr };
            s.extend(
                d.text
                    .split(' ')
                    .map(|w| words.iter().position(|x| x == &w).unwrap() as u32 + 1),
            );
            s.push(0);
        }
        let dd = DataDir::open(&out).unwrap();
        for (stream, packed, stats) in [
            (&tr, &dd.train, &rep.info.train),
            (&va, &dd.valid, &rep.info.valid),
        ] {
            assert_eq!(packed.n_rows(), stream.len() / 4);
            assert_eq!(stats.rows as usize, stream.len() / 4);
            assert_eq!(stats.dropped_tokens as usize, stream.len() % 4);
            assert_eq!(stats.stream_tokens as usize, stream.len());
            for r in 0..packed.n_rows() {
                let row = packed.row(r).unwrap();
                let mut want = vec![0];
                want.extend_from_slice(&stream[4 * r..4 * r + 4]);
                want.push(0);
                assert_eq!(row, want, "row {r}");
            }
        }
        assert_eq!(rep.info.train.documents + rep.info.valid.documents, 12);
        let want_names: Vec<String> = docs
            .iter()
            .zip(&is_valid)
            .filter(|(_, v)| **v)
            .map(|(d, _)| d.name.clone())
            .collect();
        assert_eq!(rep.info.valid_documents, want_names);
        assert!(rep.info.valid.documents >= 1);
        // data.json round trip (serde_json may lose the last bit of a float, hence the tolerance).
        let mut info = dd.info.clone();
        assert!((info.unigram_entropy_nats - rep.info.unigram_entropy_nats).abs() < 1e-12);
        info.unigram_entropy_nats = rep.info.unigram_entropy_nats;
        assert_eq!(info, rep.info);
        let want_h = unigram_entropy(&dd.train.token_counts().unwrap());
        assert!((rep.info.unigram_entropy_nats - want_h).abs() < 1e-12);
        assert!(want_h > 1.0);
        assert_eq!(dd.tokenizer.mask_id(), 9);
        assert_eq!(dd.train.header().vocab_size, 10);
        assert_eq!(dd.train.header().bytes_per_token, 2);

        // Refuses to overwrite unless asked, then replaces atomically.
        let e = prepare(&opts).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        opts.overwrite = true;
        prepare(&opts).unwrap();
        let leftovers: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.') || n.contains(".old-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn one_document_is_split_by_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let tok = word_tokenizer(dir.path(), &["a", "b"]);
        let f = dir.path().join("one.txt");
        std::fs::write(&f, vec!["a b"; 50].join(" ")).unwrap();
        let out = dir.path().join("out");
        let opts = PrepareOptions::new(
            "one",
            vec![f.clone()],
            TokenizerChoice::Load(tok.clone()),
            10,
            &out,
        );
        let rep = prepare(&opts).unwrap();
        // 100 words + EOS = 101 tokens; valid = max(ceil(2.02), 8) = 8 -> 1 row; train 93 -> 11 rows.
        assert_eq!(rep.info.valid.stream_tokens, 8);
        assert_eq!(rep.info.valid.rows, 1);
        assert_eq!(rep.info.train.stream_tokens, 93);
        assert_eq!(rep.info.train.rows, 11);
        let dd = DataDir::open(&out).unwrap();
        assert_eq!(dd.valid.row(0).unwrap(), vec![0, 2, 1, 2, 1, 2, 1, 2, 0, 0]);

        // Too small for the row length: an error with advice, and no output folder.
        let out2 = dir.path().join("out2");
        let opts = PrepareOptions::new("one", vec![f], TokenizerChoice::Load(tok), 100, &out2);
        let e = prepare(&opts).unwrap_err().to_string();
        assert!(
            e.contains("fewer than one row") && e.contains("smaller seq_len"),
            "{e}"
        );
        assert!(!out2.exists());
    }

    #[test]
    fn bad_options_and_mismatched_folders_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tok = word_tokenizer(dir.path(), &["a"]);
        let f = dir.path().join("one.txt");
        std::fs::write(&f, "a a a a a a a a a a a a").unwrap();
        let out = dir.path().join("out");
        let mut opts = PrepareOptions::new("x", vec![f], TokenizerChoice::Load(tok), 2, &out);
        assert!(
            prepare(&opts)
                .unwrap_err()
                .to_string()
                .contains("seq_len 2")
        );
        opts.seq_len = 4;
        opts.valid_fraction = 1.0;
        assert!(
            prepare(&opts)
                .unwrap_err()
                .to_string()
                .contains("valid fraction")
        );
        opts.valid_fraction = 0.02;
        prepare(&opts).unwrap();
        // A tokenizer.json from elsewhere no longer matches the recorded hash.
        let other = word_tokenizer(&out, &["a", "z"]);
        std::fs::rename(other, out.join("tokenizer.json")).unwrap();
        let e = DataDir::open(&out).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json") && e.contains("sha256"), "{e}");
    }
}
