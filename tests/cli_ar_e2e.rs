//! The AR baseline through the binary on a tiny corpus with the `tiny` preset: train (and resume),
//! sample with the KV cache into the diffusion samples' JSONL, `eval` it unchanged, exact NLL, and
//! the errors a user meets when AR and diffusion checkpoints are mixed up.

mod common;

use common::{err, idlm, jsonl, ok};

#[test]
fn ar_train_sample_eval_nll_through_the_binary() {
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
    let train = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "train", "--data", "data", "--preset", "tiny", "--out", out, "--quiet",
        ];
        args.extend_from_slice(extra);
        idlm(&args, dir)
    };
    let s = ok(&train("ar", &["--process", "ar", "--max-steps", "6"]));
    assert!(
        s.contains("trained to step 6") && s.contains("val NLL"),
        "{s}"
    );
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("ar/checkpoints/step-00000006/meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["process"], "ar");
    let config = std::fs::read_to_string(dir.join("ar/config.toml")).unwrap();
    assert!(config.contains("process = \"ar\""), "{config}");
    let metrics = jsonl(&dir.join("ar/metrics.jsonl"));
    let val: Vec<&serde_json::Value> = metrics
        .iter()
        .filter(|m| m.get("val_nll").is_some())
        .collect();
    assert!(!val.is_empty());
    for m in &val {
        let nll = m["val_nll"].as_f64().unwrap();
        assert!((m["val_ppl"].as_f64().unwrap() - nll.exp()).abs() < 1e-9 * nll.exp());
    }
    // Resume continues the AR run (the process comes from the saved config).
    let s = ok(&idlm(
        &[
            "train",
            "--data",
            "data",
            "--out",
            "ar",
            "--resume",
            "--max-steps",
            "8",
            "--quiet",
        ],
        dir,
    ));
    assert!(s.contains("trained to step 8"), "{s}");

    let sample = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--ckpt",
            "ar",
            "-n",
            "3",
            "--temperature",
            "0.9",
            "--top-p",
            "0.9",
            "--seed",
            "4",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        idlm(&args, dir)
    };
    assert!(ok(&sample("s.jsonl", &[])).is_empty());
    let lines = jsonl(&dir.join("s.jsonl"));
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l["ids"].as_array().unwrap().len(), 32);
        assert_eq!(l["ids"][0], meta["data"]["bos_id"]);
        assert_eq!(
            (l["steps"].as_u64(), l["nfe"].as_u64()),
            (Some(31), Some(31))
        );
        assert!(l["text"].is_string() && l["seconds"].is_number());
        assert_eq!(
            (l["process"].as_str(), l["top_p"].as_f64()),
            (Some("ar"), Some(0.9))
        );
    }
    // Sample i uses stream i: the batching does not change the output.
    ok(&sample("s1.jsonl", &["--batch-size", "1"]));
    let ids = |v: &[serde_json::Value]| v.iter().map(|l| l["ids"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&lines), ids(&jsonl(&dir.join("s1.jsonl"))));
    // The same `idlm eval` reads it (entropy needs no evaluation model).
    let e = ok(&idlm(&["eval", "s.jsonl", "--metrics", "entropy"], dir));
    assert!(e.contains("entropy"), "{e}");

    let s = ok(&idlm(&["nll", "--ckpt", "ar"], dir));
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    let nll = v["nll_per_token"].as_f64().unwrap();
    assert!(nll.is_finite() && nll > 0.0 && v["exact"] == true);
    assert!((v["perplexity"].as_f64().unwrap() - nll.exp()).abs() < 1e-6 * nll.exp());

    // Bad input: clear errors, runs untouched.
    let e = err(&idlm(&["sample", "--ckpt", "ar", "--steps", "8"], dir));
    assert!(e.contains("AR model") && e.contains("--steps"), "{e}");
    let e = err(&idlm(&["sample", "--ckpt", "ar", "--top-p", "1.5"], dir));
    assert!(e.contains("top-p 1.5"), "{e}");
    let e = err(&idlm(&["sample", "--ckpt", "ar", "--temperature=-1"], dir));
    assert!(e.contains("temperature"), "{e}");
    let e = err(&idlm(&["sample", "--ckpt", "ar", "--len", "999"], dir));
    assert!(e.contains("length"), "{e}");
    ok(&train("dit", &["--max-steps", "2"]));
    let e = err(&idlm(&["sample", "--ckpt", "dit", "--top-p", "0.9"], dir));
    assert!(e.contains("MDLM model"), "{e}");
    let e = err(&idlm(
        &["sample", "--ckpt", "dit", "--temperature", "0.9"],
        dir,
    ));
    assert!(e.contains("applies to AR checkpoints"), "{e}");
    let e = err(&idlm(
        &[
            "train",
            "--data",
            "data",
            "--out",
            "dit",
            "--resume",
            "--process",
            "ar",
        ],
        dir,
    ));
    assert!(e.contains("diffusion model (process 'mdlm')"), "{e}");
    let e = err(&idlm(
        &[
            "train",
            "--data",
            "data",
            "--out",
            "ar",
            "--resume",
            "--process",
            "mdlm",
        ],
        dir,
    ));
    assert!(e.contains("autoregressive model"), "{e}");
    let e = err(&train("ar2", &["--process", "gpt"]));
    assert!(e.contains("gpt"), "{e}");
    ok(&idlm(&["sample", "--ckpt", "ar", "-n", "1"], dir));
    ok(&idlm(
        &["sample", "--ckpt", "dit", "--steps", "2", "-n", "1"],
        dir,
    ));
}
