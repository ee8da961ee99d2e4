//! The tokenizer of a Hugging Face GPT-2 directory: its `tokenizer.json` when there is one, else
//! the byte-level BPE rebuilt from `vocab.json` + `merges.txt` the way HF's `GPT2Tokenizer` reads
//! them (byte-level pre-tokenizer with GPT-2's regex, no prefix space, byte-level decoder), with
//! `<|endoftext|>` a special token so that its text in an input maps to its id.

use std::path::Path;
use std::str::FromStr;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::genppl::EOS_TEXT;
use crate::error::{Error, Result};

/// A tokenizer error about `path`.
fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{}: {what}", path.display()))
}

/// Load the tokenizer of the GPT-2 directory `dir`.
pub fn load_gpt2_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        let text = std::fs::read_to_string(&json).map_err(|e| Error::io("read", &json, e))?;
        return Tokenizer::from_str(&text).map_err(|e| bad(&json, e));
    }
    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    for p in [&vocab, &merges] {
        if !p.is_file() {
            return Err(bad(
                p,
                "no such file (a GPT-2 directory needs tokenizer.json, or vocab.json and merges.txt)",
            ));
        }
    }
    let to_str = |p: &Path| {
        p.to_str()
            .map(str::to_owned)
            .ok_or_else(|| bad(p, "the path is not UTF-8"))
    };
    let bpe = BPE::from_file(&to_str(&vocab)?, &to_str(&merges)?)
        .build()
        .map_err(|e| bad(dir, format!("vocab.json + merges.txt: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::new(false, true, true)));
    if tok.token_to_id(EOS_TEXT).is_some() {
        tok.add_special_tokens([AddedToken::from(EOS_TEXT, true)])
            .map_err(|e| bad(dir, format!("adding {EOS_TEXT}: {e}")))?;
    }
    Ok(tok)
}
