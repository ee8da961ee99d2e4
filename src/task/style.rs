//! How a `synth-math` template's assignments are written out as a program.
//!
//! `fixed` writes one program per problem: the template's names, its order, `return result`.
//! Given the question, every answer token is then determined, so parallel decoding loses nothing
//! and a teacher is as accurate at 4 steps as at 1024 (results/synth-math-teacher: 93.5% vs
//! 96.5%), which leaves a distiller nothing to show. `varied` writes one of many equivalent
//! programs, as TinyGSM's model-written answers do: the variables take one of the [`VARIANTS`]
//! spellings (one for the whole program, as a writer keeps one naming habit), the literal inputs
//! come in any order, and the last line is either `result = e` + `return result` or `return e`.
//! Every choice is drawn per problem and is the same wherever it shows up, so a program is right
//! only when its tokens agree with each other: the joint dependence that few-step samplers break
//! and that distillation has to recover. (A spelling drawn per variable was tried first: 4^k
//! programs per problem left the `mini` teacher at 0% after 5,000 steps, even at 1,024 steps.)

use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::PROGRAM_HEADER;
use crate::{Error, Result};

/// The spellings of the variables `v` of a `varied` program (`{}` is `v`). No template's name
/// starts with `n_` or `my_` or ends with `_val`, so two variables never share a spelling.
pub const VARIANTS: &[&str] = &["{}", "n_{}", "{}_val", "my_{}"];

/// How programs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Style {
    /// One program per problem.
    Fixed,
    /// Equivalent programs with random spellings, input order and return form (the default).
    #[default]
    Varied,
}

impl Style {
    /// `fixed` or `varied`.
    pub fn name(self) -> &'static str {
        match self {
            Style::Fixed => "fixed",
            Style::Varied => "varied",
        }
    }

    /// Parse `fixed` or `varied`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "fixed" => Ok(Style::Fixed),
            "varied" => Ok(Style::Varied),
            _ => Err(Error::InvalidArgument(format!(
                "synth-math style {s:?}: expected fixed or varied"
            ))),
        }
    }
}

/// Replace each identifier of `expr` by `rename` of it (numbers and operators kept).
fn rename_expr(expr: &str, rename: &dyn Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(expr.len() + 8);
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if !word.is_empty() {
            let is_name = word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
            out.push_str(&if is_name { rename(word) } else { word.clone() });
            word.clear();
        }
    };
    for c in expr.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Whether `e` is a literal number (an input line).
fn is_literal(e: &str) -> bool {
    !e.is_empty()
        && e.chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
}

/// The program of `lines` (the last assigns `result`) in `style`; `varied` draws from `rng`.
pub fn write_program(lines: &[(&str, String)], style: Style, rng: &mut ChaCha8Rng) -> String {
    let mut s = format!("{PROGRAM_HEADER}\n");
    if style == Style::Fixed {
        for (v, e) in lines {
            s.push_str(&format!("    {v} = {e}\n"));
        }
        s.push_str("    return result\n");
        return s;
    }
    // Builtins called in expressions (`round`, `min`, ...) are not variables.
    let vars: Vec<&str> = lines.iter().map(|(v, _)| *v).collect();
    let spelling = VARIANTS[rng.random_range(0..VARIANTS.len())];
    let rename = |w: &str| {
        if vars.contains(&w) {
            spelling.replace("{}", w)
        } else {
            w.to_string()
        }
    };
    let inputs = lines.iter().take_while(|(_, e)| is_literal(e)).count();
    let mut order: Vec<usize> = (0..lines.len()).collect();
    order[..inputs].shuffle(rng);
    let direct_return = rng.random_bool(0.5);
    for (k, &i) in order.iter().enumerate() {
        let (v, e) = &lines[i];
        let e = rename_expr(e, &rename);
        if k + 1 == order.len() && direct_return {
            s.push_str(&format!("    return {e}\n"));
        } else {
            s.push_str(&format!("    {} = {e}\n", rename(v)));
        }
    }
    if !direct_return {
        s.push_str(&format!("    return {}\n", rename("result")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn lines() -> Vec<(&'static str, String)> {
        vec![
            ("has", "41".into()),
            ("lost", "15".into()),
            ("found", "11".into()),
            ("left", "has - lost".into()),
            ("result", "round(left + found)".into()),
        ]
    }

    #[test]
    fn fixed_is_the_template_verbatim() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let p = write_program(&lines(), Style::Fixed, &mut rng);
        assert_eq!(
            p,
            format!(
                "{PROGRAM_HEADER}\n    has = 41\n    lost = 15\n    found = 11\n    \
                 left = has - lost\n    result = round(left + found)\n    return result\n"
            )
        );
    }

    #[test]
    fn varied_programs_differ_but_compute_the_same() {
        let mut seen = std::collections::HashSet::new();
        for seed in 0..400 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let p = write_program(&lines(), Style::Varied, &mut rng);
            let v = crate::task::run_program(&p).unwrap_or_else(|e| panic!("{e}\n{p}"));
            assert!(
                crate::task::RefNumber::parse("37").unwrap().matches(v),
                "{p}"
            );
            assert!(p.contains("round("), "builtins keep their names: {p}");
            // Computed lines stay after the inputs they use.
            let at = |needle: &str| p.find(needle).unwrap_or(usize::MAX);
            assert!(at("41") < at(" - ") && at("15") < at(" - ") && at("11") < at(" + "));
            seen.insert(p);
        }
        // 4 spellings x 3! orders x 2 returns = 48 programs: 400 draws find nearly all.
        assert!(
            seen.len() >= 44 && seen.len() <= 48,
            "{} distinct programs",
            seen.len()
        );
        // One spelling per program: every assigned name is spelled the same way.
        let kind = |v: &str| {
            if v.starts_with("n_") {
                1
            } else if v.starts_with("my_") {
                2
            } else if v.ends_with("_val") {
                3
            } else {
                0
            }
        };
        let mut kinds = std::collections::HashSet::new();
        for p in &seen {
            let names: Vec<&str> = p
                .lines()
                .filter_map(|l| l.split_once(" = ").map(|(v, _)| v.trim()))
                .collect();
            let k: std::collections::HashSet<i32> = names.iter().map(|v| kind(v)).collect();
            assert_eq!(k.len(), 1, "{p}");
            kinds.extend(k);
        }
        assert_eq!(kinds.len(), VARIANTS.len());
        // A program with mismatched spellings is wrong, which is the point of the style.
        let bad = format!("{PROGRAM_HEADER}\n    has = 4\n    return n_has\n");
        assert!(crate::task::run_program(&bad).is_err());
    }

    #[test]
    fn style_names_round_trip() {
        for s in [Style::Fixed, Style::Varied] {
            assert_eq!(Style::parse(s.name()).unwrap(), s);
        }
        assert!(Style::parse("fancy").is_err());
    }
}
