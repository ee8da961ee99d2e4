//! `idlm reproduce --preset mini-gsm` end to end on tiny models: every stage runs (synth-math,
//! pairs data, MDLM and Duo teachers, IDLM / SDTT / DCD / IDLM-Duo / IDLM-DCD students, the AR
//! baseline), every (model, steps, split) row is in summary.json with its answers file, the
//! accuracy is what the answers score to, and a second run reuses every trained stage and
//! reproduces every number.

mod common;

use std::path::Path;

use common::{err, ok};
use serde_json::Value;

/// Tiny settings for every network of the preset.
fn tiny_sets() -> Vec<String> {
    let mut sets: Vec<String> = [
        "train_problems=300",
        "test_problems=6",
        "vocab=300",
        "seq_len=256",
        "teacher_steps=[4, 2]",
        "student_steps=[2]",
        "gsm8k_problems=4",
        "batch_size=4",
        "duo.duo.curriculum_end=3",
        "duo.duo.table_points=2000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for t in ["mdlm", "duo"] {
        for x in [
            "model.hidden_size=32",
            "model.cond_dim=16",
            "model.n_blocks=1",
            "model.n_heads=2",
            "model.mlp_ratio=2",
            "train.max_steps=6",
            "train.batch_size=4",
            "train.eval_every=3",
            "train.ckpt_every=3",
            "train.warmup_steps=1",
        ] {
            sets.push(format!("{t}.{x}"));
        }
    }
    for s in ["idlm-mdlm", "sdtt", "dcd", "idlm-duo", "idlm-dcd"] {
        for x in [
            "max_steps=2",
            "batch_size=2",
            "val_every=1",
            "val_samples=2",
            "val_steps=2",
            "ckpt_every=1",
        ] {
            sets.push(format!("{s}.{x}"));
        }
    }
    sets
}

/// The shared data folder (GSM8K) as the checkout sees it, when it is there.
fn shared_data() -> Option<std::path::PathBuf> {
    std::fs::canonicalize("../shared/data").ok()
}

fn run(dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "reproduce",
        "--preset",
        "mini-gsm",
        "--work",
        "w",
        "--out",
        "o",
    ];
    let sets = tiny_sets();
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    for s in extra {
        args.extend(["--set", s]);
    }
    std::process::Command::new(env!("CARGO_BIN_EXE_idlm"))
        .args(&args)
        .current_dir(dir)
        .env("IDLM_HOME", dir.join("cache"))
        .envs(shared_data().map(|s| ("IDLM_SHARED_DATA", s)))
        .output()
        .unwrap()
}

#[test]
fn mini_gsm_runs_every_stage_scores_by_execution_and_reproduces_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(&run(dir, &[]));
    let rows: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("o/summary.json")).unwrap())
            .unwrap();
    // What the run finds: GSM8K in the shared folder, or nowhere (its cache starts empty).
    let has_gsm8k =
        shared_data().is_some_and(|s| idlm::task::gsm8k::locate(Some(&s.join("gsm8k"))).is_ok());
    // 2 teachers x 2 steps + 5 students x 1 step + AR greedy and sampled, on both splits.
    let held_out = 2 * (2 * 2 + 5 + 2);
    assert_eq!(rows.len(), held_out + if has_gsm8k { 7 + 1 } else { 0 });
    let methods: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    for m in [
        "mdlm-teacher",
        "duo-teacher",
        "idlm-mdlm",
        "sdtt",
        "dcd",
        "idlm-duo",
        "idlm-dcd",
        "ar-greedy",
        "ar-sampled",
    ] {
        assert!(methods.contains(m), "{m} missing: {methods:?}");
    }
    for r in &rows {
        for k in [
            "method",
            "process",
            "steps",
            "accuracy",
            "accuracy_se",
            "split",
            "nfe",
        ] {
            assert!(r.get(k).is_some(), "{k} missing in {r}");
        }
        let split = r["split"].as_str().unwrap();
        let n = r["samples"].as_u64().unwrap() as usize;
        assert_eq!(n, if split == "gsm8k_test" { 4 } else { 6 }, "{r}");
        // The answers file behind the row scores to its accuracy.
        let stem = match r["steps"].as_u64() {
            Some(k) => format!("{}-{split}-{k}", r["method"].as_str().unwrap()),
            None => format!("{}-{split}", r["method"].as_str().unwrap()),
        };
        let answers = common::jsonl(&dir.join(format!("w/answers/{stem}.jsonl")));
        assert_eq!(answers.len(), n);
        let mut correct = 0;
        for a in &answers {
            let number = idlm::task::RefNumber::parse(a["number"].as_str().unwrap()).unwrap();
            let outcome = a["outcome"].as_str().unwrap();
            if outcome != "prompt_too_long" {
                let again =
                    idlm::task::score_text(a["completion"].as_str().unwrap(), None, &number);
                assert_eq!(again.class(), outcome, "{a}");
            }
            correct += usize::from(outcome == "correct");
        }
        let acc = r["accuracy"].as_f64().unwrap();
        assert_eq!(acc, correct as f64 / n as f64);
        let se = r["accuracy_se"].as_f64().unwrap();
        assert!((se - (acc * (1.0 - acc) / n as f64).sqrt()).abs() < 1e-12);
        let method = r["method"].as_str().unwrap();
        if r["process"] == "ar" {
            assert!(r["steps"].is_null());
        } else if split == "gsm8k_test" {
            // Each model answers GSM8K at its largest step count.
            let want = if method.ends_with("-teacher") { 4 } else { 2 };
            assert_eq!(r["steps"].as_u64(), Some(want), "{r}");
        } else {
            // A diffusion row spends about its steps (Duo's greedy tail adds one call).
            let (k, nfe) = (r["steps"].as_f64().unwrap(), r["nfe"].as_f64().unwrap());
            assert!(nfe >= 1.0 && nfe <= k + 1.0, "{r}");
        }
    }
    let readme = std::fs::read_to_string(dir.join("o/README.md")).unwrap();
    assert!(readme.contains("## Held-out numbers") && readme.contains("## Held-out templates"));
    assert!(readme.contains(if has_gsm8k {
        "GSM8K: the first 4"
    } else {
        "GSM8K: skipped"
    }));
    // Paired comparisons: each student against its source, and each IDLM student against the
    // baselines of its source, wherever both have a row at the same steps (GSM8K: students
    // only, the teachers answer it at 4 steps).
    let cmp: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("o/comparisons.json")).unwrap())
            .unwrap();
    assert_eq!(cmp.len(), 7 * 2 + if has_gsm8k { 3 } else { 0 }, "{cmp:?}");
    let acc_of = |m: &Value, split: &Value, steps: &Value| {
        rows.iter()
            .find(|r| &r["method"] == m && &r["split"] == split && &r["steps"] == steps)
            .map(|r| r["accuracy"].as_f64().unwrap())
            .unwrap()
    };
    for c in &cmp {
        let d = c["diff"].as_f64().unwrap();
        let want =
            acc_of(&c["a"], &c["split"], &c["steps"]) - acc_of(&c["b"], &c["split"], &c["steps"]);
        assert!((d - want).abs() < 1e-12, "{c}");
        let n = c["n"].as_f64().unwrap();
        let (ao, bo) = (c["a_only"].as_f64().unwrap(), c["b_only"].as_f64().unwrap());
        assert!(((ao - bo) / n - d).abs() < 1e-12, "{c}");
        assert!(c["se"].as_f64().unwrap() >= 0.0);
    }
    for (a, b) in [
        ("idlm-dcd", "dcd"),
        ("idlm-mdlm", "mdlm-teacher"),
        ("idlm-mdlm", "sdtt"),
        ("idlm-duo", "dcd"),
    ] {
        assert!(cmp.iter().any(|c| c["a"] == a && c["b"] == b), "{a} vs {b}");
    }
    assert!(readme.contains("Paired comparisons"));
    for f in [
        "accuracy_vs_steps_test_numbers.png",
        "accuracy_vs_seconds.png",
    ] {
        assert!(dir.join("o").join(f).is_file(), "{f}");
    }

    // A second run reuses every trained stage and keeps every answered row; half the rows'
    // records are removed, or made stale, first, so those are answered again and must agree.
    let stem_of = |r: &Value| match r["steps"].as_u64() {
        Some(k) => format!(
            "{}-{}-{k}",
            r["method"].as_str().unwrap(),
            r["split"].as_str().unwrap()
        ),
        None => format!(
            "{}-{}",
            r["method"].as_str().unwrap(),
            r["split"].as_str().unwrap()
        ),
    };
    let kept: Vec<bool> = (0..rows.len()).map(|i| i % 2 == 0).collect();
    for (i, r) in rows.iter().enumerate() {
        let f = dir.join(format!("w/answers/{}.row.json", stem_of(r)));
        assert!(f.is_file(), "no record of row {}", stem_of(r));
        match i % 4 {
            1 => std::fs::remove_file(&f).unwrap(),
            3 => {
                let mut v: Value =
                    serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
                v["key"] = "stale".into();
                std::fs::write(&f, v.to_string()).unwrap();
            }
            _ => {}
        }
    }
    let out = run(dir, &[]);
    ok(&out);
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        log.matches("kept from an earlier run").count(),
        kept.iter().filter(|k| **k).count(),
        "{log}"
    );
    let stages: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("o/stages.json")).unwrap()).unwrap();
    for s in stages["stages"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        if name.starts_with("train") || name.starts_with("distill") || name.starts_with("synth") {
            assert_eq!(s["reused"], true, "{name} ran again");
        }
        // A reused run reports the time it recorded when it was made, not this run's 0.
        if let Some(run) = name
            .strip_prefix("train ")
            .or(name.strip_prefix("distill "))
        {
            let ck = dir.join(format!("w/{run}/checkpoints"));
            let latest = std::fs::read_to_string(ck.join("latest")).unwrap();
            let meta: Value = serde_json::from_str(
                &std::fs::read_to_string(ck.join(latest.trim()).join("meta.json")).unwrap(),
            )
            .unwrap();
            let recorded = meta["distill"]["seconds"]
                .as_f64()
                .unwrap_or_else(|| meta["train_seconds"].as_f64().unwrap());
            assert!(recorded > 0.0, "{name}: {meta}");
            assert_eq!(s["seconds"].as_f64().unwrap(), recorded, "{name}");
        }
    }
    let again: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("o/summary.json")).unwrap())
            .unwrap();
    let key = |r: &Value| (r["method"].clone(), r["split"].clone(), r["steps"].clone());
    for ((a, b), kept) in rows.iter().zip(&again).zip(kept) {
        assert_eq!(key(a), key(b));
        assert_eq!(a["accuracy"], b["accuracy"]);
        assert_eq!(a["outcomes"], b["outcomes"]);
        assert_eq!(a["nfe"], b["nfe"]);
        if kept {
            assert_eq!(
                a["seconds_per_sample"],
                b["seconds_per_sample"],
                "{}",
                stem_of(a)
            );
        }
    }
    // A teacher trained on after its students were made: they are refused by name, not reused.
    let e = err(&run(dir, &["mdlm.train.max_steps=7"]));
    assert!(
        e.contains("w/idlm-mdlm was distilled from") && e.contains("remove"),
        "{e}"
    );
    // Data made with other settings is refused by name, not silently mixed.
    let e = err(&run(dir, &["style=\"fixed\""]));
    assert!(e.contains("was made with other settings"), "{e}");
}
