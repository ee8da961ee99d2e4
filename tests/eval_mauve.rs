//! MAUVE under protocol idlm-eval-v1 with the real all-MiniLM-L6-v2 feature model.
//!
//! The model tests need it in the cache (`idlm data fetch`): they are `#[ignore]`d and `.ci/run`
//! runs them after fetching (they fail when it is absent). The reference-reading and CLI-error
//! tests need no model.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use idlm::data::{DataDir, cache_dir};
use idlm::eval::MiniLm;
use idlm::eval::protocol::{MauveEval, SampleRecord, evaluate_with, read_references};

/// The cached MiniLM.
fn minilm() -> MiniLm {
    MiniLm::from_cache(&cache_dir()).unwrap_or_else(|e| {
        panic!("the MiniLM eval model is not in the cache: {e} (run `idlm data fetch`)")
    })
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
#[ignore = "needs the eval models and corpus in the cache (`idlm data fetch`): run by .ci/run"]
fn minilm_embeddings_are_unit_norm_and_closer_to_a_paraphrase() {
    let m = minilm();
    assert_eq!(m.dim(), 384);
    let texts: Vec<String> = [
        "The president addressed Congress about the state of the economy.",
        "In a speech to the legislature, the president talked about how the economy is doing.",
        "The whale dove beneath the ship and the sailors cried out in fear.",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let f = m.embed(&texts, 2, None).unwrap();
    for (t, v) in texts.iter().zip(&f) {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{t:?}: norm {norm}");
    }
    let (para, other) = (cosine(&f[0], &f[1]), cosine(&f[0], &f[2]));
    eprintln!("cosine: paraphrase {para:.3}, unrelated {other:.3}");
    assert!(para > other + 0.3, "paraphrase {para}, unrelated {other}");
    // Batching and padding do not change a text's feature.
    let alone = m.embed(&texts[..1], 1, None).unwrap();
    let d = alone[0].iter().zip(&f[0]).map(|(a, b)| (a - b).abs());
    assert!(d.fold(0f32, f32::max) < 1e-4);
    // Long texts are cut at 256 tokens, [CLS] and [SEP] included.
    let long = "word ".repeat(1000);
    assert_eq!(m.tokenize(&long).unwrap().len(), 256);
}

/// A samples JSONL with `texts`.
fn write_jsonl(path: &Path, texts: &[String]) {
    let lines: Vec<String> = texts
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn references_come_from_a_data_folder_or_a_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::tiny_data(dir.path(), 300, 32);
    let rows = DataDir::open(&data).unwrap().valid.n_rows();
    assert!(rows >= 8, "{rows}");
    let r = read_references(&data, 8).unwrap();
    assert_eq!(r.texts.len(), 8);
    assert!(r.texts.iter().all(|t| !t.is_empty()));
    assert_eq!(r.source["kind"], "prepared data folder, validation split");
    let e = read_references(&data, rows + 1).unwrap_err().to_string();
    assert!(e.contains("fewer than the"), "{e}");

    let jsonl = dir.path().join("refs.jsonl");
    write_jsonl(&jsonl, &["a".into(), "b".into(), "c".into()]);
    let r = read_references(&jsonl, 2).unwrap();
    assert_eq!(r.texts, ["a", "b"]);
    let e = read_references(&jsonl, 4).unwrap_err().to_string();
    assert!(
        e.contains("3 reference texts, fewer than the 4 samples"),
        "{e}"
    );
}

#[test]
fn mauve_needs_a_reference_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("s.jsonl");
    write_jsonl(&s, &["one text".into(), "another text".into()]);
    let out = Command::new(env!("CARGO_BIN_EXE_idlm"))
        .args(["eval", s.to_str().unwrap(), "--metrics", "entropy,mauve"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--reference"), "{err}");
}

#[test]
#[ignore = "needs the eval models and corpus in the cache (`idlm data fetch`): run by .ci/run"]
fn mauve_eval_on_validation_rows() {
    minilm();
    let dir = tempfile::tempdir().unwrap();
    let data = common::tiny_data(dir.path(), 300, 32);
    let n = 8;
    let refs = read_references(&data, n).unwrap();
    // The references scored against themselves: identical sets give MAUVE 1.
    let samples: Vec<SampleRecord> = refs
        .texts
        .iter()
        .map(|t| SampleRecord::new(0, t.clone(), Some(vec![1, 2, 3])))
        .collect();
    let eval = MauveEval {
        model_dir: idlm::eval::minilm_dir(&cache_dir()).unwrap(),
        references: refs,
        options: Default::default(),
        batch: 4,
        progress: None,
    };
    let metrics = vec!["entropy".to_string(), "mauve".to_string()];
    let v = evaluate_with(&samples, &metrics, None, 1, None, Some(&eval)).unwrap();
    assert!((v["mauve"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{v}");
    let p = &v["protocol_params"]["mauve"];
    assert_eq!(p["kmeans_clusters"], 2);
    assert_eq!(p["kmeans_restarts"], 5);
    assert_eq!(p["kmeans_max_iter"], 500);
    assert_eq!(p["divergence_curve_points"], 25);
    assert_eq!(p["reference_count"], n);
    assert_eq!(p["seed"], 25);
    assert!(
        p["feature_model_sha256"]
            .as_str()
            .unwrap()
            .starts_with("53aa5117")
    );
    assert!(v["entropy"].is_number());
    assert!(v["eval_model_sha256"]["minilm"].is_string());

    // As many references as samples, or an error.
    let short = MauveEval {
        references: read_references(&data, n - 1).unwrap(),
        ..eval
    };
    let e = evaluate_with(&samples, &metrics, None, 1, None, Some(&short));
    assert!(
        e.unwrap_err()
            .to_string()
            .contains("7 reference texts for 8 samples")
    );
    let e = evaluate_with(&samples, &metrics, None, 1, None, None);
    assert!(e.unwrap_err().to_string().contains("--reference"));
}

/// Featurisation throughput on 256-token texts (run by hand: `--ignored --nocapture`).
#[test]
#[ignore]
fn minilm_throughput() {
    let m = minilm();
    // Distinct words each a few WordPieces: every text hits the 256-token cap.
    let texts: Vec<String> = (0..64)
        .map(|i| {
            (0..300)
                .map(|j| format!("w{}", (i * 7919 + j * 104729) % 10007))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    assert!(texts.iter().all(|t| m.tokenize(t).unwrap().len() == 256));
    m.embed(&texts[..8], 8, None).unwrap();
    let t0 = Instant::now();
    m.embed(&texts, 32, None).unwrap();
    let s = t0.elapsed().as_secs_f64();
    eprintln!(
        "MiniLM: {} texts of 256 tokens in {s:.2} s = {:.1} texts/s ({} rayon threads)",
        texts.len(),
        texts.len() as f64 / s,
        rayon::current_num_threads()
    );
}
