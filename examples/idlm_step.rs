//! One IDLM-MDLM alternation of the benchmark DiT (and a teacher step before it) timed by
//! `idlm bench`'s IDLM part, for `perf record`: `cargo run --release --example idlm_step -- [iters]`.
use idlm::bench::BenchOptions;
use idlm::train::Trainer;

fn main() -> anyhow::Result<()> {
    idlm::runtime::tune_malloc();
    let iters: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let o = BenchOptions {
        iters,
        ..BenchOptions::default()
    };
    let cfg = idlm::bench::bench_config(&o)?;
    let tr = Trainer::new(&cfg, &cfg.model.dit(o.vocab, o.len))?;
    let r = idlm::bench::idlm::idlm_bench(&o, &tr)?;
    println!(
        "teacher step {:.1} ms, IDLM alternation {:.1} ms ({:.2}x)",
        r.teacher_step_ms, r.idlm_alternation_ms, r.idlm_alternation_per_teacher_step
    );
    Ok(())
}
