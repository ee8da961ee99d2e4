//! The CUDA path against the CPU: the same tiny run (weights, data, noise) gives the same losses.
//! Built only with `--features cuda`, and then it needs a GPU: a CUDA build is a claim that one
//! is there, so a missing device is a failure, not a skip.
#![cfg(feature = "cuda")]

mod common;

use std::path::Path;

use idlm::config::RunConfig;
use idlm::run::TrainRunOptions;
use idlm::train::run_training;

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.get("loss")?.as_f64()
        })
        .collect()
}

fn train(run: &Path, data: &Path) -> Vec<f64> {
    let cfg = RunConfig::load("tiny")
        .unwrap()
        .with_overrides(&[
            "train.max_steps=5".into(),
            "train.ckpt_every=5".into(),
            "train.eval_every=5".into(),
            "train.log_every=1".into(),
            "model.dropout=0.0".into(),
        ])
        .unwrap();
    run_training(&TrainRunOptions {
        run_dir: run.to_path_buf(),
        data_dir: data.to_path_buf(),
        cfg,
        resume: false,
        progress: false,
    })
    .unwrap();
    losses(run)
}

/// One test function: it switches the process-wide device half way.
#[test]
fn cuda_training_matches_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::tiny_data(tmp.path(), 300, 32);
    let cpu = train(&tmp.path().join("cpu"), &data);
    idlm::runtime::set_device("cuda").expect("a CUDA build needs a GPU to test on");
    assert!(idlm::runtime::device().is_cuda());
    let gpu = train(&tmp.path().join("cuda"), &data);
    assert_eq!(cpu.len(), 5);
    assert_eq!(cpu.len(), gpu.len());
    for (i, (a, b)) in cpu.iter().zip(&gpu).enumerate() {
        assert!(
            (a - b).abs() <= 1e-3 * a.abs().max(1.0),
            "step {}: cpu {a} vs cuda {b}",
            i + 1
        );
    }
}
