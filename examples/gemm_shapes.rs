//! GFLOP/s of the benchmark DiT's GEMM shapes with the `gemm` crate, in the three layouts the
//! forward and backward use (NN, A transposed, B transposed) and on one thread:
//! `cargo run --release --example gemm_shapes`. Compare with `torch.mm` on the same shapes.
use std::time::Instant;

fn gflops(m: usize, k: usize, n: usize, a_t: bool, b_t: bool, threads: usize) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0f32; m * n];
    // A is m x k, stored row-major or transposed; likewise B (k x n).
    let (a_rs, a_cs) = if a_t { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if b_t { (1, k) } else { (n, 1) };
    // gemm_par runs on the current rayon pool: a one-thread pool gives the single-thread figure.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        pool.install(|| {
            idlm::nn::ops::gemm_par(m, n, k, &mut c, false, &a, a_rs, a_cs, &b, b_rs, b_cs)
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * n * k) as f64 / best / 1e9
}

fn main() {
    let t = rayon::current_num_threads();
    println!("shape (m k n): GFLOP/s NN, A^T, B^T on {t} threads | NN on 1 thread");
    for (name, m, k, n) in [
        ("square", 2048, 2048, 2048),
        ("head", 4096, 256, 8192),
        ("qkv", 4096, 256, 768),
        ("mlp0", 4096, 256, 1024),
        ("mlp2", 4096, 1024, 256),
        ("out", 4096, 256, 256),
        ("dW mlp0", 256, 4096, 1024),
        ("dW head", 256, 4096, 8192),
        ("dx head", 4096, 8192, 256),
    ] {
        println!(
            "{name:8} ({m} {k} {n}): {:6.1} {:6.1} {:6.1} | {:6.1}",
            gflops(m, k, n, false, false, t),
            gflops(m, k, n, true, false, t),
            gflops(m, k, n, false, true, t),
            gflops(m, k, n, false, false, 1)
        );
    }
}
