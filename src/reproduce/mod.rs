//! `idlm reproduce`: the paper's tables (docs/algorithms.md §7) in miniature, as one command that
//! prepares the corpus, trains (or reuses) a teacher, distils it into the preset's students,
//! samples every model at every step count with paired seeds, evaluates under protocol v1, and
//! writes a report. What it runs is a preset (`configs/reproduce/*.toml`, see [`preset`]).

pub mod answering;
mod evaluate;
pub mod gsm;
pub mod gsm_preset;
mod gsm_report;
pub mod paired;
pub mod preset;
pub mod report;
mod row_cache;
mod stage;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

use crate::ar::{ArSamplerOptions, lm_from_checkpoint, sample_ar};
use crate::checkpoint;
use crate::config::RunConfig;
use crate::data::{self, DataDir, PrepareOptions, TokenizerChoice};
use crate::eval::heldout::heldout_records;
use crate::eval::protocol::read_references;
use crate::process::ModelFamily;
use crate::sample::{SamplerOptions, sample};
use crate::{Error, Result};
use evaluate::{EvalContext, RowSpec};
pub use gsm::{GsmOptions, GsmRow, reproduce_gsm};
pub use gsm_preset::{GsmPreset, gsm_names, gsm_preset};
pub use preset::{Preset, StudentSpec, names, preset};
pub use report::Stage;
use stage::{DistillStage, distill_or_resume, train_or_resume};

/// Where a reproduction works and writes.
pub struct ReproduceOptions {
    /// The preset.
    pub preset: Preset,
    /// Working directory (data, runs, samples): not committed.
    pub work: PathBuf,
    /// Report directory (committed).
    pub out: PathBuf,
    /// GenPPL model (SmolLM2 GGUF).
    pub genppl_model: PathBuf,
    /// The command line that started it, for the report.
    pub command: String,
}

/// One row of the table (summary.json): the shared results row.
pub use crate::report::ResultRow as Row;

/// A model the table samples: its row label, checkpoint and step counts.
struct Model {
    method: String,
    dir: PathBuf,
    steps: Vec<usize>,
}

/// Run every stage (reusing finished ones) and write the report.
pub fn reproduce(opts: &ReproduceOptions, log: &dyn Fn(&str)) -> Result<Vec<Row>> {
    let started = Instant::now();
    let p = &opts.preset;
    let mut run = Run {
        opts,
        p,
        log,
        stages: Vec::new(),
        data_dir: opts
            .work
            .join(format!("data/{}-{}-{}", p.corpus, p.vocab, p.seq_len)),
    };
    run.prepare_data()?;
    let cfg = RunConfig::load(&p.teacher_preset)?.with_overrides(&p.teacher_overrides)?;
    let mut models = vec![run.train_teacher(&cfg)?];
    for s in &p.students {
        let m = run.distill(s, &models)?;
        models.push(m);
    }
    if p.ar_baseline {
        run.train_ar(&cfg)?;
    }
    let (rows, evals) = run.sample_and_evaluate(&models)?;
    report::write(
        &opts.out,
        &report::Report {
            preset: p,
            command: &opts.command,
            stages: &run.stages,
            rows: &rows,
            evals: &evals,
            total_seconds: started.elapsed().as_secs_f64(),
        },
    )?;
    Ok(rows)
}

/// The pipeline's state: the stages done so far.
struct Run<'a> {
    opts: &'a ReproduceOptions,
    p: &'a Preset,
    log: &'a dyn Fn(&str),
    stages: Vec<Stage>,
    data_dir: PathBuf,
}

impl Run<'_> {
    /// Record a finished stage, timed from `t0`.
    fn stage(&mut self, name: String, command: String, t0: Instant, reused: bool) {
        self.stages.push(Stage {
            name,
            command,
            seconds: t0.elapsed().as_secs_f64(),
            reused,
        });
    }

    /// `--set` flags of the teacher's config overrides, as the stage commands show them.
    fn teacher_sets(&self) -> String {
        self.p
            .teacher_overrides
            .iter()
            .map(|o| format!(" --set '{o}'"))
            .collect()
    }

    /// 1. Tokenize the corpus (reused when the data folder is complete).
    fn prepare_data(&mut self) -> Result<()> {
        let p = self.p;
        let t0 = Instant::now();
        let reused = self.data_dir.join("data.json").is_file();
        if !reused {
            (self.log)("preparing the corpus");
            let cache = data::cache_dir();
            data::fetch_corpus(&cache)?;
            let sources = data::resolve_corpus(&p.corpus, &cache)?;
            let tokenizer = TokenizerChoice::Train {
                vocab_size: p.vocab,
            };
            let mut po =
                PrepareOptions::new(&p.corpus, sources, tokenizer, p.seq_len, &self.data_dir);
            po.valid_fraction = p.valid_fraction;
            data::prepare(&po)?;
        }
        let command = format!(
            "idlm prepare --corpus {} --vocab {} --seq-len {} --valid-fraction {} --out {}",
            p.corpus,
            p.vocab,
            p.seq_len,
            p.valid_fraction,
            self.data_dir.display()
        );
        self.stage("prepare".into(), command, t0, reused);
        Ok(())
    }

    /// 2. Train the teacher (resumed, or reused once it reached its steps).
    fn train_teacher(&mut self, cfg: &RunConfig) -> Result<Model> {
        let dir = self.opts.work.join("teacher");
        let command = format!(
            "idlm train --data {} --preset {}{} --out {}",
            self.data_dir.display(),
            self.p.teacher_preset,
            self.teacher_sets(),
            dir.display()
        );
        let stage = train_or_resume(
            "teacher",
            &dir,
            &self.data_dir,
            cfg,
            false,
            command,
            self.log,
        )?;
        self.stages.push(stage);
        Ok(Model {
            method: "teacher".into(),
            dir,
            steps: self.p.teacher_steps.clone(),
        })
    }

    /// 3. Distil one student from the teacher or an earlier student (`done`).
    fn distill(&mut self, s: &StudentSpec, done: &[Model]) -> Result<Model> {
        let dir = self.opts.work.join(&s.method);
        // The checkpoint it distils: the teacher, or an earlier student's selected checkpoint.
        let source = done
            .iter()
            .find(|m| m.method == s.from)
            .map(|m| m.dir.clone())
            .ok_or_else(|| {
                Error::Config(format!(
                    "{} distils '{}', which comes later",
                    s.method, s.from
                ))
            })?;
        let stage = distill_or_resume(
            &DistillStage {
                name: format!("distill {}", s.method),
                source: &source,
                dir: &dir,
                data_dir: &self.data_dir,
                overrides: &s.overrides,
                genppl_model: Some(self.opts.genppl_model.clone()),
            },
            self.log,
        )?;
        self.stages.push(stage);
        // The checkpoint selected by validation GenPPL, as the reference does.
        let best = dir.join("best");
        let pick = if best.join("meta.json").is_file() {
            best
        } else {
            dir
        };
        Ok(Model {
            method: s.method.clone(),
            dir: pick,
            steps: self.p.student_steps.clone(),
        })
    }

    /// 4. The AR baseline: same width, depth, data and step budget as the teacher.
    fn train_ar(&mut self, cfg: &RunConfig) -> Result<()> {
        let dir = self.opts.work.join("ar");
        let mut cfg = cfg.clone();
        cfg.train.process = ModelFamily::Ar;
        let command = format!(
            "idlm train --data {} --preset {}{} --process ar --out {}",
            self.data_dir.display(),
            self.p.teacher_preset,
            self.teacher_sets(),
            dir.display()
        );
        let stage = train_or_resume(
            "train ar",
            &dir,
            &self.data_dir,
            &cfg,
            true,
            command,
            self.log,
        )?;
        self.stages.push(stage);
        Ok(())
    }

    /// 5-6. Sample and evaluate held-out text, every (model, noise removal, steps), and AR.
    fn sample_and_evaluate(&mut self, models: &[Model]) -> Result<(Vec<Row>, Vec<Value>)> {
        let p = self.p;
        let sample_dir = self.opts.work.join("samples");
        fs::create_dir_all(&sample_dir).map_err(|e| Error::io("creating", &sample_dir, e))?;
        let out = &self.opts.out;
        fs::create_dir_all(out).map_err(|e| Error::io("creating", out, e))?;
        let data = DataDir::open(&self.data_dir)?;
        // MAUVE against held-out rows of the same data, the same references for every row.
        let ctx = EvalContext {
            minilm: crate::eval::minilm_dir(&data::cache_dir())?,
            references: read_references(&self.data_dir, p.samples)?,
            genppl_model: &self.opts.genppl_model,
            data: &data,
            sample_dir: &sample_dir,
            seed: p.seed,
            log: self.log,
        };
        let mut results = vec![self.heldout_row(&ctx)?];
        for m in models {
            results.extend(self.model_rows(&ctx, m)?);
        }
        if p.ar_baseline {
            results.push(self.ar_row(&ctx)?);
        }
        Ok(results.into_iter().unzip())
    }

    /// The data row: held-out text (disjoint from MAUVE's references) under the same protocol.
    fn heldout_row(&mut self, ctx: &EvalContext) -> Result<(Row, Value)> {
        let t0 = Instant::now();
        let recs = heldout_records(&self.data_dir, self.p.samples, None)?;
        let spec = RowSpec {
            method: "held-out text",
            process: "",
            steps: None,
            tag: String::new(),
            noise_removal: String::new(),
            checkpoint: String::new(),
        };
        let result = ctx.evaluate(&spec, &recs, 0.0)?;
        let d = self.data_dir.display();
        let command = format!(
            "idlm data heldout --data {d} -n {} --out heldout.jsonl && idlm eval heldout.jsonl \
             --reference {d}",
            self.p.samples,
        );
        self.stage("evaluate held-out text".into(), command, t0, false);
        Ok(result)
    }

    /// One diffusion model at each of the preset's noise removals and its step counts.
    fn model_rows(&mut self, ctx: &EvalContext, m: &Model) -> Result<Vec<(Row, Value)>> {
        let p = self.p;
        let ck = checkpoint::load(&m.dir)?;
        let model = ck.dit(true)?;
        let process = ck.process(None)?;
        let meta = &ck.meta;
        let pname = meta.process.name().to_string();
        let t_model = Instant::now();
        let mut results = Vec::new();
        for &nr in &p.noise_removals {
            let nr_name = format!("{nr:?}").to_lowercase();
            for &k in &m.steps {
                (self.log)(&format!("sampling {} at {k} steps ({nr_name})", m.method));
                let so = SamplerOptions {
                    steps: k,
                    batch_size: 32,
                    seed: p.seed,
                    noise_removal: nr,
                    ..meta.config.sample.clone()
                };
                let t0 = Instant::now();
                let samples = sample(&model, process.as_ref(), p.samples, p.seq_len, &so, None)?;
                let spec = RowSpec {
                    method: &m.method,
                    process: &pname,
                    steps: Some(k),
                    // File names carry the noise removal only where a table has both.
                    tag: if p.noise_removals.len() > 1 {
                        format!("-{nr_name}")
                    } else {
                        String::new()
                    },
                    noise_removal: nr_name.clone(),
                    checkpoint: ck.dir.display().to_string(),
                };
                let recs = ctx.records(&samples)?;
                results.push(ctx.evaluate(&spec, &recs, t0.elapsed().as_secs_f64())?);
            }
        }
        let command = format!(
            "idlm sample --ckpt {} --steps K -n {} --seed {} && idlm eval ...",
            m.dir.display(),
            p.samples,
            p.seed
        );
        self.stage(
            format!("sample + evaluate {}", m.method),
            command,
            t_model,
            false,
        );
        Ok(results)
    }

    /// The AR baseline's row (KV cache, temperature 1, top-p 1).
    fn ar_row(&mut self, ctx: &EvalContext) -> Result<(Row, Value)> {
        let p = self.p;
        let ar_dir = self.opts.work.join("ar");
        let ck = checkpoint::load(&ar_dir)?;
        let model = lm_from_checkpoint(&ck, true)?;
        let t0 = Instant::now();
        (self.log)("sampling ar (KV cache, temperature 1, top-p 1)");
        let ao = ArSamplerOptions {
            temperature: 1.0,
            top_p: 1.0,
            batch_size: 32,
            seed: p.seed,
        };
        let (bos, mask) = (ck.meta.data.bos_id, Some(ck.meta.data.mask_id));
        let samples = sample_ar(&model, p.samples, p.seq_len, &[bos], mask, &ao, None)?;
        let spec = RowSpec {
            method: "ar",
            process: "ar",
            steps: Some(p.seq_len - 1),
            tag: String::new(),
            noise_removal: String::new(),
            checkpoint: ck.dir.display().to_string(),
        };
        let recs = ctx.records(&samples)?;
        let result = ctx.evaluate(&spec, &recs, t0.elapsed().as_secs_f64())?;
        let command = format!(
            "idlm sample --ckpt {} -n {} --seed {} --temperature 1 --top-p 1 && idlm eval ...",
            ar_dir.display(),
            p.samples,
            p.seed
        );
        self.stage("sample + evaluate ar".into(), command, t0, false);
        Ok(result)
    }
}

/// Every built-in preset: the text tables, then the conditional ones.
pub fn all_names() -> Vec<&'static str> {
    names().into_iter().chain(gsm_names()).collect()
}

/// The report directory's files, for callers that want to print where things went.
pub fn report_files(out: &Path) -> Vec<PathBuf> {
    ["README.md", "summary.json", "evals.json", "stages.json"]
        .iter()
        .map(|f| out.join(f))
        .collect()
}
