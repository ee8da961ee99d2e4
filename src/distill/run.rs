//! A distillation run: the loop around IDLM, SDTT or DCD with progress bar, JSONL metrics, periodic
//! few-step validation (GenPPL and entropy), the best checkpoint kept, and exact resume.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::config::{DistillConfig, Method};
use super::dcd::Dcd;
use super::idlm::Idlm;
use super::nets::DistillRngs;
use super::rounds::RoundNets;
use super::sdtt::Sdtt;
use super::state::{self, DistillState, NetState};
use crate::checkpoint::{self, dit_from_tensors};
use crate::config::RunConfig;
use crate::data::DataDir;
use crate::eval::entropy::entropy_stats;
use crate::eval::genppl::GenPpl;
use crate::nn::Dit;
use crate::process::curriculum::DuoCurriculum;
use crate::process::{ForwardProcess, ProcessKind};
use crate::run::{append_jsonl, check_data_matches, data_info, make_process, truncate_metrics};
use crate::sample::{SamplerOptions, sample};
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

/// The method being run; IDLM also holds its frozen teacher and the teacher's weights.
enum Runner {
    Idlm(Box<IdlmRun>),
    Sdtt(Box<Sdtt>),
    Dcd(Box<Dcd>),
}

struct IdlmRun {
    idlm: Idlm,
    teacher: Dit,
    teacher_weights: std::collections::HashMap<String, candle_core::Tensor>,
    /// Duo teachers: the Gaussian latent of the teacher's window and its temperature tau.
    latent: Option<(DuoCurriculum, f64)>,
}

/// The Gaussian latent IDLM uses with a Duo teacher: the teacher's own gamma window and final tau.
fn duo_latent(
    kind: ProcessKind,
    cfg: &RunConfig,
    vocab: usize,
) -> Result<Option<(DuoCurriculum, f64)>> {
    if kind != ProcessKind::Duo {
        return Ok(None);
    }
    let dir = crate::data::cache_dir().join("duality");
    let tau = 10f64.powf(cfg.duo.tau_log10_end);
    Ok(Some((DuoCurriculum::new(&cfg.duo, vocab, &dir)?, tau)))
}

impl Runner {
    fn step(&self) -> u64 {
        match self {
            Runner::Idlm(r) => r.idlm.student.step,
            Runner::Sdtt(s) => s.nets.student.step,
            Runner::Dcd(d) => d.nets.student.step,
        }
    }

    fn student(&self) -> &crate::train::Trainer {
        match self {
            Runner::Idlm(r) => &r.idlm.student,
            Runner::Sdtt(s) => &s.nets.student,
            Runner::Dcd(d) => &d.nets.student,
        }
    }

    /// One update; returns a metrics line and a short progress message.
    fn advance(
        &mut self,
        process: &dyn ForwardProcess,
        data: &crate::data::PackedTokens,
    ) -> Result<(serde_json::Value, String)> {
        match self {
            Runner::Idlm(r) => {
                let i = &mut r.idlm;
                let s = match &r.latent {
                    Some((lat, tau)) => {
                        let mode = i.cfg.duo_gradient;
                        i.step_duo(&r.teacher, lat, *tau, mode, data)?
                    }
                    None => i.step(&r.teacher, process, data)?,
                };
                for (what, v) in [("fake loss", s.fake_loss), ("student loss", s.student_loss)] {
                    if v.is_nan() && what == "fake loss" && i.fake.is_none() {
                        continue;
                    }
                    if !v.is_finite() {
                        return Err(Error::NonFinite {
                            what: "distillation loss",
                            step: s.step,
                        });
                    }
                }
                let msg = format!("fake {:.3} | student {:.4}", s.fake_loss, s.student_loss);
                let v = serde_json::to_value(s).map_err(|e| Error::Config(e.to_string()))?;
                Ok((v, msg))
            }
            Runner::Sdtt(s) => {
                let st = s.step(process, data)?;
                let msg = format!("round {} | KL {:.4}", st.round, st.loss);
                let v = serde_json::to_value(st).map_err(|e| Error::Config(e.to_string()))?;
                Ok((v, msg))
            }
            Runner::Dcd(d) => {
                let st = d.step(data)?;
                if !st.loss.is_finite() {
                    return Err(Error::NonFinite {
                        what: "distillation loss",
                        step: st.step,
                    });
                }
                let msg = format!("round {} | KL {:.4}", st.round, st.loss);
                let v = serde_json::to_value(st).map_err(|e| Error::Config(e.to_string()))?;
                Ok((v, msg))
            }
        }
    }
}

/// Distil (or resume distilling) a teacher.
pub fn run_distill(opts: &DistillRunOptions) -> Result<DistillSummary> {
    let run_dir = &opts.run_dir;
    let (mut runner, mut st, data, kind) = if opts.resume {
        let l = state::load(run_dir)?;
        let mut st = l.state.clone();
        st.config = opts.cfg.clone();
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(&l.ck.meta.data.data_dir));
        let data = DataDir::open(&data_dir)?;
        check_data_matches(&l.ck.meta.data, &data_info(&data), &l.ck.dir)?;
        truncate_metrics(&run_dir.join("metrics.jsonl"), l.ck.meta.step)?;
        let runner = match st.config.method {
            Method::Idlm => {
                let mut i = Idlm::from_loaded(&l)?;
                i.cfg = opts.cfg.clone();
                let t = dit_from_tensors(&l.teacher, &l.ck.meta.model, &l.ck.dir)?;
                let m = &l.ck.meta;
                Runner::Idlm(Box::new(IdlmRun {
                    idlm: i,
                    teacher: t,
                    teacher_weights: l.teacher.clone(),
                    latent: duo_latent(m.process, &m.config, m.model.vocab_size)?,
                }))
            }
            Method::Sdtt => {
                let mut s = Sdtt::from_loaded(&l)?;
                s.cfg = opts.cfg.clone();
                Runner::Sdtt(Box::new(s))
            }
            Method::Dcd => {
                let mut d = Dcd::from_loaded(&l)?;
                d.cfg = opts.cfg.clone();
                Runner::Dcd(Box::new(d))
            }
        };
        (runner, st, data, l.ck.meta.process)
    } else {
        if run_dir.join("checkpoints").join("latest").exists() {
            return Err(Error::InvalidArgument(format!(
                "{} already holds a run: pass --resume to continue it, or choose another --out",
                run_dir.display()
            )));
        }
        let ck = checkpoint::load(&opts.teacher)?;
        check_method_fits(opts.cfg.method, ck.meta.process, &ck.dir)?;
        if ck.meta.distill.is_some() {
            tracing::info!("the teacher is itself a distilled student: distilling it further");
        }
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(&ck.meta.data.data_dir));
        let data = DataDir::open(&data_dir)?;
        check_data_matches(&ck.meta.data, &data_info(&data), &ck.dir)?;
        // All networks start from the teacher's EMA weights (the paper's initialisation).
        let w = ck.ema.clone().unwrap_or_else(|| ck.weights.clone());
        let runner = match opts.cfg.method {
            Method::Idlm => {
                let i = Idlm::new(&opts.cfg, &ck.meta.config, &ck.meta.model, &w, &ck.dir)?;
                let t = dit_from_tensors(&w, &ck.meta.model, &ck.dir)?;
                let m = &ck.meta;
                Runner::Idlm(Box::new(IdlmRun {
                    idlm: i,
                    teacher: t,
                    teacher_weights: w,
                    latent: duo_latent(m.process, &m.config, m.model.vocab_size)?,
                }))
            }
            Method::Sdtt => Runner::Sdtt(Box::new(Sdtt::new(
                &opts.cfg,
                &ck.meta.config,
                &ck.meta.model,
                &w,
                &ck.dir,
            )?)),
            Method::Dcd => Runner::Dcd(Box::new(Dcd::new(
                &opts.cfg,
                &ck.meta.config,
                &ck.meta.model,
                &w,
                &ck.dir,
            )?)),
        };
        let st = DistillState {
            config: opts.cfg.clone(),
            teacher_path: ck.dir.display().to_string(),
            student: NetState::of(runner.student()),
            fake: None,
            rngs: super::nets::DistillRngs::new(opts.cfg.seed),
            round: 0,
            ref_entropy: None,
            best_genppl: None,
            seconds: 0.0,
        };
        (runner, st, data, ck.meta.process)
    };
    fs::create_dir_all(run_dir).map_err(|e| Error::io("creating", run_dir, e))?;
    let cfg = st.config.clone();
    let cfg_path = run_dir.join("distill.toml");
    fs::write(&cfg_path, cfg.to_toml()?).map_err(|e| Error::io("writing", &cfg_path, e))?;
    let metrics = run_dir.join("metrics.jsonl");
    let process = make_process(kind, &data)?;
    let info = data_info(&data);
    let tok_json = data.tokenizer.to_json().to_string();
    let scorer = match &opts.genppl_model {
        Some(p) if cfg.val_every > 0 => Some(GenPpl::load(p)?),
        _ => None,
    };

    let bar = if opts.progress {
        let b = ProgressBar::new(cfg.max_steps);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} ETA {eta} {msg}",
            )
            .map_err(|e| Error::Config(e.to_string()))?,
        );
        b.set_position(runner.step());
        b
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let base_seconds = st.seconds;
    let mut best = run_dir.join("best");
    if !best.join("meta.json").is_file() {
        best = PathBuf::new();
    }

    let save_rounds = |nets: &RoundNets, rngs: &DistillRngs, st: &mut DistillState| {
        st.round = nets.round;
        st.rngs = rngs.clone();
        state::save(
            run_dir,
            &nets.student,
            None,
            &nets.teacher_weights,
            st,
            &info,
            &tok_json,
            cfg.keep_checkpoints,
        )
    };
    let save = |runner: &Runner, st: &mut DistillState| -> Result<PathBuf> {
        st.student = NetState::of(runner.student());
        match runner {
            Runner::Idlm(r) => {
                let (i, tw) = (&r.idlm, &r.teacher_weights);
                st.fake = i.fake.as_ref().map(NetState::of);
                st.rngs = i.rngs.clone();
                state::save(
                    run_dir,
                    &i.student,
                    i.fake.as_ref(),
                    tw,
                    st,
                    &info,
                    &tok_json,
                    cfg.keep_checkpoints,
                )
            }
            Runner::Sdtt(s) => save_rounds(&s.nets, &s.rngs, st),
            Runner::Dcd(d) => save_rounds(&d.nets, &d.rngs, st),
        }
    };

    if !opts.resume && cfg.val_every > 0 {
        let (g, e) = validate(&runner, process.as_ref(), &data, &cfg, scorer.as_ref())?;
        st.ref_entropy = Some(e);
        bar.println(format!(
            "step 0 (the teacher) at {} steps: GenPPL {} | entropy {e:.3}",
            cfg.val_steps,
            g.map(|g| format!("{g:.1}")).unwrap_or_else(|| "-".into())
        ));
        append_jsonl(
            &metrics,
            &json!({"step": 0, "val_genppl": g, "val_entropy": e, "val_steps": cfg.val_steps}),
        )?;
    }
    let mut last_ckpt: Option<PathBuf> = None;
    while runner.step() < cfg.max_steps {
        if cfg.max_minutes > 0.0 && started.elapsed().as_secs_f64() > cfg.max_minutes * 60.0 {
            bar.println(format!("time budget of {} min reached", cfg.max_minutes));
            break;
        }
        let (mut line, msg) = runner.advance(process.as_ref(), &data.train)?;
        let step = runner.step();
        st.seconds = base_seconds + started.elapsed().as_secs_f64();
        bar.set_position(step);
        bar.set_message(msg);
        if cfg.log_every > 0 && step.is_multiple_of(cfg.log_every) {
            line["elapsed_s"] = json!(st.seconds);
            append_jsonl(&metrics, &line)?;
        }
        let last = step >= cfg.max_steps;
        let mut is_best = false;
        if cfg.val_every > 0 && (step.is_multiple_of(cfg.val_every) || last) {
            let (g, e) = validate(&runner, process.as_ref(), &data, &cfg, scorer.as_ref())?;
            let floor = st.ref_entropy.map(|r| r * cfg.val_min_entropy_ratio);
            if let Some(g) = g
                && floor.is_none_or(|f| e >= f)
                && st.best_genppl.is_none_or(|b| g < b)
            {
                st.best_genppl = Some(g);
                is_best = true;
            }
            bar.println(format!(
                "step {step}: {} steps GenPPL {} | entropy {e:.3}{}",
                cfg.val_steps,
                g.map(|g| format!("{g:.1}")).unwrap_or_else(|| "-".into()),
                if is_best { " (best)" } else { "" }
            ));
            append_jsonl(
                &metrics,
                &json!({"step": step, "val_genppl": g, "val_entropy": e,
                        "val_steps": cfg.val_steps, "best": is_best}),
            )?;
        }
        if is_best || (cfg.ckpt_every > 0 && step.is_multiple_of(cfg.ckpt_every)) {
            let p = save(&runner, &mut st)?;
            if is_best {
                best = copy_as_best(&p, run_dir)?;
            }
            last_ckpt = Some(p);
        }
    }
    let step = runner.step();
    let ck = match last_ckpt {
        Some(p) if p.ends_with(format!("step-{step:08}")) => p,
        _ => save(&runner, &mut st)?,
    };
    bar.finish_and_clear();
    Ok(DistillSummary {
        step,
        checkpoint: ck,
        best: if best.as_os_str().is_empty() {
            None
        } else {
            Some(best)
        },
        seconds: st.seconds,
    })
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
        (_, ProcessKind::Ar) => "this checkpoint holds an AR model, not a diffusion teacher",
    };
    Err(Error::ckpt(dir, msg))
}

/// Few-step samples of the student's EMA on a fixed seed: (GenPPL if a scorer is given, entropy).
fn validate(
    runner: &Runner,
    process: &dyn ForwardProcess,
    data: &DataDir,
    cfg: &DistillConfig,
    scorer: Option<&GenPpl>,
) -> Result<(Option<f64>, f64)> {
    let model = runner.student().ema_model()?;
    let opts = SamplerOptions {
        steps: cfg.val_steps,
        batch_size: cfg.val_samples,
        seed: 1,
        ..runner.student().cfg.sample.clone()
    };
    let samples = sample(
        &model,
        process,
        cfg.val_samples,
        data.info.seq_len,
        &opts,
        None,
    )?;
    let ids: Vec<Vec<u32>> = samples.into_iter().map(|s| s.ids).collect();
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

/// Copy a checkpoint directory to `run_dir/best` (via a temp dir and a rename).
fn copy_as_best(src: &Path, run_dir: &Path) -> Result<PathBuf> {
    let tmp = run_dir.join(".best.tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io("removing", &tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
    for entry in fs::read_dir(src).map_err(|e| Error::io("listing", src, e))? {
        let entry = entry.map_err(|e| Error::io("listing", src, e))?;
        let to = tmp.join(entry.file_name());
        fs::copy(entry.path(), &to).map_err(|e| Error::io("copying into", &to, e))?;
    }
    let best = run_dir.join("best");
    let old = run_dir.join(".best.old");
    if best.exists() {
        if old.exists() {
            fs::remove_dir_all(&old).map_err(|e| Error::io("removing", &old, e))?;
        }
        fs::rename(&best, &old).map_err(|e| Error::io("renaming", &best, e))?;
    }
    fs::rename(&tmp, &best).map_err(|e| Error::io("renaming into", &best, e))?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(|e| Error::io("removing", &old, e))?;
    }
    Ok(best)
}
