//! The benchmark DiT's ancestral sampler in a loop, for `perf record`: `cargo run --release
//! --example sampler_probe -- [steps] [batch] [repeats]` (random weights, time-conditioned).
use std::time::Instant;

use idlm::process::{Masked, NoiseRemoval};
use idlm::sample::{SamplerOptions, sample};
use idlm::train::Trainer;

fn main() -> anyhow::Result<()> {
    idlm::runtime::tune_malloc();
    let arg = |i: usize, d: usize| -> usize {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (steps, batch, repeats) = (arg(1, 16), arg(2, 32), arg(3, 5));
    let o = idlm::bench::BenchOptions::default();
    let cfg = idlm::bench::bench_config(&o)?;
    let tr = Trainer::new(&cfg, &cfg.model.dit(o.vocab, o.len))?;
    let process = Masked::new(o.vocab, (o.vocab - 1) as u32)?;
    for r in 0..repeats {
        let opts = SamplerOptions {
            steps,
            noise_removal: NoiseRemoval::Ancestral,
            cache: true,
            batch_size: batch,
            seed: r as u64,
        };
        let t0 = Instant::now();
        sample(&tr.model, &process, batch, o.len, &opts, None)?;
        let s = t0.elapsed().as_secs_f64();
        println!(
            "{steps} steps, batch {batch}: {:.1} ms, {:.0} tokens/s",
            s * 1e3,
            (batch * o.len) as f64 / s
        );
    }
    Ok(())
}
