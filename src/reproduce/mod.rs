//! `idlm reproduce`: the paper's main table (algorithms.md §7.1) in miniature, as one command that
//! prepares the corpus, trains (or reuses) a teacher, distils it with IDLM and SDTT, samples every
//! model at every step count with paired seeds, evaluates under protocol v1, and writes a report.

pub mod report;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use serde_json::{Value, json};

use crate::ar::process_name;
use crate::ar::{ArSamplerOptions, lm_from_checkpoint, run_ar_training, sample_ar};
use crate::checkpoint;
use crate::config::RunConfig;
use crate::data::{self, DataDir, PrepareOptions, TokenizerChoice};
use crate::distill::{DistillConfig, DistillRunOptions, run_distill};
use crate::eval::heldout::heldout_records;
use crate::eval::protocol::{MauveEval, References, evaluate_with, read_references};
use crate::process::{NoiseRemoval, ProcessKind};
use crate::run::process_for;
use crate::run::{TrainRunOptions, run_training};
use crate::sample::record::{SampleRecord, write_jsonl};
use crate::sample::{Sample, SamplerOptions, sample};
use crate::{Error, Result};

/// One distilled model of the table.
#[derive(Debug, Clone, Serialize)]
pub struct StudentSpec {
    /// Row label in the table (`method` of summary.json).
    pub method: &'static str,
    /// What it distils: "teacher", or an earlier student's `method` (IDLM-DCD distils DCD).
    pub from: &'static str,
    /// `idlm distill` overrides (`key=value`).
    pub overrides: Vec<String>,
}

/// What a reproduction runs.
#[derive(Debug, Clone, Serialize)]
pub struct Preset {
    /// Name.
    pub name: &'static str,
    /// What it reproduces (the report's title).
    pub title: &'static str,
    /// Corpus name for `idlm prepare`.
    pub corpus: &'static str,
    /// BPE vocabulary.
    pub vocab: usize,
    /// Row length.
    pub seq_len: usize,
    /// Held-out share of documents.
    pub valid_fraction: f64,
    /// Teacher config preset.
    pub teacher_preset: &'static str,
    /// `idlm train` overrides of the teacher config (`section.key=value`; also the AR baseline's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub teacher_overrides: Vec<String>,
    /// Distilled models.
    pub students: Vec<StudentSpec>,
    /// Samples per row (paired seeds across rows).
    pub samples: usize,
    /// Teacher step counts.
    pub teacher_steps: Vec<usize>,
    /// Student step counts.
    pub student_steps: Vec<usize>,
    /// Sampler seed.
    pub seed: u64,
    /// The teacher's forward process.
    pub process: ProcessKind,
    /// Noise removals every diffusion row is sampled with (Duo tables report both).
    pub noise_removals: Vec<NoiseRemoval>,
    /// Train and evaluate the AR baseline (same width, depth, data and steps as the teacher).
    pub ar_baseline: bool,
}

/// The presets `idlm reproduce` knows.
pub fn preset(name: &str) -> Result<Preset> {
    match name {
        "mini" => Ok(Preset {
            name: "mini",
            title: "the paper's §7.1 table (masked diffusion) in miniature",
            corpus: "english",
            vocab: 512,
            seq_len: 256,
            valid_fraction: 0.05,
            teacher_preset: "mini",
            teacher_overrides: Vec::new(),
            students: vec![
                StudentSpec {
                    method: "idlm",
                    from: "teacher",
                    overrides: vec![
                        "method=\"idlm\"".into(),
                        "max_steps=300".into(),
                        "lr=1e-5".into(),
                        "val_every=50".into(),
                        "ckpt_every=50".into(),
                    ],
                },
                StudentSpec {
                    method: "sdtt",
                    from: "teacher",
                    overrides: vec![
                        "method=\"sdtt\"".into(),
                        "lr=1e-4".into(),
                        "sdtt_round_steps=60".into(),
                        "max_steps=420".into(),
                        "val_every=60".into(),
                        "ckpt_every=60".into(),
                    ],
                },
            ],
            samples: 64,
            teacher_steps: vec![1024, 256, 64, 16, 8, 4],
            student_steps: vec![32, 16, 8, 4],
            seed: 1,
            process: ProcessKind::Mdlm,
            noise_removals: vec![NoiseRemoval::Ancestral],
            ar_baseline: true,
        }),
        // §7.2-7.3 in miniature: a Duo teacher on the same data, Duo-DCD (5 rounds from dt =
        // 1/512, as distil_owt.sh), IDLM-Duo and IDLM-DCD, greedy-tail and ancestral.
        "mini-duo" => {
            let idlm = |from: &'static str, method: &'static str| StudentSpec {
                method,
                from,
                overrides: vec![
                    "method=\"idlm\"".into(),
                    "max_steps=300".into(),
                    "lr=1e-5".into(),
                    "val_every=50".into(),
                    "ckpt_every=50".into(),
                ],
            };
            Ok(Preset {
                name: "mini-duo",
                title: "the paper's §7.2-7.3 tables (uniform-state diffusion) in miniature",
                corpus: "english",
                vocab: 512,
                seq_len: 256,
                valid_fraction: 0.05,
                teacher_preset: "mini-duo",
                teacher_overrides: Vec::new(),
                students: vec![
                    StudentSpec {
                        method: "dcd",
                        from: "teacher",
                        overrides: vec![
                            "method=\"dcd\"".into(),
                            "lr=1e-4".into(),
                            "dcd_base_steps=512".into(),
                            "dcd_round_steps=60".into(),
                            "max_steps=300".into(),
                            "val_every=60".into(),
                            "ckpt_every=60".into(),
                        ],
                    },
                    idlm("teacher", "idlm"),
                    idlm("dcd", "idlm-dcd"),
                ],
                samples: 64,
                teacher_steps: vec![1024, 64, 16, 8, 4],
                student_steps: vec![32, 16, 8, 4],
                seed: 1,
                process: ProcessKind::Duo,
                noise_removals: vec![NoiseRemoval::Greedy, NoiseRemoval::Ancestral],
                ar_baseline: false,
            })
        }
        _ => Err(Error::InvalidArgument(format!(
            "unknown reproduction preset '{name}': use mini or mini-duo"
        ))),
    }
}

impl Preset {
    /// Apply `--set` overrides: `samples`, `seed`, `teacher_steps`, `student_steps`,
    /// `teacher.<section.key>` (the teacher's config) or `<student>.<key>` (its distill config).
    pub fn with_overrides(mut self, sets: &[String]) -> Result<Self> {
        for ov in sets {
            let (key, raw) = ov.split_once('=').ok_or_else(|| {
                Error::Config(format!("override '{ov}' is not of the form key=value"))
            })?;
            let key = key.trim();
            let bad = |what: &str| Error::Config(format!("override '{ov}': {what}"));
            let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.to_string()));
            let int = |v: &toml::Value| {
                v.as_integer()
                    .and_then(|i| usize::try_from(i).ok())
                    .ok_or_else(|| bad("expected a non-negative integer"))
            };
            let ints = |v: &toml::Value| {
                v.as_array()
                    .ok_or_else(|| bad("expected a list of integers"))?
                    .iter()
                    .map(int)
                    .collect::<Result<Vec<usize>>>()
            };
            match key.split_once('.') {
                None => match key {
                    "samples" => self.samples = int(&value)?,
                    "seed" => self.seed = int(&value)? as u64,
                    "teacher_steps" => self.teacher_steps = ints(&value)?,
                    "student_steps" => self.student_steps = ints(&value)?,
                    _ => {
                        return Err(bad(
                            "use samples, seed, teacher_steps, student_steps, teacher.<key> \
                             or <student>.<key>",
                        ));
                    }
                },
                Some(("teacher", rest)) => self.teacher_overrides.push(format!("{rest}={raw}")),
                Some((student, rest)) => self
                    .students
                    .iter_mut()
                    .find(|s| s.method == student)
                    .ok_or_else(|| bad(&format!("no student '{student}' in this preset")))?
                    .overrides
                    .push(format!("{rest}={raw}")),
            }
        }
        Ok(self)
    }
}

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

/// One stage of the pipeline, as the report lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    /// What it did.
    pub name: String,
    /// The equivalent stand-alone command.
    pub command: String,
    /// Wall-clock seconds (0 when reused).
    pub seconds: f64,
    /// Whether an existing result was reused.
    pub reused: bool,
}

/// One row of the table (summary.json): the shared results row.
pub use crate::report::ResultRow as Row;

/// Run every stage (reusing finished ones) and write the report.
pub fn reproduce(opts: &ReproduceOptions, log: &dyn Fn(&str)) -> Result<Vec<Row>> {
    let p = &opts.preset;
    let started = Instant::now();
    let mut stages = Vec::new();
    let data_dir = opts
        .work
        .join(format!("data/{}-{}-{}", p.corpus, p.vocab, p.seq_len));
    // 1. Data.
    let t0 = Instant::now();
    let reused = data_dir.join("data.json").is_file();
    if !reused {
        log("preparing the corpus");
        let cache = data::cache_dir();
        data::fetch_corpus(&cache)?;
        let sources = data::resolve_corpus(p.corpus, &cache)?;
        let mut po = PrepareOptions::new(
            p.corpus,
            sources,
            TokenizerChoice::Train {
                vocab_size: p.vocab,
            },
            p.seq_len,
            &data_dir,
        );
        po.valid_fraction = p.valid_fraction;
        data::prepare(&po)?;
    }
    stages.push(Stage {
        name: "prepare".into(),
        command: format!(
            "idlm prepare --corpus {} --vocab {} --seq-len {} --valid-fraction {} --out {}",
            p.corpus,
            p.vocab,
            p.seq_len,
            p.valid_fraction,
            data_dir.display()
        ),
        seconds: t0.elapsed().as_secs_f64(),
        reused,
    });
    let data = DataDir::open(&data_dir)?;

    // 2. Teacher.
    let teacher_dir = opts.work.join("teacher");
    let cfg = RunConfig::load(p.teacher_preset)?.with_overrides(&p.teacher_overrides)?;
    let teacher_sets: String = p
        .teacher_overrides
        .iter()
        .map(|o| format!(" --set '{o}'"))
        .collect();
    let t0 = Instant::now();
    let done = finished_steps(&teacher_dir);
    let reused = done.is_some_and(|s| s >= cfg.train.max_steps);
    if !reused {
        log("training the teacher");
        run_training(&TrainRunOptions {
            run_dir: teacher_dir.clone(),
            data_dir: data_dir.clone(),
            cfg: cfg.clone(),
            resume: done.is_some(),
            progress: true,
        })?;
    }
    stages.push(Stage {
        name: "teacher".into(),
        command: format!(
            "idlm train --data {} --preset {}{teacher_sets} --out {}",
            data_dir.display(),
            p.teacher_preset,
            teacher_dir.display()
        ),
        seconds: t0.elapsed().as_secs_f64(),
        reused,
    });

    // 3. Students.
    let mut models: Vec<(String, PathBuf, Vec<usize>)> = vec![(
        "teacher".into(),
        teacher_dir.clone(),
        p.teacher_steps.clone(),
    )];
    for s in &p.students {
        let dir = opts.work.join(s.method);
        // The checkpoint it distils: the teacher, or an earlier student's selected checkpoint.
        let source = if s.from == "teacher" {
            teacher_dir.clone()
        } else {
            models
                .iter()
                .find(|m| m.0 == s.from)
                .map(|m| m.1.clone())
                .ok_or_else(|| {
                    Error::Config(format!(
                        "{} distils '{}', which comes later",
                        s.method, s.from
                    ))
                })?
        };
        let dc = DistillConfig::default().with_overrides(&s.overrides)?;
        let t0 = Instant::now();
        let done = finished_steps(&dir);
        let reused = done.is_some_and(|st| st >= dc.max_steps);
        if !reused {
            log(&format!("distilling: {}", s.method));
            let resume = done.is_some();
            run_distill(&DistillRunOptions {
                run_dir: dir.clone(),
                teacher: source.clone(),
                data_dir: Some(data_dir.clone()),
                cfg: dc.clone(),
                resume,
                progress: true,
                genppl_model: Some(opts.genppl_model.clone()),
            })?;
        }
        stages.push(Stage {
            name: format!("distill {}", s.method),
            command: format!(
                "idlm distill --teacher {} --out {} {}",
                source.display(),
                dir.display(),
                s.overrides
                    .iter()
                    .map(|o| format!("--set '{o}'"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            seconds: t0.elapsed().as_secs_f64(),
            reused,
        });
        // The checkpoint selected by validation GenPPL, as the reference does.
        let best = dir.join("best");
        let pick = if best.join("meta.json").is_file() {
            best
        } else {
            dir
        };
        models.push((s.method.to_string(), pick, p.student_steps.clone()));
    }

    // 4. The AR baseline: same width, depth, data and step budget as the teacher.
    let ar_dir = opts.work.join("ar");
    if p.ar_baseline {
        let mut cfg = cfg.clone();
        cfg.train.process = ProcessKind::Ar;
        let t0 = Instant::now();
        let done = finished_steps(&ar_dir);
        let reused = done.is_some_and(|s| s >= cfg.train.max_steps);
        if !reused {
            log("training the AR baseline");
            run_ar_training(&TrainRunOptions {
                run_dir: ar_dir.clone(),
                data_dir: data_dir.clone(),
                cfg,
                resume: done.is_some(),
                progress: true,
            })?;
        }
        stages.push(Stage {
            name: "train ar".into(),
            command: format!(
                "idlm train --data {} --preset {}{teacher_sets} --process ar --out {}",
                data_dir.display(),
                p.teacher_preset,
                ar_dir.display()
            ),
            seconds: t0.elapsed().as_secs_f64(),
            reused,
        });
    }

    // 5-6. Sample and evaluate every (model, steps).
    let sample_dir = opts.work.join("samples");
    fs::create_dir_all(&sample_dir).map_err(|e| Error::io("creating", &sample_dir, e))?;
    fs::create_dir_all(&opts.out).map_err(|e| Error::io("creating", &opts.out, e))?;
    let mut rows = Vec::new();
    let mut evals = Vec::new();
    // MAUVE against held-out rows of the same data, the same references for every row.
    let ctx = EvalContext {
        minilm: crate::eval::minilm_dir(&data::cache_dir())?,
        references: read_references(&data_dir, p.samples)?,
        genppl_model: &opts.genppl_model,
        data: &data,
        sample_dir: &sample_dir,
        seed: p.seed,
        log,
    };
    // The data row: held-out text (disjoint from MAUVE's references) under the same protocol.
    let t0 = Instant::now();
    let recs = heldout_records(&data_dir, p.samples, None)?;
    let spec = RowSpec {
        method: "held-out text",
        process: "",
        steps: None,
        tag: String::new(),
        noise_removal: String::new(),
        checkpoint: String::new(),
    };
    let (row, ev) = ctx.evaluate(&spec, &recs, None, 0.0)?;
    rows.push(row);
    evals.push(ev);
    stages.push(Stage {
        name: "evaluate held-out text".into(),
        command: format!(
            "idlm data heldout --data {} -n {} --out heldout.jsonl && idlm eval heldout.jsonl --reference {}",
            data_dir.display(),
            p.samples,
            data_dir.display()
        ),
        seconds: t0.elapsed().as_secs_f64(),
        reused: false,
    });
    for (method, ck_path, steps) in &models {
        let ck = checkpoint::load(ck_path)?;
        let model = ck.dit(true)?;
        let process = process_for(
            ck.meta.process,
            ck.meta.data.vocab_size,
            ck.meta.data.mask_id,
        )?;
        let pname = process_name(ck.meta.process);
        let t_model = Instant::now();
        for &nr in &p.noise_removals {
            for &k in steps {
                let nr_name = format!("{nr:?}").to_lowercase();
                log(&format!("sampling {method} at {k} steps ({nr_name})"));
                let so = SamplerOptions {
                    steps: k,
                    batch_size: 32,
                    seed: p.seed,
                    noise_removal: nr,
                    ..ck.meta.config.sample.clone()
                };
                let t0 = Instant::now();
                let samples = sample(&model, process.as_ref(), p.samples, p.seq_len, &so, None)?;
                let spec = RowSpec {
                    method,
                    process: &pname,
                    steps: Some(k),
                    // File names carry the noise removal only where a table has both.
                    tag: if p.noise_removals.len() > 1 {
                        format!("-{nr_name}")
                    } else {
                        String::new()
                    },
                    noise_removal: nr_name,
                    checkpoint: ck.dir.display().to_string(),
                };
                let recs = ctx.records(&samples)?;
                let (row, ev) =
                    ctx.evaluate(&spec, &recs, Some(&samples), t0.elapsed().as_secs_f64())?;
                rows.push(row);
                evals.push(ev);
            }
        }
        stages.push(Stage {
            name: format!("sample + evaluate {method}"),
            command: format!(
                "idlm sample --ckpt {} --steps K -n {} --seed {} && idlm eval ...",
                ck_path.display(),
                p.samples,
                p.seed
            ),
            seconds: t_model.elapsed().as_secs_f64(),
            reused: false,
        });
    }
    if p.ar_baseline {
        let ck = checkpoint::load(&ar_dir)?;
        let model = lm_from_checkpoint(&ck, true)?;
        let t0 = Instant::now();
        log("sampling ar (KV cache, temperature 1, top-p 1)");
        let ao = ArSamplerOptions {
            temperature: 1.0,
            top_p: 1.0,
            batch_size: 32,
            seed: p.seed,
        };
        let samples = sample_ar(
            &model,
            p.samples,
            p.seq_len,
            ck.meta.data.bos_id,
            Some(ck.meta.data.mask_id),
            &ao,
            None,
        )?;
        let spec = RowSpec {
            method: "ar",
            process: "ar",
            steps: Some(p.seq_len - 1),
            tag: String::new(),
            noise_removal: String::new(),
            checkpoint: ck.dir.display().to_string(),
        };
        let recs = ctx.records(&samples)?;
        let (row, ev) = ctx.evaluate(&spec, &recs, Some(&samples), t0.elapsed().as_secs_f64())?;
        rows.push(row);
        evals.push(ev);
        stages.push(Stage {
            name: "sample + evaluate ar".into(),
            command: format!(
                "idlm sample --ckpt {} -n {} --seed {} --temperature 1 --top-p 1 && idlm eval ...",
                ar_dir.display(),
                p.samples,
                p.seed
            ),
            seconds: t0.elapsed().as_secs_f64(),
            reused: false,
        });
    }
    report::write(
        &opts.out,
        &report::Report {
            preset: p,
            command: &opts.command,
            stages: &stages,
            rows: &rows,
            evals: &evals,
            total_seconds: started.elapsed().as_secs_f64(),
        },
    )?;
    Ok(rows)
}

/// Which row a set of samples is.
struct RowSpec<'a> {
    method: &'a str,
    process: &'a str,
    steps: Option<usize>,
    /// Suffix of the samples file name.
    tag: String,
    noise_removal: String,
    checkpoint: String,
}

/// What every row's evaluation shares.
struct EvalContext<'a> {
    minilm: PathBuf,
    references: References,
    genppl_model: &'a Path,
    data: &'a DataDir,
    sample_dir: &'a Path,
    seed: u64,
    log: &'a dyn Fn(&str),
}

impl EvalContext<'_> {
    /// Decode generated samples into records.
    fn records(&self, samples: &[Sample]) -> Result<Vec<SampleRecord>> {
        samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Ok(SampleRecord {
                    nfe: Some(s.nfe),
                    seconds: Some(s.seconds),
                    seed: Some(self.seed),
                    ..SampleRecord::new(i, self.data.tokenizer.decode(&s.ids)?, Some(s.ids.clone()))
                })
            })
            .collect()
    }

    /// Write the samples JSONL, evaluate it under protocol v1, and make the table row. `gen`
    /// holds the generator's per-sample costs (absent for held-out text).
    fn evaluate(
        &self,
        spec: &RowSpec,
        recs: &[SampleRecord],
        generated: Option<&[Sample]>,
        sample_seconds: f64,
    ) -> Result<(Row, Value)> {
        let method = spec.method;
        let k = spec.steps;
        // Every row's file has the steps, method and process keys (steps null for held-out text).
        let lines: Vec<SampleRecord> = recs
            .iter()
            .map(|r| SampleRecord {
                steps: Some(k),
                method: Some(method.to_string()),
                process: Some(spec.process.to_string()),
                ..r.clone()
            })
            .collect();
        let name = match k {
            Some(k) => format!("{method}-{k}{}", spec.tag),
            None => method.replace(' ', "-"),
        };
        let sp = self.sample_dir.join(format!("{name}.jsonl"));
        write_jsonl(&sp, &lines)?;
        (self.log)(&format!("evaluating {name}"));
        let metrics: Vec<String> = ["genppl", "entropy", "mauve"]
            .iter()
            .map(|m| m.to_string())
            .collect();
        let mauve = MauveEval {
            model_dir: self.minilm.clone(),
            references: self.references.clone(),
            options: Default::default(),
            batch: 32,
            progress: None,
        };
        let mut ev = evaluate_with(
            recs,
            &metrics,
            Some(self.genppl_model),
            8,
            None,
            Some(&mauve),
        )?;
        let n = recs.len().max(1) as f64;
        let row = Row {
            method: method.to_string(),
            process: spec.process.to_string(),
            steps: k,
            genppl: Some(num(&ev, "genppl")?),
            entropy: Some(num(&ev, "entropy")?),
            entropy_pooled: Some(num(&ev, "entropy_pooled")?),
            mauve: ev.get("mauve").and_then(|m| m.as_f64()),
            nfe: generated.map(|g| g.iter().map(|s| s.nfe as f64).sum::<f64>() / n),
            seconds_per_sample: generated.map(|g| g.iter().map(|s| s.seconds).sum::<f64>() / n),
            samples: recs.len(),
            noise_removal: spec.noise_removal.clone(),
            checkpoint: spec.checkpoint.clone(),
        };
        ev["method"] = json!(method);
        ev["process"] = json!(spec.process);
        ev["steps"] = json!(k);
        ev["noise_removal"] = json!(spec.noise_removal);
        ev["checkpoint"] = json!(row.checkpoint);
        ev["nfe"] = json!(row.nfe);
        ev["seconds_per_sample"] = json!(row.seconds_per_sample);
        ev["sample_seconds"] = json!(sample_seconds);
        (self.log)(&format!(
            "{name}: GenPPL {:.1}, entropy {:.3}, MAUVE {:.3}, NFE {:.1}, {:.3} s/sample",
            num(&ev, "genppl")?,
            num(&ev, "entropy")?,
            row.mauve.unwrap_or(f64::NAN),
            row.nfe.unwrap_or(0.0),
            row.seconds_per_sample.unwrap_or(0.0)
        ));
        Ok((row, ev))
    }
}

/// The step of a run's latest checkpoint, if it has one.
fn finished_steps(dir: &Path) -> Option<u64> {
    checkpoint::resolve(dir)
        .ok()
        .and_then(|d| checkpoint::read_meta(&d).ok())
        .map(|m| m.step)
}

fn num(v: &Value, key: &str) -> Result<f64> {
    v.get(key)
        .and_then(|x| x.as_f64())
        .ok_or_else(|| Error::Data(format!("evaluation result has no numeric '{key}'")))
}

/// The report directory's files, for callers that want to print where things went.
pub fn report_files(out: &Path) -> Vec<PathBuf> {
    ["README.md", "summary.json", "evals.json", "stages.json"]
        .iter()
        .map(|f| out.join(f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_consistent() {
        for name in ["mini", "mini-duo"] {
            let p = preset(name).unwrap();
            let cfg = RunConfig::load(p.teacher_preset).unwrap();
            assert_eq!(cfg.train.process, p.process, "{name}");
            let mut seen = vec!["teacher"];
            for s in &p.students {
                let dc = DistillConfig::default()
                    .with_overrides(&s.overrides)
                    .unwrap();
                assert!(
                    seen.contains(&s.from),
                    "{name}: {} distils {}",
                    s.method,
                    s.from
                );
                assert!(dc.max_steps > 0);
                seen.push(s.method);
            }
        }
        assert!(preset("maxi").is_err());
    }
}
