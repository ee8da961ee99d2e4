//! `idlm reproduce --preset mini-gsm`: the paper's conditional experiment in miniature, as one
//! command: synth-math problems, prompt/answer data, the teachers, their students and the AR
//! baseline (each reused or resumed when its run folder holds it), then every model answering
//! both held-out splits at every step count, scored by execution, and the real GSM8K test
//! problems through the same path. Writes `summary.json`, `README.md`, plots and `stages.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::Stage;
use super::answering::{
    Answered, Answerer, Problem, answer_all, greedy, read_problems, tally, write_answers,
};
use super::gsm_preset::GsmPreset;
use super::paired::{self, Paired};
use super::row_cache;
use super::stage::{DistillStage, distill_or_resume, train_or_resume};
use crate::ar::{ArSamplerOptions, lm_from_checkpoint};
use crate::checkpoint;
use crate::data::{self, DataDir, PrepareOptions, TokenizerChoice};
use crate::distill::{DistillConfig, Method};
use crate::{Error, Result};

/// Where the conditional reproduction works and writes.
pub struct GsmOptions {
    /// The preset.
    pub preset: GsmPreset,
    /// Working directory (data, runs, answers): not committed.
    pub work: PathBuf,
    /// Report directory (committed).
    pub out: PathBuf,
    /// The command line that started it, for the report.
    pub command: String,
}

/// One row of the table (summary.json).
#[derive(Debug, Clone, Serialize)]
pub struct GsmRow {
    /// Model (`mdlm-teacher`, `idlm-mdlm`, `ar-greedy`, ...).
    pub method: String,
    /// Its process (`mdlm`, `duo`, `ar`).
    pub process: String,
    /// Sampling steps (None for AR, which takes one step per token).
    pub steps: Option<usize>,
    /// `test_numbers`, `test_templates` or `gsm8k_test`.
    pub split: String,
    /// Correct / problems.
    pub accuracy: f64,
    /// Binomial standard error sqrt(p (1 - p) / n).
    pub accuracy_se: f64,
    /// Mean network calls per problem.
    pub nfe: f64,
    /// Mean wall-clock seconds per problem.
    pub seconds_per_sample: f64,
    /// Problems.
    pub samples: usize,
    /// Problems per outcome class.
    pub outcomes: std::collections::BTreeMap<&'static str, usize>,
    /// The checkpoint answering.
    pub checkpoint: String,
}

/// A model of the table.
struct Model {
    /// Its run folder's name (what students name as `from`).
    name: String,
    /// Row label.
    method: String,
    dir: PathBuf,
    steps: Vec<usize>,
}

/// The held-out splits every model answers.
pub const SPLITS: &[&str] = &["test_numbers", "test_templates"];

/// Run every stage (reusing finished ones) and write the report. Each model answers as soon as
/// it is trained (a teacher, then the students it makes possible, in preset order) and the
/// report is rewritten after each, so a long run shows its rows as they come and an interrupted
/// one keeps them.
pub fn reproduce_gsm(opts: &GsmOptions, log: &dyn Fn(&str)) -> Result<Vec<GsmRow>> {
    let started = Instant::now();
    let p = &opts.preset;
    p.validate()?;
    let synth = opts.work.join("synth");
    let data_dir = opts.work.join("data");
    let mut stages = vec![make_data(p, &synth, &data_dir, log)?];
    let data = DataDir::open(&data_dir)?;
    let answers_dir = opts.work.join("answers");
    std::fs::create_dir_all(&answers_dir).map_err(|e| Error::io("creating", &answers_dir, e))?;
    let ev = Evaluator {
        p,
        data: &data,
        answers_dir: &answers_dir,
        log,
        answered: std::cell::Cell::new(0),
    };
    let mut problems = Vec::new();
    for split in SPLITS {
        let f = synth.join(format!("{split}.jsonl"));
        problems.push((*split, read_problems(&f, p.test_problems)?));
    }
    let mut run = Progress {
        opts,
        stages: Vec::new(),
        rows: Vec::new(),
        started,
    };
    run.stages.append(&mut stages);
    let mut models: Vec<Model> = Vec::new();
    for t in &p.teachers {
        let m = train_teacher(p, t, &opts.work, &data_dir, log, &mut run.stages)?;
        run.answer(&ev, &problems, |split, probs| {
            ev.diffusion_rows(&m, split, probs, &m.steps)
        })?;
        models.push(m);
        // Every student whose source now exists, in preset order (IDLM-DCD after DCD).
        for s in &p.students {
            let ready = models.iter().any(|m| m.name == s.from);
            if !ready || models.iter().any(|m| m.name == s.method) {
                continue;
            }
            let m = distill_student(p, s, &opts.work, &data_dir, log, &mut run.stages)?;
            run.answer(&ev, &problems, |split, probs| {
                ev.diffusion_rows(&m, split, probs, &m.steps)
            })?;
            models.push(m);
        }
    }
    let ar_dir = opts.work.join("ar");
    if let Some(cfg) = p.ar_config()? {
        let command = format!(
            "idlm train --data {} --process ar (the {} teacher's config) --out {}",
            data_dir.display(),
            p.ar_from,
            ar_dir.display()
        );
        let st = train_or_resume("train ar", &ar_dir, &data_dir, &cfg, true, command, log)?;
        run.stages.push(st);
        run.answer(&ev, &problems, |split, probs| {
            ev.ar_rows(&ar_dir, split, probs)
        })?;
    }
    let note = gsm8k_rows(&ev, &models, &ar_dir, &mut run.rows, &mut run.stages)?;
    run.report(&note)?;
    Ok(run.rows)
}

/// The rows and stages so far, and the report they make.
struct Progress<'a> {
    opts: &'a GsmOptions,
    stages: Vec<Stage>,
    rows: Vec<GsmRow>,
    started: Instant,
}

impl Progress<'_> {
    /// Answer every held-out split with `rows_of` (timed as one stage), then rewrite the report.
    fn answer(
        &mut self,
        ev: &Evaluator,
        problems: &[(&str, Vec<Problem>)],
        rows_of: impl Fn(&str, &[Problem]) -> Result<Vec<GsmRow>>,
    ) -> Result<()> {
        let t0 = Instant::now();
        let (before, answered) = (self.rows.len(), ev.answered.get());
        for (split, probs) in problems {
            self.rows.extend(rows_of(split, probs)?);
        }
        let who = self.rows.get(before).map_or("", |r| r.method.as_str());
        let (seconds, reused) = ev.stage_time(answered, &self.rows[before..], t0);
        // AR rows decode each problem alone, greedy (temperature 0) and sampled (1).
        let how = if who.starts_with("ar-") {
            "--temperature T".to_string()
        } else {
            format!(
                "--steps K --noise-removal greedy --batch-size {}",
                ev.p.batch_size
            )
        };
        self.stages.push(Stage {
            name: format!("answer held-out splits: {who}"),
            command: format!(
                "idlm sample --ckpt RUN --prompts SYNTH/SPLIT.jsonl {how} && idlm eval SAMPLES \
                 --metrics accuracy --answers SYNTH/SPLIT.jsonl"
            ),
            seconds,
            reused,
        });
        self.report("GSM8K: not run yet (the pipeline is still going).")
    }

    /// Write the report of what is done.
    fn report(&self, gsm8k_note: &str) -> Result<()> {
        let comparisons = comparisons(
            &self.opts.preset,
            &self.rows,
            &self.opts.work.join("answers"),
        )?;
        super::gsm_report::write(
            &self.opts.out,
            &super::gsm_report::GsmReport {
                preset: &self.opts.preset,
                command: &self.opts.command,
                stages: &self.stages,
                rows: &self.rows,
                gsm8k_note,
                comparisons: &comparisons,
                total_seconds: self.started.elapsed().as_secs_f64(),
            },
        )
    }
}

/// Train (or reuse) one teacher.
fn train_teacher(
    p: &GsmPreset,
    t: &super::gsm_preset::TeacherSpec,
    work: &Path,
    data_dir: &Path,
    log: &dyn Fn(&str),
    stages: &mut Vec<Stage>,
) -> Result<Model> {
    let cfg = p.teacher_config(t)?;
    let dir = work.join(&t.name);
    let sets: String = t
        .overrides
        .iter()
        .map(|o| format!(" --set '{o}'"))
        .collect();
    let command = format!(
        "idlm train --data {} --preset {}{sets} --out {}",
        data_dir.display(),
        t.preset,
        dir.display()
    );
    stages.push(train_or_resume(
        &format!("train {}", t.name),
        &dir,
        data_dir,
        &cfg,
        false,
        command,
        log,
    )?);
    Ok(Model {
        name: t.name.clone(),
        method: format!("{}-teacher", t.name),
        dir,
        steps: p.teacher_steps.clone(),
    })
}

/// Distil (or reuse) one student from the run folder of its source.
fn distill_student(
    p: &GsmPreset,
    s: &super::preset::StudentSpec,
    work: &Path,
    data_dir: &Path,
    log: &dyn Fn(&str),
    stages: &mut Vec<Stage>,
) -> Result<Model> {
    let dir = work.join(&s.method);
    // No GenPPL scorer: validation tracks the answers' entropy; the final checkpoint answers
    // (programs are not text a language model's perplexity ranks).
    stages.push(distill_or_resume(
        &DistillStage {
            name: format!("distill {}", s.method),
            source: &work.join(&s.from),
            dir: &dir,
            data_dir,
            overrides: &s.overrides,
            genppl_model: None,
        },
        log,
    )?);
    Ok(Model {
        name: s.method.clone(),
        method: s.method.clone(),
        dir,
        steps: p.student_steps.clone(),
    })
}

/// 1-2. Generate the problems and prepare the prompt/answer rows (each reused when complete; a
/// folder made with other settings is refused, naming them).
fn make_data(p: &GsmPreset, synth: &Path, data_dir: &Path, log: &dyn Fn(&str)) -> Result<Stage> {
    let t0 = Instant::now();
    let info = synth.join("synth_math.json");
    let reused = info.is_file();
    if reused {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&info).map_err(|e| Error::io("reading", &info, e))?,
        )
        .map_err(|e| Error::Data(format!("{}: {e}", info.display())))?;
        let counts: Vec<u64> = v["splits"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s["problems"].as_u64()).collect())
            .unwrap_or_default();
        // Each split is its own stream: a longer test split starts with the shorter one.
        let fits = v["seed"].as_u64() == Some(p.synth_seed)
            && v["style"].as_str().unwrap_or("fixed") == p.style
            && counts.first() == Some(&(p.train_problems as u64))
            && counts.len() == 3
            && counts[1..].iter().all(|&c| c >= p.test_problems as u64);
        if !fits {
            return Err(Error::Data(format!(
                "{} was made with other settings (seed {}, style {}, problems {counts:?}): \
                 remove it or use another --work",
                info.display(),
                v["seed"],
                v["style"]
            )));
        }
    } else {
        log("generating synth-math problems");
        crate::task::synth::write_synth_math(
            synth,
            p.synth_seed,
            p.train_problems,
            p.test_problems,
            p.style()?,
        )?;
    }
    if !data_dir.join("data.json").is_file() {
        log("preparing prompt/answer rows");
        let sources = vec![synth.join("train.jsonl")];
        let tok = TokenizerChoice::Train {
            vocab_size: p.vocab,
        };
        let name = synth.join("train.jsonl").display().to_string();
        let mut po = PrepareOptions::new(&name, sources, tok, p.seq_len, data_dir);
        po.valid_fraction = p.valid_fraction;
        po.pairs = true;
        data::prepare(&po)?;
    }
    Ok(Stage {
        name: "synth-math + prepare".into(),
        command: format!(
            "idlm data synth-math --out {s} --seed {} --train {} --test {} --style {} && idlm \
             prepare --corpus {s}/train.jsonl --format pairs --vocab {} --seq-len {} \
             --valid-fraction {} --out {}",
            p.synth_seed,
            p.train_problems,
            p.test_problems,
            p.style,
            p.vocab,
            p.seq_len,
            p.valid_fraction,
            data_dir.display(),
            s = synth.display()
        ),
        seconds: t0.elapsed().as_secs_f64(),
        reused,
    })
}

/// What every row's answering shares.
struct Evaluator<'a> {
    p: &'a GsmPreset,
    data: &'a DataDir,
    answers_dir: &'a Path,
    log: &'a dyn Fn(&str),
    /// Rows answered in this invocation (the others were kept from earlier runs).
    answered: std::cell::Cell<usize>,
}

impl Evaluator<'_> {
    /// `who`'s scored answers to `problems`, in rows of the data's layout.
    fn answer(&self, who: &Answerer, problems: &[Problem]) -> Result<Vec<Answered>> {
        if !self.data.info.rows.is_pairs() {
            return Err(Error::Data(format!(
                "{}: not prompt/answer rows",
                self.data.dir.display()
            )));
        }
        let (tok, len) = (&self.data.tokenizer, self.data.info.seq_len);
        answer_all(who, problems, tok, tok.bos_id(), &self.data.info.rows, len)
    }

    /// An answering stage's (seconds, reused) from when it began (`t0`, `answered` rows so far)
    /// and its `rows`: with every row kept from earlier runs, it is a reused stage and its time
    /// is what those rows took to answer.
    fn stage_time(&self, answered: usize, rows: &[GsmRow], t0: Instant) -> (f64, bool) {
        if self.answered.get() > answered {
            return (t0.elapsed().as_secs_f64(), false);
        }
        let kept = rows.iter().map(|r| r.seconds_per_sample * r.samples as f64);
        (kept.sum(), true)
    }

    /// The row `stem` kept from an earlier run under `key`, else `answer`ed and kept.
    fn cached(
        &self,
        stem: &str,
        key: &str,
        answer: impl FnOnce() -> Result<GsmRow>,
    ) -> Result<GsmRow> {
        let path = self.answers_dir.join(format!("{stem}.row.json"));
        if let Some(r) = row_cache::load(&path, key) {
            (self.log)(&format!(
                "{stem}: {:.1}% +- {:.1}, kept from an earlier run (same checkpoint, problems \
                 and settings)",
                100.0 * r.accuracy,
                100.0 * r.accuracy_se
            ));
            return Ok(r);
        }
        let r = answer()?;
        self.answered.set(self.answered.get() + 1);
        row_cache::store(&path, key, &r)?;
        Ok(r)
    }

    /// A row from answers, its answers file written.
    fn row(
        &self,
        method: &str,
        process: &str,
        steps: Option<usize>,
        split: &str,
        answers: &[Answered],
        checkpoint: &Path,
    ) -> Result<GsmRow> {
        let stem = stem(method, split, steps);
        write_answers(&self.answers_dir.join(format!("{stem}.jsonl")), answers)?;
        let (correct, n, outcomes) = tally(answers);
        let acc = correct as f64 / n.max(1) as f64;
        let mean =
            |f: &dyn Fn(&Answered) -> f64| answers.iter().map(f).sum::<f64>() / n.max(1) as f64;
        let row = GsmRow {
            method: method.to_string(),
            process: process.to_string(),
            steps,
            split: split.to_string(),
            accuracy: acc,
            accuracy_se: (acc * (1.0 - acc) / n.max(1) as f64).sqrt(),
            nfe: mean(&|a| a.nfe as f64),
            seconds_per_sample: mean(&|a| a.seconds),
            samples: n,
            outcomes,
            checkpoint: checkpoint.display().to_string(),
        };
        (self.log)(&format!(
            "{stem}: {correct}/{n} = {:.1}% +- {:.1}, NFE {:.1}, {:.4} s/problem",
            100.0 * acc,
            100.0 * row.accuracy_se,
            row.nfe,
            row.seconds_per_sample
        ));
        Ok(row)
    }

    /// One diffusion model answering `problems` at each of `steps`.
    fn diffusion_rows(
        &self,
        m: &Model,
        split: &str,
        problems: &[Problem],
        steps: &[usize],
    ) -> Result<Vec<GsmRow>> {
        let ck = checkpoint::load(&m.dir)?;
        let model = ck.dit(true)?;
        let process = ck.process(None)?;
        let pname = ck.meta.process.name().to_string();
        let id = row_cache::checkpoint_identity(&ck.meta);
        let mut rows = Vec::new();
        for &k in steps {
            let opts = greedy(&ck.meta.config.sample, k, self.p.batch_size, self.p.seed);
            let key = row_cache::row_key(&id, &format!("{opts:?}"), problems);
            rows.push(self.cached(&stem(&m.method, split, Some(k)), &key, || {
                (self.log)(&format!("{} answering {split} at {k} steps", m.method));
                let who = Answerer::Diffusion {
                    model: &model,
                    process: process.as_ref(),
                    opts,
                };
                let a = self.answer(&who, problems)?;
                self.row(&m.method, &pname, Some(k), split, &a, &ck.dir)
            })?);
        }
        Ok(rows)
    }

    /// The AR baseline answering `problems`, greedily and sampled (temperature 1); `modes`
    /// filters by name.
    fn ar_rows_with(
        &self,
        dir: &Path,
        split: &str,
        problems: &[Problem],
        modes: &[&str],
    ) -> Result<Vec<GsmRow>> {
        let ck = checkpoint::load(dir)?;
        let model = lm_from_checkpoint(&ck, true)?;
        let id = row_cache::checkpoint_identity(&ck.meta);
        let mut rows = Vec::new();
        for (name, temperature) in [("ar-greedy", 0.0), ("ar-sampled", 1.0)] {
            if !modes.contains(&name) {
                continue;
            }
            let opts = ArSamplerOptions {
                temperature,
                top_p: 1.0,
                batch_size: 1,
                seed: self.p.seed,
            };
            let key = row_cache::row_key(&id, &format!("{opts:?}"), problems);
            rows.push(self.cached(&stem(name, split, None), &key, || {
                (self.log)(&format!("{name} answering {split}"));
                let who = Answerer::Ar {
                    model: &model,
                    opts,
                    exclude: Some(ck.meta.data.mask_id),
                };
                let a = self.answer(&who, problems)?;
                self.row(name, "ar", None, split, &a, &ck.dir)
            })?);
        }
        Ok(rows)
    }

    /// The AR baseline, greedy and sampled.
    fn ar_rows(&self, dir: &Path, split: &str, problems: &[Problem]) -> Result<Vec<GsmRow>> {
        self.ar_rows_with(dir, split, problems, &["ar-greedy", "ar-sampled"])
    }
}

/// The real GSM8K test problems through the same path: every model at its first (largest) step
/// count, the AR baseline greedy. Returns the note for the report (where the problems came
/// from, or why this part was skipped).
fn gsm8k_rows(
    ev: &Evaluator,
    models: &[Model],
    ar_dir: &Path,
    rows: &mut Vec<GsmRow>,
    stages: &mut Vec<Stage>,
) -> Result<String> {
    let n = ev.p.gsm8k_problems;
    if n == 0 {
        return Ok("GSM8K: skipped (gsm8k_problems = 0).".into());
    }
    let dir = match crate::task::gsm8k::locate(None) {
        Ok(d) => d,
        Err(e) => {
            (ev.log)(&format!("GSM8K skipped: {e}"));
            return Ok(format!("GSM8K: skipped: {e}"));
        }
    };
    let (t0, answered, before) = (Instant::now(), ev.answered.get(), rows.len());
    let problems = read_problems(&dir.join("test.jsonl"), n)?;
    for m in models {
        let k = m.steps.first().copied().unwrap_or(1024);
        rows.extend(ev.diffusion_rows(m, "gsm8k_test", &problems, &[k])?);
    }
    if ev.p.ar_config()?.is_some() {
        rows.extend(ev.ar_rows_with(ar_dir, "gsm8k_test", &problems, &["ar-greedy"])?);
    }
    let (seconds, reused) = ev.stage_time(answered, &rows[before..], t0);
    stages.push(Stage {
        name: "answer GSM8K test".into(),
        command: format!(
            "idlm data gsm8k --out runs/gsm8k && idlm sample --ckpt RUN --prompts \
             runs/gsm8k/test.jsonl --steps K --noise-removal greedy && idlm eval SAMPLES \
             --metrics accuracy --answers runs/gsm8k/test.jsonl   ({} problems from {})",
            problems.len(),
            dir.display()
        ),
        seconds,
        reused,
    });
    Ok(format!(
        "GSM8K: the first {} test problems from {}, each model at its largest step count, the \
         AR baseline greedy; a question too long for the row (prompt_too_long) counts as wrong.",
        problems.len(),
        dir.display()
    ))
}

/// The paired comparisons the report shows, on every split with rows of both sides at the
/// same steps: each student against the model it was distilled from (IDLM-DCD against DCD is
/// the paper's claim at 4 and 8 steps), and each IDLM student against the baselines (SDTT,
/// DCD) distilled from its source.
fn comparisons(p: &GsmPreset, rows: &[GsmRow], answers: &Path) -> Result<Vec<Paired>> {
    let label = |name: &str| {
        if p.teachers.iter().any(|t| t.name == name) {
            format!("{name}-teacher")
        } else {
            name.to_string()
        }
    };
    let is_idlm = |s: &super::preset::StudentSpec| {
        DistillConfig::default()
            .with_overrides(&s.overrides)
            .is_ok_and(|c| c.method == Method::Idlm)
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    for s in &p.students {
        pairs.push((s.method.clone(), label(&s.from)));
    }
    for s in p.students.iter().filter(|s| is_idlm(s)) {
        for o in &p.students {
            if o.from == s.from && !is_idlm(o) {
                pairs.push((s.method.clone(), o.method.clone()));
            }
        }
    }
    let mut out = Vec::new();
    for (a, b) in pairs {
        for ra in rows.iter().filter(|r| r.method == a) {
            let Some(rb) = rows
                .iter()
                .find(|r| r.method == b && r.split == ra.split && r.steps == ra.steps)
            else {
                continue;
            };
            let read = |r: &GsmRow| {
                paired::read_correct(
                    &answers.join(format!("{}.jsonl", stem(&r.method, &r.split, r.steps))),
                )
            };
            let (ca, cb) = (read(ra)?, read(rb)?);
            let (a_only, b_only, diff, se) = Paired::of(&ca, &cb)?;
            out.push(Paired {
                a: a.clone(),
                b: b.clone(),
                steps: ra.steps.unwrap_or(0),
                split: ra.split.clone(),
                n: ca.len(),
                a_only,
                b_only,
                diff,
                se,
            });
        }
    }
    Ok(out)
}

/// The file stem of a row's answers: `{method}-{split}[-{steps}]`.
fn stem(method: &str, split: &str, steps: Option<usize>) -> String {
    match steps {
        Some(k) => format!("{method}-{split}-{k}"),
        None => format!("{method}-{split}"),
    }
}
