//! Prompt / answer rows for conditional training (`prepare --format pairs`): each JSONL line
//! `{"prompt": P, "answer": A}` becomes one row `[BOS] P [SEP] A [EOS] [PAD]...`, with SEP and PAD
//! the tokenizer's end-of-text id (our tokenizers have no other special token; PAD is trained on,
//! as in the reference). The prompt part `[BOS] P [SEP]` is clamped: never noised, not in the loss.
//! Its length is read back from the row: everything up to and including the first SEP after BOS
//! (prepare refuses prompts whose text encodes to a SEP, so the rule is exact).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::corpus::Document;
use crate::error::{Error, Result};

/// How the rows of a data folder (or of a checkpoint's training data) are laid out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RowLayout {
    /// `[BOS] chunk [EOS]` cut from the concatenated documents (unconditional).
    #[default]
    Stream,
    /// `[BOS] prompt [SEP] answer [EOS] [PAD]...`, one pair per row.
    Pairs {
        /// The separator (and padding) id.
        sep_id: u32,
    },
    /// The reference code's TinyGSM rows (S-FLM / IDLM `tiny_gsm`, docs/research/tinygsm-facts.md
    /// §1.3): `[BOS] prompt SEP.. answer [EOS] [PAD]...`, the separator the encoded
    /// `data.separator` text (a token sequence of its own), the answer ended by EOS.
    Separated {
        /// The separator's ids.
        sep: Vec<u32>,
        /// The id that ends an answer.
        end_id: u32,
    },
}

impl RowLayout {
    /// The ids that end a prompt (empty for a stream layout).
    pub fn prompt_sep(&self) -> &[u32] {
        match self {
            Self::Stream => &[],
            Self::Pairs { sep_id } => std::slice::from_ref(sep_id),
            Self::Separated { sep, .. } => sep,
        }
    }

    /// The id that ends an answer (None for a stream layout).
    pub fn answer_end(&self) -> Option<u32> {
        match self {
            Self::Stream => None,
            Self::Pairs { sep_id } => Some(*sep_id),
            Self::Separated { end_id, .. } => Some(*end_id),
        }
    }

    /// The prompt text as the layout's rows hold it: the reference TinyGSM code strips it.
    pub fn prompt_text<'a>(&self, prompt: &'a str) -> &'a str {
        match self {
            Self::Separated { .. } => prompt.trim(),
            _ => prompt,
        }
    }

    /// Whether rows are prompt / answer pairs.
    pub fn is_pairs(&self) -> bool {
        !matches!(self, Self::Stream)
    }
}

/// Clamped positions at the start of a pairs row: up to and including the first `sep` sequence
/// after position 0 (0 when there is none or `sep` is empty: nothing clamped).
pub fn prompt_len(row: &[u32], sep: &[u32]) -> usize {
    if sep.is_empty() || row.len() < sep.len() + 1 {
        return 0;
    }
    row[1..]
        .windows(sep.len())
        .position(|w| w == sep)
        .map_or(0, |i| i + 1 + sep.len())
}

/// The prompt lengths of `b` rows of length `l` (all 0 for a stream layout).
pub fn prompt_lens(rows: &[u32], l: usize, layout: &RowLayout) -> Vec<usize> {
    let sep = layout.prompt_sep();
    if sep.is_empty() {
        return vec![0; rows.len() / l.max(1)];
    }
    rows.chunks(l).map(|r| prompt_len(r, sep)).collect()
}

/// Positions of `b` rows of length `l` that are not clamped: the ones a loss averages over.
pub fn unclamped_count(b: usize, l: usize, lens: &[usize]) -> usize {
    b * l - lens.iter().map(|&p| p.min(l)).sum::<usize>()
}

/// 0.0 at each row's clamped prompt positions, 1.0 elsewhere (the positions a loss counts):
/// `lens.len() * l` values, row-major.
pub fn answer_mask(lens: &[usize], l: usize) -> Vec<f32> {
    let mut m = vec![1f32; lens.len() * l];
    for (r, &p) in lens.iter().enumerate() {
        m[r * l..r * l + p.min(l)].fill(0.0);
    }
    m
}

/// Put the clean tokens of each row's prompt back into `xt` (rows of length `l`).
pub fn clamp_prompts(x0: &[u32], xt: &mut [u32], l: usize, lens: &[usize]) {
    for (r, &p) in lens.iter().enumerate() {
        let row = r * l..r * l + p.min(l);
        xt[row.clone()].copy_from_slice(&x0[row]);
    }
}

/// One prompt / answer pair as read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Pair {
    /// The conditioning text.
    pub prompt: String,
    /// The text to generate.
    pub answer: String,
}

/// Read every `{"prompt", "answer"}` line of the JSONL files (other keys are ignored) as
/// documents named `file:line`, whose text is the pair (for the split and the tokenizer).
pub fn read_pairs(paths: &[std::path::PathBuf]) -> Result<(Vec<Pair>, Vec<Document>)> {
    let mut pairs = Vec::new();
    let mut docs = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let p: Pair = serde_json::from_str(line).map_err(|e| {
                Error::Data(format!(
                    "{} line {}: not a {{\"prompt\": ..., \"answer\": ...}} pair: {e}",
                    path.display(),
                    i + 1
                ))
            })?;
            docs.push(Document {
                name: format!("{}:{}", file_name(path), i + 1),
                text: format!("{}\n{}", p.prompt, p.answer),
            });
            pairs.push(p);
        }
    }
    if pairs.is_empty() {
        return Err(Error::Data(format!(
            "no prompt/answer pairs in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok((pairs, docs))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
}

/// The row of one encoded pair, or None when it does not fit `l` tokens.
pub fn pair_row(prompt: &[u32], answer: &[u32], bos: u32, sep: u32, l: usize) -> Option<Vec<u32>> {
    let need = prompt.len() + answer.len() + 3;
    if need > l {
        return None;
    }
    let mut row = Vec::with_capacity(l);
    row.push(bos);
    row.extend_from_slice(prompt);
    row.push(sep);
    row.extend_from_slice(answer);
    row.resize(l, sep);
    Some(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_prompt_lengths_round_trip() {
        let (bos, sep) = (0, 0);
        let row = pair_row(&[5, 6, 7], &[8, 9], bos, sep, 10).unwrap();
        assert_eq!(row, vec![0, 5, 6, 7, 0, 8, 9, 0, 0, 0]);
        assert_eq!(prompt_len(&row, &[sep]), 5);
        assert!(pair_row(&[5, 6, 7], &[8, 9, 1, 2, 3], bos, sep, 10).is_none());
        assert!(pair_row(&[5, 6, 7], &[8, 9, 1, 2], bos, sep, 10).is_some());
        assert_eq!(prompt_len(&[0, 3, 4], &[0]), 0);
        let rows: Vec<u32> = [row.clone(), row].concat();
        assert_eq!(
            prompt_lens(&rows, 10, &RowLayout::Pairs { sep_id: 0 }),
            vec![5, 5]
        );
        assert_eq!(prompt_lens(&rows, 10, &RowLayout::Stream), vec![0, 0]);
        let x0 = rows.clone();
        let mut xt = vec![99u32; 20];
        clamp_prompts(&x0, &mut xt, 10, &[5, 2]);
        assert_eq!(&xt[..6], &[0, 5, 6, 7, 0, 99]);
        assert_eq!(&xt[10..13], &[0, 5, 99]);
        assert_eq!(unclamped_count(2, 4, &[1, 9]), 3);
        assert_eq!(
            answer_mask(&[1, 9], 4),
            vec![0., 1., 1., 1., 0., 0., 0., 0.]
        );
        // A separator of several ids: the first whole occurrence after BOS ends the prompt.
        let row = [7, 3, 4, 3, 5, 4, 9, 9];
        assert_eq!(prompt_len(&row, &[3, 5]), 5);
        assert_eq!(prompt_len(&row, &[7, 3]), 0);
        assert_eq!(prompt_len(&row, &[]), 0);
        assert_eq!(prompt_len(&[7], &[3, 5]), 0);
        let sep = RowLayout::Separated {
            sep: vec![3, 5],
            end_id: 9,
        };
        assert_eq!(prompt_lens(&row, 8, &sep), vec![5]);
        assert_eq!((sep.prompt_sep(), sep.answer_end()), (&[3, 5][..], Some(9)));
    }
}
