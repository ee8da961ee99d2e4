//! Paired comparisons of two rows answered on the same problems with the same seeds: the
//! difference of their accuracies and its standard error from the discordant problems (the
//! paired, McNemar-style error, far tighter than two independent binomial errors would give).
//! The paper's claims ("IDLM-DCD above DCD at 4 and 8 steps") are checked with these.

use std::path::Path;

use serde::Serialize;

use crate::{Error, Result};

/// One comparison of model `a` against model `b` on one split at one step count.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Paired {
    /// The model compared.
    pub a: String,
    /// The model it is compared against.
    pub b: String,
    /// Sampling steps of both rows.
    pub steps: usize,
    /// The split.
    pub split: String,
    /// Problems.
    pub n: usize,
    /// Problems only `a` answered right.
    pub a_only: usize,
    /// Problems only `b` answered right.
    pub b_only: usize,
    /// Accuracy of `a` minus that of `b`.
    pub diff: f64,
    /// Its paired standard error.
    pub se: f64,
}

impl Paired {
    /// Compare per-problem correctness `a` and `b` (the same problems, in the same order).
    pub fn of(a: &[bool], b: &[bool]) -> Result<(usize, usize, f64, f64)> {
        if a.len() != b.len() || a.is_empty() {
            return Err(Error::Data(format!(
                "a paired comparison needs the same problems on both sides ({} against {})",
                a.len(),
                b.len()
            )));
        }
        let n = a.len() as f64;
        let a_only = a.iter().zip(b).filter(|(x, y)| **x && !**y).count();
        let b_only = a.iter().zip(b).filter(|(x, y)| !**x && **y).count();
        let d = a_only as f64 - b_only as f64;
        // Var of the mean of per-problem differences in {-1, 0, 1}, over n.
        let var = ((a_only + b_only) as f64 - d * d / n) / (n * n);
        Ok((a_only, b_only, d / n, var.max(0.0).sqrt()))
    }

    /// Whether `a` is above `b` by more than two standard errors.
    pub fn clearly_above(&self) -> bool {
        self.diff > 2.0 * self.se
    }
}

/// Per-problem correctness of an answers file (`answers/{stem}.jsonl`, one JSON object per
/// problem with its `index` and `outcome`), in problem order.
pub fn read_correct(path: &Path) -> Result<Vec<bool>> {
    let lines = crate::task::score::read_json_lines(path)?;
    let mut out = vec![None; lines.len()];
    for v in &lines {
        let i = v["index"].as_u64().map(|i| i as usize);
        let outcome = v["outcome"].as_str();
        match (i, outcome) {
            (Some(i), Some(o)) if i < out.len() && out[i].is_none() => {
                out[i] = Some(o == "correct")
            }
            _ => {
                return Err(Error::Data(format!(
                    "{}: every line needs a distinct index below {} and an outcome",
                    path.display(),
                    lines.len()
                )));
            }
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// The markdown table of `comparisons`.
pub fn table(comparisons: &[Paired]) -> String {
    let mut md = String::from(
        "| model | against | steps | difference | paired SE | only it right | only the other \
         right | above by 2 SE |\n|---|---|---|---|---|---|---|---|\n",
    );
    for c in comparisons {
        md.push_str(&format!(
            "| {} | {} | {} | {:+.1} | {:.1} | {} | {} | {} |\n",
            c.a,
            c.b,
            c.steps,
            100.0 * c.diff,
            100.0 * c.se,
            c.a_only,
            c.b_only,
            if c.clearly_above() { "yes" } else { "no" }
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paired_error_counts_only_discordant_problems() {
        // 10 problems: both right on 4, only a on 3, only b on 1, neither on 2.
        let a = [1, 1, 1, 1, 1, 1, 1, 0, 0, 0].map(|x| x == 1);
        let b = [1, 1, 1, 1, 0, 0, 0, 1, 0, 0].map(|x| x == 1);
        let (ao, bo, d, se) = Paired::of(&a, &b).unwrap();
        assert_eq!((ao, bo), (3, 1));
        assert!((d - 0.2).abs() < 1e-12);
        // Differences: 3 of +1, 1 of -1, 6 of 0: mean 0.2, E[d^2] 0.4, var 0.36, over n: 0.036.
        assert!((se - 0.036f64.sqrt()).abs() < 1e-12, "{se}");
        // Identical rows: no difference, no error, not above.
        let (_, _, d, se) = Paired::of(&a, &a).unwrap();
        assert_eq!((d, se), (0.0, 0.0));
        assert!(Paired::of(&a, &b[..9]).is_err());
        assert!(Paired::of(&[], &[]).is_err());
    }

    #[test]
    fn answers_files_are_read_in_problem_order_and_bad_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        let line = |i: usize, o: &str| format!("{{\"index\":{i},\"outcome\":\"{o}\"}}\n");
        std::fs::write(
            &p,
            line(1, "syntax") + &line(0, "correct") + &line(2, "correct"),
        )
        .unwrap();
        assert_eq!(read_correct(&p).unwrap(), vec![true, false, true]);
        std::fs::write(&p, line(0, "correct") + &line(0, "syntax")).unwrap();
        let e = read_correct(&p).unwrap_err().to_string();
        assert!(e.contains("distinct index"), "{e}");
        std::fs::write(&p, line(5, "correct")).unwrap();
        assert!(read_correct(&p).is_err());
    }
}
