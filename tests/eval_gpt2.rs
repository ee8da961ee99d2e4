//! GPT-2 as the GenPPL scorer against HF transformers' GPT2LMHeadModel on a tiny random GPT-2
//! (tests/fixtures/gpt2_tiny, made by scripts/make_gpt2_fixture.py): logits, per-token
//! log-probabilities and GenPPL under the protocol's windows and mask rule; both weight namings,
//! half-precision weights, both tokenizer sources, and named errors for broken directories.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use idlm::eval::genppl::GenPpl;
use idlm::eval::gpt2::Gpt2;
use idlm::eval::gpt2_tokenizer::load_gpt2_tokenizer;
use idlm::eval::protocol::{SampleRecord, evaluate};
use idlm::eval::scorer::ScorerSource;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Log-probabilities and logits agree with transformers' float32 CPU run to this.
const TOL: f64 = 1e-4;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2_tiny")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(fixture().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Logits (t, vocab) of one sequence.
fn logits(m: &Gpt2, ids: &[u32]) -> Vec<Vec<f32>> {
    let x = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu).unwrap();
    m.forward(&x)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap()
}

/// max |logits - reference logits of the first case|.
fn logit_diff(m: &Gpt2, r: &Value) -> f64 {
    let case = &r["logprob_cases"][0];
    let got = logits(m, &u32s(&case["ids"]));
    let want = case["logits"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    let mut max = 0f64;
    for (g, w) in got.iter().zip(want) {
        let w = f64s(w);
        assert_eq!(g.len(), w.len());
        for (a, b) in g.iter().zip(&w) {
            max = max.max((*a as f64 - b).abs());
        }
    }
    max
}

/// log p(id_i | ids_<i) for i >= 1, from the logits in f64.
fn log_probs(m: &Gpt2, ids: &[u32]) -> Vec<f64> {
    let l = logits(m, ids);
    (1..ids.len())
        .map(|i| {
            let row = &l[i - 1];
            let mx = row.iter().fold(f64::MIN, |a, &b| a.max(b as f64));
            let lse = mx + row.iter().map(|&x| (x as f64 - mx).exp()).sum::<f64>().ln();
            row[ids[i] as usize] as f64 - lse
        })
        .collect()
}

/// Copy the fixture's config and tokenizer into `dir` and write `tensors` as its weights.
fn model_dir(dir: &Path, tensors: &HashMap<String, Tensor>) -> PathBuf {
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture().join(f), dir.join(f)).unwrap();
    }
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
    dir.to_path_buf()
}

/// The fixture's float tensors (its bool mask buffers are left out: candle cannot write them).
fn fixture_tensors() -> HashMap<String, Tensor> {
    let bytes = std::fs::read(fixture().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() != safetensors::Dtype::BOOL)
        .map(|(n, v)| (n, v.load(&Device::Cpu).unwrap()))
        .collect()
}

#[test]
fn gpt2_logits_and_log_probs_match_transformers() {
    let r = reference();
    let m = Gpt2::load(&fixture(), &Device::Cpu).unwrap();
    assert_eq!(m.config().n_embd, 32);
    assert_eq!(m.config().n_inner, 128);
    let d = logit_diff(&m, &r);
    eprintln!("max |logit - transformers| = {d:.3e}");
    assert!(d < TOL, "logits differ by {d}");
    let tok = load_gpt2_tokenizer(&fixture()).unwrap();
    let mut max = 0f64;
    for case in r["logprob_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = u32s(&case["ids"]);
        let enc = tok.encode(text, false).unwrap();
        assert_eq!(enc.get_ids(), ids, "tokenizer.json ids of {text:?}");
        let want = f64s(&case["log_probs"]);
        let got = log_probs(&m, &ids);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            max = max.max((g - w).abs());
        }
    }
    eprintln!("max |log p - transformers| = {max:.3e}");
    assert!(max < TOL, "log-probabilities differ by {max}");
}

#[test]
fn gpt2_vocab_and_merges_give_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(fixture().join(f), dir.path().join(f)).unwrap();
    }
    let tok = load_gpt2_tokenizer(dir.path()).unwrap();
    let r = reference();
    let cases = r["logprob_cases"].as_array().unwrap();
    let texts = cases.iter().map(|c| (&c["text"], &c["ids"])).chain(
        r["genppl_texts"]
            .as_array()
            .unwrap()
            .iter()
            .zip(r["genppl_ids"].as_array().unwrap()),
    );
    for (text, ids) in texts {
        let text = text.as_str().unwrap();
        let enc = tok.encode(text, false).unwrap();
        assert_eq!(
            enc.get_ids(),
            u32s(ids),
            "vocab.json + merges.txt ids of {text:?}"
        );
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
    }
    std::fs::remove_file(dir.path().join("merges.txt")).unwrap();
    let e = load_gpt2_tokenizer(dir.path()).unwrap_err().to_string();
    assert!(e.contains("merges.txt"), "{e}");
}

#[test]
fn gpt2_genppl_matches_transformers_with_windows_and_mask() {
    let r = reference();
    let texts: Vec<String> = r["genppl_texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let g = GenPpl::load_gpt2(&fixture(), &Device::Cpu).unwrap();
    assert_eq!(g.eos_id() as u64, r["eos_id"].as_u64().unwrap());
    let ids = g.encode_batch(&texts).unwrap();
    let want_ids: Vec<Vec<u32>> = r["genppl_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(u32s)
        .collect();
    assert_eq!(ids, want_ids);
    for want in r["genppl"].as_array().unwrap() {
        let ctx = want["context"].as_u64().unwrap() as usize;
        let g = GenPpl::load_gpt2(&fixture(), &Device::Cpu)
            .unwrap()
            .with_context(ctx)
            .unwrap();
        // Batches of 1 (no padding) and 3 (right-padded windows of different lengths).
        for batch in [1, 3] {
            let got = g.score(&texts, batch, None).unwrap();
            assert_eq!(got.tokens as u64, want["tokens"].as_u64().unwrap());
            let rel = (got.genppl / want["genppl"].as_f64().unwrap() - 1.0).abs();
            eprintln!(
                "context {ctx}, batch {batch}: GenPPL {} (rel. diff {rel:.2e})",
                got.genppl
            );
            assert!(rel < 1e-5, "GenPPL {} vs {}", got.genppl, want["genppl"]);
            for (i, (p, w)) in got
                .per_sample
                .iter()
                .zip(want["per_sample"].as_array().unwrap())
                .enumerate()
            {
                assert_eq!(p.1 as u64, w[1].as_u64().unwrap(), "sample {i} count");
                let wn = w[0].as_f64().unwrap();
                assert!(
                    (p.0 - wn).abs() < TOL * w[1].as_f64().unwrap().max(1.0),
                    "sample {i}"
                );
            }
        }
    }
}

#[test]
fn gpt2_loads_transformer_prefix_and_half_precision() {
    let r = reference();
    let bare = fixture_tensors();
    // GPT2LMHeadModel naming; a stored lm_head is ignored (HF ties it to wte): zeros would show.
    let mut prefixed: HashMap<String, Tensor> = bare
        .iter()
        .map(|(k, v)| (format!("transformer.{k}"), v.clone()))
        .collect();
    let wte = &bare["wte.weight"];
    prefixed.insert("lm_head.weight".into(), wte.zeros_like().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let m = Gpt2::load(&model_dir(dir.path(), &prefixed), &Device::Cpu).unwrap();
    let d = logit_diff(&m, &r);
    assert!(d < TOL, "transformer.-prefixed logits differ by {d}");
    for dt in [DType::F16, DType::BF16] {
        let half: HashMap<String, Tensor> = bare
            .iter()
            .map(|(k, v)| (k.clone(), v.to_dtype(dt).unwrap()))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let m = Gpt2::load(&model_dir(dir.path(), &half), &Device::Cpu).unwrap();
        // Rounded weights: close to the f32 logits (|logit| up to ~12), not equal.
        let d = logit_diff(&m, &r);
        eprintln!("{dt:?} weights: max logit diff {d:.3e}");
        assert!(d < 0.3, "{dt:?} logits differ by {d}");
    }
}

#[test]
fn broken_gpt2_directories_are_named_errors() {
    let bare = fixture_tensors();
    let load_err = |tensors: &HashMap<String, Tensor>| {
        let dir = tempfile::tempdir().unwrap();
        let p = model_dir(dir.path(), tensors);
        Gpt2::load(&p, &Device::Cpu).unwrap_err().to_string()
    };
    let mut t = bare.clone();
    t.remove("h.1.mlp.c_fc.bias");
    let e = load_err(&t);
    assert!(e.contains("missing tensor h.1.mlp.c_fc.bias"), "{e}");
    assert!(e.contains("model.safetensors"), "{e}");
    // Conv1D weights are [in, out]: a transposed (nn.Linear) one is refused.
    let mut t = bare.clone();
    let w = t["h.0.attn.c_attn.weight"]
        .t()
        .unwrap()
        .contiguous()
        .unwrap();
    t.insert("h.0.attn.c_attn.weight".into(), w);
    let e = load_err(&t);
    assert!(
        e.contains("h.0.attn.c_attn.weight") && e.contains("[96, 32]"),
        "{e}"
    );
    let mut t = bare.clone();
    let ids = t["wte.weight"].to_dtype(DType::U32).unwrap();
    t.insert("wte.weight".into(), ids);
    let e = load_err(&t);
    assert!(e.contains("wte.weight") && e.contains("U32"), "{e}");
    let e = load_err(&HashMap::new());
    assert!(e.contains("wte.weight"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let p = model_dir(dir.path(), &bare);
    let cfg_text = std::fs::read_to_string(p.join("config.json")).unwrap();
    let mut cfg: Value = serde_json::from_str(&cfg_text).unwrap();
    cfg.as_object_mut().unwrap().remove("n_head");
    std::fs::write(p.join("config.json"), cfg.to_string()).unwrap();
    let e = Gpt2::load(&p, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("n_head"), "{e}");
    std::fs::remove_file(p.join("config.json")).unwrap();
    let e = Gpt2::load(&p, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("config.json"), "{e}");
    std::fs::write(p.join("config.json"), cfg_text).unwrap();
    std::fs::remove_file(p.join("model.safetensors")).unwrap();
    let e = GenPpl::load_gpt2(&p, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    std::fs::write(p.join("model.safetensors"), b"not safetensors").unwrap();
    let e = GenPpl::load_gpt2(&p, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

/// The eval JSON names the scorer used: GPT-2's directory and sizes, the sha256 of its weights.
#[test]
fn gpt2_protocol_block_names_the_scorer() {
    let r = reference();
    let samples: Vec<SampleRecord> = r["genppl_texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| SampleRecord {
            text: t.as_str().unwrap().into(),
            ..Default::default()
        })
        .collect();
    let metrics = ["genppl".to_string(), "entropy".to_string()];
    let v = evaluate(
        &samples,
        &metrics,
        Some(ScorerSource::Gpt2(&fixture())),
        2,
        None,
    )
    .unwrap();
    let want = r["genppl"][0]["genppl"].as_f64().unwrap();
    assert!((v["genppl"].as_f64().unwrap() / want - 1.0).abs() < 1e-5);
    let p = &v["protocol_params"]["genppl"];
    let model = p["model"].as_str().unwrap();
    assert!(
        model.starts_with("GPT-2 from ") && model.contains("gpt2_tiny"),
        "{model}"
    );
    assert!(
        model.contains("n_layer 2") && model.contains("n_embd 32"),
        "{model}"
    );
    assert_eq!(p["eos_id"], r["eos_id"]);
    assert_eq!(p["context"], 64);
    let bytes = std::fs::read(fixture().join("model.safetensors")).unwrap();
    let sha = hex::encode(Sha256::digest(&bytes));
    assert_eq!(v["eval_model_sha256"]["gpt2"], sha.as_str());
    assert!(v["eval_model_sha256"].get("smollm2").is_none());
    assert!(v["entropy"].as_f64().unwrap() > 0.0);
}

/// `idlm eval --scorer DIR` runs with no SmolLM2 in the cache.
#[test]
fn cli_eval_with_gpt2_scorer() {
    let r = reference();
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = r["genppl_texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string())
        .collect();
    std::fs::write(dir.path().join("s.jsonl"), lines.join("\n") + "\n").unwrap();
    let scorer = fixture().display().to_string();
    let out = common::ok(&common::idlm(
        &[
            "eval",
            "s.jsonl",
            "--metrics",
            "genppl",
            "--scorer",
            &scorer,
        ],
        dir.path(),
    ));
    let v: Value = serde_json::from_str(&out).unwrap();
    let want = r["genppl"][0]["genppl"].as_f64().unwrap();
    assert!(
        (v["genppl"].as_f64().unwrap() / want - 1.0).abs() < 1e-5,
        "{v}"
    );
    assert!(v["eval_model_sha256"]["gpt2"].is_string());
}
