//! A training run: the loop around `Trainer` with progress bar, JSONL metrics, periodic
//! validation NELBO and checkpoints, a time budget, and exact resume.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::checkpoint::{self, DataInfo};
use crate::config::RunConfig;
use crate::data::DataDir;
use crate::process::{ForwardProcess, Masked, ProcessKind, Uniform};
use crate::train::{Trainer, nelbo};
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

/// The process a config names, for a data vocabulary.
pub fn make_process(kind: ProcessKind, data: &DataDir) -> Result<Box<dyn ForwardProcess>> {
    let t = &data.info.tokenizer;
    process_for(kind, t.model_vocab_size, t.mask_id)
}

/// The diffusion process of a kind over `vocab` model ids (`mask_id`: MDLM's absorbing state).
pub fn process_for(
    kind: ProcessKind,
    vocab: usize,
    mask_id: u32,
) -> Result<Box<dyn ForwardProcess>> {
    match kind {
        ProcessKind::Mdlm => Ok(Box::new(Masked::new(vocab, mask_id)?)),
        ProcessKind::Duo => Ok(Box::new(Uniform::new(vocab)?)),
        ProcessKind::Ar => Err(Error::InvalidArgument(
            "process 'ar' is the autoregressive baseline, not a diffusion process".into(),
        )),
    }
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
    Ok(())
}

/// Append one JSON line to a metrics file.
pub fn append_jsonl(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io("opening", path, e))?;
    writeln!(f, "{v}").map_err(|e| Error::io("writing", path, e))
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
    let tmp = path.with_extension("jsonl.tmp");
    fs::write(
        &tmp,
        kept.join("\n") + if kept.is_empty() { "" } else { "\n" },
    )
    .map_err(|e| Error::io("writing", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io("renaming", path, e))
}

/// Train (or resume) a teacher; `train.process = "ar"` trains the autoregressive baseline.
pub fn run_training(opts: &TrainRunOptions) -> Result<TrainSummary> {
    if opts.cfg.train.process == ProcessKind::Ar {
        return crate::ar::run::run_ar_training(opts);
    }
    let data = DataDir::open(&opts.data_dir)?;
    let info = data_info(&data);
    let run_dir = &opts.run_dir;
    fs::create_dir_all(run_dir).map_err(|e| Error::io("creating", run_dir, e))?;
    let metrics = run_dir.join("metrics.jsonl");
    let mut trainer = if opts.resume {
        let ck = checkpoint::load(run_dir)?;
        crate::ar::check_not_ar(&ck)?;
        check_data_matches(&ck.meta.data, &info, &ck.dir)?;
        truncate_metrics(&metrics, ck.meta.step)?;
        // The architecture and process come from the checkpoint; the rest may be overridden.
        let mut cfg = opts.cfg.clone();
        cfg.model = ck.meta.config.model.clone();
        cfg.train.process = ck.meta.process;
        Trainer::from_checkpoint(&ck, &cfg)?
    } else {
        if run_dir.join("checkpoints").join("latest").exists() {
            return Err(Error::InvalidArgument(format!(
                "{} already holds a run: pass --resume to continue it, or choose another --out",
                run_dir.display()
            )));
        }
        let dit = opts.cfg.model.dit(info.vocab_size, info.seq_len);
        Trainer::new(&opts.cfg, &dit)?
    };
    let cfg = trainer.cfg.clone();
    let cfg_path = run_dir.join("config.toml");
    fs::write(&cfg_path, cfg.to_toml()?).map_err(|e| Error::io("writing", &cfg_path, e))?;
    let process = make_process(cfg.train.process, &data)?;
    let tok_json = data.tokenizer.to_json().to_string();
    let t = &cfg.train;
    let eval_rows = (t.eval_batches * t.batch_size).max(1);

    let bar = if opts.progress {
        let b = ProgressBar::new(t.max_steps);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} ETA {eta} {msg}",
            )
            .map_err(|e| Error::Config(e.to_string()))?,
        );
        b.set_position(trainer.step);
        b
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let start_tokens = trainer.tokens_seen;
    let mut last_loss = f64::NAN;
    let mut val = None;
    let mut last_ckpt = None;
    while trainer.step < t.max_steps {
        if t.max_minutes > 0.0 && started.elapsed().as_secs_f64() > t.max_minutes * 60.0 {
            bar.println(format!("time budget of {} min reached", t.max_minutes));
            break;
        }
        let s0 = Instant::now();
        let st = trainer.train_step(process.as_ref(), &data.train)?;
        trainer.train_seconds += s0.elapsed().as_secs_f64();
        last_loss = st.loss;
        let el = started.elapsed().as_secs_f64();
        let tps = (trainer.tokens_seen - start_tokens) as f64 / el.max(1e-9);
        bar.set_position(trainer.step);
        bar.set_message(format!("loss {:.4} | {:.0} tok/s", st.loss, tps));
        if t.log_every > 0 && trainer.step % t.log_every == 0 {
            append_jsonl(
                &metrics,
                &json!({"step": st.step, "loss": st.loss, "grad_norm": st.grad_norm, "lr": st.lr,
                        "tokens": trainer.tokens_seen, "tok_per_s": tps, "elapsed_s": trainer.train_seconds}),
            )?;
        }
        let last = trainer.step >= t.max_steps;
        if t.eval_every > 0 && (trainer.step % t.eval_every == 0 || last) {
            let ema = trainer.ema_model()?;
            let s = nelbo(
                &ema,
                process.as_ref(),
                &data.valid,
                eval_rows,
                t.batch_size,
                1,
                VALID_SEED,
            )?;
            val = Some(s.nelbo);
            bar.println(format!(
                "step {}: val NELBO {:.4} +- {:.4} nats/token (unigram entropy {:.4})",
                trainer.step, s.nelbo, s.stderr, data.info.unigram_entropy_nats
            ));
            append_jsonl(
                &metrics,
                &json!({"step": trainer.step, "val_nelbo": s.nelbo, "val_stderr": s.stderr,
                        "val_tokens": s.tokens}),
            )?;
        }
        if t.ckpt_every > 0 && trainer.step % t.ckpt_every == 0 {
            last_ckpt = Some(trainer.save(run_dir, &info, &tok_json, val)?);
        }
    }
    let ck = match last_ckpt {
        Some(p) if p.ends_with(format!("step-{:08}", trainer.step)) => p,
        _ => trainer.save(run_dir, &info, &tok_json, val)?,
    };
    bar.finish_and_clear();
    let el = started.elapsed().as_secs_f64();
    Ok(TrainSummary {
        step: trainer.step,
        last_loss,
        val_nelbo: val,
        unigram_entropy: data.info.unigram_entropy_nats,
        checkpoint: ck,
        tokens_per_s: (trainer.tokens_seen - start_tokens) as f64 / el.max(1e-9),
    })
}
