//! A distillation run: a distiller (IDLM, SDTT or DCD) stepped by the run loop, validated by
//! few-step samples of the student's EMA (GenPPL and entropy), the best checkpoint kept, exact
//! resume.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use super::config::{DistillConfig, Method};
use super::dcd::Dcd;
use super::distiller::Distiller;
use super::idlm::IdlmRun;
use super::nets::DistillRngs;
use super::sdtt::Sdtt;
use super::state::{self, DistillState, Loaded, NetState};
use crate::checkpoint::{self, Checkpoint, DataInfo};
use crate::data::DataDir;
use crate::data::pairs::prompt_len;
use crate::eval::entropy::entropy_stats;
use crate::eval::genppl::GenPpl;
use crate::process::{ForwardProcess, ProcessKind};
use crate::run::{
    Cadence, RunJob, Validation, check_data_matches, data_info, drive, make_process, open_run_dir,
};
use crate::sample::template::completion_ids;
use crate::sample::{Request, SamplerOptions, Template, sample, sample_requests};
use crate::{Error, Result};

/// What `run_distill` needs.
pub struct DistillRunOptions {
    /// Output directory.
    pub run_dir: PathBuf,
    /// Teacher checkpoint or run directory (ignored on resume: the run holds its teacher).
    pub teacher: PathBuf,
    /// Prepared data (default: the teacher's).
    pub data_dir: Option<PathBuf>,
    /// Settings (on resume, the saved ones with these overrides applied by the caller).
    pub cfg: DistillConfig,
    /// Continue the run in `run_dir`.
    pub resume: bool,
    /// Show a progress bar.
    pub progress: bool,
    /// GenPPL model for validation; None = entropy only.
    pub genppl_model: Option<PathBuf>,
}

/// Summary of a finished run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DistillSummary {
    /// Student updates done.
    pub step: u64,
    /// Last checkpoint.
    pub checkpoint: PathBuf,
    /// The best checkpoint by validation GenPPL, if validation ran.
    pub best: Option<PathBuf>,
    /// Wall-clock seconds of the run (all invocations).
    pub seconds: f64,
}

/// A distiller and the run's state, as the run loop sees them.
struct DistillJob<'a> {
    distiller: Box<dyn Distiller>,
    st: DistillState,
    process: Box<dyn ForwardProcess>,
    data: &'a DataDir,
    info: DataInfo,
    tok_json: String,
    run_dir: &'a Path,
    scorer: Option<GenPpl>,
    started: Instant,
    base_seconds: f64,
}

impl RunJob for DistillJob<'_> {
    fn step(&self) -> u64 {
        self.distiller.student().step
    }

    fn advance(&mut self) -> Result<(serde_json::Value, String)> {
        let (mut line, msg) = self
            .distiller
            .advance(self.process.as_ref(), &self.data.train)?;
        self.st.seconds = self.base_seconds + self.started.elapsed().as_secs_f64();
        line["elapsed_s"] = json!(self.st.seconds);
        Ok((line, msg))
    }

    fn validate(&mut self) -> Result<Validation> {
        let cfg = &self.st.config;
        let (g, e) = validate(
            self.distiller.student(),
            self.process.as_ref(),
            self.data,
            cfg,
            self.scorer.as_ref(),
        )?;
        let step = self.step();
        if !e.is_finite() || g.is_some_and(|g| !g.is_finite()) {
            return Err(Error::NonFinite {
                what: "validation GenPPL or entropy",
                step,
            });
        }
        let gs = g.map(|g| format!("{g:.1}")).unwrap_or_else(|| "-".into());
        if step == 0 && self.st.ref_entropy.is_none() {
            // The teacher's own samples: the reference of the entropy floor.
            self.st.ref_entropy = Some(e);
            return Ok(Validation {
                line: json!({"step": 0, "val_genppl": g, "val_entropy": e,
                             "val_steps": cfg.val_steps}),
                message: format!(
                    "step 0 (the teacher) at {} steps: GenPPL {gs} | entropy {e:.3}",
                    cfg.val_steps
                ),
                best: false,
            });
        }
        let floor = self.st.ref_entropy.map(|r| r * cfg.val_min_entropy_ratio);
        let mut best = false;
        if let Some(g) = g
            && floor.is_none_or(|f| e >= f)
            && self.st.best_genppl.is_none_or(|b| g < b)
        {
            self.st.best_genppl = Some(g);
            best = true;
        }
        Ok(Validation {
            line: json!({"step": step, "val_genppl": g, "val_entropy": e,
                         "val_steps": cfg.val_steps, "best": best}),
            message: format!(
                "step {step}: {} steps GenPPL {gs} | entropy {e:.3}{}",
                cfg.val_steps,
                if best { " (best)" } else { "" }
            ),
            best,
        })
    }

    fn save(&mut self) -> Result<PathBuf> {
        let d = self.distiller.as_ref();
        self.st.student = NetState::of(d.student());
        self.st.fake = d.fake().map(NetState::of);
        d.record(&mut self.st);
        state::save(
            self.run_dir,
            d.student(),
            d.fake(),
            d.teacher_weights(),
            &self.st,
            &self.info,
            &self.tok_json,
            self.st.config.keep_checkpoints,
        )
    }
}

/// Distil (or resume distilling) a teacher.
pub fn run_distill(opts: &DistillRunOptions) -> Result<DistillSummary> {
    let run_dir = &opts.run_dir;
    // One process per run folder, held until the run returns (or the process dies).
    let _lock = crate::run::RunLock::acquire(run_dir)?;
    let (distiller, st, data, kind) = if opts.resume {
        crate::run::require_checkpoint(run_dir)?;
        let l = state::load(run_dir)?;
        let mut st = l.state.clone();
        st.config = opts.cfg.clone();
        let data = open_data(opts, &l.ck.meta.data.data_dir, &l.ck)?;
        open_run_dir(run_dir, Some(l.ck.meta.step))?;
        checkpoint::prune_run(run_dir, &l.ck.dir, opts.cfg.keep_checkpoints)?;
        let kind = l.ck.meta.process.diffusion(&l.ck.dir)?;
        let mut d = resume_distiller(&l, &opts.cfg)?;
        set_layout(d.as_mut(), &data)?;
        (d, st, data, kind)
    } else {
        let ck = checkpoint::load(&opts.teacher)?;
        let kind = ck.meta.process.diffusion(&ck.dir)?;
        check_method_fits(opts.cfg.method, kind, &ck.dir)?;
        if ck.meta.distill.is_some() {
            tracing::info!("the teacher is itself a distilled student: distilling it further");
        }
        let data = open_data(opts, &ck.meta.data.data_dir, &ck)?;
        let mut d = start_distiller(&opts.cfg, &ck)?;
        set_layout(d.as_mut(), &data)?;
        open_run_dir(run_dir, None)?;
        let st = DistillState {
            config: opts.cfg.clone(),
            teacher_path: ck.dir.display().to_string(),
            student: NetState::of(d.student()),
            fake: None,
            rngs: DistillRngs::new(opts.cfg.seed),
            round: 0,
            ref_entropy: None,
            best_genppl: None,
            seconds: 0.0,
        };
        (d, st, data, kind)
    };
    let cfg = st.config.clone();
    let cfg_path = run_dir.join("distill.toml");
    crate::atomic::write_file(&cfg_path, cfg.to_toml()?.as_bytes())?;
    let mut job = DistillJob {
        distiller,
        base_seconds: st.seconds,
        st,
        process: make_process(kind, &data)?,
        data: &data,
        info: data_info(&data),
        tok_json: data.tokenizer.to_json().to_string(),
        run_dir,
        scorer: match &opts.genppl_model {
            Some(p) if cfg.val_every > 0 => Some(GenPpl::load(p)?),
            _ => None,
        },
        started: Instant::now(),
    };
    let cadence = Cadence {
        max_steps: cfg.max_steps,
        max_minutes: cfg.max_minutes,
        log_every: cfg.log_every,
        val_every: cfg.val_every,
        ckpt_every: cfg.ckpt_every,
    };
    let end = drive(&mut job, &cadence, run_dir, opts.progress, !opts.resume)?;
    Ok(DistillSummary {
        step: job.step(),
        checkpoint: end.checkpoint,
        best: end.best,
        seconds: job.st.seconds,
    })
}

/// The run's data (`--data`, else the checkpoint's), checked against the checkpoint.
fn open_data(
    opts: &DistillRunOptions,
    saved: &str,
    ck: &checkpoint::Checkpoint,
) -> Result<DataDir> {
    let dir = if saved.is_empty() {
        ck.meta
            .data
            .data_dir_or(opts.data_dir.as_deref(), &ck.dir)?
    } else {
        opts.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(saved))
    };
    let data = DataDir::open(&dir)?;
    check_data_matches(&ck.meta.data, &data_info(&data), &ck.dir)?;
    Ok(data)
}

/// Tell the distiller how the data's rows are laid out (a method that cannot clamp prompts refuses
/// prompt/answer rows, naming the data).
fn set_layout(d: &mut dyn Distiller, data: &DataDir) -> Result<()> {
    d.set_layout(data.info.rows.clone())
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", data.dir.display())))
}

/// Refuse a method that does not apply to the teacher's process.
fn check_method_fits(method: Method, kind: ProcessKind, dir: &Path) -> Result<()> {
    let msg = match (method, kind) {
        (Method::Idlm | Method::Sdtt, ProcessKind::Mdlm)
        | (Method::Idlm | Method::Dcd, ProcessKind::Duo) => {
            return Ok(());
        }
        (Method::Sdtt, _) => "SDTT distils masked (MDLM) teachers; use --method dcd for Duo",
        (Method::Dcd, _) => "DCD distils uniform-state (Duo) teachers; use --method sdtt for MDLM",
    };
    Err(Error::ckpt(dir, msg))
}

/// Few-step samples of the student's EMA on a fixed seed: (GenPPL if a scorer is given, entropy).
/// On prompt/answer data the samples answer the prompts of the first validation rows, clamped,
/// and are scored on their answers alone (up to the separator).
fn validate(
    student: &crate::trainer::Trainer,
    process: &dyn ForwardProcess,
    data: &DataDir,
    cfg: &DistillConfig,
    scorer: Option<&GenPpl>,
) -> Result<(Option<f64>, f64)> {
    let model = student.ema_model()?;
    let opts = SamplerOptions {
        steps: cfg.val_steps,
        batch_size: cfg.val_samples,
        seed: 1,
        ..student.cfg.sample.clone()
    };
    let l = data.info.seq_len;
    let rows = &data.info.rows;
    let ids: Vec<Vec<u32>> = if rows.is_pairs() {
        let (requests, prefixes) = prompted_requests(data, cfg.val_samples, &opts)?;
        let out = sample_requests(&model, process, &requests, cfg.val_samples, None)?;
        out.into_iter()
            .flatten()
            .zip(prefixes)
            .map(|(s, p)| completion_ids(&s.ids, p, rows.answer_end()).to_vec())
            .collect()
    } else {
        sample(&model, process, cfg.val_samples, l, &opts, None)?
            .into_iter()
            .map(|s| s.ids)
            .collect()
    };
    let e = entropy_stats(&ids).mean;
    let g = match scorer {
        Some(s) => {
            let texts = ids
                .iter()
                .map(|i| data.tokenizer.decode(i))
                .collect::<Result<Vec<_>>>()?;
            Some(s.score(&texts, 8, None)?.genppl)
        }
        None => None,
    };
    Ok((g, e))
}

/// One request per validation row (the first `n`, cycled if fewer), its `[BOS] prompt [SEP]`
/// clamped, each on its own seed; and each prompt's length.
fn prompted_requests(
    data: &DataDir,
    n: usize,
    opts: &SamplerOptions,
) -> Result<(Vec<Request>, Vec<usize>)> {
    let (rows, l) = (data.valid.n_rows(), data.info.seq_len);
    if rows == 0 {
        return Err(Error::Data(format!(
            "{}: no validation rows to take prompts from",
            data.dir.display()
        )));
    }
    let mut requests = Vec::with_capacity(n);
    let mut prefixes = Vec::with_capacity(n);
    for i in 0..n {
        let row = data.valid.row(i % rows)?;
        let p = prompt_len(&row, data.info.rows.prompt_sep());
        requests.push(Request {
            n: 1,
            len: l,
            opts: SamplerOptions {
                seed: opts.seed + i as u64,
                ..opts.clone()
            },
            template: Some(Arc::new(Template::prefix(&row[..p], l)?)),
        });
        prefixes.push(p);
    }
    Ok((requests, prefixes))
}

/// A fresh distiller of `cfg.method` from a teacher checkpoint; every network starts from the
/// teacher's EMA weights (the paper's initialisation).
fn start_distiller(cfg: &DistillConfig, ck: &Checkpoint) -> Result<Box<dyn Distiller>> {
    let w = ck.ema.clone().unwrap_or_else(|| ck.weights.clone());
    let (m, dir) = (&ck.meta, ck.dir.as_path());
    Ok(match cfg.method {
        Method::Idlm => Box::new(IdlmRun::start(cfg, m, w, dir)?),
        Method::Sdtt => Box::new(Sdtt::new(cfg, ck, &w)?),
        Method::Dcd => Box::new(Dcd::new(cfg, ck, &w)?),
    })
}

/// The distiller of a distillation checkpoint, with the settings `cfg` (the saved ones with the
/// caller's overrides).
fn resume_distiller(l: &Loaded, cfg: &DistillConfig) -> Result<Box<dyn Distiller>> {
    let mut d: Box<dyn Distiller> = match l.state.config.method {
        Method::Idlm => Box::new(IdlmRun::from_loaded(l)?),
        Method::Sdtt => Box::new(Sdtt::from_loaded(l)?),
        Method::Dcd => Box::new(Dcd::from_loaded(l)?),
    };
    d.set_config(cfg);
    Ok(d)
}
