//! Rows of the conditional table kept across runs: a row is answered again only when what it
//! depends on changed (the checkpoint's files, the problems, the seed, the step count), so an
//! interrupted `reproduce --preset mini-gsm` resumes without re-answering every finished model.
//! A reused row keeps the seconds per problem measured when it was answered.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::answering::Problem;
use super::gsm::GsmRow;
use crate::Result;
use crate::checkpoint::CheckpointMeta;

/// Every outcome class a row counts (`score_text` classes and `prompt_too_long`).
const OUTCOMES: [&str; 6] = [
    "correct",
    "wrong_number",
    "syntax",
    "runtime",
    "limit",
    "prompt_too_long",
];

/// What a checkpoint's answers depend on: its recorded files (sha256 of each) and its step.
pub fn checkpoint_identity(meta: &CheckpointMeta) -> serde_json::Value {
    json!({"files": meta.files, "step": meta.step})
}

/// What a row's answers depend on, as one hex digest: the checkpoint's identity, the answering
/// settings and every problem.
pub fn row_key(identity: &serde_json::Value, settings: &str, problems: &[Problem]) -> String {
    let mut h = Sha256::new();
    h.update(json!({"checkpoint": identity, "settings": settings}).to_string());
    for p in problems {
        h.update(p.prompt.as_bytes());
        h.update([0]);
        h.update(p.number_text.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

#[derive(Deserialize)]
struct Stored {
    key: String,
    row: StoredRow,
}

/// [`GsmRow`] as read back (outcome names owned).
#[derive(Deserialize)]
struct StoredRow {
    method: String,
    process: String,
    steps: Option<usize>,
    split: String,
    accuracy: f64,
    accuracy_se: f64,
    nfe: f64,
    seconds_per_sample: f64,
    samples: usize,
    outcomes: BTreeMap<String, usize>,
    checkpoint: String,
}

/// The row stored at `path` when its key is `key`; None when there is none, it is stale, or it
/// cannot be read (the row is then answered again, never trusted half-read).
pub fn load(path: &Path, key: &str) -> Option<GsmRow> {
    let text = std::fs::read_to_string(path).ok()?;
    let s: Stored = serde_json::from_str(&text).ok()?;
    if s.key != key {
        return None;
    }
    let r = s.row;
    let mut outcomes = BTreeMap::new();
    for (name, n) in r.outcomes {
        outcomes.insert(*OUTCOMES.iter().find(|o| **o == name)?, n);
    }
    Some(GsmRow {
        method: r.method,
        process: r.process,
        steps: r.steps,
        split: r.split,
        accuracy: r.accuracy,
        accuracy_se: r.accuracy_se,
        nfe: r.nfe,
        seconds_per_sample: r.seconds_per_sample,
        samples: r.samples,
        outcomes,
        checkpoint: r.checkpoint,
    })
}

/// Store `row` under `key` at `path` (atomically).
pub fn store(path: &Path, key: &str, row: &GsmRow) -> Result<()> {
    let text = format!("{:#}\n", json!({"key": key, "row": row}));
    crate::atomic::write_file(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::RefNumber;

    fn row() -> GsmRow {
        GsmRow {
            method: "idlm-mdlm".into(),
            process: "mdlm".into(),
            steps: Some(4),
            split: "test_numbers".into(),
            accuracy: 0.5,
            accuracy_se: 0.25,
            nfe: 4.0,
            seconds_per_sample: 0.01,
            samples: 4,
            outcomes: BTreeMap::from([("correct", 2), ("prompt_too_long", 2)]),
            checkpoint: "runs/x".into(),
        }
    }

    #[test]
    fn a_row_comes_back_only_under_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.row.json");
        assert!(load(&path, "k").is_none());
        store(&path, "k", &row()).unwrap();
        let back = load(&path, "k").unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(row()).unwrap()
        );
        assert!(load(&path, "other").is_none());
        // An unknown outcome name or a torn file: answered again.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("prompt_too_long", "novel")).unwrap();
        assert!(load(&path, "k").is_none());
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        assert!(load(&path, "k").is_none());
    }

    #[test]
    fn the_key_follows_problems_settings_and_weights() {
        let id = json!({"files": {"model.safetensors": {"sha256": "ab"}}, "step": 7});
        let p = |n: &str| Problem {
            prompt: "q".into(),
            number: RefNumber::parse(n).unwrap(),
            number_text: n.into(),
        };
        let k = row_key(&id, "greedy 4", &[p("1")]);
        assert_eq!(k, row_key(&id, "greedy 4", &[p("1")]));
        assert_ne!(k, row_key(&id, "greedy 8", &[p("1")]));
        assert_ne!(k, row_key(&id, "greedy 4", &[p("2")]));
        assert_ne!(k, row_key(&id, "greedy 4", &[p("1"), p("1")]));
        let other = json!({"files": {"model.safetensors": {"sha256": "cd"}}, "step": 7});
        assert_ne!(k, row_key(&other, "greedy 4", &[p("1")]));
    }
}
