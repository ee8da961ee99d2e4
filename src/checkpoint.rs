//! Checkpoints: a directory of safetensors + meta.json, written to a temp dir and renamed, so a
//! crash never leaves a torn checkpoint (docs/design.md §5).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
    /// Size and sha256 of every other file of the checkpoint, as written; checked when the file
    /// is read. Empty in checkpoints written before checksums existed (those load unchecked).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, FileSum>,
}

/// What a checkpoint file was when it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// Length in bytes.
    pub bytes: u64,
    /// sha256 of the bytes, lower-case hex.
    pub sha256: String,
}

/// Size and sha256 of a file, read in 1 MiB pieces.
pub fn file_sum(path: &Path) -> Result<FileSum> {
    let mut f = fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileSum {
        bytes,
        sha256: hex::encode(h.finalize()),
    })
}

/// Check `dir/name` against the size and sha256 `meta` recorded for it (nothing to check when
/// the checkpoint predates checksums or never recorded the file): an [`Error::Checksum`] naming
/// the file, what was expected and what is there.
pub fn verify_file(dir: &Path, meta: &CheckpointMeta, name: &str) -> Result<()> {
    let Some(want) = meta.files.get(name) else {
        return Ok(());
    };
    let path = dir.join(name);
    let len = fs::metadata(&path)
        .map_err(|e| Error::io("reading", &path, e))?
        .len();
    if len != want.bytes {
        return Err(Error::Checksum {
            path,
            what: "size",
            expected: format!("{} bytes", want.bytes),
            actual: format!("{len} bytes"),
        });
    }
    let got = file_sum(&path)?;
    if got.sha256 != want.sha256 {
        return Err(Error::Checksum {
            path,
            what: "sha256",
            expected: want.sha256.clone(),
            actual: got.sha256,
        });
    }
    Ok(())
}

/// Refuse tensors holding NaN or Inf, naming the first such tensor (in name order) and `place`
/// (where they were going or came from). Integer tensors are always finite.
pub fn check_finite(tensors: &HashMap<String, Tensor>, place: &Path) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let t = &tensors[name];
        if !t.dtype().is_float() {
            continue;
        }
        // 0 * x is 0 for every finite x and NaN for NaN and +-Inf, so the sum is 0 exactly when
        // all are finite; one pass on the tensor's own device.
        let s = (t * 0.0)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        if s != 0.0 {
            return Err(Error::NonFiniteTensor {
                path: place.to_path_buf(),
                tensor: name.clone(),
            });
        }
    }
    Ok(())
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
    // candle's error would not name the file (a full disk reads "File too large" or "No space
    // left on device" alone).
    candle_core::safetensors::save(tensors, path)
        .map_err(|e| Error::ckpt(path, format!("cannot write: {e}")))?;
    let f = fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    f.sync_all().map_err(|e| Error::io("syncing", path, e))
}

/// Write the checkpoint files into `dir` (which must exist), each one's size and sha256 recorded
/// in meta.json (written last). Tensors holding NaN or Inf are refused before anything is
/// written. Not atomic by itself: see `save`.
pub fn write_files(dir: &Path, meta: &CheckpointMeta, t: &CheckpointTensors) -> Result<()> {
    let place = PathBuf::from(format!("checkpoint of step {}", meta.step));
    for map in [t.weights, t.ema, t.optim]
        .into_iter()
        .chain(t.extra.iter().map(|(_, m)| m))
    {
        check_finite(map, &place)?;
    }
    let mut meta = meta.clone();
    meta.files.clear();
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
    let mut written = vec!["model.safetensors"];
    write_safetensors(&dir.join("model.safetensors"), &model)?;
    if !t.optim.is_empty() {
        write_safetensors(&dir.join("optim.safetensors"), t.optim)?;
        written.push("optim.safetensors");
    }
    for (name, tensors) in t.extra {
        write_safetensors(&dir.join(name), tensors)?;
        written.push(*name);
    }
    write_file(&dir.join("tokenizer.json"), t.tokenizer_json.as_bytes())?;
    written.push("tokenizer.json");
    // Hashed as read back from the disk: what a later load will compare against.
    for name in written {
        meta.files
            .insert(name.to_string(), file_sum(&dir.join(name))?);
    }
    let json = serde_json::to_vec_pretty(&meta)
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
    let dst = root.join(&name);
    // On failure the staged folder is removed (dropped) and `latest` is not touched.
    write_files(staged.path(), meta, t).map_err(|e| match e {
        Error::Io { .. } | Error::Checkpoint { .. } => Error::ckpt(
            &dst,
            format!("not written, `latest` still names the previous checkpoint: {e}"),
        ),
        e => e,
    })?;
    staged.publish(&dst)?;
    // `latest` moves only once the checkpoint it names is complete.
    atomic::write_file(&root.join("latest"), name.as_bytes())?;
    prune(&root, &name, keep)?;
    Ok(dst)
}

/// Keep the newest `keep` step checkpoints of a run and the one `latest` names (`current`), as
/// `save` does after each checkpoint: a resume calls it for a run killed after moving `latest`
/// but before removing the oldest, which would otherwise keep one checkpoint too many.
pub fn prune_run(run_dir: &Path, current: &Path, keep: usize) -> Result<()> {
    let Some(name) = current.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    prune(&run_dir.join("checkpoints"), name, keep)
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

/// Load tensors from a safetensors file, naming the file if it is corrupt or holds NaN or Inf.
pub fn load_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let t = candle_core::safetensors::load(path, &crate::runtime::device())
        .map_err(|e| Error::ckpt(path, format!("corrupt or unreadable safetensors: {e}")))?;
    check_finite(&t, path)?;
    Ok(t)
}

/// A safetensors file of a checkpoint directory, verified against its recorded checksum.
fn ck_file(dir: &Path, meta: &CheckpointMeta, name: &str) -> Result<HashMap<String, Tensor>> {
    verify_file(dir, meta, name)?;
    load_safetensors(&dir.join(name))
}

/// Load a checkpoint: an idlm checkpoint or run directory, or a released one (a Hugging Face
/// directory or a Lightning `.ckpt`, read in place with default import options).
pub fn load(path: &Path) -> Result<Checkpoint> {
    if crate::interop::is_released(path) {
        let ck = crate::interop::import(path, &crate::interop::ImportOptions::default())?;
        check_finite(&ck.weights, &ck.dir)?;
        if let Some(e) = &ck.ema {
            check_finite(e, &ck.dir)?;
        }
        return Ok(ck);
    }
    let dir = resolve(path)?;
    let meta = read_meta(&dir)?;
    let all = ck_file(&dir, &meta, "model.safetensors")?;
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
        verify_file(&self.dir, &self.meta, "tokenizer.json")?;
        let p = self.dir.join("tokenizer.json");
        fs::read_to_string(&p).map_err(|e| Error::io("reading", &p, e))
    }

    /// Load the optimizer tensors, if saved.
    pub fn optim(&self) -> Result<HashMap<String, Tensor>> {
        self.safetensors("optim.safetensors")
    }

    /// Load one safetensors file of this checkpoint, checked against the checksum meta.json
    /// recorded for it.
    pub fn safetensors(&self, name: &str) -> Result<HashMap<String, Tensor>> {
        ck_file(&self.dir, &self.meta, name)
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
