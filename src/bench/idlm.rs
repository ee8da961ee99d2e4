//! `idlm bench`'s IDLM part: one IDLM-MDLM alternation (fake update + student update, three
//! networks) on the benchmark DiT against one teacher training step on the same data, in time and
//! in peak resident memory.

use std::time::Instant;

use serde::Serialize;

use crate::bench::memory::{reset_peak, rss_mib};
use crate::bench::options::BenchOptions;
use crate::data::{PackedHeader, PackedTokens, PackedWriter};
use crate::distill::{DistillConfig, Idlm};
use crate::nn::Denoiser;
use crate::process::Masked;
use crate::train::{DiffusionObjective, Trainer};
use crate::{Error, Result};

/// Time and memory of an IDLM alternation against a teacher step.
#[derive(Debug, Clone, Serialize)]
pub struct IdlmBench {
    /// Median teacher (MDLM) training step on packed data, ms.
    pub teacher_step_ms: f64,
    /// Median IDLM alternation, ms.
    pub idlm_alternation_ms: f64,
    /// Alternation time over teacher-step time (the reference pays about 3x: three networks).
    pub idlm_alternation_per_teacher_step: f64,
    /// Peak resident memory above the level before the step, MiB (VmHWM after resetting it).
    pub teacher_step_peak_mib: Option<f64>,
    /// The same for an IDLM alternation.
    pub idlm_alternation_peak_mib: Option<f64>,
    /// IDLM alternation peak over three teacher-step peaks.
    pub idlm_peak_per_3_teacher_steps: Option<f64>,
}

/// Median wall time (ms) of `iters` calls after `warmup`, and the peak resident memory of the
/// calls above the live memory before them (MiB). The allocator keeps freed memory (see
/// `runtime::tune_malloc`), so it is first given back with malloc_trim and the kernel's
/// high-water mark is reset: the rise is the phase's working set.
fn measure(
    warmup: usize,
    iters: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, Option<f64>)> {
    // Where the reset is unsupported the peak is the process's, an overestimate.
    reset_peak();
    let before = rss_mib();
    let mut times = Vec::new();
    for i in 0..warmup + iters {
        let t0 = Instant::now();
        f()?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let peak = match (before, rss_mib()) {
        (Some((rss, _)), Some((_, hwm))) => Some(hwm - rss),
        _ => None,
    };
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], peak))
}

/// Random rows of the benchmark's vocabulary (MASK excluded) in a temporary packed file.
fn random_rows(o: &BenchOptions, rows: usize, path: &std::path::Path) -> Result<PackedTokens> {
    let header = PackedHeader::new(
        o.vocab as u32,
        (o.vocab - 1) as u32,
        0,
        0,
        o.len as u32,
        [0; 32],
    );
    let mut w = PackedWriter::create(path, header)?;
    let mut state = 7u64;
    for _ in 0..rows {
        let row: Vec<u32> = (0..o.len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % (o.vocab as u64 - 1)) as u32
            })
            .collect();
        w.push_row(&row)?;
    }
    w.finish()?;
    PackedTokens::open(path)
}

/// One teacher step and one IDLM alternation of the benchmark DiT, timed and measured.
pub fn idlm_bench(o: &BenchOptions, teacher: &Trainer) -> Result<IdlmBench> {
    let path = std::env::temp_dir().join(format!("idlm-bench-{}.bin", std::process::id()));
    let rows = o.batch * 4 * (o.warmup + o.iters + 1);
    let out = (|| {
        let data = random_rows(o, rows, &path)?;
        let process = Masked::new(o.vocab, (o.vocab - 1) as u32)?;
        // The teacher step at the benchmark's batch, like the alternation's two updates.
        let mut cfg = teacher.cfg.clone();
        cfg.train.batch_size = o.batch;
        cfg.train.grad_accum = 1;
        let mut tr = Trainer::from_weights(
            &cfg,
            &teacher.arch,
            &teacher.weights(),
            std::path::Path::new("bench"),
        )?;
        let objective = DiffusionObjective::new(&process, None);
        let (teacher_ms, teacher_peak) = measure(o.warmup, o.iters, || {
            objective.step(&mut tr, &data).map(|_| ())
        })?;
        let cfg = DistillConfig {
            batch_size: o.batch,
            val_every: 0,
            ..DistillConfig::default()
        };
        let w = tr.ema_weights();
        let frozen = tr.ema_model()?;
        drop(tr);
        let mut idlm = Idlm::new(
            &cfg,
            &teacher.cfg,
            &teacher.arch,
            &w,
            std::path::Path::new("bench"),
        )?;
        let (alt_ms, alt_peak) = measure(o.warmup, o.iters, || {
            idlm.step(&frozen as &dyn Denoiser, &process.relaxation(), &data)
                .map(|_| ())
        })?;
        let ratio = match (alt_peak, teacher_peak) {
            (Some(a), Some(t)) if t > 0.0 => Some(a / (3.0 * t)),
            _ => None,
        };
        Ok(IdlmBench {
            teacher_step_ms: teacher_ms,
            idlm_alternation_ms: alt_ms,
            idlm_alternation_per_teacher_step: alt_ms / teacher_ms,
            teacher_step_peak_mib: teacher_peak,
            idlm_alternation_peak_mib: alt_peak,
            idlm_peak_per_3_teacher_steps: ratio,
        })
    })();
    std::fs::remove_file(&path).map_err(|e| Error::io("removing", &path, e))?;
    out
}
