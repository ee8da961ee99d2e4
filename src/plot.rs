//! PNG line plots (plotters, with an embedded DejaVu Sans so no system font is needed): loss
//! curves now, quality-vs-steps plots for reports.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::{Error, Result};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The bytes are a valid TrueType file checked in with the source; failure only loses text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// One named line.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
}

/// What a line plot shows.
#[derive(Debug, Clone)]
pub struct LinePlot {
    /// Title.
    pub title: String,
    /// x-axis label.
    pub x_label: String,
    /// y-axis label.
    pub y_label: String,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// Horizontal reference lines (label, y).
    pub hlines: Vec<(String, f64)>,
    /// The lines.
    pub series: Vec<Series>,
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::External(format!("plot: {e}"))
}

/// Draw `plot` into a PNG at `path` (600 high; the plot 900 wide, its legend in a column to the
/// right, so no line is hidden under it): rendered to a temp file beside it, then renamed
/// into place, so a failed render (a full disk) leaves no half-written PNG under `path`.
pub fn line_plot(plot: &LinePlot, path: &Path) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The extension stays .png: the backend picks the format from it.
    let tmp = path.with_file_name(format!(".{name}.tmp-{}.png", std::process::id()));
    let drawn = draw_plot(plot, &tmp)
        .map_err(|e| match e {
            Error::External(m) => Error::External(format!("{}: {m}", path.display())),
            e => e,
        })
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io("writing", path, e)));
    if drawn.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    drawn
}

fn draw_plot(plot: &LinePlot, path: &Path) -> Result<()> {
    register_font();
    let pts: Vec<(f64, f64)> = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite() && (!plot.log_x || *x > 0.0))
        .collect();
    if pts.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "nothing to plot for '{}'",
            plot.title
        )));
    }
    let (mut x0, mut x1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    for (_, y) in &plot.hlines {
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
        x0 -= if plot.log_x { 0.0 } else { 1.0 };
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let (y0, y1) = (y0 - pad, y1 + pad);
    // The legend gets its own column, sized to the longest label, so it never covers a line.
    let longest = plot
        .series
        .iter()
        .map(|s| s.label.chars().count())
        .chain(plot.hlines.iter().map(|(l, _)| l.chars().count()))
        .max()
        .unwrap_or(0);
    let legend_w = (52 + 8 * longest).clamp(120, 420) as u32;
    let width = 900 + legend_w;
    let root = BitMapBackend::new(path, (width, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(&plot.title, ("sans-serif", 24)).map_err(err)?;
    let (chart_area, legend_area) = root.split_horizontally(900);
    let mut legend: Vec<(String, ShapeStyle)> = Vec::new();
    let mut builder = ChartBuilder::on(&chart_area);
    builder
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64);
    // Ten distinct colours (Tableau 10), so a table of up to ten methods has no two alike.
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(plot.x_label.as_str())
                .y_desc(plot.y_label.as_str())
                .label_style(("sans-serif", 15))
                .draw()
                .map_err(err)?;
            for (i, s) in plot.series.iter().enumerate() {
                let c = colors[i % colors.len()];
                chart
                    .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
                    .map_err(err)?;
                legend.push((s.label.clone(), c.stroke_width(2)));
                // Markers, so a series of one point (the AR row, say) is visible too.
                chart
                    .draw_series(
                        s.points
                            .iter()
                            .map(|&(x, y)| Circle::new((x, y), 4, c.filled())),
                    )
                    .map_err(err)?;
            }
            for (j, (label, y)) in plot.hlines.iter().enumerate() {
                // Reference lines in black and grey, alternating, so two close ones stay apart.
                let style = BLACK
                    .mix(if j % 2 == 0 { 0.8 } else { 0.35 })
                    .stroke_width(1);
                chart
                    .draw_series(LineSeries::new(vec![(x0, *y), (x1, *y)], style))
                    .map_err(err)?;
                legend.push((label.clone(), style));
            }
        }};
    }
    if plot.log_x {
        draw!(
            builder
                .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
                .map_err(err)?
        );
    } else {
        draw!(builder.build_cartesian_2d(x0..x1, y0..y1).map_err(err)?);
    }
    // Entries from the top of the column, level with the plot's top edge.
    for (k, (label, style)) in legend.iter().enumerate() {
        let y = 24 + 24 * k as i32;
        legend_area
            .draw(&PathElement::new(vec![(4, y), (28, y)], *style))
            .map_err(err)?;
        legend_area
            .draw(&Text::new(
                label.as_str(),
                (36, y - 8),
                ("sans-serif", 15).into_font(),
            ))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Loss curve of a run from its metrics.jsonl: training loss (smoothed over `smooth` logged
/// points) and validation NELBO against tokens seen, with the unigram entropy as a reference.
pub fn loss_curve(
    metrics: &Path,
    out: &Path,
    unigram_entropy: Option<f64>,
    smooth: usize,
) -> Result<()> {
    let text = std::fs::read_to_string(metrics).map_err(|e| Error::io("reading", metrics, e))?;
    let mut train = Vec::new();
    let mut val = Vec::new();
    let mut tok_per_step = None;
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::Data(format!("{} line {}: {e}", metrics.display(), i + 1)))?;
        let step = v["step"].as_f64().unwrap_or(f64::NAN);
        if let (Some(l), Some(t)) = (v["loss"].as_f64(), v["tokens"].as_f64()) {
            tok_per_step = Some(t / step);
            train.push((t / 1e6, l));
        }
        if let Some(n) = v["val_nelbo"].as_f64() {
            val.push((step, n));
        }
    }
    let tps = tok_per_step.unwrap_or(1.0);
    let val: Vec<(f64, f64)> = val.into_iter().map(|(s, n)| (s * tps / 1e6, n)).collect();
    let k = smooth.max(1);
    let smoothed: Vec<(f64, f64)> = (0..train.len())
        .map(|i| {
            let lo = i.saturating_sub(k - 1);
            let w = &train[lo..=i];
            (
                train[i].0,
                w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64,
            )
        })
        .collect();
    let mut hlines = Vec::new();
    if let Some(h) = unigram_entropy {
        hlines.push((format!("unigram entropy {h:.3}"), h));
    }
    line_plot(
        &LinePlot {
            title: "MDLM teacher: loss (nats/token)".into(),
            x_label: "training tokens (millions)".into(),
            y_label: "nats / token".into(),
            log_x: false,
            hlines,
            series: vec![
                Series {
                    label: format!("train loss (mean of {k} logs)"),
                    points: smoothed,
                },
                Series {
                    label: "validation NELBO (EMA)".into(),
                    points: val,
                },
            ],
        },
        out,
    )
}
