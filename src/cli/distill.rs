//! `idlm distill`: glue between arguments and the distillation library.

use anyhow::{Context, Result, bail};

use super::{DistillArgs, ReproduceArgs};
use idlm::data;
use idlm::distill::{DistillConfig, DistillRunOptions, Method, run_distill};

/// Run `idlm distill`.
pub fn distill(a: DistillArgs) -> Result<()> {
    let mut sets = a.set.clone();
    if let Some(n) = a.max_steps {
        sets.push(format!("max_steps={n}"));
    }
    if let Some(m) = a.max_minutes {
        sets.push(format!("max_minutes={m}"));
    }
    let method: Option<Method> = a.method.map(Method::from);
    let base = if a.resume {
        let saved = a.out.join("distill.toml");
        let text = std::fs::read_to_string(&saved)
            .with_context(|| format!("reading {} to resume", saved.display()))?;
        let c = DistillConfig::from_toml(&text, &saved.display().to_string())?;
        if let Some(m) = method
            && m != c.method
        {
            bail!(
                "the run in {} uses method {:?}, not {m:?}",
                a.out.display(),
                c.method
            );
        }
        c
    } else {
        let c = match &a.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                DistillConfig::from_toml(&text, &p.display().to_string())?
            }
            None => DistillConfig::default(),
        };
        DistillConfig {
            method: method.unwrap_or(c.method),
            ..c
        }
    };
    let cfg = base.with_overrides(&sets)?;
    let teacher = match (&a.teacher, a.resume) {
        (Some(t), _) => t.clone(),
        (None, true) => a.out.clone(),
        (None, false) => bail!("--teacher is required (a teacher checkpoint or run directory)"),
    };
    let genppl_model = if a.no_genppl {
        None
    } else {
        Some(
            idlm::eval::smollm2_path(&data::cache_dir())
                .context("validation GenPPL needs the eval model (or pass --no-genppl)")?,
        )
    };
    let s = run_distill(&DistillRunOptions {
        run_dir: a.out.clone(),
        teacher,
        data_dir: a.data.clone(),
        cfg,
        resume: a.resume,
        progress: !a.quiet,
        genppl_model,
    })?;
    println!(
        "distilled to step {} in {:.0} s\ncheckpoint {}\nbest {}",
        s.step,
        s.seconds,
        s.checkpoint.display(),
        s.best
            .map(|b| b.display().to_string())
            .unwrap_or_else(|| "-".into())
    );
    Ok(())
}

/// Run `idlm reproduce`.
pub fn reproduce(a: ReproduceArgs) -> Result<()> {
    use idlm::reproduce::{ReproduceOptions, gsm_preset, preset, report_files};
    if let Some(p) = gsm_preset(&a.preset) {
        return reproduce_gsm(p?.with_overrides(&a.set)?, a.work, a.out);
    }
    let p = preset(&a.preset)?.with_overrides(&a.set)?;
    let work = a
        .work
        .unwrap_or_else(|| std::path::PathBuf::from(format!("runs/{}", p.name)));
    let out = a
        .out
        .unwrap_or_else(|| std::path::PathBuf::from(format!("results/{}", p.name)));
    // Everything a fresh machine needs: the corpus and both eval models (sha256-checked).
    let cache = data::cache_dir();
    data::fetch_corpus(&cache).context("fetching the corpus")?;
    idlm::eval::models::fetch_eval_models(&cache).context("fetching the evaluation models")?;
    let genppl_model =
        idlm::eval::smollm2_path(&cache).context("the reproduction evaluates with SmolLM2")?;
    let command = super::command_line();
    let t0 = std::time::Instant::now();
    let log = |m: &str| eprintln!("[{:7.1} s] {m}", t0.elapsed().as_secs_f64());
    let rows = idlm::reproduce::reproduce(
        &ReproduceOptions {
            preset: p,
            work,
            out: out.clone(),
            genppl_model,
            command,
        },
        &log,
    )?;
    println!("{} rows; wrote:", rows.len());
    for f in report_files(&out) {
        println!("  {}", f.display());
    }
    Ok(())
}

/// `idlm reproduce` of a conditional preset (mini-gsm): no text-quality models needed.
fn reproduce_gsm(
    p: idlm::reproduce::GsmPreset,
    work: Option<std::path::PathBuf>,
    out: Option<std::path::PathBuf>,
) -> Result<()> {
    let work = work.unwrap_or_else(|| std::path::PathBuf::from(format!("runs/{}", p.name)));
    let out = out.unwrap_or_else(|| std::path::PathBuf::from(format!("results/{}", p.name)));
    let t0 = std::time::Instant::now();
    let log = |m: &str| eprintln!("[{:7.1} s] {m}", t0.elapsed().as_secs_f64());
    let rows = idlm::reproduce::reproduce_gsm(
        &idlm::reproduce::GsmOptions {
            preset: p,
            work,
            out: out.clone(),
            command: super::command_line(),
        },
        &log,
    )?;
    println!(
        "{} rows; wrote {}",
        rows.len(),
        out.join("README.md").display()
    );
    Ok(())
}
