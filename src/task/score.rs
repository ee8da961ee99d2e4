//! Accuracy of a samples file against an answers file (`idlm eval --metrics accuracy`).
//!
//! Sample line i (or, when it has one, its `prompt_index`: the `--prompts` line it was
//! conditioned on, so -n samples per prompt all find theirs) is scored against line i (that
//! index) of the answers JSONL; its program is read from `completion` (the text generated after
//! the prompt) when the record has one, else from `text` after the prompt. An answers line gives its reference as `number` (a JSON number
//! or string; what `idlm data synth-math` and `idlm data gsm8k` write) or as GSM8K's `answer`
//! text ending in `#### N`. When both lines have a `prompt`, they must be equal: a misaligned
//! pair is an error, not a wrong answer.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value as Json, json};

use super::answer::{FLOAT_TOLERANCE, RefNumber, score_text};
use crate::{Error, Result};

/// One line of an answers file.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerRef {
    /// The prompt, when the line has one.
    pub prompt: Option<String>,
    /// The reference number.
    pub number: RefNumber,
}

/// Non-blank lines of a JSONL file as JSON values; `what` names the file in errors.
pub fn read_json_lines(path: &Path) -> Result<Vec<Json>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                Error::Data(format!("{} line {}: not JSON: {e}", path.display(), i + 1))
            })
        })
        .collect()
}

/// Read an answers JSONL (see the module docs).
pub fn read_answers(path: &Path) -> Result<Vec<AnswerRef>> {
    let lines = read_json_lines(path)?;
    if lines.is_empty() {
        return Err(Error::Data(format!("{}: no answers", path.display())));
    }
    lines
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let number = match (v.get("number"), v.get("answer")) {
                (Some(Json::Number(n)), _) => RefNumber::parse(&n.to_string()),
                (Some(Json::String(s)), _) => RefNumber::parse(s),
                (None, Some(Json::String(a))) => RefNumber::from_gsm8k_solution(a),
                _ => None,
            }
            .ok_or_else(|| {
                Error::Data(format!(
                    "{} answer {}: needs a \"number\" or an \"answer\" ending in '#### N'",
                    path.display(),
                    i + 1
                ))
            })?;
            let prompt = v.get("prompt").and_then(Json::as_str).map(str::to_string);
            Ok(AnswerRef { prompt, number })
        })
        .collect()
}

/// Accuracy of a set of samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Accuracy {
    /// Samples scored.
    pub n: usize,
    /// Samples whose program ran to the reference number.
    pub correct: usize,
    /// Samples per outcome class (`correct`, `wrong_number`, `syntax`, `runtime`, `limit`).
    pub outcomes: BTreeMap<&'static str, usize>,
}

impl Accuracy {
    /// correct / n.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.n.max(1) as f64
    }

    /// Binomial standard error sqrt(p (1 - p) / n).
    pub fn standard_error(&self) -> f64 {
        let p = self.accuracy();
        (p * (1.0 - p) / self.n.max(1) as f64).sqrt()
    }

    /// The keys `idlm eval` adds to its JSON: `accuracy`, `accuracy_se`, `accuracy_correct`,
    /// `accuracy_outcomes`, and the rules under `protocol_params.accuracy`.
    pub fn write_into(&self, out: &mut Json, answers: &Path) {
        out["accuracy"] = json!(self.accuracy());
        out["accuracy_se"] = json!(self.standard_error());
        out["accuracy_correct"] = json!(self.correct);
        out["accuracy_outcomes"] = json!(self.outcomes);
        if !out["protocol_params"].is_object() {
            out["protocol_params"] = json!({});
        }
        out["protocol_params"]["accuracy"] = json!({
            "answers": answers.display().to_string(),
            "matching": "sample line i (or its prompt_index) against answers line i; prompts must agree when both have one",
            "program": "the record's completion (else its text after the prompt), from the first 'def', up to the first <|endoftext|>",
            "interpreter": "idlm's Python subset (docs/tasks.md): no Python process",
            "comparison": format!(
                "int result: exact; float result: within {FLOAT_TOLERANCE:e} x max(1, |reference|)"
            ),
            "standard_error": "sqrt(p (1 - p) / n)",
        });
    }
}

/// Score the samples of `samples` (JSONL with a `text` field) against `answers`.
pub fn score_files(samples: &Path, answers: &Path) -> Result<Accuracy> {
    let refs = read_answers(answers)?;
    let lines = read_json_lines(samples)?;
    if lines.is_empty() {
        return Err(Error::Data(format!("{}: no samples", samples.display())));
    }
    let mut acc = Accuracy {
        n: 0,
        correct: 0,
        outcomes: BTreeMap::new(),
    };
    for (i, s) in lines.iter().enumerate() {
        let at = |m: String| Error::Data(format!("{} sample {}: {m}", samples.display(), i + 1));
        let text = s
            .get("text")
            .and_then(Json::as_str)
            .ok_or_else(|| at("no \"text\" string".into()))?;
        let j = match s.get("prompt_index") {
            Some(v) => v
                .as_u64()
                .ok_or_else(|| at("prompt_index is not a non-negative integer".into()))?
                as usize,
            None => i,
        };
        let r = refs.get(j).ok_or_else(|| {
            at(format!(
                "answer {} wanted, but {} has {}",
                j + 1,
                answers.display(),
                refs.len()
            ))
        })?;
        let prompt = s.get("prompt").and_then(Json::as_str);
        if let (Some(a), Some(b)) = (prompt, r.prompt.as_deref())
            && a != b
        {
            return Err(at(format!(
                "its prompt differs from answer {}'s: the files are not aligned",
                j + 1
            )));
        }
        // `completion` is what `idlm sample --prompts` generated after the clamped prompt.
        let o = match s.get("completion").and_then(Json::as_str) {
            Some(c) => score_text(c, None, &r.number),
            None => score_text(text, prompt.or(r.prompt.as_deref()), &r.number),
        };
        acc.n += 1;
        acc.correct += usize::from(o.is_correct());
        *acc.outcomes.entry(o.class()).or_default() += 1;
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_its_standard_error_over_files() {
        let dir = tempfile::tempdir().unwrap();
        let ans = dir.path().join("a.jsonl");
        let prog = |n: i64| format!("def f():\n    return {n}\n");
        std::fs::write(
            &ans,
            [
                json!({"prompt": "A?", "answer": prog(3), "number": 3}),
                json!({"prompt": "B?", "answer": "x = <<1+1=2>>2\n#### 1,000"}),
                json!({"prompt": "C?", "number": "2.5"}),
                json!({"number": -4}),
            ]
            .iter()
            .map(|v| v.to_string() + "\n")
            .collect::<String>(),
        )
        .unwrap();
        let smp = dir.path().join("s.jsonl");
        let lines = [
            json!({"text": format!("A? {}<|endoftext|>", prog(3))}),
            json!({"text": format!("B? {}", prog(1000)), "prompt": "B?"}),
            json!({"text": "C? def f():\n    return 5 / 2\n"}),
            json!({"text": "def f():\n    return -3\n"}),
            json!({"text": "garbage", "prompt_index": 0}),
            json!({"text": "A? junk", "completion": prog(3), "prompt_index": 0}),
        ];
        let body: String = lines.iter().map(|v| v.to_string() + "\n").collect();
        std::fs::write(&smp, &body).unwrap();
        let a = score_files(&smp, &ans).unwrap();
        assert_eq!((a.n, a.correct), (6, 4));
        assert_eq!(a.outcomes["wrong_number"], 1);
        assert_eq!(a.outcomes["syntax"], 1);
        assert!((a.accuracy() - 4.0 / 6.0).abs() < 1e-12);
        let p = 4.0f64 / 6.0;
        assert!((a.standard_error() - (p * (1.0 - p) / 6.0).sqrt()).abs() < 1e-12);
        let mut out = json!({});
        a.write_into(&mut out, &ans);
        assert_eq!(out["accuracy_correct"], 4);
        assert!(out["protocol_params"]["accuracy"]["comparison"].is_string());
        // Misaligned prompts and missing answers are errors.
        std::fs::write(&smp, json!({"text": "x", "prompt": "Z?"}).to_string()).unwrap();
        assert!(
            score_files(&smp, &ans)
                .unwrap_err()
                .to_string()
                .contains("aligned")
        );
        std::fs::write(&smp, json!({"text": "x", "prompt_index": 9}).to_string()).unwrap();
        assert!(
            score_files(&smp, &ans)
                .unwrap_err()
                .to_string()
                .contains("answer 10")
        );
        std::fs::write(&ans, "{\"prompt\": \"no number\"}\n").unwrap();
        assert!(read_answers(&ans).unwrap_err().to_string().contains("####"));
    }
}
