//! What each subcommand does: glue between arguments and the library.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::choices::{RowFormatArg, SamplerArg, name_of};
use super::{
    BenchArgs, Cli, Command, DataCmd, EvalArgs, NllArgs, PrepareArgs, SampleArgs, TrainArgs,
};
use idlm::checkpoint;
use idlm::config::RunConfig;
use idlm::data::{self, DataDir, PrepareOptions, TextTokenizer, TokenizerChoice};
use idlm::process::ModelFamily;
use idlm::run::{TrainRunOptions, check_data_matches, data_info};
use idlm::sample::record::{SampleRecord, write_jsonl};
use idlm::sample::{Request, SamplerOptions, sample_requests};
use idlm::train::{nelbo, run_training};

/// Run the parsed command.
pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.cmd {
        Command::Data { what } => match what {
            DataCmd::Fetch { cache } => {
                let dir = cache.unwrap_or_else(data::cache_dir);
                let rep = data::fetch_corpus(&dir).context("fetching the corpus")?;
                print!("{rep}");
                let rep = idlm::eval::models::fetch_eval_models(&dir)
                    .context("fetching the evaluation models")?;
                print!("{rep}");
                Ok(())
            }
            DataCmd::Heldout {
                data,
                num,
                shuffle_words,
                out,
            } => heldout(&data, num, shuffle_words, &out),
            DataCmd::Gsm8k { dir, out } => {
                let src = idlm::task::gsm8k::locate(dir.as_deref())?;
                let r = idlm::task::gsm8k::write_gsm8k(&src, &out)?;
                println!(
                    "GSM8K from {}: {} of {} train problems converted to programs ({:?} not), \
                     {} test prompts -> {}",
                    src.display(),
                    r.converted,
                    r.train,
                    r.failures,
                    r.test,
                    out.display()
                );
                Ok(())
            }
            DataCmd::SynthMath {
                out,
                seed,
                train,
                test,
                style,
            } => {
                let style = idlm::task::style::Style::parse(&style)?;
                let r = idlm::task::synth::write_synth_math(&out, seed, train, test, style)?;
                for (split, n, chars) in &r.splits {
                    println!("{split}: {n} problems, mean answer {chars:.0} characters");
                }
                println!("-> {}", out.display());
                Ok(())
            }
        },
        Command::Prepare(a) => prepare(a),
        Command::Train(a) => train(a),
        Command::Sample(a) => sample_cmd(a),
        Command::Nll(a) => nll(a),
        Command::Bench(a) => bench(a),
        Command::Eval(a) => eval_cmd(a),
        Command::Distill(a) => super::distill::distill(a),
        Command::Reproduce(a) => super::distill::reproduce(a),
        Command::Report(a) => {
            let rows = idlm::report::rows_from_files(&a.results)?;
            idlm::report::write_report(&a.out, &rows, &super::command_line())?;
            println!(
                "{} rows; wrote {}",
                rows.len(),
                a.out.join("README.md").display()
            );
            Ok(())
        }
        Command::Import(a) => super::interop::import(a),
        Command::Export(a) => super::interop::export(a),
        Command::Serve(a) => super::serve::serve_cmd(a),
        Command::PlotMetrics(a) => {
            let h = match &a.data {
                Some(d) => Some(DataDir::open(d)?.info.unigram_entropy_nats),
                None => None,
            };
            idlm::plot::loss_curve(&a.run.join("metrics.jsonl"), &a.out, h, a.smooth)?;
            println!("wrote {}", a.out.display());
            Ok(())
        }
    }
}

fn prepare(a: PrepareArgs) -> Result<()> {
    let sources = data::resolve_corpus(&a.corpus, &data::cache_dir())
        .with_context(|| format!("finding corpus '{}'", a.corpus))?;
    let tok = match &a.tokenizer {
        Some(p) => TokenizerChoice::Load(p.clone()),
        None => TokenizerChoice::Train {
            vocab_size: a.vocab,
        },
    };
    let out = a.out.clone().unwrap_or_else(|| {
        let name = std::path::Path::new(&a.corpus)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "corpus".into());
        let v = match &a.tokenizer {
            Some(_) => "tok".to_string(),
            None => a.vocab.to_string(),
        };
        PathBuf::from(format!("runs/data/{name}-{v}-{}", a.seq_len))
    });
    let mut opts = PrepareOptions::new(&a.corpus, sources, tok, a.seq_len, &out);
    if let Some(f) = a.valid_fraction {
        opts.valid_fraction = f;
    }
    opts.overwrite = a.overwrite;
    opts.pairs = a.format == RowFormatArg::Pairs;
    let rep = data::prepare(&opts).context("preparing the data")?;
    print!("{rep}");
    Ok(())
}

fn train(a: TrainArgs) -> Result<()> {
    let mut sets = a.set.clone();
    if let Some(p) = a.process {
        sets.push(format!("train.process={}", name_of(p)));
    }
    if let Some(n) = a.max_steps {
        sets.push(format!("train.max_steps={n}"));
    }
    if let Some(m) = a.max_minutes {
        sets.push(format!("train.max_minutes={m}"));
    }
    let cfg = if a.resume {
        // Start from the run's own saved config so a resume changes only what is overridden.
        let saved = a.out.join("config.toml");
        let text = std::fs::read_to_string(&saved)
            .with_context(|| format!("reading {} to resume", saved.display()))?;
        RunConfig::from_toml(&text, &saved.display().to_string())?
    } else {
        RunConfig::load(&a.preset)?
    };
    let cfg = cfg.with_overrides(&sets)?;
    let val_name = match cfg.train.process {
        ModelFamily::Ar => "val NLL",
        ModelFamily::Diffusion(_) => "val NELBO",
    };
    let summary = run_training(&TrainRunOptions {
        run_dir: a.out.clone(),
        data_dir: a.data.clone(),
        cfg,
        resume: a.resume,
        progress: !a.quiet,
    })?;
    println!(
        "trained to step {} | last loss {:.4} | {val_name} {} nats/token | unigram entropy {:.4} | {:.0} tok/s\ncheckpoint {}",
        summary.step,
        summary.last_loss,
        summary
            .val_nelbo
            .map(|v| format!("{v:.4}"))
            .unwrap_or_else(|| "-".into()),
        summary.unigram_entropy,
        summary.tokens_per_s,
        summary.checkpoint.display()
    );
    Ok(())
}

fn sample_cmd(a: SampleArgs) -> Result<()> {
    let ck = checkpoint::load(&a.ckpt)?;
    if ck.meta.process.is_ar() {
        return super::ar::sample(a, &ck);
    }
    if a.temperature.is_some() {
        bail!(
            "--temperature applies to AR checkpoints; {} holds a diffusion model",
            ck.dir.display()
        );
    }
    let meta = &ck.meta;
    let mut opts: SamplerOptions = meta.config.sample.clone();
    if let Some(k) = a.steps {
        opts.steps = k;
    }
    if let Some(b) = a.batch_size {
        opts.batch_size = b;
    }
    if let Some(s) = a.seed {
        opts.seed = s;
    }
    if let Some(n) = a.noise_removal {
        opts.noise_removal = n.into();
    }
    opts.cache = match a.sampler.unwrap_or(SamplerArg::AncestralCache) {
        SamplerArg::AncestralCache => true,
        SamplerArg::Ancestral => false,
        SamplerArg::KvCache => bail!(
            "{} holds a diffusion model: kv-cache is the AR sampler (use ancestral-cache or \
             ancestral)",
            ck.dir.display()
        ),
    };
    if opts.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let model = ck.dit(!a.raw)?;
    let tok = TextTokenizer::from_json(&ck.tokenizer_json()?)
        .with_context(|| format!("tokenizer of {}", ck.dir.display()))?;
    let process = ck.process(a.top_p)?;
    let conds = super::prompts::conditions(
        &a,
        &tok,
        meta.data.bos_id,
        meta.model.length,
        true,
        &meta.data.rows,
    )?;
    let mask = (meta.process.name() == "mdlm").then_some(meta.data.mask_id);
    for c in &conds {
        if let Some(t) = &c.template {
            t.check(meta.model.vocab_size, mask)?;
        }
    }
    let n = a.per_prompt();
    let reqs: Vec<Request> = conds
        .iter()
        .map(|c| Request {
            n,
            len: c.len,
            opts: opts.clone(),
            template: c.template.clone(),
        })
        .collect();
    let total = n * reqs.len();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(ProgressStyle::with_template(
        "sampling [{elapsed_precise}] {bar:30} {pos}/{len} ETA {eta}",
    )?);
    let progress = |done: usize, _n: usize| bar.set_position(done as u64);
    let t0 = Instant::now();
    let results = sample_requests(
        &model,
        process.as_ref(),
        &reqs,
        opts.batch_size,
        Some(&progress),
    )?;
    bar.finish_and_clear();
    let mut lines = String::new();
    let sampler = if opts.cache {
        "ancestral_cache"
    } else {
        "ancestral"
    };
    let mut index = 0;
    let mut tokens = 0;
    let mut samples = Vec::new();
    for (c, got) in conds.iter().zip(results) {
        for s in got {
            let mut r = SampleRecord {
                steps: Some(Some(opts.steps)),
                nfe: Some(s.nfe),
                seconds: Some(s.seconds),
                sampler: Some(sampler.into()),
                noise_removal: Some(opts.noise_removal),
                seed: Some(opts.seed),
                ..super::prompts::base_record(&ck, a.raw, index, &s.ids, &tok)?
            };
            c.annotate(&mut r, &tok)?;
            lines.push_str(&r.to_line()?);
            index += 1;
            tokens += s.ids.len();
            samples.push(s);
        }
    }
    emit(a.out.as_deref(), &lines)?;
    let nfe: f64 = samples.iter().map(|s| s.nfe as f64).sum::<f64>() / samples.len().max(1) as f64;
    eprintln!(
        "{} samples, {} steps, mean NFE {:.1}, {:.2} s/sample, {:.0} tokens/s",
        samples.len(),
        opts.steps,
        nfe,
        t0.elapsed().as_secs_f64() / samples.len().max(1) as f64,
        tokens as f64 / t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn nll(a: NllArgs) -> Result<()> {
    let ck = checkpoint::load(&a.ckpt)?;
    if ck.meta.process.is_ar() {
        return super::ar::nll(a, &ck);
    }
    let dir = ck.meta.data.data_dir_or(a.data.as_deref(), &ck.dir)?;
    let data = DataDir::open(&dir).with_context(|| format!("opening data {}", dir.display()))?;
    check_data_matches(&ck.meta.data, &data_info(&data), &ck.dir)?;
    let process = ck.process(None)?;
    let model = ck.dit(!a.raw)?;
    let rows = a.rows.unwrap_or(data.valid.n_rows());
    let s = nelbo(
        &model,
        process.as_ref(),
        &data.valid,
        &data.info.rows,
        rows,
        a.batch_size,
        a.time_samples,
        a.seed,
    )?;
    let out = json!({
        "nelbo_per_token": s.nelbo, "stderr": s.stderr, "perplexity_bound": s.nelbo.exp(),
        "tokens": s.tokens, "time_samples": s.time_samples,
        "unigram_entropy": data.info.unigram_entropy_nats, "checkpoint": ck.dir.display().to_string(),
        "step": ck.meta.step, "weights": if a.raw { "raw" } else { "ema" },
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// `idlm bench --paper-scale`: one configuration in this process (`--only`), or all of them in
/// child processes, one JSON record per line on stdout (and the list in `--json`).
fn paper_scale(a: &BenchArgs) -> Result<()> {
    use idlm::bench::paper_scale::{PaperShape, run_all, run_config};
    let shape = if a.smoke {
        PaperShape::smoke()
    } else {
        PaperShape::paper()
    };
    let records = match &a.only {
        Some(c) => vec![run_config(c, a.batch, a.calls, &shape)?],
        None => run_all(&a.batches, a.calls, a.smoke, |r| {
            eprintln!(
                "{:>11} batch {}: {:.2} s/sample, {} calls ({:.1} per sequence, {} timed{}), peak {:.0} MiB",
                r.config,
                r.batch,
                r.seconds_per_sample,
                r.calls,
                r.nfe_per_seq,
                r.measured_calls,
                if r.extrapolated { ", extrapolated" } else { "" },
                r.peak_rss_mib.unwrap_or(f64::NAN)
            )
        })?,
    };
    for r in &records {
        println!("{}", serde_json::to_string(r)?);
    }
    if let Some(p) = &a.json {
        emit(Some(p), &serde_json::to_string_pretty(&records)?)?;
    }
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    if a.iters == 0 || a.vocab < 2 || a.batch == 0 || a.len == 0 {
        bail!("bench needs --iters, --batch, --len >= 1 and --vocab >= 2");
    }
    let o = idlm::bench::BenchOptions {
        vocab: a.vocab,
        hidden: a.hidden,
        blocks: a.blocks,
        heads: a.heads,
        cond_dim: 128,
        len: a.len,
        batch: a.batch,
        warmup: a.warmup,
        iters: a.iters,
    };
    if a.paper_scale {
        return paper_scale(&a);
    }
    if a.ar_only {
        let tps = idlm::bench::sampler::ar_kv_tokens_per_s(&o, o.batch, o.batch)?;
        let threads = rayon::current_num_threads();
        println!("threads {threads} | AR KV-cache decoding {tps:.0} tokens/s");
        if let Some(p) = a.json {
            let v = json!({"options": o, "threads": threads, "ar_kv_tokens_per_s": tps});
            emit(Some(&p), &serde_json::to_string_pretty(&v)?)?;
        }
        return Ok(());
    }
    let r = idlm::bench::run_bench(&o)?;
    println!(
        "threads {} | train step {:.1} ms (CE on all positions; forward+loss {:.1}, backward {:.1}, optimizer {:.1}) | MDLM train step {:.1} ms | on relaxed inputs {:.1} ms | forward {:.1} ms",
        r.threads,
        r.train_step_ms,
        r.phase_forward_loss_ms,
        r.phase_backward_ms,
        r.phase_optimizer_ms,
        r.mdlm_train_step_ms,
        r.relaxed_train_step_ms,
        r.forward_ms,
    );
    println!(
        "GEMM peak {:.1} GFLOP/s (median of the 2048^3 products run before each timed step; best {:.1}) | train step {:.1} GFLOP = {:.0}% of peak | forward {:.0}% of peak (medians of each step against its own product; against the best product: {:.0}% and {:.0}%)",
        r.gemm_peak_gflops,
        r.gemm_peak_best_gflops,
        r.train_step_gflop,
        100.0 * r.train_step_peak_fraction,
        100.0 * r.forward_peak_fraction,
        100.0 * r.train_step_best_peak_fraction,
        100.0 * r.forward_best_peak_fraction
    );
    let sb = &r.sampler;
    for row in &sb.rows {
        let ar = if row.batch == 1 {
            sb.ar_kv_b1_tokens_per_s
        } else {
            sb.ar_kv_tokens_per_s
        };
        println!(
            "sampler {:>4} steps, batch {:>2}{}: {:.0} tokens/s = {:.2}x AR KV-cache decoding at this batch ({:.0}) | {:.1} calls per sequence",
            row.steps,
            row.batch,
            if row.time_conditioned {
                ""
            } else {
                " (no time input)"
            },
            row.tokens_per_s,
            row.tokens_per_s / ar,
            ar,
            row.nfe_per_seq
        );
    }
    let mib = |x: Option<f64>| {
        x.map(|v| format!("{v:.0} MiB"))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "IDLM alternation {:.1} ms = {:.2}x a teacher step ({:.1} ms) | peak memory {} vs teacher step {} ({} of 3x)",
        r.idlm.idlm_alternation_ms,
        r.idlm.idlm_alternation_per_teacher_step,
        r.idlm.teacher_step_ms,
        mib(r.idlm.idlm_alternation_peak_mib),
        mib(r.idlm.teacher_step_peak_mib),
        r.idlm
            .idlm_peak_per_3_teacher_steps
            .map(|x| format!("{:.0}%", 100.0 * x))
            .unwrap_or_else(|| "-".into())
    );
    if let Some(p) = a.json {
        emit(Some(&p), &serde_json::to_string_pretty(&r)?)?;
    }
    Ok(())
}

fn eval_cmd(a: EvalArgs) -> Result<()> {
    use idlm::eval::{ScorerSource, protocol};
    let names: Vec<String> = a.metrics.iter().map(|m| name_of(*m)).collect();
    let metrics = protocol::parse_metrics(&names.join(","))?;
    let samples = protocol::read_samples(&a.samples)?;
    let cache = data::cache_dir();
    let smollm2 = idlm::eval::smollm2_path(&cache);
    let wants = |name: &str| metrics.iter().any(|m| m == name);
    let needs_model =
        wants("genppl") || (wants("entropy") && samples.iter().any(|s| s.ids.is_none()));
    // Argument errors first: they must not hide behind a missing model.
    let mauve_reference = match (wants("mauve"), &a.reference) {
        (true, Some(path)) => Some(path),
        (true, None) => bail!(
            "the mauve metric needs --reference (a prepared data folder or a JSONL with a `text` field)"
        ),
        (false, Some(_)) => {
            eprintln!("note: --reference is used only by the mauve metric, which was not chosen");
            None
        }
        (false, None) => None,
    };
    let answers = match (wants("accuracy"), &a.answers) {
        (true, Some(path)) => Some(path),
        (true, None) => bail!("the accuracy metric needs --answers (a JSONL of reference numbers)"),
        (false, Some(_)) => {
            eprintln!("note: --answers is used only by the accuracy metric, which was not chosen");
            None
        }
        (false, None) => None,
    };
    // --scorer replaces SmolLM2, which then need not be in the cache.
    let smollm2 = match (needs_model, &a.scorer) {
        (true, None) => Some(smollm2?),
        _ => None,
    };
    let model = match (needs_model, &a.scorer, &smollm2) {
        (true, Some(dir), _) => Some(ScorerSource::Gpt2(dir)),
        (true, None, Some(path)) => Some(ScorerSource::SmolLm2(path)),
        _ => None,
    };
    // One bar; its prefix names the metric running now.
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} ETA {eta}",
    )?);
    let stage = |name: &'static str, done: usize, total: usize| {
        if bar.prefix() != name {
            bar.reset();
            bar.set_prefix(name);
        }
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let genppl_progress = |done: usize, total: usize| stage("GenPPL", done, total);
    let mauve_progress = |done: usize, total: usize| stage("MAUVE features", done, total);
    let mauve = if let Some(path) = mauve_reference {
        let references = protocol::read_references(path, samples.len())
            .with_context(|| format!("reading MAUVE references from {}", path.display()))?;
        Some(protocol::MauveEval {
            model_dir: idlm::eval::minilm_dir(&cache)?,
            references,
            options: idlm::eval::MauveOptions {
                seed: a.mauve_seed,
                ..Default::default()
            },
            batch: a.feature_batch_size,
            progress: Some(&mauve_progress),
        })
    } else {
        None
    };
    let t0 = Instant::now();
    let mut out = protocol::evaluate_with(
        &samples,
        &metrics,
        model,
        a.batch_size,
        Some(&genppl_progress),
        mauve.as_ref(),
    )?;
    bar.finish_and_clear();
    if let Some(path) = answers {
        let t1 = Instant::now();
        let acc = idlm::task::score_files(&a.samples, path)
            .with_context(|| format!("scoring against {}", path.display()))?;
        acc.write_into(&mut out, path);
        out["timing"]["accuracy_seconds"] = json!(t1.elapsed().as_secs_f64());
    }
    out["source"] = json!(a.samples.display().to_string());
    out["sample_info"] = protocol::sample_info(&samples)?;
    out["eval_seconds"] = json!(t0.elapsed().as_secs_f64());
    let text = serde_json::to_string_pretty(&out)?;
    emit(a.out.as_deref(), &(text + "\n"))
}

/// A result file's text: to `out` whole (through a temp file and a rename, so a full disk or a
/// crash never leaves half a file under its name), or to stdout.
pub(super) fn emit(out: Option<&std::path::Path>, text: &str) -> Result<()> {
    match out {
        Some(p) => idlm::atomic::write_file(p, text.as_bytes())?,
        None => {
            let mut o = std::io::stdout().lock();
            o.write_all(text.as_bytes())?;
            o.flush()?;
        }
    }
    Ok(())
}

fn heldout(
    data: &std::path::Path,
    n: usize,
    shuffle: Option<u64>,
    out: &std::path::Path,
) -> Result<()> {
    let recs = idlm::eval::heldout::heldout_records(data, n, shuffle)?;
    let method = if shuffle.is_some() {
        "held-out text, words shuffled"
    } else {
        "held-out text"
    };
    let recs: Vec<SampleRecord> = recs
        .into_iter()
        .map(|r| SampleRecord {
            method: Some(method.into()),
            source: Some(data.display().to_string()),
            shuffle_seed: Some(shuffle),
            ..r
        })
        .collect();
    write_jsonl(out, &recs)?;
    eprintln!("{} texts ({method}) -> {}", recs.len(), out.display());
    Ok(())
}
