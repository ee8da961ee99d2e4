//! A short run of every fuzz target on stable (issue 23): the committed corpus (fuzz/corpus/<t>/),
//! every kept crash input (fuzz/regressions/<t>/), and a few hundred seeded mutations of them. The
//! long coverage-guided runs are `fuzz/run.sh` (cargo-fuzz on nightly); see fuzz/README.md.

use std::fs;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Mutated inputs per target (the corpus itself is run in full besides).
const MUTATIONS: usize = 400;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files of `dir`, sorted (none if it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_file());
    v.sort();
    v
}

/// The seeds of `target`: its corpus, its regressions, and fixtures used in place.
fn seeds(target: &str) -> Vec<PathBuf> {
    let mut v = files(&root().join("fuzz/corpus").join(target));
    v.extend(files(&root().join("fuzz/regressions").join(target)));
    if target == "ckpt_import" {
        v.push(root().join("tests/fixtures/lightning_idlm/idlm.ckpt"));
    }
    v
}

/// One libFuzzer-like mutation of `a` (with `b` for splicing).
fn mutate(rng: &mut ChaCha8Rng, a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut x = a.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let n = x.len();
        match rng.random_range(0..7) {
            0 if n > 0 => {
                let i = rng.random_range(0..n);
                x[i] ^= 1 << rng.random_range(0..8);
            }
            1 if n > 0 => {
                let i = rng.random_range(0..n);
                x[i] = [0, 0xff, b'0', b'9', b'"', b'[', b'{', b'\n', 0x80][rng.random_range(0..9)];
            }
            2 => {
                let i = rng.random_range(0..=n);
                let bytes: Vec<u8> = (0..rng.random_range(1..9)).map(|_| rng.random()).collect();
                x.splice(i..i, bytes);
            }
            3 if n > 0 => {
                let i = rng.random_range(0..n);
                let j = (i + rng.random_range(1..=16)).min(n);
                x.drain(i..j);
            }
            4 => x.truncate(rng.random_range(0..=n)),
            5 if !b.is_empty() => {
                let i = rng.random_range(0..=n);
                let j = rng.random_range(0..b.len());
                let k = (j + rng.random_range(1..=64)).min(b.len());
                x.splice(i..i, b[j..k].iter().copied());
            }
            _ if n >= 8 => {
                // A 4- or 8-byte little-endian field set to an extreme.
                let i = rng.random_range(0..n - 7);
                let v: u64 = [0, 1, u64::MAX, u32::MAX as u64, 1 << 40][rng.random_range(0..5)];
                let w = if rng.random() { 8 } else { 4 };
                x[i..i + w].copy_from_slice(&v.to_le_bytes()[..w]);
            }
            _ => {}
        }
    }
    x
}

fn run_target(target: &str) {
    let seeds = seeds(target);
    assert!(!seeds.is_empty(), "fuzz/corpus/{target}/ has no seeds");
    let inputs: Vec<Vec<u8>> = seeds.iter().map(|p| fs::read(p).unwrap()).collect();
    for (p, d) in seeds.iter().zip(&inputs) {
        eprintln!("{target}: {}", p.display());
        assert!(idlm::fuzz::run(target, d));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    // Large inputs cost more per run: fewer of their mutations.
    let total: usize = inputs.iter().map(Vec::len).sum::<usize>().max(1);
    let budget = if total > 200_000 { 40 } else { MUTATIONS };
    for _ in 0..budget {
        let a = &inputs[rng.random_range(0..inputs.len())];
        let b = &inputs[rng.random_range(0..inputs.len())];
        let x = mutate(&mut rng, a, b);
        if std::panic::catch_unwind(|| idlm::fuzz::run(target, &x)).is_err() {
            // Keep the input: it becomes fuzz/regressions/<target>/ once the bug is fixed.
            let dir = root().join("target/fuzz-failures");
            fs::create_dir_all(&dir).unwrap();
            let p = dir.join(format!("{target}-{:016x}", rng.random::<u64>()));
            fs::write(&p, &x).unwrap();
            panic!(
                "{target} panicked on a mutated input, kept as {}",
                p.display()
            );
        }
    }
}

#[test]
fn every_target_has_a_harness_and_a_corpus() {
    for t in idlm::fuzz::TARGETS {
        let harness = root().join("fuzz/fuzz_targets").join(format!("{t}.rs"));
        let text = fs::read_to_string(&harness).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert!(text.contains(&format!("idlm::fuzz::{t}(data)")), "{t}");
        assert!(!seeds(t).is_empty(), "{t}: no seeds");
        let toml = fs::read_to_string(root().join("fuzz/Cargo.toml")).unwrap();
        assert!(toml.contains(&format!("name = \"{t}\"")), "{t}");
    }
    assert!(!idlm::fuzz::run("no-such-target", b""));
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_target(stringify!($name));
            }
        )*
    };
}

targets!(
    config,
    ckpt_meta,
    safetensors,
    packed,
    tokenizer,
    samples,
    eval_json,
    duality,
    serve_body,
    pickle,
    ckpt_import,
    hf_config,
    program,
    template,
    gsm8k,
);
