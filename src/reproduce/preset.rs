//! What a reproduction runs: presets are data (`configs/reproduce/*.toml`, embedded in the
//! binary so it works from any directory), read into [`Preset`] and adjusted by `--set`.

use serde::{Deserialize, Serialize};

use crate::process::{NoiseRemoval, ProcessKind};
use crate::{Error, Result};

/// Built-in reproduction presets: (name, TOML).
pub const PRESETS: &[(&str, &str)] = &[
    ("mini", include_str!("../../configs/reproduce/mini.toml")),
    (
        "mini-duo",
        include_str!("../../configs/reproduce/mini-duo.toml"),
    ),
];

/// One distilled model of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentSpec {
    /// Row label in the table (`method` of summary.json).
    pub method: String,
    /// What it distils: "teacher", or an earlier student's `method` (IDLM-DCD distils DCD).
    pub from: String,
    /// `idlm distill` overrides (`key=value`).
    pub overrides: Vec<String>,
}

/// What a reproduction runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// Name.
    pub name: String,
    /// What it reproduces (the report's title).
    pub title: String,
    /// Corpus name for `idlm prepare`.
    pub corpus: String,
    /// BPE vocabulary.
    pub vocab: usize,
    /// Row length.
    pub seq_len: usize,
    /// Held-out share of documents.
    pub valid_fraction: f64,
    /// Teacher config preset.
    pub teacher_preset: String,
    /// `idlm train` overrides of the teacher config (`section.key=value`; also the AR baseline's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teacher_overrides: Vec<String>,
    /// Distilled models, in the order they are made.
    pub students: Vec<StudentSpec>,
    /// Samples per row (paired seeds across rows).
    pub samples: usize,
    /// Teacher step counts.
    pub teacher_steps: Vec<usize>,
    /// Student step counts.
    pub student_steps: Vec<usize>,
    /// Sampler seed.
    pub seed: u64,
    /// The teacher's forward process.
    pub process: ProcessKind,
    /// Noise removals every diffusion row is sampled with (Duo tables report both).
    pub noise_removals: Vec<NoiseRemoval>,
    /// Train and evaluate the AR baseline (same width, depth, data and steps as the teacher).
    pub ar_baseline: bool,
}

/// Names of the built-in presets.
pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

/// A built-in preset by name.
pub fn preset(name: &str) -> Result<Preset> {
    let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "unknown reproduction preset '{name}': use {}",
            names().join(" or ")
        ))
    })?;
    toml::from_str(text).map_err(|e| Error::Config(format!("reproduction preset '{name}': {e}")))
}

impl Preset {
    /// Apply `--set` overrides: a preset key (`samples=8`, `teacher_steps=[8, 4]`),
    /// `teacher.<section.key>` (the teacher's config) or `<student>.<key>` (its distill config).
    pub fn with_overrides(mut self, sets: &[String]) -> Result<Self> {
        let mut top = Vec::new();
        for ov in sets {
            let (key, raw) = ov.split_once('=').ok_or_else(|| {
                Error::Config(format!("override '{ov}' is not of the form key=value"))
            })?;
            match key.trim().split_once('.') {
                None => top.push((key.trim(), raw)),
                Some(("teacher", rest)) => self.teacher_overrides.push(format!("{rest}={raw}")),
                Some((student, rest)) => self
                    .students
                    .iter_mut()
                    .find(|s| s.method == student)
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "override '{ov}': no student '{student}' in preset {}",
                            self.name
                        ))
                    })?
                    .overrides
                    .push(format!("{rest}={raw}")),
            }
        }
        if top.is_empty() {
            return Ok(self);
        }
        self.with_top_level(&top)
    }

    /// Set preset keys through the TOML form, so every key is settable and typed as in the files.
    fn with_top_level(&self, sets: &[(&str, &str)]) -> Result<Self> {
        set_keys(self, &self.name, sets)
    }
}

/// `value` with top-level keys replaced through its TOML form (`raw` parsed as a TOML value, or
/// taken as a string), so every key is settable and typed as in the preset files.
pub fn set_keys<T>(value: &T, name: &str, sets: &[(&str, &str)]) -> Result<T>
where
    T: Serialize + serde::de::DeserializeOwned,
{
    let err = |m: String| Error::Config(m);
    let mut doc = toml::Table::try_from(value)
        .map_err(|e| err(format!("cannot serialise preset {name}: {e}")))?;
    for (key, raw) in sets {
        let v = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        let slot = doc
            .get_mut(*key)
            .ok_or_else(|| err(format!("unknown reproduction preset key '{key}'")))?;
        *slot = v;
    }
    T::deserialize(toml::Value::Table(doc)).map_err(|e| {
        let keys: Vec<&str> = sets.iter().map(|(k, _)| *k).collect();
        err(format!(
            "overriding {} of preset {name}: {e}",
            keys.join(", ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunConfig;
    use crate::distill::DistillConfig;

    #[test]
    fn presets_are_consistent() {
        for name in names() {
            let p = preset(name).unwrap();
            assert_eq!(p.name, name);
            let cfg = RunConfig::load(&p.teacher_preset).unwrap();
            assert_eq!(cfg.train.process, p.process.into(), "{name}");
            let mut seen = vec!["teacher"];
            for s in &p.students {
                let dc = DistillConfig::default()
                    .with_overrides(&s.overrides)
                    .unwrap();
                assert!(
                    seen.contains(&s.from.as_str()),
                    "{name}: {} distils {}",
                    s.method,
                    s.from
                );
                assert!(dc.max_steps > 0);
                seen.push(&s.method);
            }
        }
        assert!(preset("maxi").is_err());
    }

    #[test]
    fn the_mini_preset_is_the_table_it_was() {
        // The values of the preset when it was Rust code (stages.json of results/mini).
        let p = preset("mini").unwrap();
        assert_eq!((p.vocab, p.seq_len, p.samples, p.seed), (512, 256, 64, 1));
        assert_eq!(p.teacher_steps, [1024, 256, 64, 16, 8, 4]);
        assert_eq!(p.student_steps, [32, 16, 8, 4]);
        assert_eq!(p.noise_removals, [NoiseRemoval::Ancestral]);
        assert!(p.ar_baseline);
        let methods: Vec<&str> = p.students.iter().map(|s| s.method.as_str()).collect();
        assert_eq!(methods, ["idlm", "sdtt"]);
        assert_eq!(p.students[1].overrides[2], "sdtt_round_steps=60");
        let d = preset("mini-duo").unwrap();
        assert_eq!(
            d.noise_removals,
            [NoiseRemoval::Greedy, NoiseRemoval::Ancestral]
        );
        assert_eq!(d.students[2].from, "dcd");
    }

    #[test]
    fn overrides_reach_the_preset_the_teacher_and_the_students() {
        let sets: Vec<String> = [
            "samples=4",
            "teacher_steps=[8, 4]",
            "teacher.train.max_steps=4",
            "sdtt.max_steps=2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = preset("mini").unwrap().with_overrides(&sets).unwrap();
        assert_eq!((p.samples, p.teacher_steps.as_slice()), (4, &[8, 4][..]));
        assert_eq!(p.teacher_overrides, ["train.max_steps=4"]);
        assert_eq!(p.students[1].overrides.last().unwrap(), "max_steps=2");
        let bad = |s: &str| {
            preset("mini")
                .unwrap()
                .with_overrides(&[s.to_string()])
                .unwrap_err()
                .to_string()
        };
        assert!(bad("bogus=1").contains("unknown reproduction preset key 'bogus'"));
        assert!(bad("dcd.max_steps=1").contains("no student 'dcd'"));
        assert!(bad("samples=many").contains("samples"));
        assert!(bad("samples").contains("key=value"));
    }
}
