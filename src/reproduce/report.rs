//! The reproduction's report: a markdown table shaped like the paper's §7.1, plots, and the JSON
//! behind them, each stating the command that made it.

use std::fs;
use std::path::Path;

use serde::Serialize;
use serde_json::json;

use super::preset::Preset;
use crate::report::ResultRow as Row;
use crate::{Error, Result};

/// One stage of the pipeline, as the report lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    /// What it did.
    pub name: String,
    /// The equivalent stand-alone command.
    pub command: String,
    /// Wall-clock seconds; for a reused run, those it recorded when it was made.
    pub seconds: f64,
    /// Whether an existing result was reused.
    pub reused: bool,
}

/// Everything a report is made from.
pub struct Report<'a> {
    /// The preset.
    pub preset: &'a Preset,
    /// The command that made it.
    pub command: &'a str,
    /// Stages with times.
    pub stages: &'a [Stage],
    /// Table rows.
    pub rows: &'a [Row],
    /// Full eval JSON of every row.
    pub evals: &'a [serde_json::Value],
    /// Total wall-clock seconds.
    pub total_seconds: f64,
}

/// Pretty JSON with a final newline, written atomically.
pub(super) fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| Error::Config(format!("cannot serialise {}: {e}", path.display())))?;
    crate::atomic::write_file(path, (text + "\n").as_bytes())
}

/// Write README.md, summary.json, evals.json, stages.json and the plots into `out`.
pub fn write(out: &Path, r: &Report) -> Result<()> {
    fs::create_dir_all(out).map_err(|e| Error::io("creating", out, e))?;
    write_json(
        &out.join("summary.json"),
        &serde_json::to_value(r.rows).map_err(|e| Error::Config(e.to_string()))?,
    )?;
    write_json(&out.join("evals.json"), &json!(r.evals))?;
    write_json(
        &out.join("stages.json"),
        &json!({"command": r.command, "preset": r.preset, "stages": r.stages,
                "total_seconds": r.total_seconds}),
    )?;
    let plots = crate::report::write_plots(out, r.rows)?;
    let mut md = String::new();
    md.push_str(&format!(
        "# Reproduction `{}`: {}\n\n{} Every number below is in `summary.json` (one object \
         per row) and `evals.json` (the full protocol block of each evaluation).\n\n",
        r.preset.name,
        r.preset.title,
        made_by(r.command, r.stages, r.total_seconds)
    ));
    md.push_str(&format!(
        "Data: `{}`, BPE {}, rows of {}. {} samples per row, sampler seed {} for every row \
         (paired). GenPPL under SmolLM2-135M (protocol idlm-eval-v1); entropy is the mean \
         per-sample unigram entropy of the generator's ids.\n\n",
        r.preset.corpus, r.preset.vocab, r.preset.seq_len, r.preset.samples, r.preset.seed
    ));
    md.push_str(&crate::report::markdown_table(r.rows));
    md.push('\n');
    md.push_str(&crate::report::plot_links(&plots));
    md.push_str(&stages_table(r.stages));
    crate::atomic::write_file(&out.join("README.md"), md.as_bytes())
}

/// The report's first sentence: the command, and what its stages took (a reused stage counts
/// the time it took when it was made, so a rerun that reuses everything still tells the cost).
pub(super) fn made_by(command: &str, stages: &[Stage], this_run_seconds: f64) -> String {
    let all: f64 = stages.iter().map(|s| s.seconds).sum();
    format!(
        "Made by `{command}` on this machine: its stages took {:.1} min, {:.1} min of them in \
         the invocation that wrote this report (reused stages took theirs in earlier ones).",
        all / 60.0,
        this_run_seconds / 60.0
    )
}

/// The "Stages" section: each stage's time, whether it was reused, and its command.
pub(super) fn stages_table(stages: &[Stage]) -> String {
    let mut md =
        String::from("\n## Stages\n\n| stage | seconds | reused | command |\n|---|---|---|---|\n");
    for s in stages {
        md.push_str(&format!(
            "| {} | {:.0} | {} | `{}` |\n",
            s.name, s.seconds, s.reused, s.command
        ));
    }
    md.push_str(
        "\nA reused stage shows the seconds its run recorded when it was made (a training or \
         distillation run's own clock, over all its resumptions; an answering stage's kept rows, \
         the time they took to answer).\n",
    );
    md
}
