//! The tokenizer of a released checkpoint and what its special ids mean: BOS = EOS =
//! `<|endoftext|>`, and the last model id is MDLM's `[MASK]` or Duo's `[PAD]`
//! (docs/checkpoints.md, "Released checkpoints").

use std::path::Path;

use serde_json::Value;

use super::omegaconf;
use crate::data::{TextTokenizer, gpt2_bpe};
use crate::process::ProcessKind;
use crate::{Error, Result};

/// GPT-2's model vocabulary in the reference code: 50,257 tokens and `[PAD]` / `[MASK]`.
pub const GPT2_MODEL_VOCAB: usize = 50258;

/// Find the tokenizer: `explicit`, a `tokenizer.json` (or `vocab.json` + `merges.txt`) beside the
/// checkpoint, one pickled inside it, or GPT-2's for a GPT-2-sized model; then check that it fits a
/// model of `vocab` ids.
pub fn resolve_tokenizer(
    path: &Path,
    explicit: Option<&Path>,
    pickled: Option<String>,
    config: &Value,
    vocab: usize,
    kind: ProcessKind,
) -> Result<TextTokenizer> {
    let dir = if path.is_file() {
        path.parent().unwrap_or(Path::new("."))
    } else {
        path
    };
    let name = omegaconf::lookup(config, "tokenizer.name")
        .or_else(|| omegaconf::lookup(config, "data.tokenizer_name_or_path"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let (tok, from) = if let Some(p) = explicit {
        (TextTokenizer::load(p)?, p.display().to_string())
    } else if dir.join("tokenizer.json").is_file() {
        let p = dir.join("tokenizer.json");
        (TextTokenizer::load(&p)?, p.display().to_string())
    } else if dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file() {
        let t = gpt2_bpe::build(&dir.join("vocab.json"), &dir.join("merges.txt"))?;
        (t, format!("{}/vocab.json + merges.txt", dir.display()))
    } else if let Some(json) = pickled {
        (
            TextTokenizer::from_json(&json)?,
            "the tokenizer pickled in the checkpoint's hyper_parameters".to_string(),
        )
    } else if vocab == GPT2_MODEL_VOCAB || name == "gpt2" {
        (
            gpt2_bpe::gpt2_tokenizer(&crate::data::cache_dir())?,
            "GPT-2's BPE".to_string(),
        )
    } else {
        return Err(Error::ckpt(
            path,
            format!(
                "no tokenizer: the model has {vocab} ids and none of tokenizer.json, vocab.json + \
                 merges.txt or a pickled tokenizer is there{}; pass --tokenizer FILE",
                if name.is_empty() {
                    String::new()
                } else {
                    format!(" (the config names {name:?})")
                }
            ),
        ));
    };
    let n = tok.vocab_size();
    // MDLM appends its mask after every token (a [PAD] the tokenizer holds included); Duo draws
    // over all ids, the [PAD] the reference appends to GPT-2 among them.
    let fits = match kind {
        ProcessKind::Mdlm => n + 1 == vocab,
        ProcessKind::Duo => n + 1 == vocab || n == vocab,
    };
    if !fits {
        return Err(Error::ckpt(
            path,
            format!(
                "tokenizer from {from} has {n} tokens, which does not fit a {} model of {vocab} ids \
                 (expected {})",
                match kind {
                    ProcessKind::Mdlm => "MDLM",
                    ProcessKind::Duo => "Duo",
                },
                match kind {
                    ProcessKind::Mdlm => format!("{}", vocab - 1),
                    ProcessKind::Duo => format!("{} or {vocab}", vocab - 1),
                }
            ),
        ));
    }
    Ok(tok)
}
