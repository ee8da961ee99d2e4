//! Times the fused head (projection + weighted NLL, forward and backward) alone at the benchmark
//! shape: `cargo run --release --example head_probe -- [iters]`.
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use idlm::nn::ops::head_nll::{NllRows, head_nll};

fn main() -> anyhow::Result<()> {
    idlm::runtime::tune_malloc();
    let iters: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let (m, k, v) = (4096usize, 256usize, 8192usize);
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (m, k), &dev)?)?;
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.05, (v, k), &dev)?)?;
    let b = Var::from_tensor(&Tensor::zeros(v, candle_core::DType::F32, &dev)?)?;
    let rows = NllRows {
        targets: (0..m).map(|i| ((i * 104729) % (v - 1)) as u32).collect(),
        weights: vec![1.0 / m as f32; m],
        exclude: Some(v - 1),
    };
    for i in 0..iters {
        let t0 = Instant::now();
        let loss = head_nll(x.as_tensor(), w.as_tensor(), b.as_tensor(), &rows)?.sum_all()?;
        let _ = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let g = loss.backward()?;
        let _ = g.get(w.as_tensor()).map(|t| t.dims().to_vec());
        let t2 = Instant::now();
        println!(
            "head {i}: {:.1} ms fwd {:.1} bwd {:.1}",
            (t2 - t0).as_secs_f64() * 1e3,
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3
        );
    }
    Ok(())
}
