//! Distillation runs end to end on tiny data: resume gives the same next losses, SDTT rounds
//! advance, bad teachers are refused, and the student samples through `idlm sample`'s path.

mod common;

use std::path::Path;

use idlm::config::RunConfig;
use idlm::distill::{DistillConfig, DistillRunOptions, Method, run_distill};
use idlm::run::TrainRunOptions;
use idlm::train::run_training;

fn teacher(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = common::tiny_data(root, 300, 32);
    let run = root.join("teacher");
    let cfg = RunConfig::load("tiny")
        .unwrap()
        .with_overrides(&["train.max_steps=4".into(), "train.eval_every=0".into()])
        .unwrap();
    run_training(&TrainRunOptions {
        run_dir: run.clone(),
        data_dir: data.clone(),
        cfg,
        resume: false,
        progress: false,
    })
    .unwrap();
    (data, run)
}

fn cfg(method: Method, max_steps: u64) -> DistillConfig {
    DistillConfig {
        method,
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
        sdtt_base_steps: 16,
        sdtt_round_steps: 2,
        ..DistillConfig::default()
    }
}

fn distill(run: &Path, teacher: &Path, c: DistillConfig, resume: bool) {
    run_distill(&DistillRunOptions {
        run_dir: run.to_path_buf(),
        teacher: teacher.to_path_buf(),
        data_dir: None,
        cfg: c,
        resume,
        progress: false,
        genppl_model: None,
    })
    .unwrap();
}

#[test]
fn idlm_and_sdtt_resume_with_identical_losses() {
    idlm::runtime::tune_malloc();
    let tmp = tempfile::tempdir().unwrap();
    let (_, t) = teacher(tmp.path());
    for (method, key) in [(Method::Idlm, "student_loss"), (Method::Sdtt, "loss")] {
        let a = tmp.path().join(format!("{method:?}-a"));
        distill(&a, &t, cfg(method, 6), false);
        let b = tmp.path().join(format!("{method:?}-b"));
        distill(&b, &t, cfg(method, 2), false);
        distill(&b, &t, cfg(method, 6), true);
        let (la, lb) = (common::metric_lines(&a, key), common::metric_lines(&b, key));
        assert_eq!(la.len(), 6, "{la:?}");
        assert_eq!(la, lb, "{method:?}");
        if method == Method::Idlm {
            // The fake's first update runs at warmup lr 0: student = fake = teacher, so the
            // first student gradient is exactly zero.
            assert_eq!(common::metric_lines(&a, "student_grad_norm")[0].1, 0.0);
            assert_eq!(
                common::metric_lines(&a, "fake_loss"),
                common::metric_lines(&b, "fake_loss")
            );
        } else {
            let rounds: Vec<f64> = common::metric_lines(&a, "round")
                .iter()
                .map(|x| x.1)
                .collect();
            assert_eq!(rounds, vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0]);
        }
        // The student checkpoint samples like a teacher's.
        let ck = idlm::checkpoint::load(&a).unwrap();
        assert!(ck.meta.distill.is_some());
        let model = ck.dit(true).unwrap();
        let process =
            idlm::process::Masked::new(ck.meta.data.vocab_size, ck.meta.data.mask_id).unwrap();
        let opts = idlm::sample::SamplerOptions {
            steps: 4,
            ..Default::default()
        };
        let s = idlm::sample::sample(&model, &process, 2, 32, &opts, None).unwrap();
        assert!(s.iter().all(|x| !x.ids.contains(&ck.meta.data.mask_id)));
    }
}

#[test]
fn bad_teachers_and_runs_are_refused_with_named_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, t) = teacher(tmp.path());
    let run = |teacher: &Path, out: &Path, resume: bool| {
        run_distill(&DistillRunOptions {
            run_dir: out.to_path_buf(),
            teacher: teacher.to_path_buf(),
            data_dir: None,
            cfg: cfg(Method::Idlm, 2),
            resume,
            progress: false,
            genppl_model: None,
        })
        .map(|_| ())
        .unwrap_err()
        .to_string()
    };
    let e = run(&tmp.path().join("nope"), &tmp.path().join("x"), false);
    assert!(e.contains("does not exist"), "{e}");
    // Resuming a teacher run as if it were a distillation.
    let e = run(&t, &t, true);
    assert!(e.contains("not a distillation checkpoint"), "{e}");
    // A corrupt fake file.
    let out = tmp.path().join("d");
    distill(&out, &t, cfg(Method::Idlm, 2), false);
    let dir = idlm::checkpoint::resolve(&out).unwrap();
    std::fs::write(dir.join("fake.safetensors"), b"garbage").unwrap();
    let e = run(&t, &out, true);
    assert!(e.contains("fake.safetensors"), "{e}");
    // A second run into the same directory without --resume.
    let e = run(&t, &out, false);
    assert!(e.contains("--resume"), "{e}");
}

#[test]
fn naive_ablation_has_no_fake_and_still_trains_the_student() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, t) = teacher(tmp.path());
    let c = DistillConfig {
        generator: idlm::distill::GeneratorLoss::Naive,
        ..cfg(Method::Idlm, 2)
    };
    let a = tmp.path().join("naive");
    distill(&a, &t, c.clone(), false);
    let dir = idlm::checkpoint::resolve(&a).unwrap();
    assert!(!dir.join("fake.safetensors").exists());
    // No fake loss is recorded, and without the fake term the student loss is the teacher's
    // soft NELBO on the student's samples: positive, with a non-zero gradient.
    let txt = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = txt
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v.get("student_loss").is_some())
        .unwrap();
    assert!(first["fake_loss"].is_null(), "{first}");
    assert!(first["student_loss"].as_f64().unwrap() > 0.0);
    assert!(common::metric_lines(&a, "student_grad_norm")[1].1 > 0.0);
    // Resume works without a fake file.
    distill(&a, &t, DistillConfig { max_steps: 3, ..c }, true);
    assert_eq!(common::metric_lines(&a, "student_loss").len(), 3);
}
