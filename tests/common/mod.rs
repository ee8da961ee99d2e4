//! Shared fixtures of the end-to-end tests: a tiny corpus and prepared data made on the fly.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod http;
pub mod nets;
pub mod server;

use idlm::data::{PrepareOptions, TokenizerChoice, prepare};

const WORDS: &[&str] = &[
    "the", "whale", "ship", "sea", "captain", "and", "of", "to", "a", "in", "congress", "nation",
    "people", "law", "king", "queen", "love", "night", "day", "white", "great", "old", "man",
    "upon", "with", "our", "their", "shall", "will", "is", "was", "not", "be", "by", "for",
];

/// Write `n_docs` small text documents of pseudo-English into `dir`.
pub fn tiny_corpus(dir: &Path, n_docs: usize, words_per_doc: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut state: u64 = 12345;
    for d in 0..n_docs {
        let mut text = String::new();
        for w in 0..words_per_doc {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let word = WORDS[(state >> 33) as usize % WORDS.len()];
            text.push_str(word);
            text.push(if w % 12 == 11 { '.' } else { ' ' });
            if w % 12 == 11 {
                text.push(' ');
            }
        }
        std::fs::write(dir.join(format!("doc_{d:03}.txt")), text).unwrap();
    }
    dir.to_path_buf()
}

/// Prepare a tiny data directory (BPE of `vocab` tokens, rows of `seq_len`).
pub fn tiny_data(root: &Path, vocab: usize, seq_len: usize) -> PathBuf {
    let corpus = tiny_corpus(&root.join("corpus"), 12, 400);
    let out = root.join(format!("data-{vocab}"));
    let mut opts = PrepareOptions::new(
        "tiny",
        vec![corpus],
        TokenizerChoice::Train { vocab_size: vocab },
        seq_len,
        &out,
    );
    opts.valid_fraction = 0.2;
    prepare(&opts).unwrap();
    out
}

/// Run the `idlm` binary in `cwd` with its cache (IDLM_HOME) in `cwd/cache`.
pub fn idlm(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idlm"))
        .args(args)
        .current_dir(cwd)
        .env("IDLM_HOME", cwd.join("cache"))
        .output()
        .unwrap()
}

/// Assert success; the stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Assert failure; the stderr.
pub fn err(out: &Output) -> String {
    assert!(!out.status.success(), "unexpected success");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `(step, value)` of every metrics.jsonl line in `run` that has `key`.
pub fn metric_lines(run: &Path, key: &str) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Some((v["step"].as_u64()?, v.get(key)?.as_f64()?))
        })
        .collect()
}

/// Train a `tiny`-preset run in `run` on `data` with config overrides (no progress bar).
pub fn train_tiny(run: &Path, data: &Path, overrides: &[String]) {
    let cfg = idlm::config::RunConfig::load("tiny")
        .unwrap()
        .with_overrides(overrides)
        .unwrap();
    idlm::train::run_training(&idlm::run::TrainRunOptions {
        run_dir: run.to_path_buf(),
        data_dir: data.to_path_buf(),
        cfg,
        resume: false,
        progress: false,
    })
    .unwrap();
}

/// Train (or resume) `run` on `data` with `cfg` (no progress bar), returning the library's error.
pub fn try_train(
    run: &Path,
    data: &Path,
    cfg: idlm::config::RunConfig,
    resume: bool,
) -> idlm::Result<()> {
    idlm::train::run_training(&idlm::run::TrainRunOptions {
        run_dir: run.to_path_buf(),
        data_dir: data.to_path_buf(),
        cfg,
        resume,
        progress: false,
    })
    .map(|_| ())
}

/// The `tiny` preset with `overrides` (`section.key=value`).
pub fn tiny_config(overrides: &[&str]) -> idlm::Result<idlm::config::RunConfig> {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    idlm::config::RunConfig::load("tiny")?.with_overrides(&o)
}

/// Tiny data in `root` (BPE 300, rows of 32) and a `tiny` run of 3 steps on it in `root/run`,
/// checkpointed at step 3: (data, run).
pub fn three_step_run(root: &Path) -> (PathBuf, PathBuf) {
    let data = tiny_data(root, 300, 32);
    let run = root.join("run");
    let cfg = tiny_config(&["train.max_steps=3", "train.ckpt_every=3"]).unwrap();
    try_train(&run, &data, cfg, false).unwrap();
    (data, run)
}

/// The names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

/// Run (or resume) a distillation in `run` from `teacher`, without validation GenPPL.
pub fn distill(
    run: &Path,
    teacher: &Path,
    cfg: idlm::distill::DistillConfig,
    resume: bool,
) -> idlm::Result<()> {
    idlm::distill::run_distill(&idlm::distill::DistillRunOptions {
        run_dir: run.to_path_buf(),
        teacher: teacher.to_path_buf(),
        data_dir: None,
        cfg,
        resume,
        progress: false,
        genppl_model: None,
    })
    .map(|_| ())
}

/// Rows drawn from a toy world's p* in a packed file (seeded).
pub fn toy_packed(
    world: &idlm::toy::ToyWorld,
    n: usize,
    path: &std::path::Path,
) -> idlm::data::PackedTokens {
    let header = idlm::data::PackedHeader::new(
        (world.v + 1) as u32,
        world.mask(),
        0,
        0,
        world.l as u32,
        [0u8; 32],
    );
    let mut w = idlm::data::PackedWriter::create(path, header).unwrap();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(5);
    for _ in 0..n {
        let u: f64 = rand::Rng::random(&mut rng);
        let mut acc = 0.0;
        let mut pick = world.p.len() - 1;
        for (i, p) in world.p.iter().enumerate() {
            acc += p;
            if u < acc {
                pick = i;
                break;
            }
        }
        w.push_row(&world.decode(pick)).unwrap();
    }
    w.finish().unwrap();
    idlm::data::PackedTokens::open(path).unwrap()
}

/// The lines of a JSONL file as JSON values.
pub fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A word-level tokenizer.json (whitespace pre-tokenizer, unknown words to `unk`) of `vocab`,
/// with `specials` (which must be in `vocab`) as added special tokens.
pub fn word_level_json(
    vocab: std::collections::HashMap<String, u32>,
    unk: &str,
    specials: &[&str],
) -> String {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    use tokenizers::{AddedToken, Tokenizer};
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token(unk.into())
        .build()
        .unwrap();
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace {}));
    let added: Vec<AddedToken> = specials
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    tok.add_special_tokens(added).unwrap();
    tok.to_string(false).unwrap()
}
