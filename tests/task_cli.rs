//! The math-task commands through the binary: `idlm data synth-math`, `idlm data gsm8k` and
//! `idlm eval --metrics accuracy --answers`.

mod common;

use common::{err, idlm, jsonl as lines, ok};
use serde_json::{Value, json};

#[test]
fn synth_math_files_are_seeded_and_score_by_execution() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let args = |out: &'static str, seed: &'static str| {
        vec![
            "data",
            "synth-math",
            "--out",
            out,
            "--seed",
            seed,
            "--train",
            "300",
            "--test",
            "40",
        ]
    };
    let s = ok(&idlm(&args("a", "3"), dir));
    assert!(s.contains("train: 300 problems"), "{s}");
    ok(&idlm(&args("b", "3"), dir));
    ok(&idlm(&args("c", "4"), dir));
    for f in ["train.jsonl", "test_numbers.jsonl", "test_templates.jsonl"] {
        let a = std::fs::read(dir.join("a").join(f)).unwrap();
        assert_eq!(a, std::fs::read(dir.join("b").join(f)).unwrap(), "{f}");
        assert_ne!(a, std::fs::read(dir.join("c").join(f)).unwrap(), "{f}");
    }
    let train = lines(&dir.join("a/train.jsonl"));
    assert_eq!(train.len(), 300);
    for l in &train {
        assert!(l["prompt"].is_string() && l["answer"].is_string() && l["number"].is_i64());
    }
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("a/synth_math.json")).unwrap())
            .unwrap();
    assert_eq!(info["seed"], 3);

    // Samples as `idlm sample --prompts test_numbers.jsonl` writes them: the reference program for
    // even lines (once in `text` after the prompt, once as `completion`), a wrong one for odd.
    let answers = dir.join("a/test_numbers.jsonl");
    let refs = lines(&answers);
    assert_eq!(refs.len(), 40);
    let mut body = String::new();
    for (i, r) in refs.iter().enumerate() {
        let prompt = r["prompt"].as_str().unwrap();
        let program = if i % 2 == 0 {
            r["answer"].as_str().unwrap().to_string()
        } else {
            format!(
                "def simple_math_problem() -> int:\n    return {}\n",
                r["number"].as_i64().unwrap() + 1
            )
        };
        let line = if i % 4 == 0 {
            json!({"text": format!("{prompt} {program}<|endoftext|>"), "prompt": prompt, "prompt_index": i})
        } else {
            json!({"text": "ignored", "completion": format!("{program}<|endoftext|>"), "prompt_index": i})
        };
        body.push_str(&format!("{line}\n"));
    }
    std::fs::write(dir.join("s.jsonl"), body).unwrap();
    let ans = answers.to_str().unwrap();
    ok(&idlm(
        &[
            "eval",
            "s.jsonl",
            "--metrics",
            "accuracy",
            "--answers",
            ans,
            "--out",
            "e.json",
        ],
        dir,
    ));
    let e: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("e.json")).unwrap()).unwrap();
    assert_eq!(e["accuracy"], 0.5);
    assert!((e["accuracy_se"].as_f64().unwrap() - (0.25f64 / 40.0).sqrt()).abs() < 1e-12);
    assert_eq!(e["accuracy_correct"], 20);
    assert_eq!(e["accuracy_outcomes"]["wrong_number"], 20);
    assert_eq!(e["protocol"], "idlm-eval-v1");
    assert!(e["protocol_params"]["accuracy"]["comparison"].is_string());

    // Named errors.
    let m = err(&idlm(&["eval", "s.jsonl", "--metrics", "accuracy"], dir));
    assert!(m.contains("--answers"), "{m}");
    let m = err(&idlm(
        &[
            "eval",
            "s.jsonl",
            "--metrics",
            "accuracy",
            "--answers",
            "nope.jsonl",
        ],
        dir,
    ));
    assert!(m.contains("nope.jsonl"), "{m}");
    let m = err(&idlm(
        &["data", "gsm8k", "--dir", "no-such-dir", "--out", "g"],
        dir,
    ));
    assert!(m.contains("no package registry ships"), "{m}");
}

#[test]
#[ignore = "needs ../shared/data beside the checkout: run by .ci/run"]
fn gsm8k_files_from_the_shared_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = idlm::data::shared_data_dir().expect("../shared/data");
    let src = std::fs::canonicalize(shared.join("gsm8k")).unwrap();
    let s = ok(&idlm(
        &[
            "data",
            "gsm8k",
            "--dir",
            src.to_str().unwrap(),
            "--out",
            "g",
        ],
        tmp.path(),
    ));
    assert!(s.contains("of 7473 train problems converted"), "{s}");
    let test = lines(&tmp.path().join("g/test.jsonl"));
    assert_eq!(test.len(), 1319);
    assert!(
        test.iter()
            .all(|l| l["prompt"].is_string() && l["number"].is_number())
    );
    let train = lines(&tmp.path().join("g/train.jsonl"));
    assert!(train.len() > 7000, "{}", train.len());
    // The converted train pairs score 100% against themselves.
    let body: String = train
        .iter()
        .enumerate()
        .map(|(i, l)| json!({"text": format!("{}{}", l["prompt"].as_str().unwrap(), l["answer"].as_str().unwrap()), "prompt": l["prompt"], "prompt_index": i}).to_string() + "\n")
        .collect();
    std::fs::write(tmp.path().join("s.jsonl"), body).unwrap();
    let out = ok(&idlm(
        &[
            "eval",
            "s.jsonl",
            "--metrics",
            "accuracy",
            "--answers",
            "g/train.jsonl",
        ],
        tmp.path(),
    ));
    let e: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(e["accuracy"], 1.0);
}
