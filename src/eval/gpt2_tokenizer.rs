//! The tokenizer of a Hugging Face GPT-2 directory: its `tokenizer.json` when there is one, else
//! the byte-level BPE rebuilt from `vocab.json` + `merges.txt` (`data::gpt2_bpe::build_tokenizer`).

use std::path::Path;

use tokenizers::Tokenizer;

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
        return crate::data::tokenizer::parse_tokenizer_json(&text).map_err(|e| bad(&json, e));
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
    crate::data::gpt2_bpe::build_tokenizer(&vocab, &merges)
}
