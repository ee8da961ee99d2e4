//! Duo teachers end to end on a tiny corpus: the Gaussian curriculum then the plain NELBO, exact
//! resume across the curriculum's end, and sampling with both noise removals through the binary.

mod common;

use std::path::Path;

use common::{err, idlm, ok};
use idlm::checkpoint;
use idlm::config::RunConfig;
use idlm::run::TrainRunOptions;
use idlm::train::run_training;

fn cfg(max_steps: u64) -> RunConfig {
    RunConfig::load("tiny")
        .unwrap()
        .with_overrides(&[
            "train.process=\"duo\"".into(),
            format!("train.max_steps={max_steps}"),
            "train.ckpt_every=3".into(),
            "train.eval_every=3".into(),
            "train.log_every=1".into(),
            "train.grad_accum=2".into(),
            "model.dropout=0.1".into(),
            "model.time_conditioning=true".into(),
            "duo.curriculum_end=4".into(),
            "duo.tau_log10_start=-1.0".into(),
            "duo.tau_log10_end=-3.0".into(),
            "duo.table_points=2000".into(),
        ])
        .unwrap()
}

fn train(run: &Path, data: &Path, max_steps: u64, resume: bool) {
    run_training(&TrainRunOptions {
        run_dir: run.to_path_buf(),
        data_dir: data.to_path_buf(),
        cfg: cfg(max_steps),
        resume,
        progress: false,
    })
    .unwrap();
}

#[test]
fn duo_curriculum_training_resumes_exactly_and_samples() {
    let tmp = tempfile::tempdir().unwrap();
    // The T(gamma) table is cached under IDLM_HOME.
    unsafe { std::env::set_var("IDLM_HOME", tmp.path().join("cache")) };
    let data = common::tiny_data(tmp.path(), 300, 32);
    let a = tmp.path().join("a");
    train(&a, &data, 6, false);
    let b = tmp.path().join("b");
    train(&b, &data, 3, false);
    train(&b, &data, 6, true);
    let (la, lb) = (
        common::metric_lines(&a, "loss"),
        common::metric_lines(&b, "loss"),
    );
    assert_eq!(la.len(), 6);
    assert!(la.iter().all(|(_, l)| l.is_finite() && *l > 0.0), "{la:?}");
    // Gradients reach the weights in both phases (a fused op without backward would give 0).
    let gn = common::metric_lines(&a, "grad_norm");
    assert!(gn.iter().all(|(_, g)| *g > 1e-6), "{gn:?}");
    // Steps 1-4 are curriculum steps, 5-6 plain NELBO; resuming at 3 crosses the switch.
    assert_eq!(la, lb, "resumed losses differ");
    let val = common::metric_lines(&a, "val_nelbo");
    assert_eq!(val.len(), 2);
    // The true NELBO of a barely trained model is near log N (uniform predictions).
    assert!(val.iter().all(|(_, v)| *v > 3.0 && *v < 8.0), "{val:?}");
    let ck = checkpoint::load(&a).unwrap();
    assert_eq!(ck.meta.process, idlm::process::ModelFamily::DUO);
    assert_eq!(ck.meta.config.duo.curriculum_end, 4);
    let table = tmp.path().join("cache/duality");
    assert_eq!(
        std::fs::read_dir(&table).unwrap().count(),
        1,
        "one cached table"
    );

    // Sampling through the binary: greedy and ancestral noise removal, and a nucleus.
    let run = a.to_str().unwrap();
    for (nr, extra) in [("greedy", None), ("ancestral", Some("0.9"))] {
        let mut args = vec![
            "sample",
            "--ckpt",
            run,
            "--steps",
            "4",
            "-n",
            "2",
            "--noise-removal",
            nr,
            "--out",
        ];
        let out = format!("s-{nr}.jsonl");
        args.push(&out);
        if let Some(p) = extra {
            args.extend(["--top-p", p]);
        }
        ok(&idlm(&args, tmp.path()));
        let text = std::fs::read_to_string(tmp.path().join(&out)).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        for l in &lines {
            assert_eq!(l["process"], "duo");
            assert_eq!(l["noise_removal"], nr);
            // Duo calls the network at every step and once more for noise removal.
            assert_eq!(l["nfe"], 5);
            assert_eq!(l["ids"].as_array().unwrap().len(), 32);
        }
    }
    let e = err(&idlm(
        &["sample", "--ckpt", run, "--steps", "4", "--top-p", "1.5"],
        tmp.path(),
    ));
    assert!(e.contains("nucleus"), "{e}");
}
