//! Writing an idlm checkpoint in the mdlm-owt Hugging Face layout (docs/checkpoints.md): a
//! `config.json` with MDLMConfig's keys and a float32 `model.safetensors` with the reference names,
//! so the reference code (`AutoModelForMaskedLM.from_pretrained(DIR, trust_remote_code=True)`,
//! whose `auto_map` points at mdlm-owt's modeling code) loads it unchanged.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use serde_json::json;

use super::layout::{self, INV_FREQ};
use crate::atomic::Staging;
use crate::checkpoint::{BACKBONE, Checkpoint};
use crate::process::ProcessKind;
use crate::{Error, Result};

/// The reference DiT's MLP width multiple (fixed in its code, absent from its config).
pub const REFERENCE_MLP_RATIO: usize = 4;

/// The config.json of `ck` in MDLMConfig's keys, plus `idlm_process` so idlm reads the process back.
pub fn hf_config(ck: &Checkpoint) -> Result<serde_json::Value> {
    let kind = ck.meta.process.diffusion(&ck.dir)?;
    let m = &ck.meta.model;
    Ok(json!({
        "architectures": ["MDLM"],
        "auto_map": {
            "AutoConfig": "kuleshov-group/mdlm-owt--configuration_mdlm.MDLMConfig",
            "AutoModelForMaskedLM": "kuleshov-group/mdlm-owt--modeling_mdlm.MDLM"
        },
        "cond_dim": m.cond_dim,
        "dropout": m.dropout,
        "hidden_dim": m.hidden_size,
        "model_length": m.length,
        "model_type": "mdlm",
        "n_blocks": m.n_blocks,
        "n_heads": m.n_heads,
        "return_dict": false,
        "time_conditioning": m.time_conditioning,
        "torch_dtype": "float32",
        "vocab_size": m.vocab_size,
        "idlm_process": match kind {
            ProcessKind::Mdlm => "mdlm",
            ProcessKind::Duo => "duo",
        },
        "idlm_step": ck.meta.step,
    }))
}

/// Write `ck` (its EMA unless `raw` or absent) to the new folder `out`: config.json,
/// model.safetensors and its tokenizer.json. `out` must not exist; it appears complete or not at all.
pub fn export_hf(ck: &Checkpoint, out: &Path, raw: bool) -> Result<()> {
    if out.exists() {
        return Err(Error::InvalidArgument(format!(
            "{} already exists; export writes a new folder",
            out.display()
        )));
    }
    let m = &ck.meta.model;
    if m.mlp_ratio != REFERENCE_MLP_RATIO {
        return Err(Error::ckpt(
            &ck.dir,
            format!(
                "MLP ratio {} cannot be written in the mdlm-owt layout (the reference DiT's is {REFERENCE_MLP_RATIO})",
                m.mlp_ratio
            ),
        ));
    }
    let config = hf_config(ck)?;
    let w = match (&ck.ema, raw) {
        (Some(e), false) => e,
        _ => &ck.weights,
    };
    layout::check(w, m, &ck.dir)?;
    let mut tensors: HashMap<String, Tensor> = w
        .iter()
        .filter(|(k, _)| k.as_str() != INV_FREQ)
        .map(|(k, v)| (format!("{BACKBONE}.{k}"), v.clone()))
        .collect();
    let head_dim = m.hidden_size / m.n_heads;
    let inv = layout::inv_freq(head_dim);
    let n = inv.len();
    tensors.insert(
        format!("{BACKBONE}.{INV_FREQ}"),
        Tensor::from_vec(inv, n, &crate::runtime::device())?,
    );
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let stage = Staging::new(parent, "export")?;
    candle_core::safetensors::save(&tensors, stage.path().join("model.safetensors"))
        .map_err(|e| Error::ckpt(out.join("model.safetensors"), format!("cannot write: {e}")))?;
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::ckpt(&ck.dir, format!("cannot serialise config.json: {e}")))?;
    crate::atomic::write_file(&stage.path().join("config.json"), text.as_bytes())?;
    crate::atomic::write_file(
        &stage.path().join("tokenizer.json"),
        ck.tokenizer_json()?.as_bytes(),
    )?;
    stage.publish(out)
}
