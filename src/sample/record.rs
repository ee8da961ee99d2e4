//! One line of a samples JSONL file: what `idlm sample` (diffusion and AR), `idlm data heldout`
//! and `idlm reproduce` write, and what `idlm eval` reads. Writers differ in which keys they fill,
//! so everything but `text` is optional.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::process::NoiseRemoval;
use crate::{Error, Result};

/// A sample (or a held-out text) with how it was made. Fields are in alphabetical order because
/// the earlier `json!` writers emitted sorted keys: files stay byte-identical to older ones.
/// Unknown keys are ignored on reading, so any JSONL with a `text` string reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    /// Checkpoint directory of the generator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// Training step of that checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_step: Option<u64>,
    /// Positions of `ids` that were clamped (a prompt, infilling text), not generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clamped: Option<Vec<u32>>,
    /// The text generated after a prompt (the ids past the clamped prefix, decoded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<String>,
    /// The generator's own token ids; always written (null for texts that have none).
    #[serde(default)]
    pub ids: Option<Vec<u32>>,
    /// Position in the file (0 for foreign files without one).
    #[serde(default)]
    pub index: usize,
    /// Row label (reproductions and held-out text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Network calls spent on this sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nfe: Option<usize>,
    /// Final noise removal of a diffusion sampler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_removal: Option<NoiseRemoval>,
    /// Forward process name ("mdlm", "duo", "ar"; empty for a reproduction's held-out row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// The prompt text or infilling template the sample was conditioned on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Line (from 0) of the `--prompts` file the prompt came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_index: Option<usize>,
    /// Sampler name ("ancestral_cache", "ancestral", "ar_kv_cache").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
    /// Wall-clock seconds attributed to this sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Sampler seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// `idlm data heldout`'s word-shuffle seed; `Some(None)` is written as null (not shuffled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shuffle_seed: Option<Option<u64>>,
    /// Prepared data folder the held-out text came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Reverse steps; `Some(None)` is written as null (a reproduction's held-out row, which has
    /// the key so every row of a reproduction has the same keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Option<usize>>,
    /// AR softmax temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Decoded text.
    pub text: String,
    /// AR / Duo nucleus mass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// "ema" or "raw" weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
}

impl SampleRecord {
    /// A record of `text` and its ids; the other fields are left unset.
    pub fn new(index: usize, text: String, ids: Option<Vec<u32>>) -> Self {
        Self {
            index,
            text,
            ids,
            ..Self::default()
        }
    }

    /// The generated ids: `ids` without the clamped positions (what entropy counts).
    pub fn generated_ids(&self) -> Option<Vec<u32>> {
        let ids = self.ids.as_ref()?;
        Some(match &self.clamped {
            None => ids.clone(),
            Some(c) => {
                let c: std::collections::HashSet<u32> = c.iter().copied().collect();
                (0..ids.len() as u32)
                    .filter(|i| !c.contains(i))
                    .map(|i| ids[i as usize])
                    .collect()
            }
        })
    }

    /// The record as one JSONL line (with its newline).
    pub fn to_line(&self) -> Result<String> {
        serde_json::to_string(self)
            .map(|s| s + "\n")
            .map_err(|e| Error::Data(format!("cannot serialise sample {}: {e}", self.index)))
    }

    /// Parse one line; `what` names it in errors (file and line).
    pub fn from_line(line: &str, what: &str) -> Result<Self> {
        let bad = |m: String| Error::Data(format!("{what}: {m}"));
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        serde_json::from_value(v).map_err(|e| {
            bad(format!(
                "not a sample ({e}): it needs a \"text\" string; \"ids\" must be non-negative \
                 integers"
            ))
        })
    }
}

/// All records as JSONL text.
pub fn to_jsonl(records: &[SampleRecord]) -> Result<String> {
    records.iter().map(SampleRecord::to_line).collect()
}

/// Read a samples file: one record per non-blank line; an empty file is an error.
pub fn read_jsonl(path: &Path) -> Result<Vec<SampleRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(SampleRecord::from_line(
            line,
            &format!("{} line {}", path.display(), i + 1),
        )?);
    }
    if out.is_empty() {
        return Err(Error::Data(format!("{} has no samples", path.display())));
    }
    Ok(out)
}

/// Write records to `path` as JSONL.
pub fn write_jsonl(path: &Path, records: &[SampleRecord]) -> Result<()> {
    crate::atomic::write_file(path, to_jsonl(records)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Literal lines of each earlier writer (before the typed record), as found in old files.
    const OLD: &[(&str, &str)] = &[
        (
            "idlm sample (diffusion)",
            r#"{"checkpoint":"runs/t/checkpoints/step-00000008","checkpoint_step":8,"ids":[0,5,9,1],"index":0,"nfe":4,"noise_removal":"ancestral","process":"mdlm","sampler":"ancestral_cache","seconds":0.0125,"seed":4,"steps":8,"text":"a b","weights":"ema"}"#,
        ),
        (
            "idlm sample (AR)",
            r#"{"checkpoint":"runs/ar","checkpoint_step":4,"ids":[0,7,1],"index":2,"nfe":31,"process":"ar","sampler":"ar_kv_cache","seconds":0.5,"seed":1,"steps":31,"temperature":1.0,"text":"x","top_p":0.9,"weights":"raw"}"#,
        ),
        (
            "idlm data heldout",
            r#"{"ids":null,"index":1,"method":"held-out text, words shuffled","shuffle_seed":3,"source":"runs/data/english-512-256","text":"b a"}"#,
        ),
        (
            "idlm data heldout (unshuffled)",
            r#"{"ids":[0,4,1],"index":0,"method":"held-out text","shuffle_seed":null,"source":"d","text":"a b"}"#,
        ),
        (
            "idlm reproduce (generated)",
            r#"{"ids":[0,3,1],"index":3,"method":"idlm","nfe":4,"process":"mdlm","seconds":0.03,"seed":1,"steps":4,"text":"c"}"#,
        ),
        (
            "idlm reproduce (held-out row)",
            r#"{"ids":[0,3,1],"index":0,"method":"held-out text","process":"","steps":null,"text":"d"}"#,
        ),
        ("a foreign JSONL", r#"{"text":"only text","score":0.5}"#),
    ];

    #[test]
    fn old_lines_of_every_writer_read() {
        for (what, line) in OLD {
            let r = SampleRecord::from_line(line, what).unwrap();
            assert!(!r.text.is_empty(), "{what}");
        }
        let r = SampleRecord::from_line(OLD[0].1, "").unwrap();
        assert_eq!(r.ids, Some(vec![0, 5, 9, 1]));
        assert_eq!(r.seed, Some(4));
        assert_eq!(r.noise_removal, Some(NoiseRemoval::Ancestral));
        assert_eq!(r.steps, Some(Some(8)));
        assert_eq!(SampleRecord::from_line(OLD[2].1, "").unwrap().ids, None);
    }

    #[test]
    fn writers_lines_are_the_old_lines() {
        // Every writer's old line but the foreign one comes back byte for byte, null keys
        // included (reading turns a null into `None`, so those are set again here).
        for (what, line) in &OLD[..OLD.len() - 1] {
            let mut r = SampleRecord::from_line(line, what).unwrap();
            if line.contains(r#""steps":null"#) {
                r.steps = Some(None);
            }
            if line.contains(r#""shuffle_seed":null"#) {
                r.shuffle_seed = Some(None);
            }
            assert_eq!(r.to_line().unwrap(), format!("{line}\n"), "{what}");
        }
    }

    #[test]
    fn bad_lines_are_named_errors() {
        let e = |l: &str| {
            SampleRecord::from_line(l, "f line 2")
                .unwrap_err()
                .to_string()
        };
        assert!(e("{oops").contains("f line 2: not JSON"));
        assert!(e(r#"{"ids": [1]}"#).contains("text"));
        assert!(e(r#"{"text": "a", "ids": [1, -2]}"#).contains("ids"));
    }
}
