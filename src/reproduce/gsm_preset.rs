//! What the conditional reproduction (`idlm reproduce --preset mini-gsm`) runs: the synth-math
//! data, the teachers, their students, the AR baseline and the step counts, as data
//! (`configs/reproduce/mini-gsm.toml`, embedded) adjusted by `--set`.

use serde::{Deserialize, Serialize};

use super::preset::{StudentSpec, set_keys};
use crate::config::RunConfig;
use crate::distill::DistillConfig;
use crate::process::ModelFamily;
use crate::task::style::Style;
use crate::{Error, Result};

/// Built-in conditional presets: (name, TOML).
pub const GSM_PRESETS: &[(&str, &str)] = &[(
    "mini-gsm",
    include_str!("../../configs/reproduce/mini-gsm.toml"),
)];

/// One teacher of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSpec {
    /// Row label and run folder (`method` of summary.json is `<name>-teacher`).
    pub name: String,
    /// Its config preset (`configs/<preset>.toml`).
    pub preset: String,
    /// `idlm train` overrides (`section.key=value`).
    #[serde(default)]
    pub overrides: Vec<String>,
}

/// What the conditional reproduction runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GsmPreset {
    /// Name.
    pub name: String,
    /// What it reproduces (the report's title).
    pub title: String,
    /// `idlm data synth-math` seed.
    pub synth_seed: u64,
    /// Training problems.
    pub train_problems: usize,
    /// Problems in each held-out split.
    pub test_problems: usize,
    /// How the programs are written (`varied` or `fixed`).
    pub style: String,
    /// BPE vocabulary trained on the training pairs.
    pub vocab: usize,
    /// Row length.
    pub seq_len: usize,
    /// Held-out share of the training pairs (validation NELBO).
    pub valid_fraction: f64,
    /// The teachers, trained in order.
    pub teachers: Vec<TeacherSpec>,
    /// Distilled models, in the order they are made (`from`: a teacher's name or an earlier
    /// student's method).
    pub students: Vec<StudentSpec>,
    /// Teacher step counts.
    pub teacher_steps: Vec<usize>,
    /// Student step counts.
    pub student_steps: Vec<usize>,
    /// Sampler seed (problem i uses stream i of it, in every row: paired).
    pub seed: u64,
    /// Sequences sampled together.
    pub batch_size: usize,
    /// The AR baseline: trained with this teacher's config (by name) and `ar_overrides`; empty
    /// for none.
    pub ar_from: String,
    /// `idlm train` overrides of the AR baseline, after the teacher's.
    #[serde(default)]
    pub ar_overrides: Vec<String>,
    /// GSM8K test problems each model answers (the first N of the 1,319; 0: skip).
    pub gsm8k_problems: usize,
}

/// Names of the built-in conditional presets.
pub fn gsm_names() -> Vec<&'static str> {
    GSM_PRESETS.iter().map(|(n, _)| *n).collect()
}

/// A built-in conditional preset by name, or None when `name` is not one.
pub fn gsm_preset(name: &str) -> Option<Result<GsmPreset>> {
    let (_, text) = GSM_PRESETS.iter().find(|(n, _)| *n == name)?;
    Some(
        toml::from_str(text)
            .map_err(|e| Error::Config(format!("reproduction preset '{name}': {e}"))),
    )
}

impl GsmPreset {
    /// The synth-math style.
    pub fn style(&self) -> Result<Style> {
        Style::parse(&self.style)
    }

    /// A teacher's run config: its preset with its overrides.
    pub fn teacher_config(&self, t: &TeacherSpec) -> Result<RunConfig> {
        RunConfig::load(&t.preset)?.with_overrides(&t.overrides)
    }

    /// The AR baseline's run config, if the preset has one.
    pub fn ar_config(&self) -> Result<Option<RunConfig>> {
        if self.ar_from.is_empty() {
            return Ok(None);
        }
        let t = self
            .teachers
            .iter()
            .find(|t| t.name == self.ar_from)
            .ok_or_else(|| {
                Error::Config(format!(
                    "preset {}: ar_from '{}' is not a teacher",
                    self.name, self.ar_from
                ))
            })?;
        let mut cfg = self.teacher_config(t)?.with_overrides(&self.ar_overrides)?;
        cfg.train.process = ModelFamily::Ar;
        Ok(Some(cfg))
    }

    /// Check names are unique, every student distils something made before it, and every
    /// config parses.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("preset {}: {m}", self.name)));
        self.style()?;
        let mut seen: Vec<&str> = Vec::new();
        for t in &self.teachers {
            self.teacher_config(t)?;
            if seen.contains(&t.name.as_str()) || t.name == "ar" {
                return bad(format!("the name '{}' is taken twice", t.name));
            }
            seen.push(&t.name);
        }
        for s in &self.students {
            DistillConfig::default().with_overrides(&s.overrides)?;
            if !seen.contains(&s.from.as_str()) {
                return bad(format!(
                    "{} distils '{}', which comes later",
                    s.method, s.from
                ));
            }
            if seen.contains(&s.method.as_str()) || s.method == "ar" {
                return bad(format!("the name '{}' is taken twice", s.method));
            }
            seen.push(&s.method);
        }
        self.ar_config()?;
        if self.teacher_steps.is_empty() || self.test_problems == 0 || self.batch_size == 0 {
            return bad("needs teacher steps, test problems and a batch size".into());
        }
        Ok(())
    }

    /// Apply `--set` overrides: a preset key (`test_problems=20`), `<teacher>.<section.key>`,
    /// `ar.<section.key>` or `<student>.<key>`.
    pub fn with_overrides(mut self, sets: &[String]) -> Result<Self> {
        let mut top = Vec::new();
        for ov in sets {
            let (key, raw) = ov.split_once('=').ok_or_else(|| {
                Error::Config(format!("override '{ov}' is not of the form key=value"))
            })?;
            let Some((who, rest)) = key.trim().split_once('.') else {
                top.push((key.trim(), raw));
                continue;
            };
            let line = format!("{rest}={raw}");
            if who == "ar" {
                self.ar_overrides.push(line);
            } else if let Some(t) = self.teachers.iter_mut().find(|t| t.name == who) {
                t.overrides.push(line);
            } else if let Some(s) = self.students.iter_mut().find(|s| s.method == who) {
                s.overrides.push(line);
            } else {
                return Err(Error::Config(format!(
                    "override '{ov}': no teacher or student '{who}' in preset {}",
                    self.name
                )));
            }
        }
        if !top.is_empty() {
            self = set_keys(&self, &self.name, &top)?;
        }
        self.validate()?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mini_gsm_preset_is_the_issues_table() {
        let p = gsm_preset("mini-gsm").unwrap().unwrap();
        p.validate().unwrap();
        let teachers: Vec<&str> = p.teachers.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(teachers, ["mdlm", "duo"]);
        let students: Vec<(&str, &str)> = p
            .students
            .iter()
            .map(|s| (s.method.as_str(), s.from.as_str()))
            .collect();
        assert_eq!(
            students,
            [
                ("idlm-mdlm", "mdlm"),
                ("sdtt", "mdlm"),
                ("dcd", "duo"),
                ("idlm-duo", "duo"),
                ("idlm-dcd", "dcd")
            ]
        );
        assert_eq!(p.teacher_steps, [1024, 128, 64, 32, 16, 8, 4]);
        assert_eq!(p.student_steps, [128, 64, 32, 16, 8, 4]);
        assert_eq!(p.style().unwrap(), Style::Varied);
        let ar = p.ar_config().unwrap().unwrap();
        assert_eq!(ar.train.process, ModelFamily::Ar);
        assert!(gsm_preset("mini").is_none());
    }

    #[test]
    fn overrides_reach_teachers_students_and_the_ar_baseline() {
        let p = gsm_preset("mini-gsm").unwrap().unwrap();
        let sets: Vec<String> = [
            "test_problems=4",
            "duo.train.max_steps=3",
            "ar.train.max_steps=2",
            "dcd.max_steps=1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let q = p.clone().with_overrides(&sets).unwrap();
        assert_eq!(q.test_problems, 4);
        assert_eq!(q.teacher_config(&q.teachers[1]).unwrap().train.max_steps, 3);
        assert_eq!(q.ar_config().unwrap().unwrap().train.max_steps, 2);
        assert_eq!(q.students[2].overrides.last().unwrap(), "max_steps=1");
        let bad = |s: &str| {
            p.clone()
                .with_overrides(&[s.to_string()])
                .unwrap_err()
                .to_string()
        };
        assert!(bad("nope.x=1").contains("no teacher or student 'nope'"));
        assert!(bad("style=\"fancy\"").contains("fancy"));
        assert!(bad("bogus=1").contains("unknown reproduction preset key 'bogus'"));
        assert!(bad("ar_from=\"idlm-mdlm\"").contains("is not a teacher"));
    }
}
