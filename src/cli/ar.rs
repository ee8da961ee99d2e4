//! `idlm sample` and `idlm nll` on an AR checkpoint: glue between arguments and `idlm::ar`.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::choices::{SamplerArg, name_of};
use super::{NllArgs, SampleArgs};
use idlm::ar::{ArSamplerOptions, ar_nll, lm_from_checkpoint, sample_ar};
use idlm::checkpoint::Checkpoint;
use idlm::data::{DataDir, TextTokenizer};
use idlm::run::{check_data_matches, data_info};
use idlm::sample::record::SampleRecord;

/// Sample an AR checkpoint with the KV-cache sampler; writes the diffusion samples' JSONL shape.
pub fn sample(a: SampleArgs, ck: &Checkpoint) -> Result<()> {
    let dir = ck.dir.display();
    if a.steps.is_some() {
        bail!("{dir} holds an AR model: it takes one step per token, so --steps does not apply");
    }
    if a.noise_removal.is_some() {
        bail!("{dir} holds an AR model: --noise-removal applies to diffusion checkpoints");
    }
    if let Some(s) = a.sampler
        && s != SamplerArg::KvCache
    {
        bail!(
            "{dir} holds an AR model: sampler '{}' is a diffusion sampler (use kv-cache)",
            name_of(s)
        );
    }
    let meta = &ck.meta;
    let opts = ArSamplerOptions {
        temperature: a.temperature.unwrap_or(1.0),
        top_p: a.top_p.unwrap_or(1.0),
        batch_size: a.batch_size.unwrap_or(meta.config.sample.batch_size),
        seed: a.seed.unwrap_or(meta.config.sample.seed),
    };
    opts.validate()?;
    let len = a.len.unwrap_or(meta.model.length);
    let model = lm_from_checkpoint(ck, !a.raw)?;
    let tok = TextTokenizer::from_json(&ck.tokenizer_json()?)
        .with_context(|| format!("tokenizer of {dir}"))?;
    let conds = super::prompts::conditions(
        &a,
        &tok,
        meta.data.bos_id,
        meta.model.length,
        false,
        &meta.data.rows,
    )?;
    let n = a.per_prompt();
    let bar = ProgressBar::new((n * conds.len()) as u64);
    bar.set_style(ProgressStyle::with_template(
        "sampling [{elapsed_precise}] {bar:30} {pos}/{len} ETA {eta}",
    )?);
    let t0 = Instant::now();
    let mut results = Vec::new();
    for (i, c) in conds.iter().enumerate() {
        let prefix = c
            .template
            .as_ref()
            .and_then(|t| t.as_prefix())
            .unwrap_or_else(|| vec![meta.data.bos_id]);
        let progress = |done: usize, _n: usize| bar.set_position((i * n + done) as u64);
        results.push(sample_ar(
            &model,
            n,
            len,
            &prefix,
            Some(meta.data.mask_id),
            &opts,
            Some(&progress),
        )?);
    }
    bar.finish_and_clear();
    let mut lines = String::new();
    let steps = len.saturating_sub(1);
    let mut index = 0;
    for (c, samples) in conds.iter().zip(&results) {
        for s in samples {
            let mut r = SampleRecord {
                steps: Some(Some(steps)),
                nfe: Some(s.nfe),
                seconds: Some(s.seconds),
                sampler: Some("ar_kv_cache".into()),
                temperature: Some(opts.temperature),
                top_p: Some(opts.top_p),
                seed: Some(opts.seed),
                ..super::prompts::base_record(ck, a.raw, index, &s.ids, &tok)?
            };
            c.annotate(&mut r, &tok)?;
            lines.push_str(&r.to_line()?);
            index += 1;
        }
    }
    super::commands::emit(a.out.as_deref(), &lines)?;
    let n = index;
    let el = t0.elapsed().as_secs_f64();
    eprintln!(
        "{} samples, {steps} steps (one per token), {:.2} s/sample, {:.0} tokens/s",
        n,
        el / n.max(1) as f64,
        (n * len) as f64 / el
    );
    Ok(())
}

/// Exact validation NLL per token of an AR checkpoint (its perplexity is exp of it).
pub fn nll(a: NllArgs, ck: &Checkpoint) -> Result<()> {
    let dir = ck.meta.data.data_dir_or(a.data.as_deref(), &ck.dir)?;
    let data = DataDir::open(&dir).with_context(|| format!("opening data {}", dir.display()))?;
    check_data_matches(&ck.meta.data, &data_info(&data), &ck.dir)?;
    let model = lm_from_checkpoint(ck, !a.raw)?;
    let rows = a.rows.unwrap_or(data.valid.n_rows());
    let s = ar_nll(
        &model,
        &data.valid,
        &data.info.rows,
        rows,
        a.batch_size,
        ck.meta.data.mask_id,
    )?;
    let out = json!({
        "nll_per_token": s.nll, "stderr": s.stderr, "perplexity": s.perplexity,
        "tokens": s.tokens, "exact": true, "process": "ar",
        "unigram_entropy": data.info.unigram_entropy_nats,
        "checkpoint": ck.dir.display().to_string(), "step": ck.meta.step,
        "weights": if a.raw { "raw" } else { "ema" },
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
