//! `idlm distill`: glue between arguments and the distillation library.

use anyhow::{Context, Result, bail};

use super::DistillArgs;
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
    let method: Option<Method> = a.method.as_deref().map(str::parse).transpose()?;
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
