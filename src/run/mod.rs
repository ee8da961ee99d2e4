//! What every run shares (teacher, AR baseline, distillation): the one run loop (`driver`), the
//! run directory's files (metrics.jsonl, truncation on resume, the "already holds a run" check)
//! and the checks that data belongs to a checkpoint. It knows no trainer or network.

pub mod driver;
pub mod lock;

pub use driver::{Cadence, LoopEnd, RunJob, Validation, drive};
pub use lock::RunLock;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::checkpoint::DataInfo;
use crate::config::RunConfig;
use crate::data::DataDir;
use crate::process::{ForwardProcess, ProcessKind, build_process};
use crate::{Error, Result};

/// Seed of the fixed validation corruption, so successive evaluations are comparable.
pub const VALID_SEED: u64 = 0x5eed;

/// What `run_training` needs.
pub struct TrainRunOptions {
    /// Output directory (config, metrics, checkpoints).
    pub run_dir: PathBuf,
    /// Prepared data directory.
    pub data_dir: PathBuf,
    /// Resolved configuration.
    pub cfg: RunConfig,
    /// Continue from the run's latest checkpoint.
    pub resume: bool,
    /// Show a progress bar.
    pub progress: bool,
}

/// Summary of a finished run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainSummary {
    /// Steps done in total.
    pub step: u64,
    /// Last training loss.
    pub last_loss: f64,
    /// Last validation NELBO (nats/token).
    pub val_nelbo: Option<f64>,
    /// Unigram entropy of the training tokens (nats/token), for comparison.
    pub unigram_entropy: f64,
    /// Final checkpoint.
    pub checkpoint: PathBuf,
    /// Training tokens per second in this invocation.
    pub tokens_per_s: f64,
}

/// The diffusion process of a kind over a data directory's vocabulary.
pub fn make_process(kind: ProcessKind, data: &DataDir) -> Result<Box<dyn ForwardProcess>> {
    let t = &data.info.tokenizer;
    build_process(kind, t.model_vocab_size, t.mask_id, None)
}

/// DataInfo recorded in checkpoints for a data directory.
pub fn data_info(data: &DataDir) -> DataInfo {
    let t = &data.info.tokenizer;
    DataInfo {
        tokenizer_sha256: data.tokenizer.sha256_hex(),
        vocab_size: t.model_vocab_size,
        mask_id: t.mask_id,
        bos_id: t.bos_id,
        eos_id: t.eos_id,
        seq_len: data.info.seq_len,
        data_dir: data.dir.display().to_string(),
        rows: data.info.rows.clone(),
    }
}

/// Refuse data that does not belong to a checkpoint.
pub fn check_data_matches(ck: &DataInfo, data: &DataInfo, ck_dir: &Path) -> Result<()> {
    if ck.tokenizer_sha256 != data.tokenizer_sha256 {
        return Err(Error::ckpt(
            ck_dir,
            format!(
                "tokenizer mismatch: checkpoint {} vs data {} ({})",
                &ck.tokenizer_sha256[..12.min(ck.tokenizer_sha256.len())],
                &data.tokenizer_sha256[..12.min(data.tokenizer_sha256.len())],
                data.data_dir
            ),
        ));
    }
    if ck.vocab_size != data.vocab_size || ck.mask_id != data.mask_id {
        return Err(Error::ckpt(
            ck_dir,
            format!(
                "vocabulary mismatch: checkpoint {} (mask {}) vs data {} (mask {})",
                ck.vocab_size, ck.mask_id, data.vocab_size, data.mask_id
            ),
        ));
    }
    // A prompt / answer model conditions on its own separator: other pair rows would clamp the
    // wrong prompt. (Unconditional text is fine: scoring it, or fine-tuning a stream model on pairs.)
    if ck.rows.is_pairs() && data.rows.is_pairs() && ck.rows != data.rows {
        return Err(Error::ckpt(
            ck_dir,
            format!(
                "row layout mismatch: the checkpoint's prompts end with {:?} and its answers \
                 with {:?}, the data's ({}) with {:?} and {:?}",
                ck.rows.prompt_sep(),
                ck.rows.answer_end(),
                data.data_dir,
                data.rows.prompt_sep(),
                data.rows.answer_end()
            ),
        ));
    }
    Ok(())
}

/// Append one JSON line to a metrics file.
pub fn append_jsonl(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io("opening", path, e))?;
    // One write of the whole line: `writeln!` on a File issues a write per formatted piece, so a
    // kill between them would leave a torn line (dropped on resume, but avoidable).
    let mut line = v.to_string();
    line.push('\n');
    f.write_all(line.as_bytes())
        .map_err(|e| Error::io("writing", path, e))
}

/// Drop metric lines past `step` (written by a run that stopped after its last checkpoint).
pub fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .collect();
    let text = kept.join("\n") + if kept.is_empty() { "" } else { "\n" };
    crate::atomic::write_file(path, text.as_bytes())
}

/// Create the run directory; refuse one that already holds a run unless resuming, and on resume
/// drop the metric lines past the checkpoint's `step`. A fresh start in a folder whose run
/// stopped before its first checkpoint drops that run's metric lines: they would otherwise stay
/// in front of the new run's (the same steps twice).
pub fn open_run_dir(run_dir: &Path, resume_from: Option<u64>) -> Result<()> {
    let metrics = run_dir.join("metrics.jsonl");
    match resume_from {
        Some(step) => truncate_metrics(&metrics, step)?,
        None => {
            if run_dir.join("checkpoints").join("latest").exists() {
                return Err(Error::InvalidArgument(format!(
                    "{} already holds a run: pass --resume to continue it, or choose another --out",
                    run_dir.display()
                )));
            }
            match fs::remove_file(&metrics) {
                Ok(()) => tracing::warn!(
                    "{}: dropped the metrics of a run that stopped before its first checkpoint",
                    metrics.display()
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("removing", &metrics, e)),
            }
        }
    }
    fs::create_dir_all(run_dir).map_err(|e| Error::io("creating", run_dir, e))
}

/// Refuse `--resume` of a folder without a checkpoint, saying what to do: a run killed before
/// its first checkpoint has nothing to continue and starts again without `--resume`.
pub fn require_checkpoint(run_dir: &Path) -> Result<()> {
    let latest = run_dir.join("checkpoints").join("latest");
    if run_dir.is_dir() && !latest.exists() && !run_dir.join("meta.json").exists() {
        return Err(Error::InvalidArgument(format!(
            "{} holds no checkpoint to resume (the run stopped before its first one): start it \
             again without --resume",
            run_dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::pairs::RowLayout;

    fn info(rows: RowLayout) -> DataInfo {
        DataInfo {
            tokenizer_sha256: "ab".repeat(32),
            vocab_size: 10,
            mask_id: 9,
            bos_id: 0,
            eos_id: 0,
            seq_len: 8,
            data_dir: "data".into(),
            rows,
        }
    }

    #[test]
    fn pair_rows_of_another_layout_are_refused_stream_data_is_not() {
        let ours = RowLayout::Pairs { sep_id: 0 };
        let reference = RowLayout::Separated {
            sep: vec![3, 4],
            end_id: 0,
        };
        let at = Path::new("ck");
        let e = check_data_matches(&info(reference.clone()), &info(ours.clone()), at)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("row layout mismatch") && e.contains("[3, 4]"),
            "{e}"
        );
        for (ck, data) in [
            (reference.clone(), reference.clone()),
            (reference, RowLayout::Stream),
            (RowLayout::Stream, ours.clone()),
            (ours.clone(), ours),
        ] {
            check_data_matches(&info(ck), &info(data), at).unwrap();
        }
    }
}
