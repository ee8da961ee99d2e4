//! A reproduction's rows: write each set of samples as JSONL, evaluate it under protocol v1
//! (GenPPL, entropy, MAUVE against the same references for every row), and make its table row.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::data::DataDir;
use crate::eval::protocol::{MauveEval, References, evaluate_with};
use crate::eval::scorer::ScorerSource;
use crate::report::ResultRow as Row;
use crate::sample::Sample;
use crate::sample::record::{SampleRecord, write_jsonl};
use crate::{Error, Result};

/// Which row a set of samples is.
pub(super) struct RowSpec<'a> {
    pub method: &'a str,
    pub process: &'a str,
    pub steps: Option<usize>,
    /// Suffix of the samples file name.
    pub tag: String,
    pub noise_removal: String,
    pub checkpoint: String,
}

impl RowSpec<'_> {
    /// The samples file's stem (and the row's name in the log).
    fn file_stem(&self) -> String {
        match self.steps {
            Some(k) => format!("{}-{k}{}", self.method, self.tag),
            None => self.method.replace(' ', "-"),
        }
    }
}

/// What every row's evaluation shares.
pub(super) struct EvalContext<'a> {
    pub minilm: PathBuf,
    pub references: References,
    pub genppl_model: &'a Path,
    pub data: &'a DataDir,
    pub sample_dir: &'a Path,
    pub seed: u64,
    pub log: &'a dyn Fn(&str),
}

impl EvalContext<'_> {
    /// Decode generated samples into records with their costs and seed.
    pub fn records(&self, samples: &[Sample]) -> Result<Vec<SampleRecord>> {
        samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let text = self.data.tokenizer.decode(&s.ids)?;
                Ok(SampleRecord {
                    nfe: Some(s.nfe),
                    seconds: Some(s.seconds),
                    seed: Some(self.seed),
                    ..SampleRecord::new(i, text, Some(s.ids.clone()))
                })
            })
            .collect()
    }

    /// Write the samples JSONL, evaluate it under protocol v1, and make the table row. Records
    /// of generated samples carry their NFE and seconds (held-out text has none).
    pub fn evaluate(
        &self,
        spec: &RowSpec,
        recs: &[SampleRecord],
        sample_seconds: f64,
    ) -> Result<(Row, Value)> {
        let name = spec.file_stem();
        self.write_samples(spec, recs, &name)?;
        (self.log)(&format!("evaluating {name}"));
        let metrics: Vec<String> = ["genppl", "entropy", "mauve"]
            .iter()
            .map(|m| m.to_string())
            .collect();
        let mauve = MauveEval {
            model_dir: self.minilm.clone(),
            references: self.references.clone(),
            options: Default::default(),
            batch: 32,
            progress: None,
        };
        let ev = evaluate_with(
            recs,
            &metrics,
            Some(ScorerSource::SmolLm2(self.genppl_model)),
            8,
            None,
            Some(&mauve),
        )?;
        let row = table_row(spec, recs, &ev)?;
        (self.log)(&format!(
            "{name}: GenPPL {:.1}, entropy {:.3}, MAUVE {:.3}, NFE {:.1}, {:.3} s/sample",
            num(&ev, "genppl")?,
            num(&ev, "entropy")?,
            row.mauve.unwrap_or(f64::NAN),
            row.nfe.unwrap_or(0.0),
            row.seconds_per_sample.unwrap_or(0.0)
        ));
        let ev = with_row_keys(ev, spec, &row, sample_seconds);
        Ok((row, ev))
    }

    /// `<sample_dir>/<name>.jsonl`; every row's file has the steps, method and process keys
    /// (steps null for held-out text).
    fn write_samples(&self, spec: &RowSpec, recs: &[SampleRecord], name: &str) -> Result<()> {
        let lines: Vec<SampleRecord> = recs
            .iter()
            .map(|r| SampleRecord {
                steps: Some(spec.steps),
                method: Some(spec.method.to_string()),
                process: Some(spec.process.to_string()),
                ..r.clone()
            })
            .collect();
        write_jsonl(&self.sample_dir.join(format!("{name}.jsonl")), &lines)
    }
}

/// The summary.json row of an evaluation.
fn table_row(spec: &RowSpec, recs: &[SampleRecord], ev: &Value) -> Result<Row> {
    Ok(Row {
        method: spec.method.to_string(),
        process: spec.process.to_string(),
        steps: spec.steps,
        genppl: Some(num(ev, "genppl")?),
        entropy: Some(num(ev, "entropy")?),
        entropy_pooled: Some(num(ev, "entropy_pooled")?),
        mauve: ev.get("mauve").and_then(|m| m.as_f64()),
        nfe: mean(recs, |r| r.nfe.map(|n| n as f64)),
        seconds_per_sample: mean(recs, |r| r.seconds),
        samples: recs.len(),
        noise_removal: spec.noise_removal.clone(),
        checkpoint: spec.checkpoint.clone(),
    })
}

/// The evaluation JSON with the row's identity and costs added (evals.json).
fn with_row_keys(mut ev: Value, spec: &RowSpec, row: &Row, sample_seconds: f64) -> Value {
    ev["method"] = json!(spec.method);
    ev["process"] = json!(spec.process);
    ev["steps"] = json!(spec.steps);
    ev["noise_removal"] = json!(spec.noise_removal);
    ev["checkpoint"] = json!(row.checkpoint);
    ev["nfe"] = json!(row.nfe);
    ev["seconds_per_sample"] = json!(row.seconds_per_sample);
    ev["sample_seconds"] = json!(sample_seconds);
    ev
}

/// Mean of a per-record cost, if every record has it.
fn mean(recs: &[SampleRecord], f: impl Fn(&SampleRecord) -> Option<f64>) -> Option<f64> {
    let xs: Option<Vec<f64>> = recs.iter().map(f).collect();
    xs.filter(|x| !x.is_empty())
        .map(|x| x.iter().sum::<f64>() / x.len() as f64)
}

fn num(v: &Value, key: &str) -> Result<f64> {
    v.get(key)
        .and_then(|x| x.as_f64())
        .ok_or_else(|| Error::Data(format!("evaluation result has no numeric '{key}'")))
}
