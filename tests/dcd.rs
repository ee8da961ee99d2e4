//! DCD on a tiny Duo teacher: exact resume, rounds that double dt and refresh the teacher, the
//! student sampling through the Duo sampler, and methods refused for the wrong teacher process.

mod common;

use std::path::{Path, PathBuf};

use idlm::checkpoint;
use idlm::distill::{DistillConfig, Method};
use idlm::process::duality::t_of_gamma;

fn teacher(root: &Path, data: &Path, process: &str) -> PathBuf {
    let run = root.join(format!("teacher-{process}"));
    common::train_tiny(
        &run,
        data,
        &[
            format!("train.process=\"{process}\""),
            "train.max_steps=4".into(),
            "train.eval_every=0".into(),
            "model.time_conditioning=true".into(),
        ],
    );
    run
}

fn cfg(max_steps: u64) -> DistillConfig {
    DistillConfig {
        method: Method::Dcd,
        batch_size: 4,
        grad_accum: 2,
        lr: 1e-3,
        warmup_steps: 2,
        max_steps,
        val_every: 2,
        val_samples: 2,
        val_steps: 4,
        ckpt_every: 2,
        log_every: 1,
        dropout: 0.1,
        dcd_base_steps: 8,
        dcd_round_steps: 2,
        ..DistillConfig::default()
    }
}

#[test]
fn dcd_alpha_window_is_the_reference_gamma_window() {
    // distillation.yaml: gamma in [-4, -1] for GPT-2's N = 50257.
    let c = DistillConfig::default();
    assert!((t_of_gamma(50257, -4.0) - c.dcd_alpha_max).abs() < 1e-5);
    assert!((t_of_gamma(50257, -1.0) - c.dcd_alpha_min).abs() < 1e-6);
}

#[test]
fn dcd_resumes_exactly_advances_rounds_and_refuses_wrong_teachers() {
    idlm::runtime::tune_malloc();
    let tmp = tempfile::tempdir().unwrap();
    unsafe { std::env::set_var("IDLM_HOME", tmp.path().join("cache")) };
    let data = common::tiny_data(tmp.path(), 300, 32);
    let t = teacher(tmp.path(), &data, "duo");
    let a = tmp.path().join("a");
    common::distill(&a, &t, cfg(6), false).unwrap();
    let b = tmp.path().join("b");
    common::distill(&b, &t, cfg(2), false).unwrap();
    common::distill(&b, &t, cfg(6), true).unwrap();
    let (la, lb) = (
        common::metric_lines(&a, "loss"),
        common::metric_lines(&b, "loss"),
    );
    assert_eq!(la.len(), 6);
    assert!(la.iter().all(|(_, l)| l.is_finite() && *l >= 0.0), "{la:?}");
    assert_eq!(la, lb, "resumed DCD losses differ");
    let rounds = common::metric_lines(&a, "round");
    let dts = common::metric_lines(&a, "dt");
    assert_eq!(
        rounds.iter().map(|r| r.1 as u64).collect::<Vec<_>>(),
        vec![0, 0, 1, 1, 2, 2]
    );
    assert_eq!(
        dts.iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![0.125, 0.125, 0.25, 0.25, 0.5, 0.5]
    );
    let ck = checkpoint::load(&a).unwrap();
    assert_eq!(ck.meta.process, idlm::process::ModelFamily::DUO);
    // The student samples like any Duo checkpoint.
    let o = common::idlm(
        &[
            "sample",
            "--ckpt",
            a.to_str().unwrap(),
            "--steps",
            "4",
            "-n",
            "2",
            "--out",
            "s.jsonl",
        ],
        tmp.path(),
    );
    common::ok(&o);
    // SDTT refuses a Duo teacher, DCD a masked one; nothing is written.
    let c = DistillConfig {
        method: Method::Sdtt,
        ..cfg(2)
    };
    let out = tmp.path().join("x");
    let e = common::distill(&out, &t, c, false).unwrap_err().to_string();
    assert!(e.contains("SDTT distils masked"), "{e}");
    assert!(!out.join("checkpoints").exists());
    let tm = teacher(tmp.path(), &data, "mdlm");
    let e = common::distill(&tmp.path().join("y"), &tm, cfg(2), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("DCD distils uniform-state"), "{e}");
}
