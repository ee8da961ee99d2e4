//! An AR training run: the loop of `run::run_training` around `ArTrainer`, with the same progress
//! bar, metrics.jsonl, checkpoints, time budget and exact resume; validation is the exact NLL.

use std::fs;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::train::{ArTrainer, ar_nll, check_is_ar};
use crate::checkpoint;
use crate::data::DataDir;
use crate::process::ProcessKind;
use crate::run::{
    TrainRunOptions, TrainSummary, append_jsonl, check_data_matches, data_info, truncate_metrics,
};
use crate::{Error, Result};

/// Train (or resume) the AR baseline; `TrainSummary::val_nelbo` holds the validation NLL.
pub fn run_ar_training(opts: &TrainRunOptions) -> Result<TrainSummary> {
    let data = DataDir::open(&opts.data_dir)?;
    let info = data_info(&data);
    let run_dir = &opts.run_dir;
    fs::create_dir_all(run_dir).map_err(|e| Error::io("creating", run_dir, e))?;
    let metrics = run_dir.join("metrics.jsonl");
    let mut trainer = if opts.resume {
        let ck = checkpoint::load(run_dir)?;
        check_is_ar(&ck)?;
        check_data_matches(&ck.meta.data, &info, &ck.dir)?;
        truncate_metrics(&metrics, ck.meta.step)?;
        // The architecture comes from the checkpoint; the rest may be overridden.
        let mut cfg = opts.cfg.clone();
        cfg.model = ck.meta.config.model.clone();
        ArTrainer::from_checkpoint(&ck, &cfg)?
    } else {
        if run_dir.join("checkpoints").join("latest").exists() {
            return Err(Error::InvalidArgument(format!(
                "{} already holds a run: pass --resume to continue it, or choose another --out",
                run_dir.display()
            )));
        }
        let arch = opts.cfg.model.dit(info.vocab_size, info.seq_len);
        ArTrainer::new(&opts.cfg, &arch, info.mask_id)?
    };
    trainer.cfg.train.process = ProcessKind::Ar;
    let cfg = trainer.cfg.clone();
    let cfg_path = run_dir.join("config.toml");
    fs::write(&cfg_path, cfg.to_toml()?).map_err(|e| Error::io("writing", &cfg_path, e))?;
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
        let st = trainer.train_step(&data.train)?;
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
            let s = ar_nll(&ema, &data.valid, eval_rows, t.batch_size, trainer.mask_id)?;
            val = Some(s.nll);
            bar.println(format!(
                "step {}: val NLL {:.4} +- {:.4} nats/token, perplexity {:.2} (unigram entropy {:.4})",
                trainer.step, s.nll, s.stderr, s.perplexity, data.info.unigram_entropy_nats
            ));
            // val_nelbo repeats the exact NLL (the value every diffusion NELBO bounds) so loss
            // plots and tables read AR and diffusion runs alike.
            append_jsonl(
                &metrics,
                &json!({"step": trainer.step, "val_nll": s.nll, "val_ppl": s.perplexity,
                        "val_stderr": s.stderr, "val_tokens": s.tokens, "val_nelbo": s.nll}),
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
