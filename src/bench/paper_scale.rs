//! `idlm bench --paper-scale`: seconds per 1024-token sample and peak resident memory at the
//! paper's model size (mdlm-owt's DiT, ~169.6M parameters, random weights: speed does not depend
//! on them) for the teacher at 1024 cached steps, a student at 16 / 8 / 4 steps, and a causal LM of
//! the same width and depth decoding with its KV cache. Each configuration runs in its own process
//! (`--only`), so each peak is its own; long runs may time only their first K network calls
//! (`budget`), and such figures are labelled as extrapolated.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use candle_core::DType;
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::bench::budget::{Budgeted, extrapolate};
use crate::bench::memory::{reset_peak, rss_mib};
use crate::nn::init::{detached, init_dit};
use crate::nn::{CausalLmConfig, Denoiser, Dit, DitConfig, frozen};
use crate::process::{Masked, NoiseRemoval};
use crate::sample::{SamplerOptions, sample};
use crate::{Error, Result};

/// The measured configurations, in the order of the report.
pub const CONFIGS: [&str; 5] = ["teacher1024", "student16", "student8", "student4", "ar"];

/// Sizes of a paper-scale run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaperShape {
    /// Vocabulary (GPT-2's 50257 and MASK).
    pub vocab: usize,
    /// Width.
    pub hidden: usize,
    /// Blocks.
    pub blocks: usize,
    /// Heads.
    pub heads: usize,
    /// Time-conditioning width.
    pub cond_dim: usize,
    /// Tokens per sample.
    pub len: usize,
}

impl PaperShape {
    /// mdlm-owt's DiT (models/dit.py at the small config) on rows of 1024 tokens.
    pub fn paper() -> Self {
        Self {
            vocab: 50258,
            hidden: 768,
            blocks: 12,
            heads: 12,
            cond_dim: 128,
            len: 1024,
        }
    }

    /// A shape small enough to check the code paths in seconds; never a reported figure.
    pub fn smoke() -> Self {
        Self {
            vocab: 1024,
            hidden: 64,
            blocks: 2,
            heads: 2,
            cond_dim: 32,
            len: 128,
        }
    }

    /// The DiT without time input (MDLM's default, so an unchanged sequence reuses its prediction).
    pub fn dit(&self) -> DitConfig {
        DitConfig {
            vocab_size: self.vocab,
            hidden_size: self.hidden,
            cond_dim: self.cond_dim,
            n_blocks: self.blocks,
            n_heads: self.heads,
            mlp_ratio: 4,
            length: self.len,
            dropout: 0.0,
            time_conditioning: false,
        }
    }

    /// The causal LM of the same width and depth (the AR baseline).
    pub fn causal_lm(&self) -> CausalLmConfig {
        CausalLmConfig {
            vocab_size: self.vocab,
            hidden_size: self.hidden,
            n_blocks: self.blocks,
            n_heads: self.heads,
            mlp_ratio: 4,
            length: self.len,
            dropout: 0.0,
        }
    }
}

/// One configuration at one batch size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaperRecord {
    /// Which configuration (one of `CONFIGS`).
    pub config: String,
    /// Reverse steps (AR: tokens decoded).
    pub steps: usize,
    /// Sequences drawn together (one batch).
    pub batch: usize,
    /// Network calls the run made (batched: one call serves every sequence in it).
    pub calls: usize,
    /// Mean network calls per sequence (the sampler's own count).
    pub nfe_per_seq: f64,
    /// Network calls actually computed and timed.
    pub measured_calls: usize,
    /// Whether `seconds_per_sample` includes estimated time for calls that were not computed.
    pub extrapolated: bool,
    /// Wall seconds of the run as made (with zero-logit calls past the budget).
    pub measured_seconds: f64,
    /// Seconds per sample: the run's (estimated) wall time over the batch.
    pub seconds_per_sample: f64,
    /// Resident memory after building the model, MiB.
    pub weights_rss_mib: Option<f64>,
    /// Peak resident memory of the run (weights included), MiB: VmHWM, reset after building.
    pub peak_rss_mib: Option<f64>,
    /// Whether the high-water mark could be reset after building (if not, the build's own peak
    /// may be in `peak_rss_mib`).
    pub peak_reset: bool,
    /// Network parameters.
    pub n_params: usize,
    /// Threads.
    pub threads: usize,
    /// Sizes.
    pub shape: PaperShape,
}

/// A random-weight DiT of `cfg` (the project's initialisation from a seed), frozen.
fn random_dit(cfg: &DitConfig) -> Result<Dit> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &crate::runtime::device());
    Dit::new(vb, cfg)?;
    init_dit(&varmap, 0)?;
    let w = detached(&varmap)?;
    drop(varmap);
    frozen(&w, cfg, Path::new("random weights"))
}

/// Steps of a diffusion configuration (None for the AR one); an unknown name is an error.
pub fn config_steps(config: &str) -> Result<Option<usize>> {
    match config {
        "teacher1024" => Ok(Some(1024)),
        "student16" => Ok(Some(16)),
        "student8" => Ok(Some(8)),
        "student4" => Ok(Some(4)),
        "ar" => Ok(None),
        _ => Err(Error::InvalidArgument(format!(
            "unknown paper-scale configuration {config:?} (one of {})",
            CONFIGS.join(", ")
        ))),
    }
}

/// Run one configuration in this process; `calls` bounds the computed network calls of a
/// diffusion run (the AR run is always whole: its cost per step grows with the position).
pub fn run_config(
    config: &str,
    batch: usize,
    calls: Option<usize>,
    shape: &PaperShape,
) -> Result<PaperRecord> {
    if batch == 0 || calls == Some(0) {
        return Err(Error::InvalidArgument(
            "the batch and --calls must be at least 1".into(),
        ));
    }
    let steps = config_steps(config)?;
    let threads = rayon::current_num_threads();
    let rec =
        |steps, calls, nfe, measured, wall: f64, est: f64, extra, w, p, reset, n| PaperRecord {
            config: config.to_string(),
            steps,
            batch,
            calls,
            nfe_per_seq: nfe,
            measured_calls: measured,
            extrapolated: extra,
            measured_seconds: wall,
            seconds_per_sample: est / batch as f64,
            weights_rss_mib: w,
            peak_rss_mib: p,
            peak_reset: reset,
            n_params: n,
            threads,
            shape: shape.clone(),
        };
    let Some(steps) = steps else {
        let cfg = shape.causal_lm();
        let lm = crate::ar::random_frozen_lm(&cfg, 0)?;
        let n = cfg.n_params();
        let opts = crate::ar::ArSamplerOptions {
            batch_size: batch,
            ..Default::default()
        };
        let mask = Some((shape.vocab - 1) as u32);
        // A few tokens first so thread start-up and the first allocations are not timed.
        crate::ar::sample_ar(&lm, batch, shape.len.min(4), &[0], mask, &opts, None)?;
        let weights = rss_mib().map(|m| m.0);
        let reset = reset_peak();
        let t0 = Instant::now();
        let s = crate::ar::sample_ar(&lm, batch, shape.len, &[0], mask, &opts, None)?;
        let wall = t0.elapsed().as_secs_f64();
        let peak = rss_mib().map(|m| m.1);
        let nfe = s.first().map_or(0, |s| s.nfe);
        return Ok(rec(
            shape.len, nfe, nfe as f64, nfe, wall, wall, false, weights, peak, reset, n,
        ));
    };
    let cfg = shape.dit();
    let dit = random_dit(&cfg)?;
    let process = Masked::new(shape.vocab, (shape.vocab - 1) as u32)?;
    // One full-batch forward first, untimed, for the same reason.
    let warm = crate::runtime::device();
    let x = candle_core::Tensor::full((shape.vocab - 1) as u32, (batch, shape.len), &warm)?;
    let sigma = candle_core::Tensor::zeros(batch, DType::F32, &warm)?;
    dit.logits(&x, &sigma, Some(&[0]))?;
    drop((x, sigma));
    let weights = rss_mib().map(|m| m.0);
    let reset = reset_peak();
    let den = Budgeted::new(&dit, shape.vocab, calls);
    let opts = SamplerOptions {
        steps,
        noise_removal: NoiseRemoval::Ancestral,
        cache: true,
        batch_size: batch,
        seed: 1,
    };
    let t0 = Instant::now();
    let s = sample(&den, &process, batch, shape.len, &opts, None)?;
    let wall = t0.elapsed().as_secs_f64();
    let peak = rss_mib().map(|m| m.1);
    let log = den.calls()?;
    let (est, extra) = extrapolate(wall, &log);
    let nfe = s.iter().map(|s| s.nfe).sum::<usize>() as f64 / batch as f64;
    let measured = log.iter().filter(|c| c.real).count();
    Ok(rec(
        steps,
        log.len(),
        nfe,
        measured,
        wall,
        est,
        extra,
        weights,
        peak,
        reset,
        cfg.n_params(),
    ))
}

/// Run every configuration at every batch size, each in a child process of this executable
/// (`idlm --threads T bench --paper-scale --only C --batch B`), and collect the records.
pub fn run_all(
    batches: &[usize],
    calls: Option<usize>,
    smoke: bool,
    mut each: impl FnMut(&PaperRecord),
) -> Result<Vec<PaperRecord>> {
    let exe = std::env::current_exe().map_err(|e| Error::io("locating", "idlm", e))?;
    let threads = rayon::current_num_threads().to_string();
    let mut out = Vec::new();
    for config in CONFIGS {
        for &b in batches {
            let mut cmd = Command::new(&exe);
            cmd.args([
                "--threads",
                &threads,
                "bench",
                "--paper-scale",
                "--only",
                config,
            ]);
            cmd.args(["--batch", &b.to_string()]);
            if let Some(k) = calls {
                cmd.args(["--calls", &k.to_string()]);
            }
            if smoke {
                cmd.arg("--smoke");
            }
            let o = cmd.output().map_err(|e| Error::io("running", &exe, e))?;
            if !o.status.success() {
                return Err(Error::InvalidArgument(format!(
                    "{config} at batch {b} failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                )));
            }
            let text = String::from_utf8_lossy(&o.stdout);
            let line = text.lines().last().unwrap_or_default();
            let r: PaperRecord = serde_json::from_str(line).map_err(|e| {
                Error::Data(format!("{config} at batch {b}: not a record ({e}): {line}"))
            })?;
            each(&r);
            out.push(r);
        }
    }
    Ok(out)
}
