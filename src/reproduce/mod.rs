//! `idlm reproduce`: the paper's main table (algorithms.md §7.1) in miniature, as one command that
//! prepares the corpus, trains (or reuses) a teacher, distils it with IDLM and SDTT, samples every
//! model at every step count with paired seeds, evaluates under protocol v1, and writes a report.

pub mod report;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use serde_json::{Value, json};

use crate::checkpoint;
use crate::config::RunConfig;
use crate::data::{self, DataDir, PrepareOptions, TokenizerChoice};
use crate::distill::{DistillConfig, DistillRunOptions, run_distill};
use crate::eval::protocol::{MauveEval, SampleRecord, evaluate_with, read_references};
use crate::process::Masked;
use crate::run::{TrainRunOptions, run_training};
use crate::sample::{SamplerOptions, sample};
use crate::{Error, Result};

/// One distilled model of the table.
#[derive(Debug, Clone, Serialize)]
pub struct StudentSpec {
    /// Row label in the table (`method` of summary.json).
    pub method: &'static str,
    /// `idlm distill` overrides (`key=value`).
    pub overrides: Vec<String>,
}

/// What a reproduction runs.
#[derive(Debug, Clone, Serialize)]
pub struct Preset {
    /// Name.
    pub name: &'static str,
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
}

/// The presets `idlm reproduce` knows.
pub fn preset(name: &str) -> Result<Preset> {
    match name {
        "mini" => Ok(Preset {
            name: "mini",
            corpus: "english",
            vocab: 512,
            seq_len: 256,
            valid_fraction: 0.05,
            teacher_preset: "mini",
            students: vec![
                StudentSpec {
                    method: "idlm",
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
        }),
        _ => Err(Error::InvalidArgument(format!(
            "unknown reproduction preset '{name}': use mini"
        ))),
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

/// One row of the table (summary.json).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// "teacher", "idlm", "sdtt", ...
    pub method: String,
    /// Always "mdlm" here.
    pub process: String,
    /// Sampler steps.
    pub steps: usize,
    /// Generative perplexity under SmolLM2-135M.
    pub genppl: f64,
    /// Mean per-sample unigram entropy (nats).
    pub entropy: f64,
    /// Pooled entropy.
    pub entropy_pooled: f64,
    /// MAUVE against held-out text.
    pub mauve: Option<f64>,
    /// Mean network calls per sample.
    pub nfe: f64,
    /// Wall-clock seconds per sample (batched sampling time / batch size).
    pub seconds_per_sample: f64,
    /// Number of samples.
    pub samples: usize,
    /// Noise removal of the sampler.
    pub noise_removal: String,
    /// Checkpoint sampled.
    pub checkpoint: String,
}

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
    let cfg = RunConfig::load(p.teacher_preset)?;
    let t0 = Instant::now();
    let done = checkpoint::resolve(&teacher_dir)
        .ok()
        .and_then(|d| checkpoint::read_meta(&d).ok())
        .map(|m| m.step);
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
            "idlm train --data {} --preset {} --out {}",
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
        let dc = DistillConfig::default().with_overrides(&s.overrides)?;
        let t0 = Instant::now();
        let done = checkpoint::resolve(&dir)
            .ok()
            .and_then(|d| checkpoint::read_meta(&d).ok())
            .map(|m| m.step);
        let reused = done.is_some_and(|st| st >= dc.max_steps);
        if !reused {
            log(&format!("distilling: {}", s.method));
            let resume = done.is_some();
            run_distill(&DistillRunOptions {
                run_dir: dir.clone(),
                teacher: teacher_dir.clone(),
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
                teacher_dir.display(),
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

    // 4-5. Sample and evaluate every (model, steps).
    let sample_dir = opts.work.join("samples");
    fs::create_dir_all(&sample_dir).map_err(|e| Error::io("creating", &sample_dir, e))?;
    fs::create_dir_all(&opts.out).map_err(|e| Error::io("creating", &opts.out, e))?;
    let mut rows = Vec::new();
    let mut evals = Vec::new();
    // MAUVE against held-out rows of the same data, the same references for every row.
    let minilm = crate::eval::minilm_dir(&data::cache_dir())?;
    let references = read_references(&data_dir, p.samples)?;
    for (method, ck_path, steps) in &models {
        let ck = checkpoint::load(ck_path)?;
        let model = ck.dit(true)?;
        let process = Masked::new(ck.meta.data.vocab_size, ck.meta.data.mask_id)?;
        let t_model = Instant::now();
        for &k in steps {
            let t0 = Instant::now();
            log(&format!("sampling {method} at {k} steps"));
            let so = SamplerOptions {
                steps: k,
                batch_size: 32,
                seed: p.seed,
                ..ck.meta.config.sample.clone()
            };
            let samples = sample(&model, &process, p.samples, p.seq_len, &so, None)?;
            let mut recs = Vec::with_capacity(samples.len());
            let mut lines = String::new();
            for s in &samples {
                let text = data.tokenizer.decode(&s.ids)?;
                lines.push_str(&format!(
                    "{}\n",
                    json!({"index": s.index, "ids": s.ids, "text": text, "steps": k, "nfe": s.nfe,
                           "seconds": s.seconds, "seed": p.seed, "method": method})
                ));
                recs.push(SampleRecord {
                    text,
                    ids: Some(s.ids.clone()),
                    seed: Some(p.seed),
                });
            }
            let sp = sample_dir.join(format!("{method}-{k}.jsonl"));
            fs::write(&sp, lines).map_err(|e| Error::io("writing", &sp, e))?;
            let sample_seconds = t0.elapsed().as_secs_f64();
            log(&format!("evaluating {method} at {k} steps"));
            let metrics: Vec<String> = ["genppl", "entropy", "mauve"]
                .iter()
                .map(|m| m.to_string())
                .collect();
            let mauve = MauveEval {
                model_dir: minilm.clone(),
                references: references.clone(),
                options: Default::default(),
                batch: 32,
                progress: None,
            };
            let mut ev = evaluate_with(
                &recs,
                &metrics,
                Some(&opts.genppl_model),
                8,
                None,
                Some(&mauve),
            )?;
            let n = samples.len().max(1) as f64;
            let row = Row {
                method: method.clone(),
                process: "mdlm".into(),
                steps: k,
                genppl: num(&ev, "genppl")?,
                entropy: num(&ev, "entropy")?,
                entropy_pooled: num(&ev, "entropy_pooled")?,
                mauve: ev.get("mauve").and_then(|m| m.as_f64()),
                nfe: samples.iter().map(|s| s.nfe as f64).sum::<f64>() / n,
                seconds_per_sample: samples.iter().map(|s| s.seconds).sum::<f64>() / n,
                samples: samples.len(),
                noise_removal: format!("{:?}", so.noise_removal).to_lowercase(),
                checkpoint: ck.dir.display().to_string(),
            };
            ev["method"] = json!(method);
            ev["steps"] = json!(k);
            ev["checkpoint"] = json!(row.checkpoint);
            ev["sample_seconds"] = json!(sample_seconds);
            evals.push(ev);
            log(&format!(
                "{method} {k} steps: GenPPL {:.1}, entropy {:.3}, NFE {:.1}, {:.3} s/sample",
                row.genppl, row.entropy, row.nfe, row.seconds_per_sample
            ));
            rows.push(row);
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
