//! `idlm data synth-math`: seeded TinyGSM-style problems from [`super::templates`], in three
//! splits that never share what they test:
//!
//! - `train`: the templates not in [`WITHHELD`], with number tuples that are not held out;
//! - `test_numbers`: the same templates with held-out number tuples (a tuple is held out when a
//!   fixed hash of the template and its numbers is 0 mod [`HOLDOUT_MODULUS`], whatever the seed,
//!   so no train tuple of that template is ever a test tuple);
//! - `test_templates`: the withheld templates, any numbers.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::style::{Style, write_program};
use super::templates::{Draw, Template, WITHHELD, templates};
use crate::{Error, Result};

/// One number tuple in this many is held out of training.
pub const HOLDOUT_MODULUS: u64 = 10;

/// The splits, in file order.
pub const SPLITS: &[&str] = &["train", "test_numbers", "test_templates"];

/// One generated problem.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthProblem {
    /// Template name.
    pub template: &'static str,
    /// The question.
    pub prompt: String,
    /// The program.
    pub answer: String,
    /// Its value.
    pub number: i64,
    /// The numbers drawn.
    pub numbers: Vec<i64>,
}

/// FNV-1a over the template name and its numbers: stable across builds and platforms.
fn tuple_hash(template: &str, numbers: &[i64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = template
        .bytes()
        .chain([0xff])
        .chain(numbers.iter().flat_map(|n| n.to_le_bytes()));
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Whether the tuple `numbers` of `template` belongs to the unseen-numbers split.
pub fn held_out(template: &str, numbers: &[i64]) -> bool {
    tuple_hash(template, numbers).is_multiple_of(HOLDOUT_MODULUS)
}

/// Draw one problem of `t`, its program written in `style` (the style's draws come after the
/// template's, so `fixed` problems are those of earlier versions).
pub fn draw(t: &Template, rng: &mut ChaCha8Rng, style: Style) -> SynthProblem {
    let mut d = Draw::new(rng);
    let m = (t.make)(&mut d);
    let numbers = d.numbers;
    SynthProblem {
        template: t.id,
        prompt: m.question,
        answer: write_program(&m.lines, style, rng),
        number: m.number,
        numbers,
    }
}

/// `n` problems of split `split` (one of [`SPLITS`]) for `seed`; each split has its own stream.
pub fn generate(split: &str, n: usize, seed: u64, style: Style) -> Result<Vec<SynthProblem>> {
    let k = SPLITS
        .iter()
        .position(|s| *s == split)
        .ok_or_else(|| Error::InvalidArgument(format!("no synth-math split {split:?}")))?;
    let withheld = |t: &&Template| WITHHELD.contains(&t.id);
    let pool: Vec<&Template> = match k {
        2 => templates().filter(withheld).collect(),
        _ => templates().filter(|t| !withheld(t)).collect(),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(k as u64 + 1);
    let mut out = Vec::with_capacity(n);
    let mut tries = 0usize;
    while out.len() < n {
        tries += 1;
        if tries > 1000 * (n + 10) {
            return Err(Error::Data(format!(
                "synth-math: only {} of {n} {split} problems after {tries} draws",
                out.len()
            )));
        }
        let t = pool[rand::Rng::random_range(&mut rng, 0..pool.len())];
        let p = draw(t, &mut rng, style);
        let keep = match k {
            0 => !held_out(t.id, &p.numbers),
            1 => held_out(t.id, &p.numbers),
            _ => true,
        };
        if keep {
            out.push(p);
        }
    }
    Ok(out)
}

/// Counts of a written data set.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthReport {
    /// (split, problems, mean answer characters).
    pub splits: Vec<(String, usize, f64)>,
}

/// Write `train.jsonl`, `test_numbers.jsonl`, `test_templates.jsonl` (lines `{"prompt",
/// "answer", "number", "template"}`) and `synth_math.json` (the parameters) into `out`.
pub fn write_synth_math(
    out: &Path,
    seed: u64,
    n_train: usize,
    n_test: usize,
    style: Style,
) -> Result<SynthReport> {
    std::fs::create_dir_all(out).map_err(|e| Error::io("create", out, e))?;
    let mut report = SynthReport { splits: Vec::new() };
    for split in SPLITS {
        let n = if *split == "train" { n_train } else { n_test };
        let probs = generate(split, n, seed, style)?;
        let mut text = String::new();
        for p in &probs {
            let line = json!({
                "prompt": p.prompt, "answer": p.answer, "number": p.number, "template": p.template,
            });
            text.push_str(&format!("{line}\n"));
        }
        let path = out.join(format!("{split}.jsonl"));
        crate::atomic::write_file(&path, text.as_bytes())?;
        let chars = probs.iter().map(|p| p.answer.len()).sum::<usize>() as f64;
        report
            .splits
            .push((split.to_string(), n, chars / n.max(1) as f64));
    }
    let info = json!({
        "format": "idlm-synth-math-v1",
        "seed": seed,
        "style": style.name(),
        "templates": templates().map(|t| json!({"id": t.id, "ops": t.ops})).collect::<Vec<_>>(),
        "withheld_templates": WITHHELD,
        "holdout": format!("FNV-1a(template, numbers) % {HOLDOUT_MODULUS} == 0 -> test_numbers"),
        "splits": report.splits.iter().map(|(s, n, c)| json!({"split": s, "problems": n, "mean_answer_chars": c})).collect::<Vec<_>>(),
    });
    let path = out.join("synth_math.json");
    let text = serde_json::to_string_pretty(&info)
        .map_err(|e| Error::Data(format!("synth_math.json: {e}")))?;
    crate::atomic::write_file(&path, (text + "\n").as_bytes())?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{RefNumber, run_program};
    use std::collections::HashSet;

    #[test]
    fn every_program_runs_to_its_number_over_thousands_of_seeds() {
        let all: Vec<&Template> = templates().collect();
        assert!(all.len() >= 20);
        let ids: HashSet<_> = all.iter().map(|t| t.id).collect();
        assert_eq!(ids.len(), all.len());
        assert!(WITHHELD.iter().all(|w| ids.contains(w)));
        let mut checked = 0;
        for seed in 0..3000u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let style = [Style::Fixed, Style::Varied][seed as usize % 2];
            for t in &all {
                let p = draw(t, &mut rng, style);
                let v = run_program(&p.answer)
                    .unwrap_or_else(|e| panic!("{}: {e}\n{}", t.id, p.answer));
                let want = RefNumber::parse(&p.number.to_string()).unwrap();
                assert!(
                    want.matches(v),
                    "{} seed {seed}: {v} != {}\n{}",
                    t.id,
                    p.number,
                    p.answer
                );
                assert!(p.number >= 0, "{} seed {seed}: negative answer", t.id);
                checked += 1;
            }
        }
        assert_eq!(checked, 3000 * all.len());
    }

    #[test]
    fn splits_are_deterministic_and_disjoint() {
        let v = Style::Varied;
        let a = generate("train", 2000, 5, v).unwrap();
        assert_eq!(a, generate("train", 2000, 5, v).unwrap());
        assert_ne!(a, generate("train", 2000, 6, v).unwrap());
        let nums = generate("test_numbers", 500, 5, v).unwrap();
        let tmpl = generate("test_templates", 500, 5, v).unwrap();
        let train_tuples: HashSet<_> = a.iter().map(|p| (p.template, p.numbers.clone())).collect();
        let train_templates: HashSet<_> = a.iter().map(|p| p.template).collect();
        assert_eq!(train_templates.len(), templates().count() - WITHHELD.len());
        for p in &nums {
            assert!(!train_tuples.contains(&(p.template, p.numbers.clone())));
            assert!(train_templates.contains(p.template));
        }
        for p in &tmpl {
            assert!(WITHHELD.contains(&p.template) && !train_templates.contains(p.template));
        }
        // Held-out tuples are a property of the tuple, not of the seed.
        for p in generate("train", 500, 99, Style::Fixed).unwrap() {
            assert!(!held_out(p.template, &p.numbers));
        }
        let mean = a.iter().map(|p| p.answer.len()).sum::<usize>() as f64 / a.len() as f64;
        assert!((100.0..320.0).contains(&mean), "mean answer {mean} chars");
        assert!(generate("nope", 1, 0, v).is_err());
        // Varied programs of one problem differ in spelling, not in value.
        let fixed = generate("train", 2000, 5, Style::Fixed).unwrap();
        let distinct: HashSet<_> = a.iter().map(|p| &p.answer).collect();
        let distinct_fixed: HashSet<_> = fixed.iter().map(|p| &p.answer).collect();
        assert!(
            distinct.len() > distinct_fixed.len(),
            "{} vs {}",
            distinct.len(),
            distinct_fixed.len()
        );
    }
}
