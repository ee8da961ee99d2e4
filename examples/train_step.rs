//! The benchmark DiT's train step (or forward) in a loop, for `perf record`: `cargo run --release
//! --example train_step -- [train|forward|mdlm] [iters]`.
use std::time::Instant;

use candle_core::Tensor;
use idlm::nn::DitInput;
use idlm::nn::ops::head_nll::NllRows;
use idlm::train::Trainer;

fn main() -> anyhow::Result<()> {
    idlm::runtime::tune_malloc();
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("train");
    let iters: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let o = idlm::bench::BenchOptions::default();
    let (v, d, b, l) = (o.vocab, o.hidden, o.batch, o.len);
    let cfg = idlm::bench::bench_config(&o)?;
    let dit = cfg.model.dit(v, l);
    let mut tr = Trainer::new(&cfg, &dit)?;
    let dev = idlm::runtime::device();
    let inp: Vec<u32> = (0..b * l).map(|i| ((i * 7919) % v) as u32).collect();
    let tgt: Vec<u32> = (0..b * l)
        .map(|i| ((i * 104729) % (v - 1)) as u32)
        .collect();
    let rows = NllRows {
        targets: tgt.clone(),
        weights: vec![1.0 / (b * l) as f32; b * l],
        exclude: None,
    };
    let x = Tensor::from_slice(&inp, (b, l), &dev)?;
    let sigma = Tensor::from_vec(vec![0.5f32; b], b, &dev)?;
    for i in 0..iters {
        let t0 = Instant::now();
        match what {
            "forward" => {
                let logits = tr.model.forward(DitInput::Ids(&x), &sigma, None)?;
                let _ = logits.flatten_all()?.get(0)?.to_scalar::<f32>()?;
            }
            _ => {
                tr.optimize((b * l) as u64, |model, _, _| {
                    let f = model.features(DitInput::Ids(&x), &sigma, None)?;
                    Ok(model.head_nll(&f.reshape((b * l, d))?, &rows)?.sum_all()?)
                })?;
            }
        }
        println!("{what} {i}: {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(())
}
