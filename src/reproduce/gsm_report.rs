//! The conditional reproduction's report: accuracy tables per split, plots of accuracy against
//! steps and against seconds, and the JSON behind them, each stating the command that made it.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use super::Stage;
use super::gsm::GsmRow;
use super::gsm_preset::GsmPreset;
use super::paired::{self, Paired};
use super::report::write_json;
use crate::plot::{LinePlot, Series, line_plot};
use crate::{Error, Result};

/// Everything the report is made from.
pub struct GsmReport<'a> {
    /// The preset.
    pub preset: &'a GsmPreset,
    /// The command that made it.
    pub command: &'a str,
    /// Stages with times.
    pub stages: &'a [Stage],
    /// Table rows.
    pub rows: &'a [GsmRow],
    /// Where the GSM8K problems came from, or why they were skipped.
    pub gsm8k_note: &'a str,
    /// Paired comparisons of students with their sources and with each other.
    pub comparisons: &'a [Paired],
    /// Total wall-clock seconds.
    pub total_seconds: f64,
}

/// The rows of `split`, in table order.
fn of_split<'a>(rows: &'a [GsmRow], split: &str) -> Vec<&'a GsmRow> {
    rows.iter().filter(|r| r.split == split).collect()
}

/// A markdown table of one split's rows.
pub fn split_table(rows: &[&GsmRow]) -> String {
    let mut md = String::from(
        "| method | process | steps | accuracy | NFE | s / problem | outcomes |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let outcomes: Vec<String> = r
            .outcomes
            .iter()
            .filter(|(k, _)| **k != "correct")
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        md.push_str(&format!(
            "| {} | {} | {} | {:.1} +- {:.1}% ({}) | {:.1} | {:.4} | {} |\n",
            r.method,
            r.process,
            r.steps.map_or("-".into(), |s| s.to_string()),
            100.0 * r.accuracy,
            100.0 * r.accuracy_se,
            r.samples,
            r.nfe,
            r.seconds_per_sample,
            outcomes.join(", ")
        ));
    }
    md
}

/// One series per method of `rows` (points sorted by x), from `f`.
fn series(rows: &[&GsmRow], f: impl Fn(&GsmRow) -> Option<(f64, f64)>) -> Vec<Series> {
    let mut by: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for r in rows {
        if let Some(pt) = f(r) {
            if !by.contains_key(r.method.as_str()) {
                order.push(&r.method);
            }
            by.entry(&r.method).or_default().push(pt);
        }
    }
    order
        .into_iter()
        .map(|m| {
            let mut points = by.remove(m).unwrap_or_default();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                label: m.to_string(),
                points,
            }
        })
        .collect()
}

/// The plots: accuracy against steps for each held-out split (AR as reference lines), and
/// against seconds per problem on unseen numbers.
fn write_plots(out: &Path, rows: &[GsmRow]) -> Result<Vec<String>> {
    let mut written = Vec::new();
    for split in super::gsm::SPLITS {
        let rs = of_split(rows, split);
        let plot = LinePlot {
            title: format!("accuracy vs sampling steps ({split})"),
            x_label: "steps".into(),
            y_label: "accuracy".into(),
            log_x: true,
            hlines: rs
                .iter()
                .filter(|r| r.steps.is_none())
                .map(|r| (r.method.clone(), r.accuracy))
                .collect(),
            series: series(&rs, |r| Some((r.steps? as f64, r.accuracy))),
        };
        if plot.series.is_empty() {
            continue;
        }
        let name = format!("accuracy_vs_steps_{split}.png");
        line_plot(&plot, &out.join(&name))?;
        written.push(name);
    }
    let rs = of_split(rows, "test_numbers");
    let plot = LinePlot {
        title: "accuracy vs wall-clock per problem (test_numbers)".into(),
        x_label: "seconds per problem".into(),
        y_label: "accuracy".into(),
        log_x: true,
        hlines: vec![],
        series: series(&rs, |r| {
            (r.seconds_per_sample > 0.0).then_some((r.seconds_per_sample, r.accuracy))
        }),
    };
    if !plot.series.is_empty() {
        let name = "accuracy_vs_seconds.png".to_string();
        line_plot(&plot, &out.join(&name))?;
        written.push(name);
    }
    Ok(written)
}

/// Write README.md, summary.json, stages.json and the plots into `out`.
pub fn write(out: &Path, r: &GsmReport) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io("creating", out, e))?;
    write_json(
        &out.join("summary.json"),
        &serde_json::to_value(r.rows).map_err(|e| Error::Config(e.to_string()))?,
    )?;
    write_json(
        &out.join("stages.json"),
        &json!({"command": r.command, "preset": r.preset, "stages": r.stages,
                "total_seconds": r.total_seconds}),
    )?;
    write_json(
        &out.join("comparisons.json"),
        &serde_json::to_value(r.comparisons).map_err(|e| Error::Config(e.to_string()))?,
    )?;
    let plots = write_plots(out, r.rows)?;
    let p = r.preset;
    let mut md = format!(
        "# Reproduction `{}`: {}\n\n{} Every number below is in `summary.json` (one object \
         per row); each row's answers are in the work folder's `answers/`.\n\n",
        p.name,
        p.title,
        super::report::made_by(r.command, r.stages, r.total_seconds)
    );
    md.push_str(&format!(
        "Data: `idlm data synth-math` seed {}, {} training problems (style `{}`), {} problems \
         per held-out split; prompt/answer rows of {} tokens, BPE {}. Every diffusion row uses \
         the greedy tail; problem i is sampled on seed {} + i in every row (paired). Accuracy: \
         the answer program run by idlm's interpreter, its value compared with the reference; \
         +- is the binomial standard error.\n\n",
        p.synth_seed, p.train_problems, p.style, p.test_problems, p.seq_len, p.vocab, p.seed
    ));
    let splits = [
        (
            "test_numbers",
            "Held-out numbers (templates seen in training)",
        ),
        ("test_templates", "Held-out templates"),
        ("gsm8k_test", "GSM8K test (real problems, same path)"),
    ];
    for (split, title) in splits {
        let rs = of_split(r.rows, split);
        if rs.is_empty() {
            continue;
        }
        md.push_str(&format!("## {title}\n\n"));
        md.push_str(&split_table(&rs));
        let cs: Vec<Paired> = r
            .comparisons
            .iter()
            .filter(|c| c.split == split)
            .cloned()
            .collect();
        if !cs.is_empty() && cs.iter().all(|c| c.a_only + c.b_only == 0) {
            md.push_str(
                "\nPaired comparisons: both sides of every pair got the same problems right \
                 (`comparisons.json`).\n",
            );
        } else if !cs.is_empty() {
            md.push_str(&format!(
                "\nPaired comparisons ({} problems, the same seeds on both sides; the error \
                 counts only the problems one side got right and the other wrong; \
                 `comparisons.json`):\n\n",
                cs[0].n
            ));
            md.push_str(&paired::table(&cs));
        }
        md.push('\n');
    }
    md.push_str(r.gsm8k_note);
    md.push_str("\n\n");
    md.push_str(&crate::report::plot_links(&plots));
    md.push_str(&super::report::stages_table(r.stages));
    crate::atomic::write_file(&out.join("README.md"), md.as_bytes())
}
