//! A prepared data folder: `data.json`, `tokenizer.json`, `train.bin`, `valid.bin`, opened together
//! and checked to agree with each other.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::packed::PackedTokens;
use super::tokenizer::TextTokenizer;
use crate::error::{Error, Result};

/// Value of `format` in data.json; bump when its meaning changes.
pub const DATA_FORMAT: &str = "idlm-data-v1";
/// File names inside a data folder.
pub const DATA_JSON: &str = "data.json";
/// The tokenizer inside a data folder.
pub const TOKENIZER_JSON: &str = "tokenizer.json";
/// Packed training rows.
pub const TRAIN_BIN: &str = "train.bin";
/// Packed validation rows.
pub const VALID_BIN: &str = "valid.bin";

/// The tokenizer as recorded in data.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// How it was made: "trained byte-level BPE" or "loaded from <path>".
    pub origin: String,
    /// sha256 (hex) of the canonical tokenizer.json bytes.
    pub sha256: String,
    /// Tokens of the tokenizer, `<|endoftext|>` included.
    pub vocab_size: usize,
    /// Model vocabulary: tokenizer vocabulary + the mask.
    pub model_vocab_size: usize,
    /// Mask id (= vocab_size).
    pub mask_id: u32,
    /// BOS id (`<|endoftext|>`).
    pub bos_id: u32,
    /// EOS id (`<|endoftext|>`).
    pub eos_id: u32,
}

/// How documents were assigned to train / validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    /// The rule in words.
    pub rule: String,
    /// Requested validation fraction.
    pub valid_fraction: f64,
}

/// Counts for one split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitStats {
    /// Documents in the split (for a one-document corpus, the document is counted in both).
    pub documents: usize,
    /// Tokens of the concatenated stream (documents + one EOS each).
    pub stream_tokens: u64,
    /// Rows written.
    pub rows: u64,
    /// Tokens stored in rows (rows x seq_len, BOS/EOS included).
    pub row_tokens: u64,
    /// Tokens of the final partial chunk, dropped.
    pub dropped_tokens: u64,
}

/// Wall-clock seconds of each stage of `prepare`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Reading the documents.
    pub read: f64,
    /// Training or loading the tokenizer.
    pub tokenizer: f64,
    /// Encoding every document.
    pub encode: f64,
    /// Writing the packed files.
    pub write: f64,
    /// Whole run.
    pub total: f64,
}

/// Contents of data.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    /// Always [`DATA_FORMAT`].
    pub format: String,
    /// Corpus as given (a name such as "english", or a path).
    pub source: String,
    /// The folders / files read.
    pub source_paths: Vec<String>,
    /// The tokenizer.
    pub tokenizer: TokenizerInfo,
    /// Row length L: `[BOS] chunk(L-2) [EOS]`.
    pub seq_len: usize,
    /// Train / validation split rule.
    pub split: SplitInfo,
    /// Training split counts.
    pub train: SplitStats,
    /// Validation split counts.
    pub valid: SplitStats,
    /// Names of the held-out documents (e.g. to pick reference texts for MAUVE).
    pub valid_documents: Vec<String>,
    /// Unigram entropy (nats/token) of the training rows: the NELBO of a model that ignores context.
    pub unigram_entropy_nats: f64,
    /// How rows are laid out (absent in folders written before pairs existed: a stream).
    #[serde(default)]
    pub rows: super::pairs::RowLayout,
    /// Stage timings.
    pub seconds: Timings,
    /// idlm version that wrote it.
    pub idlm_version: String,
}

/// A prepared data folder, opened and cross-checked.
#[derive(Debug)]
pub struct DataDir {
    /// The folder.
    pub dir: PathBuf,
    /// data.json.
    pub info: DataInfo,
    /// tokenizer.json.
    pub tokenizer: TextTokenizer,
    /// train.bin.
    pub train: PackedTokens,
    /// valid.bin.
    pub valid: PackedTokens,
}

impl DataDir {
    /// Open `dir`, load everything and check that data.json, the tokenizer and both token files agree.
    pub fn open(dir: &Path) -> Result<Self> {
        let info_path = dir.join(DATA_JSON);
        let text =
            std::fs::read_to_string(&info_path).map_err(|e| Error::io("read", &info_path, e))?;
        let info: DataInfo = serde_json::from_str(&text)
            .map_err(|e| Error::Data(format!("{}: invalid data.json: {e}", info_path.display())))?;
        if info.format != DATA_FORMAT {
            return Err(Error::Data(format!(
                "{}: format {:?}, this idlm reads {DATA_FORMAT:?}",
                info_path.display(),
                info.format
            )));
        }
        let tok_path = dir.join(TOKENIZER_JSON);
        let tokenizer = TextTokenizer::load(&tok_path)?;
        let t = &info.tokenizer;
        let mismatch = |what: &str, file: &Path, a: String, b: String| {
            Error::Data(format!(
                "{}: {what} is {a}, but {} says {b}",
                file.display(),
                info_path.display()
            ))
        };
        if tokenizer.sha256_hex() != t.sha256 {
            return Err(mismatch(
                "tokenizer sha256",
                &tok_path,
                tokenizer.sha256_hex(),
                t.sha256.clone(),
            ));
        }
        let tok_ids = (
            tokenizer.vocab_size(),
            tokenizer.mask_id(),
            tokenizer.bos_id(),
            tokenizer.eos_id(),
        );
        if tok_ids != (t.vocab_size, t.mask_id, t.bos_id, t.eos_id)
            || t.model_vocab_size != t.vocab_size + 1
        {
            return Err(mismatch(
                "(vocab, mask, bos, eos)",
                &tok_path,
                format!("{tok_ids:?}"),
                format!("{:?}", (t.vocab_size, t.mask_id, t.bos_id, t.eos_id)),
            ));
        }
        let open = |name: &str, stats: &SplitStats| -> Result<PackedTokens> {
            let p = dir.join(name);
            let f = PackedTokens::open(&p)?;
            let h = f.header();
            let got = (
                h.tokenizer_sha256_hex(),
                h.vocab_size as usize,
                h.mask_id,
                h.bos_id,
                h.eos_id,
                h.row_len as usize,
                h.n_rows,
            );
            let want = (
                t.sha256.clone(),
                t.model_vocab_size,
                t.mask_id,
                t.bos_id,
                t.eos_id,
                info.seq_len,
                stats.rows,
            );
            if got != want {
                return Err(mismatch(
                    "(tokenizer sha256, model vocab, mask, bos, eos, row length, rows)",
                    &p,
                    format!("{got:?}"),
                    format!("{want:?}"),
                ));
            }
            // Cheap at our sizes, and an out-of-range id would otherwise surface as an index error mid-training.
            f.verify_tokens()?;
            Ok(f)
        };
        let train = open(TRAIN_BIN, &info.train)?;
        let valid = open(VALID_BIN, &info.valid)?;
        Ok(DataDir {
            dir: dir.to_path_buf(),
            info,
            tokenizer,
            train,
            valid,
        })
    }

    /// Row length L.
    pub fn seq_len(&self) -> usize {
        self.info.seq_len
    }

    /// Model vocabulary size (tokenizer + mask).
    pub fn model_vocab_size(&self) -> usize {
        self.tokenizer.model_vocab_size()
    }
}
