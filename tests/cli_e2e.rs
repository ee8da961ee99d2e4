//! The binary end to end on a tiny corpus with the `tiny` preset: prepare, train, sample, nll,
//! and the errors a user meets with bad input.

mod common;

use common::{err, idlm, ok};

#[test]
fn prepare_train_sample_nll_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let corpus = common::tiny_corpus(&dir.join("corpus"), 10, 300);
    let c = corpus.to_str().unwrap();
    ok(&idlm(
        &[
            "prepare",
            "--corpus",
            c,
            "--vocab",
            "300",
            "--seq-len",
            "32",
            "--valid-fraction",
            "0.2",
            "--out",
            "data",
        ],
        dir,
    ));
    let s = ok(&idlm(
        &[
            "train",
            "--data",
            "data",
            "--preset",
            "tiny",
            "--out",
            "run",
            "--max-steps",
            "8",
            "--quiet",
        ],
        dir,
    ));
    assert!(s.contains("trained to step 8"), "{s}");
    assert!(dir.join("run/config.toml").is_file());
    assert!(dir.join("run/metrics.jsonl").is_file());
    let s = ok(&idlm(
        &[
            "sample", "--ckpt", "run", "--steps", "8", "-n", "3", "--seed", "4", "--out", "s.jsonl",
        ],
        dir,
    ));
    assert!(s.is_empty());
    let text = std::fs::read_to_string(dir.join("s.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l["ids"].as_array().unwrap().len(), 32);
        assert_eq!(l["steps"], 8);
        assert!(l["nfe"].as_u64().unwrap() >= 1 && l["nfe"].as_u64().unwrap() <= 9);
        assert!(l["text"].is_string() && l["seconds"].is_number());
    }
    // The same seed reproduces the output exactly.
    ok(&idlm(
        &[
            "sample", "--ckpt", "run", "--steps", "8", "-n", "3", "--seed", "4", "--out",
            "s2.jsonl",
        ],
        dir,
    ));
    let ids = |p: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join(p))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["ids"].clone())
            .collect()
    };
    assert_eq!(ids("s.jsonl"), ids("s2.jsonl"));
    let s = ok(&idlm(&["nll", "--ckpt", "run", "--time-samples", "2"], dir));
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    let nelbo = v["nelbo_per_token"].as_f64().unwrap();
    assert!(nelbo.is_finite() && nelbo > 0.0);
    assert!((v["perplexity_bound"].as_f64().unwrap() - nelbo.exp()).abs() < 1e-6 * nelbo.exp());

    // Bad input: each gives a clear error and leaves the run intact.
    let e = err(&idlm(&["sample", "--ckpt", "run", "--steps", "0"], dir));
    assert!(e.contains("at least 1"), "{e}");
    let e = err(&idlm(&["sample", "--ckpt", "run", "--len", "999"], dir));
    assert!(e.contains("length"), "{e}");
    let e = err(&idlm(&["sample", "--ckpt", "nowhere"], dir));
    assert!(e.contains("nowhere") && e.contains("does not exist"), "{e}");
    let e = err(&idlm(
        &[
            "train",
            "--data",
            "data",
            "--preset",
            "tiny",
            "--out",
            "run2",
            "--set",
            "train.bogus=1",
        ],
        dir,
    ));
    assert!(e.contains("unknown config key 'train.bogus'"), "{e}");
    let e = err(&idlm(
        &[
            "train", "--data", "data", "--preset", "nope", "--out", "run3",
        ],
        dir,
    ));
    assert!(e.contains("neither a preset"), "{e}");
    std::fs::write(dir.join("bad.toml"), "[model]\nwidth = 3\n").unwrap();
    let e = err(&idlm(
        &[
            "train", "--data", "data", "--preset", "bad.toml", "--out", "run4",
        ],
        dir,
    ));
    assert!(e.contains("unknown field") && e.contains("width"), "{e}");
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let e = err(&idlm(&["prepare", "--corpus", "empty", "--out", "d2"], dir));
    assert!(e.contains("empty"), "{e}");
    // A checkpoint scored against data from another tokenizer is refused.
    ok(&idlm(
        &[
            "prepare",
            "--corpus",
            c,
            "--vocab",
            "280",
            "--seq-len",
            "32",
            "--valid-fraction",
            "0.2",
            "--out",
            "data2",
        ],
        dir,
    ));
    let e = err(&idlm(&["nll", "--ckpt", "run", "--data", "data2"], dir));
    assert!(e.contains("tokenizer mismatch"), "{e}");
    let e = err(&idlm(
        &["train", "--data", "data2", "--out", "run", "--resume"],
        dir,
    ));
    assert!(e.contains("tokenizer mismatch"), "{e}");
    // The run is untouched by all of the above.
    ok(&idlm(
        &["sample", "--ckpt", "run", "--steps", "2", "-n", "1"],
        dir,
    ));
}
