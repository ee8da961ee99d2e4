//! The 2048^3 GEMM probe of `idlm bench`, run back to back: `cargo run --release --example
//! peak_probe -- [runs]`, to see how this host's GEMM rate drifts.
fn main() {
    idlm::runtime::tune_malloc();
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut p = idlm::bench::PeakProbe::new();
    for _ in 0..runs {
        println!("{:.1}", p.measure());
    }
}
