//! GSM8K (docs/tasks.md): finding the files, reading them, and rewriting a solution's
//! calculator annotations into a program of the subset.
//!
//! The converter is deterministic: annotation k (`<<a*b=c>>`) becomes `vk = a * b`; a later
//! literal equal to an earlier annotation's stated result c is replaced by that annotation's
//! variable (the latest such) when running the program so far gives exactly c (so `<<10/3=3.33>>`
//! is not replaced: its variable holds 3.333...); the function returns the last variable whose
//! value is the `#### N` answer. A solution with no annotation, an annotation outside the subset,
//! or no variable equal to the answer does not convert.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::PROGRAM_HEADER;
use super::answer::RefNumber;
use super::lexer::{Tok, tokenize};
use super::program::run_program;
use super::value::Value;
use crate::{Error, Result};

/// sha256 of the upstream files (grade-school-math `grade_school_math/data/`, as in
/// shared/data/MANIFEST.sha256). No package registry ships them (checked: PyPI `gsm8k`,
/// `grade-school-math`, npm `gsm8k`; PyPI `aviary-gsm8k` downloads them from a hub at run time).
pub const SHA256: &[(&str, &str)] = &[
    (
        "train.jsonl",
        "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
    ),
    (
        "test.jsonl",
        "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    ),
];

/// Problems in the upstream train and test splits.
pub const TRAIN_PROBLEMS: usize = 7_473;
/// Problems in the upstream test split.
pub const TEST_PROBLEMS: usize = 1_319;

/// One GSM8K problem as the upstream JSONL has it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Problem {
    /// The word problem.
    pub question: String,
    /// The worked solution with `<<...>>` annotations, ending in `#### N`.
    pub answer: String,
}

/// The GSM8K folder: `dir` when given, else `gsm8k/` in the shared data folder
/// (`$IDLM_SHARED_DATA` or `../shared/data`), else `$IDLM_HOME/gsm8k` (where to put the two
/// files by hand).
pub fn locate(dir: Option<&Path>) -> Result<PathBuf> {
    let mut tried = Vec::new();
    let candidates = dir.map(Path::to_path_buf).into_iter().chain(
        dir.is_none()
            .then(|| {
                crate::data::shared_data_dir()
                    .map(|s| s.join("gsm8k"))
                    .into_iter()
                    .chain([crate::data::cache_dir().join("gsm8k")])
            })
            .into_iter()
            .flatten(),
    );
    for c in candidates {
        if SHA256.iter().all(|(f, _)| c.join(f).is_file()) {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    Err(Error::Data(format!(
        "GSM8K's train.jsonl and test.jsonl not found (tried {}); no package registry ships \
         them: copy grade-school-math's grade_school_math/data/{{train,test}}.jsonl into \
         $IDLM_HOME/gsm8k or pass --dir",
        tried.join(", ")
    )))
}

/// Read `split` ("train" or "test") from `dir`, checking its sha256 against [`SHA256`].
pub fn read_split(dir: &Path, split: &str) -> Result<Vec<Problem>> {
    let name = format!("{split}.jsonl");
    let want = SHA256
        .iter()
        .find(|(f, _)| *f == name)
        .map(|(_, h)| *h)
        .ok_or_else(|| Error::InvalidArgument(format!("GSM8K has no split {split:?}")))?;
    let path = dir.join(&name);
    let bytes = std::fs::read(&path).map_err(|e| Error::io("reading", &path, e))?;
    let got = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if got != want {
        return Err(Error::Data(format!(
            "{}: sha256 {got}, expected the upstream file's {want}",
            path.display()
        )));
    }
    let text = String::from_utf8_lossy(&bytes);
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::Data(format!("{} line {}: {e}", path.display(), i + 1)))
        })
        .collect()
}

/// Why a solution did not convert.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConvertError {
    /// No `#### N` number.
    #[error("no '#### N' answer")]
    NoAnswer,
    /// No `<<...>>` annotation.
    #[error("no calculator annotation")]
    NoAnnotation,
    /// An annotation without `=`, or whose expression is outside the subset or fails to run.
    #[error("annotation {index} ({text:?}): {why}")]
    BadAnnotation {
        index: usize,
        text: String,
        why: String,
    },
    /// No annotation's value is the answer.
    #[error("no annotation computes the answer")]
    AnswerNotComputed,
}

impl ConvertError {
    /// A short class name for counts.
    pub fn class(&self) -> &'static str {
        match self {
            ConvertError::NoAnswer => "no_answer",
            ConvertError::NoAnnotation => "no_annotation",
            ConvertError::BadAnnotation { .. } => "bad_annotation",
            ConvertError::AnswerNotComputed => "answer_not_computed",
        }
    }
}

/// A converted solution.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The program (see the module docs).
    pub program: String,
    /// The `#### N` answer.
    pub number: RefNumber,
}

/// The `<<...>>` annotations of `text`, in order.
fn annotations(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(a) = rest.find("<<") {
        let Some(b) = rest[a + 2..].find(">>") else {
            break;
        };
        out.push(&rest[a + 2..a + 2 + b]);
        rest = &rest[a + 2 + b + 2..];
    }
    out
}

/// Write tokens back as Python, spaced like `v2 = (v1 + 3) * -2`.
fn render(toks: &[Tok]) -> String {
    let mut s = String::new();
    let mut prev: Option<&Tok> = None;
    for t in toks {
        let unary_ctx = matches!(
            prev,
            None | Some(Tok::Op(_) | Tok::LParen | Tok::Comma | Tok::Assign)
        );
        let piece = match t {
            Tok::Name(n) => n.clone(),
            Tok::Int(i) => i.to_string(),
            Tok::Float(f) => format!("{f:?}"),
            Tok::Op(op) if unary_ctx => op.symbol().to_string(),
            Tok::Op(op) => format!(" {} ", op.symbol()),
            Tok::LParen => "(".into(),
            Tok::RParen => ")".into(),
            Tok::Comma => ", ".into(),
            _ => String::new(),
        };
        s.push_str(&piece);
        prev = Some(t);
    }
    s
}

/// The numeric value of a literal token.
fn literal(t: &Tok) -> Option<f64> {
    match t {
        Tok::Int(i) => Some(*i as f64),
        Tok::Float(f) => Some(*f),
        _ => None,
    }
}

/// Rewrite a GSM8K solution into a program (module docs).
pub fn convert_solution(solution: &str) -> std::result::Result<Converted, ConvertError> {
    let number = RefNumber::from_gsm8k_solution(solution).ok_or(ConvertError::NoAnswer)?;
    let (body, _) = solution.rsplit_once("####").unwrap_or((solution, ""));
    let notes = annotations(body);
    let mut program = format!("{PROGRAM_HEADER}\n");
    // (stated value, variable) of annotations whose variable holds exactly what they state.
    let mut exact: Vec<(f64, String)> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    for (k, note) in notes.iter().enumerate() {
        let bad = |why: String| ConvertError::BadAnnotation {
            index: k + 1,
            text: note.to_string(),
            why,
        };
        let (expr, stated) = note.rsplit_once('=').ok_or_else(|| bad("no '='".into()))?;
        let lines = tokenize(expr).map_err(|e| bad(e.to_string()))?;
        let [line] = lines.as_slice() else {
            return Err(bad("not one expression".into()));
        };
        let toks: Vec<Tok> = line.toks.iter().map(|t| substitute(t, &exact)).collect();
        let var = format!("v{}", k + 1);
        let candidate = format!("{program}    {var} = {}\n", render(&toks));
        let v = run_program(&format!("{candidate}    return {var}\n"))
            .map_err(|e| bad(e.to_string()))?;
        if let Some(c) = RefNumber::parse(stated)
            && v.as_f64() == c.value
        {
            exact.push((c.value, var));
        }
        values.push(v);
        program = candidate;
    }
    let k = match values.iter().rposition(|v| number.matches(*v)) {
        Some(k) => k + 1,
        None => {
            // The last step is often written out without an annotation: "20/4 = $5".
            let missing = if notes.is_empty() {
                ConvertError::NoAnnotation
            } else {
                ConvertError::AnswerNotComputed
            };
            let mut k = None;
            for step in plain_final_steps(body, &number) {
                let Some(line) = tokenize(&step).ok().and_then(|l| l.into_iter().next()) else {
                    continue;
                };
                let toks: Vec<Tok> = line.toks.iter().map(|t| substitute(t, &exact)).collect();
                let var = format!("v{}", notes.len() + 1);
                let candidate = format!("{program}    {var} = {}\n", render(&toks));
                if let Ok(v) = run_program(&format!("{candidate}    return {var}\n"))
                    && number.matches(v)
                {
                    program = candidate;
                    k = Some(notes.len() + 1);
                    break;
                }
            }
            k.ok_or(missing)?
        }
    };
    program.push_str(&format!("    return v{k}\n"));
    Ok(Converted { program, number })
}

/// A literal equal to an exact earlier result becomes that result's variable (the latest).
fn substitute(t: &Tok, exact: &[(f64, String)]) -> Tok {
    literal(t)
        .and_then(|v| exact.iter().rev().find(|(c, _)| *c == v))
        .map_or_else(|| t.clone(), |(_, name)| Tok::Name(name.clone()))
}

/// `text` without its words (`3950 cases - 200 cases` -> `3950  - 200 `); None when a word
/// touches a digit (`1.2Y`).
fn drop_unit_words(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphabetic() {
            let start = i;
            while i < b.len() && b[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let touches = |j: Option<&u8>| j.is_some_and(|c| c.is_ascii_digit() || *c == b'.');
            if b[start..i].iter().any(u8::is_ascii_digit)
                || touches(start.checked_sub(1).map(|j| &b[j]))
            {
                return None;
            }
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    Some(out)
}

/// Candidates for an unannotated `expression = N` in the solution text whose N is the answer, the
/// last first: the run of
/// arithmetic characters and words just before the `=`, words dropped (after dropping `$` and
/// reading `×`, `−`, `–`, `÷` as operators), when it holds an operator. The caller keeps it only
/// when it runs to the answer.
fn plain_final_steps(body: &str, answer: &RefNumber) -> Vec<String> {
    let mut text = String::with_capacity(body.len());
    for c in body.chars() {
        match c {
            '×' => text.push('*'),
            '−' | '–' => text.push('-'),
            '÷' => text.push('/'),
            '$' => {}
            _ => text.push(c),
        }
    }
    let text = text.replace(" x ", " * ");
    let mut found = Vec::new();
    for (i, _) in text
        .match_indices('=')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        let rhs: String = text[i + 1..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ',' || *c == '-')
            .collect();
        if !RefNumber::parse(rhs.trim_end_matches('.')).is_some_and(|r| r.value == answer.value) {
            continue;
        }
        for words in [false, true] {
            let run: String = text[..i]
                .chars()
                .rev()
                .take_while(|c| {
                    c.is_ascii_digit()
                        || (words && c.is_ascii_alphabetic())
                        || " .+-*/()".contains(*c)
                })
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let Some(lhs) = drop_unit_words(&run) else {
                continue;
            };
            let lhs = lhs
                .trim()
                .trim_start_matches([')', '+', '*', '/', '.'])
                .trim();
            if lhs.contains(['+', '-', '*', '/']) && lhs.bytes().any(|b| b.is_ascii_digit()) {
                found.push(lhs.to_string());
            }
        }
    }
    found
}

/// What [`write_gsm8k`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Gsm8kReport {
    /// Train problems read.
    pub train: usize,
    /// Train problems that converted (the pairs written).
    pub converted: usize,
    /// Test problems written as prompts.
    pub test: usize,
    /// Non-converting train problems per [`ConvertError::class`].
    pub failures: std::collections::BTreeMap<&'static str, usize>,
}

/// A reference number as JSON: an integer when it is one.
fn number_json(r: &RefNumber) -> serde_json::Value {
    match r.int.and_then(|i| i64::try_from(i).ok()) {
        Some(i) => serde_json::json!(i),
        None => serde_json::json!(r.value),
    }
}

/// Write `train.jsonl` (pairs `{"prompt", "answer", "number"}` of the converted train problems),
/// `test.jsonl` (all test problems as `{"prompt", "number", "solution"}`: prompts for `idlm
/// sample --prompts` and the answers file of `idlm eval --metrics accuracy`) and `gsm8k.json`
/// (counts and the source files' sha256) into `out`, from the GSM8K folder `src`.
pub fn write_gsm8k(src: &Path, out: &Path) -> Result<Gsm8kReport> {
    use serde_json::json;
    let train = read_split(src, "train")?;
    let test = read_split(src, "test")?;
    std::fs::create_dir_all(out).map_err(|e| Error::io("create", out, e))?;
    let mut rep = Gsm8kReport {
        train: train.len(),
        converted: 0,
        test: test.len(),
        failures: Default::default(),
    };
    let mut text = String::new();
    for p in &train {
        match convert_solution(&p.answer) {
            Ok(c) => {
                rep.converted += 1;
                let line = json!({"prompt": p.question, "answer": c.program, "number": number_json(&c.number)});
                text.push_str(&format!("{line}\n"));
            }
            Err(e) => *rep.failures.entry(e.class()).or_default() += 1,
        }
    }
    crate::atomic::write_file(&out.join("train.jsonl"), text.as_bytes())?;
    let mut text = String::new();
    for (i, p) in test.iter().enumerate() {
        let r = RefNumber::from_gsm8k_solution(&p.answer).ok_or_else(|| {
            Error::Data(format!("GSM8K test problem {}: no '#### N' answer", i + 1))
        })?;
        let line = json!({"prompt": p.question, "number": number_json(&r), "solution": p.answer});
        text.push_str(&format!("{line}\n"));
    }
    crate::atomic::write_file(&out.join("test.jsonl"), text.as_bytes())?;
    let info = json!({
        "format": "idlm-gsm8k-v1",
        "source": src.display().to_string(),
        "sha256": SHA256.iter().map(|(f, h)| (f.to_string(), json!(h))).collect::<serde_json::Map<_, _>>(),
        "train_problems": rep.train,
        "train_converted": rep.converted,
        "train_not_converted": rep.failures,
        "test_problems": rep.test,
        "converter": "docs/tasks.md: annotations -> assignments v1, v2, ...; return the variable equal to '#### N'",
    });
    let text =
        serde_json::to_string_pretty(&info).map_err(|e| Error::Data(format!("gsm8k.json: {e}")))?;
    crate::atomic::write_file(&out.join("gsm8k.json"), (text + "\n").as_bytes())?;
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_solution_becomes_a_program_that_runs_to_its_answer() {
        let sol = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = \
                   <<48+24=72>>72 clips altogether in April and May.\n#### 72";
        let c = convert_solution(sol).unwrap();
        assert_eq!(
            c.program,
            format!("{PROGRAM_HEADER}\n    v1 = 48 / 2\n    v2 = 48 + v1\n    return v2\n")
        );
        assert!(c.number.matches(run_program(&c.program).unwrap()));
        // A rounded stated result is not replaced by its variable.
        let sol = "<<10/3=3.33>> then <<3.33*3=9.99>>\n#### 9.99";
        let c = convert_solution(sol).unwrap();
        assert!(c.program.contains("v2 = 3.33 * 3"), "{}", c.program);
        assert_eq!(
            convert_solution("no notes\n#### 3").unwrap_err(),
            ConvertError::NoAnnotation
        );
        assert_eq!(
            convert_solution("<<2+2=4>>\n#### 5").unwrap_err(),
            ConvertError::AnswerNotComputed
        );
        assert_eq!(
            convert_solution("<<2+2=4>>").unwrap_err(),
            ConvertError::NoAnswer
        );
        // An unannotated last step, units and all.
        let c = convert_solution("<<3*5=15>>\nso 15 apples − 4 apples = $11\n#### 11").unwrap();
        assert!(
            c.program.ends_with("    v2 = v1 - 4\n    return v2\n"),
            "{}",
            c.program
        );
        assert_eq!(
            convert_solution("<<2+=4>>\n#### 4").unwrap_err().class(),
            "bad_annotation"
        );
    }

    /// The first 200 train problems convert to programs that run to their `####` answers; all
    /// 7,473 are counted.
    #[test]
    #[ignore = "needs ../shared/data beside the checkout: run by .ci/run"]
    fn first_200_train_problems_run_to_their_answers() {
        let dir = locate(None).unwrap();
        let train = read_split(&dir, "train").unwrap();
        assert_eq!(train.len(), TRAIN_PROBLEMS);
        assert_eq!(read_split(&dir, "test").unwrap().len(), TEST_PROBLEMS);
        let (mut ok, mut first_failed) = (0, 0);
        for (i, p) in train.iter().enumerate() {
            let c = convert_solution(&p.answer);
            if i < 200 {
                match &c {
                    Ok(c) => {
                        let want = RefNumber::from_gsm8k_solution(&p.answer).unwrap();
                        let got = run_program(&c.program).unwrap();
                        assert!(want.matches(got), "problem {i}: {got} != {}", want.text);
                    }
                    Err(e) => {
                        eprintln!("problem {i} does not convert: {e}");
                        first_failed += 1;
                    }
                }
            }
            ok += usize::from(c.is_ok());
        }
        eprintln!(
            "{} of the first 200 and {ok} of all {} train problems convert",
            200 - first_failed,
            train.len()
        );
        assert!(
            first_failed <= 8,
            "{first_failed} of the first 200 do not convert"
        );
        assert!(ok * 100 >= train.len() * 95, "only {ok} convert");
    }
}
