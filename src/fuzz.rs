//! Fuzz entry points: one function per loader a user or a file can feed, each taking raw bytes.
//! `fuzz/` (cargo-fuzz, nightly) drives them coverage-guided; `tests/fuzz_corpus.rs` replays the
//! committed corpus and regressions through them on stable. An `Err` is the expected answer to bad
//! input; a panic, a hang or an allocation out of proportion to the input is a bug.
//!
//! File loaders are fed through a real file (a private temporary folder per process), so the code
//! under test is exactly what `idlm` runs on a user's file.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::data::corpus::Document;
use crate::data::pairs::RowLayout;
use crate::data::tokenizer::TextTokenizer;
use crate::serve::api::{self, ModelInfo};
use crate::serve::limits::Limits;
use crate::serve::prompt::PromptCodec;

/// The names of the targets, as `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`.
pub const TARGETS: &[&str] = &[
    "config",
    "ckpt_meta",
    "safetensors",
    "packed",
    "tokenizer",
    "samples",
    "eval_json",
    "duality",
    "serve_body",
    "pickle",
    "ckpt_import",
    "hf_config",
    "program",
    "template",
    "gsm8k",
];

/// Run target `name` on `data`; false for an unknown name.
pub fn run(name: &str, data: &[u8]) -> bool {
    let f: fn(&[u8]) = match name {
        "config" => config,
        "ckpt_meta" => ckpt_meta,
        "safetensors" => safetensors,
        "packed" => packed,
        "tokenizer" => tokenizer,
        "samples" => samples,
        "eval_json" => eval_json,
        "duality" => duality,
        "serve_body" => serve_body,
        "pickle" => pickle,
        "ckpt_import" => ckpt_import,
        "hf_config" => hf_config,
        "program" => program,
        "template" => template,
        "gsm8k" => gsm8k,
        _ => return false,
    };
    f(data);
    true
}

/// This process's scratch folder, under the system's temporary folder.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("idlm-fuzz-{}", std::process::id()));
        // A fuzzer cannot run without it: failing here is a harness error, not a finding.
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        d
    })
}

/// `data` written to `<scratch>/<sub>/<name>`; returns the file's path.
fn file(sub: &str, name: &str, data: &[u8]) -> PathBuf {
    let dir = scratch().join(sub);
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    p
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A run config (TOML), then after a line `---` one `--set key=value` override per line.
pub fn config(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let (doc, sets) = t.split_once("\n---\n").unwrap_or((t, ""));
    let sets: Vec<String> = sets.lines().map(str::to_string).collect();
    if let Ok(cfg) = crate::config::RunConfig::from_toml(doc, "fuzz") {
        let _ = cfg.validate();
        let _ = cfg.with_overrides(&sets);
    }
    if let Ok(tiny) = crate::config::RunConfig::load("tiny") {
        let _ = tiny.with_overrides(&sets);
    }
}

/// A small valid model file for the meta.json target (weights named in the public layout).
fn tiny_model() -> &'static [u8] {
    static M: OnceLock<Vec<u8>> = OnceLock::new();
    M.get_or_init(|| {
        let dev = crate::runtime::device();
        let t = candle_core::Tensor::zeros((2, 2), candle_core::DType::F32, &dev)
            .and_then(|w| {
                let m = std::collections::HashMap::from([("backbone.vocab_embed.embedding", w)]);
                candle_core::safetensors::save(&m, scratch().join("tiny.safetensors"))
            })
            .map(|()| std::fs::read(scratch().join("tiny.safetensors")));
        match t {
            Ok(Ok(b)) => b,
            e => panic!("tiny model: {e:?}"),
        }
    })
}

/// A checkpoint's meta.json (beside a small model file), loaded and used as `idlm sample` does.
pub fn ckpt_meta(data: &[u8]) {
    let dir = scratch().join("ckpt");
    file("ckpt", "model.safetensors", tiny_model());
    file("ckpt", "meta.json", data);
    if let Ok(ck) = crate::checkpoint::load(&dir) {
        let _ = ck.dit(false);
        let _ = ck.process(None);
        let _ = ck.tokenizer_json();
        let _ = ck.meta.data.data_dir_or(None, &dir);
    }
}

/// A safetensors file, as a checkpoint's model or optimizer file.
pub fn safetensors(data: &[u8]) {
    let p = file("st", "model.safetensors", data);
    let _ = crate::checkpoint::load_safetensors(&p);
}

/// A packed token file (`train.bin`): header, size, every row.
pub fn packed(data: &[u8]) {
    let p = file("packed", "train.bin", data);
    if let Ok(t) = crate::data::packed::PackedTokens::open(&p) {
        let _ = t.verify_tokens();
        let _ = t.token_counts();
        for i in 0..t.n_rows().min(4) {
            let _ = t.row(i);
        }
    }
}

/// A tokenizer.json, then encoding and decoding with it.
pub fn tokenizer(data: &[u8]) {
    let Some(t) = text(data) else { return };
    if let Ok(tok) = TextTokenizer::from_json(t)
        && let Ok(ids) = tok.encode("The cat sat on the mat. 12 + 7 = 19\n")
    {
        let _ = tok.decode(&ids);
        let _ = tok.decode(&[0, tok.mask_id(), tok.eos_id(), u32::MAX]);
    }
}

/// A samples JSONL file, read as `idlm eval` reads it.
pub fn samples(data: &[u8]) {
    let p = file("samples", "samples.jsonl", data);
    if let Ok(recs) = crate::eval::protocol::read_samples(&p) {
        let _ = crate::eval::protocol::sample_info(&recs);
        let ids: Vec<&[u32]> = recs.iter().filter_map(|r| r.ids.as_deref()).collect();
        let _ = crate::eval::entropy::entropy_stats(&ids);
    }
}

/// An `idlm eval` JSON file, read as `idlm report` reads it, and its table and plots.
pub fn eval_json(data: &[u8]) {
    let p = file("eval", "eval.json", data);
    if let Ok(rows) = crate::report::rows_from_files(&[p.display().to_string()]) {
        let _ = crate::report::markdown_table(&rows);
        let _ = crate::report::write_plots(&scratch().join("plots"), &rows);
    }
}

/// A Duo integral cache file, then lookups over its range.
pub fn duality(data: &[u8]) {
    let p = file("duality", "table.bin", data);
    if let Ok(t) = crate::process::duality::DualityTable::load(&p) {
        let (lo, hi) = t.gamma_range();
        for g in [lo - 1.0, lo, (lo + hi) / 2.0, hi, hi + 1.0, f64::NAN] {
            let _ = (t.alpha(g), t.dalpha_dgamma(g), t.integral_di(g));
        }
    }
}

/// The models the serve target parses requests for: a diffusion model with a tokenizer, and AR.
fn serve_models() -> &'static [ModelInfo] {
    static M: OnceLock<Vec<ModelInfo>> = OnceLock::new();
    M.get_or_init(|| {
        let docs = [Document {
            name: "d".into(),
            text: "The cat sat on the mat. Natalia sold 48 clips in April. ".repeat(8),
        }];
        let tok = TextTokenizer::train_bpe(&docs, 300).unwrap_or_else(|e| panic!("{e}"));
        let bos = tok.bos_id();
        let info = |name: &str, process: &str, codec| ModelInfo {
            name: name.into(),
            process: process.into(),
            length: 64,
            steps: 16,
            seed: 0,
            noise_removal: crate::process::NoiseRemoval::Greedy,
            top_p: None,
            checkpoint: "fuzz".into(),
            checkpoint_step: 0,
            codec,
        };
        vec![
            info(
                "mdlm",
                "mdlm",
                Some(PromptCodec::new(
                    tok.clone(),
                    bos,
                    RowLayout::Pairs { sep_id: bos },
                    false,
                )),
            ),
            info(
                "ar",
                "ar",
                Some(PromptCodec::new(tok, bos, RowLayout::Stream, true)),
            ),
            info("bare", "duo", None),
        ]
    })
}

/// A `/v1/completions` request body.
pub fn serve_body(data: &[u8]) {
    let limits = Limits {
        max_tokens: 64,
        max_steps: 1024,
        max_n: 8,
        ..Limits::default()
    };
    let _ = api::parse(data, serve_models(), &limits);
}

/// A pickle stream (checkpoint import), then its OmegaConf reading.
pub fn pickle(data: &[u8]) {
    if let Ok(p) = crate::interop::pickle::Pickle::parse(data)
        && let Ok(v) = crate::interop::omegaconf::to_json(&p, p.root())
    {
        let _ = crate::interop::omegaconf::lookup(&v, "model.length");
        let _ = crate::interop::omegaconf::usize_at(&v, "model.hidden_size");
    }
}

/// A released Lightning checkpoint (`.ckpt`: a zip of a pickle and tensor storages), imported.
pub fn ckpt_import(data: &[u8]) {
    let p = file("import", "model.ckpt", data);
    if let Ok(ck) = crate::interop::import(&p, &crate::interop::ImportOptions::default()) {
        let _ = ck.dit(true);
    }
}

/// The weights of a released Hugging Face directory for the `hf_config` target: the reference
/// DiT fixture's (2 blocks, hidden 64), written once.
const HF_WEIGHTS: &[u8] = include_bytes!("../tests/fixtures/dit_reference/model.safetensors");

/// A released Hugging Face directory's `config.json` (beside real weights), imported.
pub fn hf_config(data: &[u8]) {
    static WEIGHTS: OnceLock<PathBuf> = OnceLock::new();
    WEIGHTS.get_or_init(|| file("hf", "model.safetensors", HF_WEIGHTS));
    file("hf", "config.json", data);
    let dir = scratch().join("hf");
    if let Ok(ck) = crate::interop::import(&dir, &crate::interop::ImportOptions::default()) {
        let _ = ck.dit(false);
    }
}

/// A model's answer: a program run by the math interpreter, then scored against a number.
pub fn program(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let _ = crate::task::program::run_program(t);
    if let Some(r) = crate::task::answer::RefNumber::parse("18") {
        let _ = crate::task::answer::score_text(t, Some("Q"), &r);
    }
}

/// An infilling template, and the same bytes as prompt/answer pairs (`prepare --format pairs`).
pub fn template(data: &[u8]) {
    if let Some(t) = text(data)
        && let Ok(pieces) = crate::sample::template::parse_infill(t)
    {
        let encode = |s: &str| Ok(s.bytes().map(u32::from).collect());
        let _ = crate::sample::template::Template::infill(&[0], &pieces, Some(64), encode);
    }
    let p = file("pairs", "pairs.jsonl", data);
    let _ = crate::data::pairs::read_pairs(&[p]);
}

/// A GSM8K solution: its `#### N` answer and the converter of its `<<a*b=c>>` annotations.
pub fn gsm8k(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let _ = crate::task::answer::RefNumber::from_gsm8k_solution(t);
    if let Ok(c) = crate::task::gsm8k::convert_solution(t) {
        let _ = crate::task::program::run_program(&c.program);
    }
}
