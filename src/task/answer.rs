//! Reference numbers, finding the program in a sample's text, and whether a result is right.
//!
//! A result is right when it is the reference number: an int result must equal it exactly; a
//! float result must be within 1e-9 x max(1, |reference|) of it, which forgives the binary
//! rounding of decimal arithmetic (`0.1 * 3 * 10`) and nothing a model could get wrong (GSM8K's
//! answers are integers, a few with two decimals at most).

use super::error::ProgramError;
use super::program::run_program;
use super::value::Value;

/// How a sample's text ends: the tokenizer's EOS as `idlm sample` decodes it.
pub const EOS_TEXT: &str = "<|endoftext|>";

/// Relative tolerance of a float result (see the module docs).
pub const FLOAT_TOLERANCE: f64 = 1e-9;

/// A reference answer: GSM8K's `#### N` or a generator's number.
#[derive(Debug, Clone, PartialEq)]
pub struct RefNumber {
    /// As written (commas removed).
    pub text: String,
    /// The value when it is an integer.
    pub int: Option<i128>,
    /// The value.
    pub value: f64,
}

impl RefNumber {
    /// Parse `1,080`, `-3`, `2.50`, `$5`: thousands separators and a leading `$` are dropped.
    pub fn parse(s: &str) -> Option<Self> {
        let t: String = s
            .trim()
            .trim_start_matches('$')
            .chars()
            .filter(|&c| c != ',')
            .collect();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit() || b"-+.".contains(&b)) {
            return None;
        }
        let value: f64 = t.parse().ok().filter(|v: &f64| v.is_finite())?;
        let int = t.parse::<i128>().ok().or_else(|| {
            (value.fract() == 0.0 && value.abs() < 2f64.powi(53)).then_some(value as i128)
        });
        Some(Self {
            text: t,
            int,
            value,
        })
    }

    /// The number after GSM8K's `####` marker in a solution text.
    pub fn from_gsm8k_solution(solution: &str) -> Option<Self> {
        let (_, tail) = solution.rsplit_once("####")?;
        Self::parse(tail.lines().next().unwrap_or(""))
    }

    /// Whether a program's result is this number (module docs).
    pub fn matches(&self, v: Value) -> bool {
        match v {
            Value::Int(i) => self.int == Some(i),
            Value::Float(f) => {
                (f - self.value).abs() <= FLOAT_TOLERANCE * self.value.abs().max(1.0)
            }
        }
    }
}

/// The program in a sample's text: after `prompt` when the text contains it, from the first
/// `def` that starts a word, up to the first EOS after it. Without a `def`, the text after the
/// prompt up to EOS (which then fails to parse: a wrong answer).
pub fn extract_program<'a>(text: &'a str, prompt: Option<&str>) -> &'a str {
    let mut rest = text;
    if let Some(p) = prompt.filter(|p| !p.is_empty())
        && let Some(at) = rest.find(p)
    {
        rest = &rest[at + p.len()..];
    }
    let bytes = rest.as_bytes();
    let def = rest
        .match_indices("def ")
        .map(|(i, _)| i)
        .find(|&i| i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
    if let Some(i) = def {
        rest = &rest[i..];
    }
    match rest.find(EOS_TEXT) {
        Some(end) => &rest[..end],
        None => rest,
    }
}

/// What scoring one sample found.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The program ran to the reference number.
    Correct(Value),
    /// It ran to another number.
    Wrong(Value),
    /// It did not run (outside the subset, or an error while running).
    Failed(ProgramError),
}

impl Outcome {
    /// Whether it counts as correct.
    pub fn is_correct(&self) -> bool {
        matches!(self, Outcome::Correct(_))
    }

    /// A short class name for failure counts: `correct`, `wrong_number`, `syntax`, `runtime`,
    /// `limit`.
    pub fn class(&self) -> &'static str {
        match self {
            Outcome::Correct(_) => "correct",
            Outcome::Wrong(_) => "wrong_number",
            Outcome::Failed(e) => match e {
                ProgramError::Syntax { .. } => "syntax",
                ProgramError::TooLong(_)
                | ProgramError::TooDeep { .. }
                | ProgramError::TooManySteps(_)
                | ProgramError::Overflow { .. } => "limit",
                ProgramError::UnknownName { .. }
                | ProgramError::ZeroDivision { .. }
                | ProgramError::Value { .. }
                | ProgramError::NoReturn => "runtime",
            },
        }
    }
}

/// Run the program found in `text` (see [`extract_program`]) and compare it with `reference`.
pub fn score_text(text: &str, prompt: Option<&str>, reference: &RefNumber) -> Outcome {
    match run_program(extract_program(text, prompt)) {
        Ok(v) if reference.matches(v) => Outcome::Correct(v),
        Ok(v) => Outcome::Wrong(v),
        Err(e) => Outcome::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_numbers_and_matching() {
        let r = RefNumber::parse("1,080").unwrap();
        assert_eq!((r.int, r.value), (Some(1080), 1080.0));
        assert!(r.matches(Value::Int(1080)));
        assert!(r.matches(Value::Float(1080.0)));
        assert!(r.matches(Value::Float(1079.9999999999998)));
        assert!(!r.matches(Value::Int(1081)));
        assert!(!r.matches(Value::Float(1080.001)));
        let d = RefNumber::parse("2.50").unwrap();
        assert_eq!(d.int, None);
        assert!(d.matches(Value::Float(2.5)) && !d.matches(Value::Int(2)));
        assert_eq!(RefNumber::parse("-3").unwrap().int, Some(-3));
        assert_eq!(RefNumber::parse("$5").unwrap().int, Some(5));
        assert_eq!(RefNumber::parse("5.0").unwrap().int, Some(5));
        assert!(RefNumber::parse("five").is_none() && RefNumber::parse("").is_none());
        let sol = "He has 2 + 3 = <<2+3=5>>5.\n#### 5";
        assert_eq!(RefNumber::from_gsm8k_solution(sol).unwrap().int, Some(5));
        assert!(RefNumber::from_gsm8k_solution("no marker").is_none());
    }

    #[test]
    fn the_program_is_cut_from_the_sample_text() {
        let prog = "def simple_math_problem() -> int:\n    return 2 + 3\n";
        let text = format!("<|endoftext|>How many? {prog}<|endoftext|>junk def x");
        assert_eq!(extract_program(&text, Some("How many?")), prog);
        assert_eq!(extract_program(&text, None), prog);
        // A word containing "def" in the prompt is not the program.
        let text = format!("Undefeated undef {prog}");
        assert_eq!(extract_program(&text, None), prog);
        let r = RefNumber::parse("5").unwrap();
        assert!(score_text(&format!("Q {prog}"), Some("Q"), &r).is_correct());
        let wrong = score_text("def f():\n    return 4\n", None, &r);
        assert_eq!(wrong.class(), "wrong_number");
        assert_eq!(score_text("no program", None, &r).class(), "syntax");
        assert_eq!(
            score_text("def f():\n    return 1 / 0\n", None, &r).class(),
            "runtime"
        );
        assert_eq!(
            score_text("def f():\n    return 10 ** 10 ** 10\n", None, &r).class(),
            "limit"
        );
    }
}
