//! `idlm bench`: the training step and forward of the benchmark DiT (docs/design.md §3), on the same
//! synthetic batches as `../shared/bench/torch_dit_bench.py`, so the two can be compared.

use std::path::Path;
use std::time::Instant;

use candle_core::Tensor;
use serde::Serialize;

use crate::Result;
use crate::checkpoint;
use crate::config::RunConfig;
use crate::nn::DitInput;
use crate::nn::ops::head_nll::NllRows;
use crate::process::Masked;
use crate::train::{Trainer, batch_loss};

pub mod budget;
pub mod idlm;
pub mod memory;
pub mod options;
pub mod paper_scale;
pub mod sampler;

pub use options::BenchOptions;

/// Median times of each phase.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// What was measured.
    pub options: BenchOptions,
    /// Threads used.
    pub threads: usize,
    /// Train step with cross-entropy on every position (what the PyTorch script times).
    pub train_step_ms: f64,
    /// Of the train step: forward and loss.
    pub phase_forward_loss_ms: f64,
    /// Of the train step: backward.
    pub phase_backward_ms: f64,
    /// Of the train step: AdamW and EMA.
    pub phase_optimizer_ms: f64,
    /// MDLM train step: the NELBO on masked positions only.
    pub mdlm_train_step_ms: f64,
    /// The train step on Duo's relaxed inputs (w / tau at tau 1e-3, the curriculum's sharpest):
    /// the network's softmax over the vocabulary at every position, then the same CE.
    pub relaxed_train_step_ms: f64,
    /// Forward of the full batch (logits), no gradient.
    pub forward_ms: f64,
    /// Tokens per second of the ancestral sampler at 16 steps at the benchmark batch (the
    /// time-conditioned benchmark DiT).
    pub sampler16_tokens_per_s: f64,
    /// Tokens per second at 1024 steps with the same weights used without time conditioning
    /// (MDLM's default), so a sequence that did not change reuses its prediction.
    pub sampler1024_cached_tokens_per_s: f64,
    /// Measured f32 GEMM peak of this machine (2048^3, all threads), GFLOP/s: the median of the
    /// products run next to the timed train steps and forwards.
    pub gemm_peak_gflops: f64,
    /// The fastest of those products.
    pub gemm_peak_best_gflops: f64,
    /// Every product in order (the first before the warm-up step), GFLOP/s.
    pub gemm_probe_gflops: Vec<f64>,
    /// Matrix-multiply FLOPs of one training step (forward + backward = 3x forward).
    pub train_step_gflop: f64,
    /// Achieved GFLOP/s of the train step as a fraction of the peak: the median over timed steps,
    /// each against the product run just before it.
    pub train_step_peak_fraction: f64,
    /// The forward pass's fraction of the peak, paired the same way.
    pub forward_peak_fraction: f64,
    /// The train step's median time against the best product of the run instead (the reading
    /// that counts every slow moment of the host against the step).
    pub train_step_best_peak_fraction: f64,
    /// The forward's median time against the best product of the run.
    pub forward_best_peak_fraction: f64,
    /// Tokens per second of AR KV-cache decoding (causal LM of the same width and depth).
    pub ar_kv_tokens_per_s: f64,
    /// The sampler at 4 / 16 / 1024 steps and batch 1 against AR decoding.
    pub sampler: sampler::SamplerBench,
    /// One IDLM alternation against one teacher step: time and peak memory.
    pub idlm: idlm::IdlmBench,
}

/// The machine's f32 GEMM rate (2048^3, all threads), measured next to each timed iteration: this
/// host's throughput drifts by up to 30% over minutes (2048^3 best-of-3 gave 231-316 GFLOP/s in one
/// sitting), so a phase's fraction of the peak is taken against the peak of the same moment.
pub struct PeakProbe {
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    /// GFLOP/s of every product run so far.
    pub runs: Vec<f64>,
}

impl PeakProbe {
    const N: usize = 2048;

    /// Operands for the probe (48 MiB).
    pub fn new() -> Self {
        let n = Self::N;
        Self {
            a: vec![1.0; n * n],
            b: vec![0.5; n * n],
            c: vec![0.0; n * n],
            runs: Vec::new(),
        }
    }

    /// One 2048^3 product; its GFLOP/s (also kept in `runs`).
    pub fn measure(&mut self) -> f64 {
        let n = Self::N;
        let t0 = Instant::now();
        crate::nn::ops::gemm_par(n, n, n, &mut self.c, false, &self.a, n, 1, &self.b, n, 1);
        let g = 2.0 * (n as f64).powi(3) / t0.elapsed().as_secs_f64() / 1e9;
        self.runs.push(g);
        g
    }
}

impl Default for PeakProbe {
    fn default() -> Self {
        Self::new()
    }
}

/// Median over timed iterations of (GFLOP / time) / the peak measured just before it.
fn paired_fraction(gflop: f64, ms: &[f64], peaks: &[f64]) -> f64 {
    median(
        ms.iter()
            .zip(peaks)
            .map(|(t, p)| gflop / (t / 1e3) / p)
            .collect(),
    )
}

/// Matrix-multiply FLOPs of one forward pass of the DiT over `tokens` tokens.
fn forward_gflop(o: &BenchOptions) -> f64 {
    let (d, l, v) = (o.hidden as f64, o.len as f64, o.vocab as f64);
    let per_token = o.blocks as f64 * (12.0 * d * d + 2.0 * l * d) + d * v;
    2.0 * per_token * (o.batch * o.len) as f64 / 1e9
}

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// The PyTorch script's batch: (masked input, targets, t).
fn make_batch(rng: &mut Lcg, o: &BenchOptions) -> (Vec<u32>, Vec<u32>, Vec<f64>) {
    let (mut inp, mut tgt, mut ts) = (Vec::new(), Vec::new(), Vec::new());
    let v = o.vocab as u64;
    for _ in 0..o.batch {
        let start = (rng.next() % 16) * 64;
        let tk = rng.next() % 1000 + 1;
        ts.push(tk as f64 / 1000.0);
        for i in 0..o.len as u64 {
            let tok = ((start + 3 * i) % (v - 1)) as u32;
            let m = (rng.next() % 1000) < tk;
            inp.push(if m { (v - 1) as u32 } else { tok });
            tgt.push(tok);
        }
    }
    (inp, tgt, ts)
}

/// Plain cross-entropy on every position (the PyTorch mirror's loss).
fn ce_rows(tgt: &[u32]) -> NllRows {
    NllRows {
        targets: tgt.to_vec(),
        weights: vec![1.0; tgt.len()],
        exclude: None,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The benchmark DiT's run configuration (no dropout, no warmup, no clipping).
pub fn bench_config(o: &BenchOptions) -> Result<RunConfig> {
    RunConfig::load("tiny")?.with_overrides(&[
        format!("model.hidden_size={}", o.hidden),
        format!("model.n_blocks={}", o.blocks),
        format!("model.n_heads={}", o.heads),
        format!("model.cond_dim={}", o.cond_dim),
        "model.dropout=0.0".into(),
        "model.time_conditioning=true".into(),
        "train.lr=1e-3".into(),
        "train.warmup_steps=0".into(),
        "train.weight_decay=0.01".into(),
        "train.grad_clip=0".into(),
        "train.grad_accum=1".into(),
    ])
}

/// Run the benchmark.
pub fn run_bench(o: &BenchOptions) -> Result<BenchReport> {
    let cfg = bench_config(o)?;
    let dit = cfg.model.dit(o.vocab, o.len);
    let mut tr = Trainer::new(&cfg, &dit)?;
    let process = Masked::new(o.vocab, (o.vocab - 1) as u32)?;
    let mut rng = Lcg(42);
    let (b, l) = (o.batch, o.len);
    let dev = crate::runtime::device();
    let total = o.warmup + o.iters;

    let mut probe = PeakProbe::new();
    let (mut full, mut full_peak) = (Vec::new(), Vec::new());
    for i in 0..total {
        let (inp, tgt, ts) = make_batch(&mut rng, o);
        let peak = probe.measure();
        let t0 = Instant::now();
        tr.optimize((b * l) as u64, |model, _, _| {
            let x = Tensor::from_slice(&inp, (b, l), &dev)?;
            let sigma: Vec<f32> = ts.iter().map(|&t| process_sigma(t)).collect();
            let feats =
                model.features(DitInput::Ids(&x), &Tensor::from_vec(sigma, b, &dev)?, None)?;
            let rows = ce_rows(&tgt);
            Ok(model
                .head_nll(&feats.reshape((b * l, o.hidden))?, &rows)?
                .mean_all()?)
        })?;
        if i >= o.warmup {
            full.push(t0.elapsed().as_secs_f64() * 1e3);
            full_peak.push(peak);
        }
    }

    // The same step split into phases.
    let (mut pf, mut pb, mut po) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..total {
        let (inp, tgt, ts) = make_batch(&mut rng, o);
        let t0 = Instant::now();
        let x = Tensor::from_slice(&inp, (b, l), &dev)?;
        let sigma: Vec<f32> = ts.iter().map(|&t| process_sigma(t)).collect();
        let feats =
            tr.model
                .features(DitInput::Ids(&x), &Tensor::from_vec(sigma, b, &dev)?, None)?;
        let loss = tr
            .model
            .head_nll(&feats.reshape((b * l, o.hidden))?, &ce_rows(&tgt))?
            .mean_all()?;
        let _ = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        tr.apply_grads(&grads)?;
        let t3 = Instant::now();
        if i >= o.warmup {
            pf.push((t1 - t0).as_secs_f64() * 1e3);
            pb.push((t2 - t1).as_secs_f64() * 1e3);
            po.push((t3 - t2).as_secs_f64() * 1e3);
        }
    }

    let mut mdlm = Vec::new();
    for i in 0..total {
        let (inp, tgt, ts) = make_batch(&mut rng, o);
        let t0 = Instant::now();
        tr.optimize((b * l) as u64, |model, _, _| {
            batch_loss(model, &process, &tgt, &inp, b, l, &ts, None)
        })?;
        if i >= o.warmup {
            mdlm.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }

    let mut relaxed = Vec::new();
    for i in 0..total {
        let (inp, tgt, ts) = make_batch(&mut rng, o);
        let soft = relaxed_input(&mut rng, &inp, o.vocab, 1e-3);
        let t0 = Instant::now();
        tr.optimize((b * l) as u64, |model, _, _| {
            let x = Tensor::from_vec(soft.clone(), (b, l, o.vocab), &dev)?;
            let sigma: Vec<f32> = ts.iter().map(|&t| process_sigma(t)).collect();
            let feats =
                model.features(DitInput::Soft(&x), &Tensor::from_vec(sigma, b, &dev)?, None)?;
            Ok(model
                .head_nll(&feats.reshape((b * l, o.hidden))?, &ce_rows(&tgt))?
                .mean_all()?)
        })?;
        if i >= o.warmup {
            relaxed.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }

    let idlm = idlm::idlm_bench(o, &tr)?;
    let model = tr.ema_model()?;
    let (inp, _, ts) = make_batch(&mut rng, o);
    let x = Tensor::from_slice(&inp, (b, l), &dev)?;
    let sigma: Vec<f32> = ts.iter().map(|&t| process_sigma(t)).collect();
    let sigma = Tensor::from_vec(sigma, b, &dev)?;
    let (mut fwd, mut fwd_peak) = (Vec::new(), Vec::new());
    for i in 0..total {
        let peak = probe.measure();
        let t0 = Instant::now();
        let logits = model.forward(DitInput::Ids(&x), &sigma, None)?;
        let _ = logits.flatten_all()?.get(0)?.to_scalar::<f32>()?;
        if i >= o.warmup {
            fwd.push(t0.elapsed().as_secs_f64() * 1e3);
            fwd_peak.push(peak);
        }
    }

    let mut untimed = tr.arch.clone();
    untimed.time_conditioning = false;
    let cached = checkpoint::dit_from_tensors(&tr.ema_weights(), &untimed, Path::new("EMA"))?;
    let sampler = sampler::sampler_bench(&model, &cached, o)?;

    let fwd_gflop = forward_gflop(o);
    let peaks = [full_peak.as_slice(), fwd_peak.as_slice()].concat();
    let best = peaks.iter().copied().fold(0.0, f64::max);
    Ok(BenchReport {
        gemm_peak_gflops: median(peaks.clone()),
        gemm_peak_best_gflops: best,
        train_step_best_peak_fraction: 3.0 * fwd_gflop / (median(full.clone()) / 1e3) / best,
        forward_best_peak_fraction: fwd_gflop / (median(fwd.clone()) / 1e3) / best,
        gemm_probe_gflops: probe.runs,
        train_step_gflop: 3.0 * fwd_gflop,
        train_step_peak_fraction: paired_fraction(3.0 * fwd_gflop, &full, &full_peak),
        forward_peak_fraction: paired_fraction(fwd_gflop, &fwd, &fwd_peak),
        options: o.clone(),
        threads: rayon::current_num_threads(),
        train_step_ms: median(full),
        phase_forward_loss_ms: median(pf),
        phase_backward_ms: median(pb),
        phase_optimizer_ms: median(po),
        mdlm_train_step_ms: median(mdlm),
        relaxed_train_step_ms: median(relaxed),
        forward_ms: median(fwd),
        sampler16_tokens_per_s: sampler.tokens_per_s(16, b, true).unwrap_or(0.0),
        sampler1024_cached_tokens_per_s: sampler.tokens_per_s(1024, b, false).unwrap_or(0.0),
        ar_kv_tokens_per_s: sampler.ar_kv_tokens_per_s,
        sampler,
        idlm,
    })
}

/// Duo's relaxed input for ids `x` (docs/algorithms.md §3.5): (alpha one-hot + sigma noise) / tau
/// with alpha = 0.5, sigma = 1, uniform noise in [-1.7, 1.7] (variance 1): the shape of the
/// curriculum's input, sharp as at tau 1e-3.
fn relaxed_input(rng: &mut Lcg, x: &[u32], v: usize, tau: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len() * v);
    for &t in x {
        for k in 0..v {
            let u = rng.next() as f32 / (1u64 << 31) as f32;
            let w = 1.7 * (2.0 * u - 1.0) + if k == t as usize { 0.5 } else { 0.0 };
            out.push(w / tau);
        }
    }
    out
}

fn process_sigma(t: f64) -> f32 {
    crate::process::LogLinear::default().sigma(t) as f32
}

#[cfg(test)]
mod tests {
    use super::paired_fraction;

    #[test]
    fn each_step_is_measured_against_its_own_probe() {
        // 10 GFLOP in 100 ms at a 100 GFLOP/s probe is 1.0; in 200 ms against 100 it is 0.5;
        // in 50 ms against 400 it is 0.5. Median 0.5; pairing the times with the wrong probes
        // (or taking the best probe) gives other answers.
        let f = paired_fraction(10.0, &[100.0, 200.0, 50.0], &[100.0, 100.0, 400.0]);
        assert!((f - 0.5).abs() < 1e-12, "{f}");
        let f = paired_fraction(10.0, &[100.0, 200.0, 50.0], &[100.0, 50.0, 200.0]);
        assert!((f - 1.0).abs() < 1e-12, "{f}");
    }
}
