//! A released TinyGSM checkpoint (S-FLM / IDLM `tiny_gsm` config, docs/research/tinygsm-facts.md)
//! through the GSM8K path: the import reads its rows `[BOS] q SEP a [EOS] [PAD]...` from the
//! config, `idlm sample --prompts` clamps `[BOS] q.strip() SEP` with the config's separator encoded
//! on its own and cuts each answer at EOS, and `idlm eval --metrics accuracy` scores them. The
//! network is the small reference DiT of tests/fixtures under a TinyGSM-shaped config.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::{err, idlm, ok};
use idlm::checkpoint;
use idlm::data::pairs::RowLayout;
use idlm::process::{ModelFamily, ProcessKind};
use serde_json::{Value, json};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
/// Ids of the fixture tokenizer: words w0..w56, `\`, `n`, `<|endoftext|>`, `[PAD]` (61 in all,
/// the fixture DiT's vocabulary: a Duo model, whose vocabulary holds [PAD] and no mask).
const BACKSLASH: u32 = 57;
const N: u32 = 58;
const EOT: u32 = 59;
const PAD: u32 = 60;

fn tokenizer_json() -> String {
    let mut vocab: HashMap<String, u32> = (0..57).map(|i| (format!("w{i}"), i)).collect();
    vocab.insert("\\".into(), BACKSLASH);
    vocab.insert("n".into(), N);
    vocab.insert("<|endoftext|>".into(), EOT);
    vocab.insert("[PAD]".into(), PAD);
    common::word_level_json(vocab, "w0", &["<|endoftext|>", "[PAD]"])
}

/// The composed S-FLM config of the Duo TinyGSM teacher, sizes scaled to the fixture DiT.
fn sflm_config(separator: &str) -> Value {
    json!({
        "mode": "train",
        "data": {
            "train": "tiny_gsm", "valid": "tiny_gsm",
            "tokenizer_name_or_path": "HuggingFaceTB/SmolLM-135M",
            "wrap": false, "separator": separator, "train_on_prompt": false,
            "train_on_pad": true, "filter_too_long": true
        },
        "model": {"name": "small", "type": "dit", "hidden_size": 64, "cond_dim": 32,
                  "length": 24, "n_blocks": 2, "n_heads": 4, "dropout": 0.1},
        "algo": {"name": "duo_base", "diffusion_type": "uniform", "parameterization": "mean",
                 "time_conditioning": true, "T": 0, "causal_attention": false},
        "noise": {"type": "log-linear", "eps": 1e-3}
    })
}

fn released(root: &Path, config: Value) -> PathBuf {
    let dir = root.join("tinygsm");
    std::fs::create_dir_all(&dir).unwrap();
    let w: HashMap<String, Tensor> = candle_core::safetensors::load(
        format!("{FIX}/dit_reference/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json()).unwrap();
    dir
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_tinygsm_checkpoint_answers_gsm8k_prompts_in_its_own_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    // S-FLM's yaml separator: the two characters backslash and n.
    let dir = released(cwd, sflm_config("\\n"));
    let ck = checkpoint::load(&dir).unwrap();
    assert_eq!(ck.meta.process, ModelFamily::Diffusion(ProcessKind::Duo));
    assert_eq!(ck.meta.model.length, 24);
    assert_eq!((ck.meta.data.bos_id, ck.meta.data.eos_id), (EOT, EOT));
    assert_eq!(
        ck.meta.data.rows,
        RowLayout::Separated {
            sep: vec![BACKSLASH, N],
            end_id: EOT
        }
    );

    // GSM8K-style test lines: the question (with the whitespace the reference strips) and the
    // worked answer ending in `#### N`.
    let mut body = String::new();
    for i in 0..3 {
        let q = format!("  w{} w{} w{} ", i + 1, i + 2, i + 3);
        body.push_str(&format!(
            "{}\n",
            json!({"prompt": q, "answer": format!("so {i}\n#### {i}")})
        ));
    }
    std::fs::write(cwd.join("test.jsonl"), body).unwrap();
    for steps in ["4", "16"] {
        ok(&idlm(
            &[
                "sample",
                "--ckpt",
                "tinygsm",
                "--prompts",
                "test.jsonl",
                "--steps",
                steps,
                "-n",
                "2",
                "--out",
                "s.jsonl",
            ],
            cwd,
        ));
        let recs = lines(&cwd.join("s.jsonl"));
        assert_eq!(recs.len(), 6);
        for r in &recs {
            let i = r["prompt_index"].as_u64().unwrap() as u32;
            let ids: Vec<u32> = serde_json::from_value(r["ids"].clone()).unwrap();
            assert_eq!(ids.len(), 24);
            // [BOS] then the stripped question's own ids then the separator's, never changed.
            let head = [EOT, i + 1, i + 2, i + 3, BACKSLASH, N];
            assert_eq!(&ids[..6], &head, "{r}");
            let clamped: Vec<u32> = serde_json::from_value(r["clamped"].clone()).unwrap();
            assert_eq!(clamped, (0..6).collect::<Vec<u32>>());
            // The completion is the text up to the first EOS after the prompt.
            let tail = &ids[6..];
            let end = tail.iter().position(|&t| t == EOT).unwrap_or(tail.len());
            let words: Vec<String> = tail[..end]
                .iter()
                .map(|&t| match t {
                    BACKSLASH => "\\".to_string(),
                    N => "n".to_string(),
                    PAD => "[PAD]".to_string(),
                    w => format!("w{w}"),
                })
                .collect();
            assert_eq!(
                r["completion"]
                    .as_str()
                    .unwrap()
                    .split_whitespace()
                    .collect::<Vec<_>>(),
                words,
                "{r}"
            );
        }
        ok(&idlm(
            &[
                "eval",
                "s.jsonl",
                "--metrics",
                "accuracy",
                "--answers",
                "test.jsonl",
                "--out",
                "e.json",
            ],
            cwd,
        ));
        let e: Value =
            serde_json::from_str(&std::fs::read_to_string(cwd.join("e.json")).unwrap()).unwrap();
        // Word ids are no program: every answer is scored, and none is right.
        assert_eq!(e["accuracy"], 0.0, "{e}");
        assert_eq!(e["accuracy_correct"], 0, "{e}");
        let scored: u64 = e["accuracy_outcomes"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(scored, 6, "{e}");
    }
}

#[test]
fn a_separator_that_encodes_to_nothing_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    // IDLM's yaml separator, a real newline: this word-level tokenizer has no id for it.
    released(tmp.path(), sflm_config("\n"));
    let e = err(&idlm(
        &["sample", "--ckpt", "tinygsm", "--steps", "2", "-n", "1"],
        tmp.path(),
    ));
    assert!(e.contains("data.separator") && e.contains("tinygsm"), "{e}");
    // Without a separator, a TinyGSM config is refused too, not read as unconditional rows.
    let mut c = sflm_config("x");
    c["data"].as_object_mut().unwrap().remove("separator");
    std::fs::remove_dir_all(tmp.path().join("tinygsm")).unwrap();
    released(tmp.path(), c);
    let e = err(&idlm(
        &["sample", "--ckpt", "tinygsm", "--steps", "2", "-n", "1"],
        tmp.path(),
    ));
    assert!(e.contains("states no data.separator"), "{e}");
}
