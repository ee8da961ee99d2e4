//! Reading a released checkpoint as an idlm [`Checkpoint`] (docs/checkpoints.md, "Released
//! checkpoints"): a Hugging Face directory (`config.json` + `model.safetensors`, the mdlm-owt /
//! Duo / IDLM layout or SDTT's OmegaConf config) or a Lightning `.ckpt`. Nothing is executed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde_json::Value;

use super::layout::{self, INV_FREQ};
use super::omegaconf::{self, usize_at};
use super::pickle::{Id, Obj, Pickle};
use super::special::resolve_tokenizer;
use super::torch_zip::TorchFile;
use crate::checkpoint::{Checkpoint, CheckpointMeta, DataInfo, FORMAT_VERSION};
use crate::config::{ModelConfig, RunConfig};
use crate::data::pairs::RowLayout;
use crate::nn::DitConfig;
use crate::process::{ModelFamily, ProcessKind};
use crate::{Error, Result};

/// Which network of a Lightning checkpoint to read (IDLM's hold three).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// `backbone.*`: the trained model (the student of a distillation run).
    #[default]
    Student,
    /// `teacher.*`: the frozen teacher kept by IDLM.
    Teacher,
    /// `fake_model.*`: IDLM's fake denoiser.
    Fake,
}

/// How to read a released checkpoint.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The forward process, when the config does not tell it.
    pub process: Option<ProcessKind>,
    /// A `tokenizer.json` to use instead of the one found beside or inside the checkpoint.
    pub tokenizer: Option<PathBuf>,
    /// Lightning checkpoints: which network.
    pub role: Role,
}

/// Whether `path` is a released checkpoint rather than an idlm checkpoint or run directory.
pub fn is_released(path: &Path) -> bool {
    if path.is_file() {
        return matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("ckpt" | "pt" | "pth")
        );
    }
    path.is_dir()
        && !path.join("meta.json").exists()
        && !path.join("checkpoints").exists()
        && path.join("config.json").is_file()
        && path.join("model.safetensors").is_file()
}

/// Weights and facts read from a released checkpoint, before they become a [`Checkpoint`].
struct Source {
    /// Parameter tensors (names without prefix, rotary buffer possibly included).
    weights: HashMap<String, Tensor>,
    /// The EMA, by parameter name.
    ema: Option<HashMap<String, Tensor>>,
    /// The training config as JSON (HF config, OmegaConf dump or pickled hyper-parameters).
    config: Value,
    /// What the layout was, for messages and meta.
    layout: String,
    /// A tokenizer.json found inside the checkpoint (a pickled Hugging Face tokenizer).
    tokenizer_json: Option<String>,
    /// Optimizer steps, if recorded.
    step: u64,
    /// EMA updates, if recorded.
    ema_updates: u64,
}

/// Read a released checkpoint at `path`.
pub fn import(path: &Path, opts: &ImportOptions) -> Result<Checkpoint> {
    let src = if path.is_file() {
        read_lightning(path, opts.role)?
    } else {
        read_hf_dir(path)?
    };
    finish(path, src, opts)
}

fn to_f32(t: Tensor) -> Result<Tensor> {
    Ok(if t.dtype() == DType::F32 {
        t
    } else {
        t.to_dtype(DType::F32)?
    })
}

/// The one DiT prefix among `names`, or the one `role` asks for.
fn pick_prefix<'a>(
    names: impl Iterator<Item = &'a str>,
    role: Option<Role>,
    origin: &Path,
) -> Result<String> {
    let found = layout::prefixes(names);
    let want = |p: &String| match role {
        None => true,
        Some(Role::Student) => p.starts_with("backbone."),
        Some(Role::Teacher) => p.starts_with("teacher"),
        Some(Role::Fake) => p.starts_with("fake_model"),
    };
    let matching: Vec<&String> = found.iter().filter(|p| want(p)).collect();
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] if found.is_empty() => Err(Error::ckpt(
            origin,
            "no DiT weights: no tensor named *vocab_embed.embedding",
        )),
        [] => Err(Error::ckpt(
            origin,
            format!("no {role:?} network; the file holds DiTs under the prefixes {found:?}"),
        )),
        many => {
            // A role prefix with nested copies (e.g. `backbone.` vs `backbone.backbone.`): the shortest.
            let shortest = many.iter().min_by_key(|p| p.len()).map(|p| (*p).clone());
            match (role, shortest) {
                (Some(_), Some(s)) => Ok(s),
                _ => Err(Error::ckpt(
                    origin,
                    format!("several DiTs under the prefixes {found:?}; which one is ambiguous"),
                )),
            }
        }
    }
}

fn strip(all: HashMap<String, Tensor>, prefix: &str) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (k, v) in all {
        if let Some(n) = k.strip_prefix(prefix) {
            out.insert(n.to_string(), to_f32(v)?);
        }
    }
    Ok(out)
}

fn read_hf_dir(dir: &Path) -> Result<Source> {
    let cfg_path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&cfg_path).map_err(|e| Error::io("reading", &cfg_path, e))?;
    let config: Value = serde_json::from_str(&text)
        .map_err(|e| Error::ckpt(&cfg_path, format!("not JSON: {e}")))?;
    if !config.is_object() {
        return Err(Error::ckpt(&cfg_path, "not a JSON object"));
    }
    let all = crate::checkpoint::load_safetensors(&dir.join("model.safetensors"))?;
    let prefix = pick_prefix(all.keys().map(String::as_str), None, dir)?;
    let layout = if config.get("model").is_some_and(Value::is_object) {
        format!(
            "Hugging Face directory with an OmegaConf training config, tensors under `{prefix}`"
        )
    } else {
        format!("Hugging Face directory (mdlm-owt layout), tensors under `{prefix}`")
    };
    let weights = strip(all, &prefix)?;
    Ok(Source {
        weights,
        ema: None,
        config,
        layout,
        tokenizer_json: None,
        step: 0,
        ema_updates: 0,
    })
}

/// The tensor at pickled `id`, read from the archive.
fn tensor_at(f: &mut TorchFile, id: Id, name: &str) -> Result<Tensor> {
    let r = match f.pickle.get(id) {
        Obj::Tensor(r) => r.clone(),
        _ => return Err(Error::ckpt(f.path(), format!("{name} is not a tensor"))),
    };
    f.tensor(&r, name)
}

fn read_lightning(path: &Path, role: Role) -> Result<Source> {
    let mut f = TorchFile::open(path)?;
    let p = &f.pickle;
    let root = p.root();
    let sd = p
        .dict_get(root, "state_dict")
        .ok_or_else(|| Error::ckpt(path, "no `state_dict` entry: not a Lightning checkpoint"))?;
    let items: Vec<(String, Id)> = p
        .dict_items(sd)
        .ok_or_else(|| Error::ckpt(path, "`state_dict` is not a dict"))?
        .iter()
        .filter_map(|&(k, v)| p.str(k).map(|k| (k.to_string(), v)))
        .collect();
    let prefix = pick_prefix(items.iter().map(|(k, _)| k.as_str()), Some(role), path)?;
    let config = p
        .dict_get(root, "hyper_parameters")
        .and_then(|h| p.dict_get(h, "config"))
        .map(|c| omegaconf::to_json(p, c))
        .transpose()
        .map_err(|e| Error::ckpt(path, e))?
        .unwrap_or(Value::Null);
    let tokenizer_json = p
        .dict_get(root, "hyper_parameters")
        .and_then(|h| pickled_tokenizer(p, h));
    let int_at = |parent: Option<Id>, key: &str| match parent.and_then(|d| p.dict_get(d, key)) {
        Some(i) => match p.get(i) {
            Obj::Int(v) if *v >= 0 => *v as u64,
            _ => 0,
        },
        None => 0,
    };
    let step = int_at(Some(root), "global_step");
    let ema_key = match role {
        Role::Student => Some("ema"),
        Role::Fake => Some("ema_fake"),
        Role::Teacher => None,
    };
    let ema_entry = ema_key.and_then(|k| p.dict_get(root, k));
    let ema_updates = int_at(ema_entry, "num_updates");
    let shadow: Option<Vec<Id>> = ema_entry
        .and_then(|e| p.dict_get(e, "shadow_params"))
        .and_then(|s| p.seq(s).map(<[Id]>::to_vec));
    let mut weights = HashMap::new();
    for (k, id) in &items {
        if let Some(n) = k.strip_prefix(&prefix) {
            weights.insert(n.to_string(), tensor_at(&mut f, *id, k)?);
        }
    }
    let ema = match shadow {
        Some(list) => Some(map_shadow(
            &mut f,
            &list,
            &weights,
            ema_key.unwrap_or("ema"),
        )?),
        None => None,
    };
    Ok(Source {
        weights,
        ema,
        config,
        layout: format!("Lightning checkpoint, network under `{prefix}`"),
        tokenizer_json,
        step,
        ema_updates,
    })
}

/// Name the EMA's unnamed shadow list: it follows `parameters()` order, the layout's order (buffers
/// excluded); every entry must have its parameter's shape.
fn map_shadow(
    f: &mut TorchFile,
    list: &[Id],
    weights: &HashMap<String, Tensor>,
    key: &str,
) -> Result<HashMap<String, Tensor>> {
    let path = f.path().to_path_buf();
    let cfg = arch_from_shapes(weights, None, &path)?;
    let names = layout::parameters(&cfg);
    if list.len() != names.len() {
        return Err(Error::ckpt(
            &path,
            format!(
                "`{key}.shadow_params` has {} tensors, the network has {} parameters",
                list.len(),
                names.len()
            ),
        ));
    }
    let mut out = HashMap::new();
    for (i, (&id, (name, shape))) in list.iter().zip(&names).enumerate() {
        let t = tensor_at(f, id, &format!("{key}.shadow_params[{i}]"))?;
        if t.dims() != shape.as_slice() {
            return Err(Error::ckpt(
                &path,
                format!(
                    "`{key}.shadow_params[{i}]` has shape {:?}, but parameter {i} ({name}) is {shape:?}",
                    t.dims()
                ),
            ));
        }
        out.insert(name.clone(), t);
    }
    Ok(out)
}

/// The `tokenizer.json` of a Hugging Face tokenizer pickled into the hyper-parameters: a
/// `tokenizers.Tokenizer` object keeps its JSON as its state.
fn pickled_tokenizer(p: &Pickle, start: Id) -> Option<String> {
    let mut stack = vec![(start, 0usize)];
    let mut seen = std::collections::HashSet::new();
    while let Some((id, depth)) = stack.pop() {
        if depth > 64 || !seen.insert(id) {
            continue;
        }
        match p.get(id) {
            Obj::Object { class, args, state } => {
                if class == "tokenizers.Tokenizer"
                    && let Some(s) = state
                {
                    match p.get(*s) {
                        Obj::Bytes(b) => return String::from_utf8(b.clone()).ok(),
                        Obj::Str(t) => return Some(t.clone()),
                        _ => {}
                    }
                }
                stack.extend(args.iter().chain(state.iter()).map(|&c| (c, depth + 1)));
            }
            Obj::Dict(items) => stack.extend(items.iter().map(|&(_, v)| (v, depth + 1))),
            Obj::List(v) | Obj::Tuple(v) | Obj::Set(v) => {
                stack.extend(v.iter().map(|&c| (c, depth + 1)))
            }
            _ => {}
        }
    }
    None
}

/// The architecture the tensors imply; `n_heads` from the config, else head dim 64 (every
/// reference size: small 768/12, medium 1024/16, large 1536/24... uses 64).
fn arch_from_shapes(
    w: &HashMap<String, Tensor>,
    n_heads: Option<usize>,
    origin: &Path,
) -> Result<DitConfig> {
    let shapes: HashMap<String, Vec<usize>> = w
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    let [vocab, hidden, cond, blocks, ratio] = layout::sizes_from_shapes(&shapes, origin)?;
    Ok(DitConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        cond_dim: cond,
        n_blocks: blocks,
        n_heads: n_heads.unwrap_or((hidden / 64).max(1)),
        mlp_ratio: ratio,
        length: 1024,
        dropout: 0.0,
        time_conditioning: false,
    })
}

/// The process a config names: `time_conditioning`, `model_type`, or the algorithm's name.
fn process_from_config(c: &Value) -> Option<ProcessKind> {
    let text = |path: &str| {
        omegaconf::lookup(c, path)
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
    };
    if let Some(kind) = c.get("idlm_process").and_then(Value::as_str) {
        return match kind {
            "mdlm" => Some(ProcessKind::Mdlm),
            "duo" => Some(ProcessKind::Duo),
            _ => None,
        };
    }
    for path in [
        "model_type",
        "algo.name",
        "parameterization.name",
        "parameterization",
        "algo.parameterization",
    ] {
        if let Some(t) = text(path) {
            if t.contains("duo") || t.contains("uniform") {
                return Some(ProcessKind::Duo);
            }
            if t.contains("mdlm")
                || t.contains("sdtt")
                || t.contains("subs")
                || t.contains("absorb")
            {
                return Some(ProcessKind::Mdlm);
            }
        }
    }
    None
}

/// The sizes a config states, under its layout's key names.
struct Stated {
    n_heads: Option<usize>,
    length: Option<usize>,
    cond_dim: Option<usize>,
    hidden: Option<usize>,
    blocks: Option<usize>,
    vocab: Option<usize>,
    dropout: Option<f64>,
    time_conditioning: Option<bool>,
}

fn stated(c: &Value) -> Stated {
    let flat = c.get("hidden_dim").is_some();
    let key = |hf: &'static str, omega: &'static str| if flat { hf } else { omega };
    Stated {
        n_heads: usize_at(c, key("n_heads", "model.n_heads")),
        length: usize_at(c, key("model_length", "model.length")),
        cond_dim: usize_at(c, key("cond_dim", "model.cond_dim")),
        hidden: usize_at(c, key("hidden_dim", "model.hidden_size")),
        blocks: usize_at(c, key("n_blocks", "model.n_blocks")),
        vocab: if flat {
            usize_at(c, "vocab_size")
        } else {
            None
        },
        dropout: omegaconf::lookup(c, key("dropout", "model.dropout")).and_then(Value::as_f64),
        // SDTT keeps it at the top level, the Duo / IDLM / s-flm code under `algo`.
        time_conditioning: omegaconf::lookup(c, "time_conditioning")
            .or_else(|| omegaconf::lookup(c, "algo.time_conditioning"))
            .and_then(Value::as_bool),
    }
}

/// The rows a reference config trained on: TinyGSM's prompt / answer rows
/// `[BOS] q SEP a [EOS] [PAD]...` when `data.train` names a GSM set (S-FLM's and IDLM's
/// `tiny_gsm`, S-FLM's `gsm8k_test`), with SEP the config's `data.separator` encoded on its own
/// (docs/research/tinygsm-facts.md §1.3); the stream layout otherwise.
fn row_layout(config: &Value, tok: &crate::data::TextTokenizer, path: &Path) -> Result<RowLayout> {
    let train = omegaconf::lookup(config, "data.train").and_then(Value::as_str);
    if !train.is_some_and(|t| t.to_ascii_lowercase().contains("gsm")) {
        return Ok(RowLayout::Stream);
    }
    let text = omegaconf::lookup(config, "data.separator")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Error::ckpt(
                path,
                format!(
                    "the config trains on {:?} (prompt / answer rows) but states no \
                     data.separator string",
                    train.unwrap_or_default()
                ),
            )
        })?;
    let sep = tok.encode(text)?;
    let end_id = tok.eos_id();
    if sep.is_empty() || sep.contains(&end_id) {
        return Err(Error::ckpt(
            path,
            format!(
                "the config's data.separator {text:?} encodes to {sep:?}, which cannot end a \
                 prompt (empty, or holding the end-of-text id {end_id})"
            ),
        ));
    }
    Ok(RowLayout::Separated { sep, end_id })
}

fn finish(path: &Path, src: Source, opts: &ImportOptions) -> Result<Checkpoint> {
    let s = stated(&src.config);
    let mut cfg = arch_from_shapes(&src.weights, s.n_heads, path)?;
    // A size the config states must be the one the tensors have.
    for (what, said, have) in [
        ("hidden size", s.hidden, cfg.hidden_size),
        ("cond_dim", s.cond_dim, cfg.cond_dim),
        ("n_blocks", s.blocks, cfg.n_blocks),
        ("vocab_size", s.vocab, cfg.vocab_size),
    ] {
        if let Some(v) = said
            && v != have
        {
            return Err(Error::ckpt(
                path,
                format!("config says {what} {v}, the tensors have {have}"),
            ));
        }
    }
    let kind = match (
        opts.process,
        process_from_config(&src.config),
        s.time_conditioning,
    ) {
        (Some(k), _, _) => k,
        (None, Some(k), _) => k,
        (None, None, Some(false)) => ProcessKind::Mdlm,
        _ => {
            return Err(Error::ckpt(
                path,
                "the config does not say whether this is an MDLM or a Duo model: pass --process",
            ));
        }
    };
    cfg.length = s.length.unwrap_or(1024);
    cfg.dropout = s.dropout.filter(|d| (0.0..1.0).contains(d)).unwrap_or(0.0);
    // MDLM zeroes sigma unless told otherwise; Duo is time-conditioned (docs/algorithms.md §3).
    cfg.time_conditioning = s.time_conditioning.unwrap_or(kind == ProcessKind::Duo);
    cfg.validate()
        .map_err(|e| Error::ckpt(path, e.to_string()))?;
    layout::check(&src.weights, &cfg, path)?;
    if let Some(e) = &src.ema {
        layout::check(e, &cfg, path)?;
    }
    let tok = resolve_tokenizer(
        path,
        opts.tokenizer.as_deref(),
        src.tokenizer_json,
        &src.config,
        cfg.vocab_size,
        kind,
    )?;
    let family = ModelFamily::Diffusion(kind);
    let mut config = RunConfig::load("small")?;
    config.model = ModelConfig {
        hidden_size: cfg.hidden_size,
        cond_dim: cfg.cond_dim,
        n_blocks: cfg.n_blocks,
        n_heads: cfg.n_heads,
        mlp_ratio: cfg.mlp_ratio,
        dropout: cfg.dropout,
        time_conditioning: cfg.time_conditioning,
    };
    config.train.process = family;
    // The reference OpenWebText runs (docs/algorithms.md §2.5).
    config.train.ema_decay = 0.9999;
    let data = DataInfo {
        tokenizer_sha256: tok.sha256_hex(),
        vocab_size: cfg.vocab_size,
        // The last id: MDLM's mask, Duo's [PAD] (docs/checkpoints.md).
        mask_id: (cfg.vocab_size - 1) as u32,
        bos_id: tok.bos_id(),
        eos_id: tok.eos_id(),
        seq_len: cfg.length,
        data_dir: String::new(),
        rows: row_layout(&src.config, &tok, path)?,
    };
    let mut weights = src.weights;
    weights.remove(INV_FREQ);
    let meta = CheckpointMeta {
        format_version: FORMAT_VERSION,
        process: family,
        model: cfg,
        config,
        data,
        step: src.step,
        tokens_seen: 0,
        ema_updates: src.ema_updates,
        rng: Value::Null,
        val_nelbo: None,
        train_seconds: 0.0,
        distill: None,
        source: Some(format!("{} ({})", path.display(), src.layout)),
        files: Default::default(),
    };
    Ok(Checkpoint::imported(
        path.to_path_buf(),
        meta,
        weights,
        src.ema,
        tok.to_json().to_string(),
    ))
}
