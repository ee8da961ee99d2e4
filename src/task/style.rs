//! How a `synth-math` template's assignments are written out as a program.
//!
//! `fixed` writes one program per problem: the template's names, its order, `return result`.
//! Given the question, every answer token is then determined, so parallel decoding loses nothing
//! and a teacher is as accurate at 4 steps as at 1024 (results/synth-math-teacher-fixed: 93.5% vs
//! 96.5%), which leaves a distiller nothing to show. `varied` writes one of several equivalent
//! programs, as TinyGSM's model-written answers vary: the literal inputs come in any order, and
//! the last line is either `result = e` + `return result` or `return e`, both drawn per problem.
//! A program is then right only when its tokens agree with each other (each input defined once,
//! with its own number, before it is used): the joint dependence that few-step samplers break
//! and that distillation has to recover.
//!
//! Both choices keep the token positions of everything else: the inputs' block has the same
//! length in any order, and the return form changes only the tail. Variable spellings (`n_x`,
//! `x_val`, ...) were tried first and dropped: they shift every later token by a varying amount,
//! and the `mini` teacher (masked diffusion, any-order decoding) was still at 0% after 3,000 steps
//! with one spelling per program and after 5,000 with one per variable, even at 1,024 steps.

use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::PROGRAM_HEADER;
use crate::{Error, Result};

/// How programs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Style {
    /// One program per problem.
    Fixed,
    /// Equivalent programs with random input order and return form (the default).
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
    let inputs = lines.iter().take_while(|(_, e)| is_literal(e)).count();
    let mut order: Vec<usize> = (0..lines.len()).collect();
    order[..inputs].shuffle(rng);
    let direct_return = rng.random_bool(0.5);
    for (k, &i) in order.iter().enumerate() {
        let (v, e) = &lines[i];
        if k + 1 == order.len() && direct_return {
            s.push_str(&format!("    return {e}\n"));
        } else {
            s.push_str(&format!("    {v} = {e}\n"));
        }
    }
    if !direct_return {
        s.push_str("    return result\n");
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
        // 3! orders x 2 returns = 12 programs: 400 draws find them all.
        assert_eq!(seen.len(), 12);
        for p in &seen {
            // The input block keeps its length in any order, so later lines keep their place.
            let block: usize = p.lines().skip(1).take(3).map(str::len).sum();
            assert_eq!(
                block,
                "    has = 41    lost = 15    found = 11".len(),
                "{p}"
            );
            let direct = !p.contains("return result");
            assert_eq!(direct, p.contains("return round(left + found)"), "{p}");
        }
        // An input defined twice and another missing is wrong, which is the point of the style.
        let bad = format!("{PROGRAM_HEADER}\n    has = 41\n    has = 15\n    return has - lost\n");
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
