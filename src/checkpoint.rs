//! Checkpoints: a directory of safetensors + meta.json, written to a temp dir and renamed, so a
//! crash never leaves a torn checkpoint (docs/design.md §5).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::atomic::{self, Staging};
use crate::config::RunConfig;
use crate::nn::{Dit, DitConfig, frozen};
use crate::process::{ForwardProcess, ModelFamily, build_process};
use crate::{Error, Result};

/// Version of the checkpoint layout.
pub const FORMAT_VERSION: u32 = 1;
/// Prefix of the network weights (the public layout).
pub const BACKBONE: &str = "backbone";
/// Prefix of the EMA weights.
pub const EMA_PREFIX: &str = "ema";

/// What the model was trained on: it must match the data it is used with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    /// sha256 of the tokenizer.json.
    pub tokenizer_sha256: String,
    /// Model vocabulary (tokenizer + MASK).
    pub vocab_size: usize,
    /// MASK id.
    pub mask_id: u32,
    /// BOS id.
    pub bos_id: u32,
    /// EOS id.
    pub eos_id: u32,
    /// Row length of the training data.
    pub seq_len: usize,
    /// Where the data was read from (empty for a released checkpoint, which names none).
    pub data_dir: String,
    /// Row layout of the training data: a pairs model's prompts end with its separator.
    #[serde(default)]
    pub rows: crate::data::pairs::RowLayout,
}

impl DataInfo {
    /// The data folder to use: `given`, else the one the checkpoint was trained on; an error
    /// naming the checkpoint when it names none (a released one).
    pub fn data_dir_or(&self, given: Option<&Path>, ckpt: &Path) -> Result<PathBuf> {
        match given {
            Some(p) => Ok(p.to_path_buf()),
            None if self.data_dir.is_empty() => Err(Error::ckpt(
                ckpt,
                "names no training data (a released checkpoint): pass --data DIR, prepared with its tokenizer",
            )),
            None => Ok(PathBuf::from(&self.data_dir)),
        }
    }
}

/// Everything in meta.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Layout version.
    pub format_version: u32,
    /// What the model is: a diffusion model with its process, or the AR baseline (stored as the
    /// process name "mdlm", "duo" or "ar").
    pub process: ModelFamily,
    /// Architecture.
    pub model: DitConfig,
    /// Full run config (training settings and sampler defaults).
    pub config: RunConfig,
    /// Data the model belongs to.
    pub data: DataInfo,
    /// Optimizer steps done.
    pub step: u64,
    /// Training tokens seen.
    pub tokens_seen: u64,
    /// EMA updates done.
    pub ema_updates: u64,
    /// Random streams, serialised (opaque JSON owned by the trainer).
    pub rng: serde_json::Value,
    /// Last validation NELBO (nats/token), if measured.
    pub val_nelbo: Option<f64>,
    /// Seconds of training so far.
    pub train_seconds: f64,
    /// A distillation run's own state (method, config, counters, streams); None for teachers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<serde_json::Value>,
    /// Where a released checkpoint came from and its layout; None for idlm's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A loaded checkpoint.
pub struct Checkpoint {
    /// Its directory.
    pub dir: PathBuf,
    /// meta.json.
    pub meta: CheckpointMeta,
    /// `backbone.*` weights (names without the prefix).
    pub weights: HashMap<String, Tensor>,
    /// EMA weights (names without the prefix), if saved.
    pub ema: Option<HashMap<String, Tensor>>,
    /// The tokenizer of a released checkpoint read in place (idlm's own keep tokenizer.json).
    tokenizer: Option<String>,
}

/// Tensors to write: weights, EMA, optimizer moments (names without prefixes).
pub struct CheckpointTensors<'a> {
    /// Raw weights.
    pub weights: &'a HashMap<String, Tensor>,
    /// EMA weights.
    pub ema: &'a HashMap<String, Tensor>,
    /// Optimizer tensors (e.g. `m.<name>`, `v.<name>`).
    pub optim: &'a HashMap<String, Tensor>,
    /// The rotary buffer saved under `backbone.rotary_emb.inv_freq` for the public layout.
    pub inv_freq: &'a Tensor,
    /// Tokenizer JSON copied into the checkpoint so it decodes on its own.
    pub tokenizer_json: &'a str,
    /// Further safetensors files (file name, tensors), e.g. a distiller's fake and teacher.
    pub extra: &'a [(&'a str, HashMap<String, Tensor>)],
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).map_err(|e| Error::io("creating", path, e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io("writing", path, e))?;
    f.sync_all().map_err(|e| Error::io("syncing", path, e))
}

fn write_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    candle_core::safetensors::save(tensors, path)?;
    let f = fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    f.sync_all().map_err(|e| Error::io("syncing", path, e))
}

/// Write the checkpoint files into `dir` (which must exist). Not atomic by itself: see `save`.
pub fn write_files(dir: &Path, meta: &CheckpointMeta, t: &CheckpointTensors) -> Result<()> {
    let mut model: HashMap<String, Tensor> = HashMap::new();
    for (k, v) in t.weights {
        model.insert(format!("{BACKBONE}.{k}"), v.clone());
    }
    for (k, v) in t.ema {
        model.insert(format!("{EMA_PREFIX}.{BACKBONE}.{k}"), v.clone());
    }
    model.insert(
        format!("{BACKBONE}.rotary_emb.inv_freq"),
        t.inv_freq.clone(),
    );
    write_safetensors(&dir.join("model.safetensors"), &model)?;
    if !t.optim.is_empty() {
        write_safetensors(&dir.join("optim.safetensors"), t.optim)?;
    }
    for (name, tensors) in t.extra {
        write_safetensors(&dir.join(name), tensors)?;
    }
    write_file(&dir.join("tokenizer.json"), t.tokenizer_json.as_bytes())?;
    let json = serde_json::to_vec_pretty(meta)
        .map_err(|e| Error::ckpt(dir, format!("cannot serialise meta: {e}")))?;
    // meta.json last: a directory without it is never taken for a checkpoint.
    write_file(&dir.join("meta.json"), &json)
}

/// Save a step checkpoint under `run_dir/checkpoints/`, point `latest` at it, keep the newest `keep`.
pub fn save(
    run_dir: &Path,
    meta: &CheckpointMeta,
    t: &CheckpointTensors,
    keep: usize,
) -> Result<PathBuf> {
    let root = run_dir.join("checkpoints");
    fs::create_dir_all(&root).map_err(|e| Error::io("creating", &root, e))?;
    let name = format!("step-{:08}", meta.step);
    let staged = Staging::new(&root, &name)?;
    write_files(staged.path(), meta, t)?;
    let dst = root.join(&name);
    staged.publish(&dst)?;
    // `latest` moves only once the checkpoint it names is complete.
    atomic::write_file(&root.join("latest"), name.as_bytes())?;
    prune(&root, &name, keep)?;
    Ok(dst)
}

fn prune(root: &Path, current: &str, keep: usize) -> Result<()> {
    let mut steps: Vec<String> = fs::read_dir(root)
        .map_err(|e| Error::io("listing", root, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    steps.sort();
    let keep = keep.max(1);
    if steps.len() > keep {
        for old in &steps[..steps.len() - keep] {
            if old != current {
                let p = root.join(old);
                fs::remove_dir_all(&p).map_err(|e| Error::io("removing", &p, e))?;
            }
        }
    }
    Ok(())
}

/// The checkpoint directory a path names: a checkpoint itself, or a run whose `latest` is used.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join("meta.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let latest = path.join("checkpoints").join("latest");
    if latest.is_file() {
        let name = fs::read_to_string(&latest).map_err(|e| Error::io("reading", &latest, e))?;
        let dir = path.join("checkpoints").join(name.trim());
        if dir.join("meta.json").is_file() {
            return Ok(dir);
        }
        return Err(Error::ckpt(
            &dir,
            "named by checkpoints/latest but missing or incomplete",
        ));
    }
    if !path.exists() {
        return Err(Error::ckpt(path, "does not exist"));
    }
    Err(Error::ckpt(
        path,
        "is neither a checkpoint (no meta.json) nor a run directory (no checkpoints/latest)",
    ))
}

/// Read meta.json of a checkpoint directory.
pub fn read_meta(dir: &Path) -> Result<CheckpointMeta> {
    let p = dir.join("meta.json");
    let bytes = fs::read(&p).map_err(|e| Error::io("reading", &p, e))?;
    let meta: CheckpointMeta = serde_json::from_slice(&bytes)
        .map_err(|e| Error::ckpt(dir, format!("corrupt meta.json: {e}")))?;
    if meta.format_version != FORMAT_VERSION {
        return Err(Error::ckpt(
            dir,
            format!(
                "format version {} is not supported (expected {FORMAT_VERSION})",
                meta.format_version
            ),
        ));
    }
    Ok(meta)
}

/// Load tensors from a safetensors file, naming the file if it is corrupt.
pub fn load_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &crate::runtime::device())
        .map_err(|e| Error::ckpt(path, format!("corrupt or unreadable safetensors: {e}")))
}

/// Load a checkpoint: an idlm checkpoint or run directory, or a released one (a Hugging Face
/// directory or a Lightning `.ckpt`, read in place with default import options).
pub fn load(path: &Path) -> Result<Checkpoint> {
    if crate::interop::is_released(path) {
        return crate::interop::import(path, &crate::interop::ImportOptions::default());
    }
    let dir = resolve(path)?;
    let meta = read_meta(&dir)?;
    let all = load_safetensors(&dir.join("model.safetensors"))?;
    let mut weights = HashMap::new();
    let mut ema = HashMap::new();
    let ema_prefix = format!("{EMA_PREFIX}.{BACKBONE}.");
    let bb_prefix = format!("{BACKBONE}.");
    for (k, v) in all {
        if let Some(n) = k.strip_prefix(&ema_prefix) {
            ema.insert(n.to_string(), v);
        } else if let Some(n) = k.strip_prefix(&bb_prefix)
            && n != "rotary_emb.inv_freq"
        {
            weights.insert(n.to_string(), v);
        }
    }
    Ok(Checkpoint {
        dir,
        meta,
        weights,
        ema: if ema.is_empty() { None } else { Some(ema) },
        tokenizer: None,
    })
}

impl Checkpoint {
    /// A checkpoint read from a released file or directory (`dir`), with its tokenizer JSON.
    pub fn imported(
        dir: PathBuf,
        meta: CheckpointMeta,
        weights: HashMap<String, Tensor>,
        ema: Option<HashMap<String, Tensor>>,
        tokenizer_json: String,
    ) -> Self {
        Checkpoint {
            dir,
            meta,
            weights,
            ema,
            tokenizer: Some(tokenizer_json),
        }
    }

    /// Build the network from the EMA weights (if present and `use_ema`) or the raw weights.
    pub fn dit(&self, use_ema: bool) -> Result<Dit> {
        self.meta.process.diffusion(&self.dir)?;
        let w = match (&self.ema, use_ema) {
            (Some(e), true) => e,
            _ => &self.weights,
        };
        dit_from_tensors(w, &self.meta.model, &self.dir)
    }

    /// The forward process of this diffusion checkpoint over its own vocabulary (`top_p`: Duo's
    /// nucleus truncation for sampling); an error naming the checkpoint if it holds the AR model.
    pub fn process(&self, top_p: Option<f64>) -> Result<Box<dyn ForwardProcess>> {
        let kind = self.meta.process.diffusion(&self.dir)?;
        let d = &self.meta.data;
        build_process(kind, d.vocab_size, d.mask_id, top_p)
            .map_err(|e| Error::ckpt(&self.dir, e.to_string()))
    }

    /// The tokenizer JSON stored in the checkpoint.
    pub fn tokenizer_json(&self) -> Result<String> {
        if let Some(t) = &self.tokenizer {
            return Ok(t.clone());
        }
        let p = self.dir.join("tokenizer.json");
        fs::read_to_string(&p).map_err(|e| Error::io("reading", &p, e))
    }

    /// Load the optimizer tensors, if saved.
    pub fn optim(&self) -> Result<HashMap<String, Tensor>> {
        load_safetensors(&self.dir.join("optim.safetensors"))
    }
}

/// A frozen DiT from plain tensors (no gradient tracking); every weight must be present with
/// the right shape.
pub fn dit_from_tensors(
    w: &HashMap<String, Tensor>,
    cfg: &DitConfig,
    origin: &Path,
) -> Result<Dit> {
    frozen(w, cfg, origin)
}
