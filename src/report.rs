//! Results reports: rows read from `idlm eval` JSON files (or a reproduction's `evals.json`),
//! rendered as a markdown table and PNG plots (GenPPL vs steps, GenPPL vs entropy, MAUVE vs
//! steps), each report stating the command that made it.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::plot::{LinePlot, Series, line_plot};
use crate::{Error, Result};

/// One row of a results table (a reproduction's `summary.json` has one object per row).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResultRow {
    /// "teacher", "idlm", "sdtt", "ar", ... (the series a row belongs to).
    pub method: String,
    /// "mdlm", "duo", "ar", or "" when unknown.
    pub process: String,
    /// Sampler steps (for AR: tokens decoded); absent for human text.
    pub steps: Option<usize>,
    /// Generative perplexity under SmolLM2-135M.
    pub genppl: Option<f64>,
    /// Mean per-sample unigram entropy (nats).
    pub entropy: Option<f64>,
    /// Pooled entropy.
    pub entropy_pooled: Option<f64>,
    /// MAUVE against held-out text.
    pub mauve: Option<f64>,
    /// Mean network calls per sample.
    pub nfe: Option<f64>,
    /// Wall-clock seconds per sample (batched sampling time / batch size).
    pub seconds_per_sample: Option<f64>,
    /// Number of samples.
    pub samples: usize,
    /// Noise removal of the sampler ("" where it does not apply).
    pub noise_removal: String,
    /// Checkpoint sampled ("" for plain texts).
    pub checkpoint: String,
}

fn str_of(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(|x| x.as_str()).map(str::to_string)
}

fn f64_of(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(|x| x.as_f64())
}

/// The series name of a checkpoint path: its run folder (`runs/x/checkpoints/step-9` -> `x`).
fn run_name(ckpt: &str) -> Option<String> {
    let p = Path::new(ckpt);
    let mut parts: Vec<String> = p
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    while let Some(last) = parts.last() {
        let l = last.as_str();
        if l == "checkpoints" || l == "best" || l == "latest" || l.starts_with("step-") {
            parts.pop();
        } else {
            break;
        }
    }
    parts.pop()
}

/// One row from one evaluation JSON. `label` overrides the series name; `origin` names the file
/// in errors and is the fallback name. The evaluation's own keys (`method`, `steps`, ...) come
/// first, then its `sample_info` block (what `idlm eval` read from the samples file).
pub fn row_from_eval(v: &Value, label: Option<&str>, origin: &Path) -> Result<ResultRow> {
    let bad = |m: &str| Error::Data(format!("{}: {m}", origin.display()));
    if !v.is_object() {
        return Err(bad("an evaluation result must be a JSON object"));
    }
    match v.get("protocol").and_then(|p| p.as_str()) {
        Some(crate::eval::protocol::PROTOCOL) => {}
        Some(p) => {
            return Err(bad(&format!(
                "protocol '{p}' is not {} (results of different protocols are not comparable)",
                crate::eval::protocol::PROTOCOL
            )));
        }
        None => return Err(bad("no \"protocol\" key: not an `idlm eval` result")),
    }
    let empty = json!({});
    let info = v.get("sample_info").unwrap_or(&empty);
    let pick_str = |k: &str| str_of(v, k).or_else(|| str_of(info, k));
    let checkpoint = pick_str("checkpoint").unwrap_or_default();
    let method = label
        .map(str::to_string)
        .or_else(|| pick_str("method"))
        .or_else(|| run_name(&checkpoint))
        .or_else(|| origin.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "?".into());
    let steps = v
        .get("steps")
        .or_else(|| info.get("steps"))
        .and_then(|s| s.as_u64())
        .map(|s| s as usize);
    let samples = v
        .get("samples")
        .and_then(|s| s.as_u64())
        .ok_or_else(|| bad("no \"samples\" count"))? as usize;
    let entropy = f64_of(v, "entropy");
    let genppl = f64_of(v, "genppl");
    if genppl.is_none() && entropy.is_none() && f64_of(v, "mauve").is_none() {
        return Err(bad("it has none of genppl, entropy, mauve"));
    }
    Ok(ResultRow {
        method,
        process: pick_str("process").unwrap_or_default(),
        steps,
        genppl,
        entropy,
        entropy_pooled: f64_of(v, "entropy_pooled"),
        mauve: f64_of(v, "mauve"),
        nfe: f64_of(v, "nfe").or_else(|| f64_of(info, "nfe_mean")),
        seconds_per_sample: f64_of(v, "seconds_per_sample")
            .or_else(|| f64_of(info, "seconds_mean")),
        samples,
        noise_removal: pick_str("noise_removal").unwrap_or_default(),
        checkpoint,
    })
}

/// Rows from the files of `idlm report`: each argument is `PATH` or `LABEL=PATH`, and each file
/// holds one evaluation object or an array of them (a reproduction's `evals.json`).
pub fn rows_from_files(args: &[String]) -> Result<Vec<ResultRow>> {
    if args.is_empty() {
        return Err(Error::InvalidArgument(
            "no results given: pass one or more `idlm eval` JSON files".into(),
        ));
    }
    let mut rows = Vec::new();
    for a in args {
        let (label, path) = match a.split_once('=') {
            Some((l, p)) if !l.is_empty() && !Path::new(a).exists() => (Some(l), PathBuf::from(p)),
            _ => (None, PathBuf::from(a)),
        };
        let text = fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Data(format!("{}: not JSON: {e}", path.display())))?;
        match &v {
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(Error::Data(format!("{}: an empty array", path.display())));
                }
                for item in items {
                    rows.push(row_from_eval(item, label, &path)?);
                }
            }
            _ => rows.push(row_from_eval(&v, label, &path)?),
        }
    }
    Ok(rows)
}

fn fmt(x: Option<f64>, digits: usize) -> String {
    x.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

/// The markdown table of `rows`, in their order.
pub fn markdown_table(rows: &[ResultRow]) -> String {
    let mut md = String::from(
        "| method | process | steps | GenPPL | MAUVE | entropy | NFE | s / sample | samples |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let process = if r.noise_removal.is_empty() || r.process == "ar" {
            r.process.clone()
        } else {
            format!("{} ({})", r.process, r.noise_removal)
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.method,
            process,
            r.steps.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            fmt(r.genppl, 1),
            fmt(r.mauve, 3),
            fmt(r.entropy, 3),
            fmt(r.nfe, 1),
            fmt(r.seconds_per_sample, 3),
            r.samples,
        ));
    }
    md
}

/// Points of each method (in first-seen order) as `f` maps them; rows `f` skips are left out.
fn series(rows: &[ResultRow], f: impl Fn(&ResultRow) -> Option<(f64, f64)>) -> Vec<Series> {
    let mut methods: Vec<&str> = Vec::new();
    for r in rows {
        if !methods.contains(&r.method.as_str()) {
            methods.push(&r.method);
        }
    }
    methods
        .iter()
        .filter_map(|m| {
            let mut points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.method == *m)
                .filter_map(&f)
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (!points.is_empty()).then(|| Series {
                label: m.to_string(),
                points,
            })
        })
        .collect()
}

/// Rows without a step count (human text, say) drawn as horizontal reference lines.
fn hlines(rows: &[ResultRow], f: impl Fn(&ResultRow) -> Option<f64>) -> Vec<(String, f64)> {
    rows.iter()
        .filter(|r| r.steps.is_none())
        .filter_map(|r| f(r).map(|y| (r.method.clone(), y)))
        .collect()
}

/// Write the plots of `rows` into `out`; returns the file names written (a plot with nothing to
/// show, such as MAUVE when no row has it, is skipped).
pub fn write_plots(out: &Path, rows: &[ResultRow]) -> Result<Vec<String>> {
    let steps = |r: &ResultRow| r.steps.filter(|&s| s > 0).map(|s| s as f64);
    let plots = [
        (
            "genppl_vs_steps.png",
            LinePlot {
                title: "GenPPL vs sampling steps".into(),
                x_label: "steps".into(),
                y_label: "GenPPL (SmolLM2-135M)".into(),
                log_x: true,
                hlines: hlines(rows, |r| r.genppl),
                series: series(rows, |r| Some((steps(r)?, r.genppl?))),
            },
        ),
        (
            "genppl_vs_entropy.png",
            LinePlot {
                title: "GenPPL vs entropy (each point a step count)".into(),
                x_label: "entropy (nats)".into(),
                y_label: "GenPPL".into(),
                log_x: false,
                hlines: vec![],
                series: series(rows, |r| Some((r.entropy?, r.genppl?))),
            },
        ),
        (
            "mauve_vs_steps.png",
            LinePlot {
                title: "MAUVE vs sampling steps".into(),
                x_label: "steps".into(),
                y_label: "MAUVE".into(),
                log_x: true,
                hlines: hlines(rows, |r| r.mauve),
                series: series(rows, |r| Some((steps(r)?, r.mauve?))),
            },
        ),
        (
            "genppl_vs_seconds.png",
            LinePlot {
                title: "GenPPL vs wall-clock per sample".into(),
                x_label: "seconds per sample".into(),
                y_label: "GenPPL".into(),
                log_x: true,
                hlines: vec![],
                series: series(rows, |r| {
                    Some((r.seconds_per_sample.filter(|&s| s > 0.0)?, r.genppl?))
                }),
            },
        ),
    ];
    let mut written = Vec::new();
    for (name, plot) in plots {
        if plot.series.is_empty() {
            continue;
        }
        line_plot(&plot, &out.join(name))?;
        written.push(name.to_string());
    }
    Ok(written)
}

/// Markdown image links for the plots written.
pub fn plot_links(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("![{}]({n})\n", n.trim_end_matches(".png").replace('_', " ")))
        .collect()
}

/// `idlm report`: README.md (the command, the table, the plots) and report.json into `out`.
pub fn write_report(out: &Path, rows: &[ResultRow], command: &str) -> Result<()> {
    fs::create_dir_all(out).map_err(|e| Error::io("creating", out, e))?;
    let plots = write_plots(out, rows)?;
    let json_path = out.join("report.json");
    let text = serde_json::to_string_pretty(&json!({"command": command, "rows": rows}))
        .map_err(|e| Error::Config(format!("cannot serialise the report: {e}")))?;
    crate::atomic::write_file(&json_path, (text + "\n").as_bytes())?;
    let mut md = format!(
        "# Results\n\nMade by `{command}`. The rows are in `report.json`; GenPPL under \
         SmolLM2-135M and MAUVE against held-out text, protocol {}.\n\n",
        crate::eval::protocol::PROTOCOL
    );
    md.push_str(&markdown_table(rows));
    md.push('\n');
    md.push_str(&plot_links(&plots));
    crate::atomic::write_file(&out.join("README.md"), md.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(method: &str, steps: u64, genppl: f64) -> Value {
        json!({"protocol": "idlm-eval-v1", "samples": 8, "genppl": genppl, "entropy": 4.5,
               "sample_info": {"method": method, "steps": steps, "process": "mdlm",
                               "noise_removal": "ancestral", "nfe_mean": 3.5}})
    }

    #[test]
    fn rows_take_labels_steps_and_sample_info() {
        let o = Path::new("x.json");
        let r = row_from_eval(&eval("idlm", 16, 840.0), None, o).unwrap();
        assert_eq!(r.method, "idlm");
        assert_eq!(r.steps, Some(16));
        assert_eq!(r.nfe, Some(3.5));
        assert_eq!(r.mauve, None);
        let r = row_from_eval(&eval("idlm", 16, 840.0), Some("mine"), o).unwrap();
        assert_eq!(r.method, "mine");
        // No method: the run folder of the checkpoint names the series.
        let v = json!({"protocol": "idlm-eval-v1", "samples": 2, "genppl": 9.0,
                       "sample_info": {"checkpoint": "runs/mini/teacher/checkpoints/step-1500"}});
        assert_eq!(row_from_eval(&v, None, o).unwrap().method, "teacher");
        let v = json!({"protocol": "idlm-eval-v1", "samples": 2, "genppl": 9.0});
        let r = row_from_eval(&v, None, Path::new("d/heldout.json")).unwrap();
        assert_eq!((r.method.as_str(), r.steps), ("heldout", None));
    }

    #[test]
    fn bad_results_are_named_errors() {
        let o = Path::new("bad.json");
        let e = row_from_eval(&json!([1]), None, o).unwrap_err().to_string();
        assert!(e.contains("bad.json") && e.contains("object"), "{e}");
        let e = row_from_eval(&json!({"samples": 1, "genppl": 2.0}), None, o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("protocol"), "{e}");
        let v = json!({"protocol": "idlm-eval-v0", "samples": 1, "genppl": 2.0});
        let e = row_from_eval(&v, None, o).unwrap_err().to_string();
        assert!(e.contains("idlm-eval-v0"), "{e}");
        let v = json!({"protocol": "idlm-eval-v1", "samples": 1});
        let e = row_from_eval(&v, None, o).unwrap_err().to_string();
        assert!(e.contains("none of"), "{e}");
        assert!(rows_from_files(&[]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.json");
        fs::write(&p, "{not json").unwrap();
        let e = rows_from_files(&[p.display().to_string()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not JSON"), "{e}");
        let e = rows_from_files(&[dir.path().join("missing.json").display().to_string()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.json"), "{e}");
    }

    #[test]
    fn report_writes_table_plots_and_command() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        let b = dir.path().join("evals.json");
        let h = dir.path().join("h.json");
        fs::write(&a, eval("teacher", 1024, 1500.0).to_string()).unwrap();
        let arr = json!([eval("idlm", 16, 840.0), eval("idlm", 4, 1300.0)]);
        fs::write(&b, arr.to_string()).unwrap();
        let human = json!({"protocol": "idlm-eval-v1", "samples": 8, "genppl": 30.0});
        fs::write(&h, human.to_string()).unwrap();
        let args = vec![
            a.display().to_string(),
            b.display().to_string(),
            format!("held-out text={}", h.display()),
        ];
        let rows = rows_from_files(&args).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[3].method, "held-out text");
        let out = dir.path().join("rep");
        write_report(&out, &rows, "idlm report a.json").unwrap();
        let md = fs::read_to_string(out.join("README.md")).unwrap();
        assert!(md.contains("Made by `idlm report a.json`"));
        assert!(md.contains("| idlm | mdlm (ancestral) | 4 | 1300.0 | - | 4.500 | 3.5 |"));
        assert!(md.contains("| held-out text |  | - | 30.0 |"));
        assert!(out.join("genppl_vs_steps.png").is_file());
        assert!(out.join("genppl_vs_entropy.png").is_file());
        // No row has MAUVE or timing: those plots are skipped, not drawn empty.
        assert!(!out.join("mauve_vs_steps.png").exists());
        assert!(!md.contains("mauve_vs_steps"));
        let back: Value =
            serde_json::from_str(&fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        assert_eq!(back["rows"].as_array().unwrap().len(), 4);
    }
}
