//! `idlm import` and `idlm export`: released checkpoints in, the mdlm-owt layout out.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use idlm::checkpoint::{self, CheckpointTensors};
use idlm::interop::{ImportOptions, layout};

use super::choices::{ProcessArg, RoleArg};

/// `idlm import`
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// A released checkpoint: a Hugging Face directory (config.json + model.safetensors) or a
    /// Lightning .ckpt file.
    pub src: PathBuf,
    /// The idlm checkpoint directory to write (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// The forward process, when the config does not tell it (e.g. an IDLM-MDLM student whose
    /// config was copied from Duo's).
    #[arg(long, value_enum)]
    pub process: Option<ProcessArg>,
    /// A tokenizer.json to use (default: one beside or inside the checkpoint, or GPT-2's for a
    /// 50,258-id model).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Which network of a Lightning checkpoint (IDLM's hold the student, the teacher and the fake).
    #[arg(long, value_enum, default_value_t = RoleArg::Student)]
    pub role: RoleArg,
}

/// `idlm export`
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Checkpoint or run directory.
    pub run: PathBuf,
    /// Write the mdlm-owt Hugging Face layout (config.json + model.safetensors) to this new folder.
    #[arg(long)]
    pub hf: PathBuf,
    /// Export the raw weights instead of the EMA.
    #[arg(long)]
    pub raw: bool,
}

/// Read a released checkpoint and write it as an idlm checkpoint directory.
pub fn import(a: ImportArgs) -> Result<()> {
    if a.out.exists() {
        bail!(
            "{} already exists; import writes a new folder",
            a.out.display()
        );
    }
    let opts = ImportOptions {
        process: a.process.and_then(|p| p.diffusion()),
        tokenizer: a.tokenizer.clone(),
        role: a.role.into(),
    };
    if a.process.is_some() && opts.process.is_none() {
        bail!("--process must be mdlm or duo: released checkpoints are diffusion models");
    }
    let ck = idlm::interop::import(&a.src, &opts)
        .with_context(|| format!("importing {}", a.src.display()))?;
    let m = &ck.meta.model;
    let inv = layout::inv_freq(m.hidden_size / m.n_heads);
    let n = inv.len();
    let inv = candle_core::Tensor::from_vec(inv, n, &idlm::runtime::device())?;
    let empty = HashMap::new();
    let tok = ck.tokenizer_json()?;
    let t = CheckpointTensors {
        weights: &ck.weights,
        ema: ck.ema.as_ref().unwrap_or(&empty),
        optim: &empty,
        inv_freq: &inv,
        tokenizer_json: &tok,
        extra: &[],
    };
    let parent = match a.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let stage = idlm::atomic::Staging::new(&parent, "import")?;
    checkpoint::write_files(stage.path(), &ck.meta, &t)?;
    stage.publish(&a.out)?;
    println!(
        "{}: {} ({:?}, {} parameters, vocab {}, length {}, {}); wrote {}",
        a.src.display(),
        ck.meta.source.as_deref().unwrap_or(""),
        ck.meta.process,
        m.n_params(),
        m.vocab_size,
        m.length,
        if ck.ema.is_some() {
            "with EMA"
        } else {
            "no EMA"
        },
        a.out.display()
    );
    Ok(())
}

/// Write a checkpoint in the mdlm-owt layout.
pub fn export(a: ExportArgs) -> Result<()> {
    let ck = checkpoint::load(&a.run).with_context(|| format!("loading {}", a.run.display()))?;
    idlm::interop::export_hf(&ck, &a.hf, a.raw)
        .with_context(|| format!("exporting {} to {}", a.run.display(), a.hf.display()))?;
    println!(
        "wrote {} ({} weights, step {})",
        a.hf.display(),
        if a.raw || ck.ema.is_none() {
            "raw"
        } else {
            "EMA"
        },
        ck.meta.step
    );
    Ok(())
}
