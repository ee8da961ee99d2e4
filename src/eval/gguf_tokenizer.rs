//! The eval model's tokenizer, rebuilt from GGUF metadata (`tokenizer.ggml.*`) as a
//! `tokenizers::Tokenizer`: byte-level BPE whose pre-tokenizer first splits digits one by one
//! (SmolLM2's HF tokenizer: `Sequence[Digits(individual), ByteLevel(no prefix space, regex)]`),
//! with a byte-level decoder and no BOS.
//!
//! Control tokens (`token_type` 3, e.g. SmolLM2's `<|endoftext|>` = 0, `<|im_start|>` = 1,
//! `<|im_end|>` = 2) become special added tokens, so their text in an input maps to their id.

use std::str::FromStr;

use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::{Map, Value as Json, json};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// GGUF `token_type` of a control (special) token.
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF `token_type` of a user-defined added token.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// A byte-level BPE tokenizer read from a GGUF file's metadata.
#[derive(Clone)]
pub struct GgufTokenizer {
    inner: Tokenizer,
    vocab_size: usize,
    eos_id: u32,
    bos_id: Option<u32>,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("eos_id", &self.eos_id)
            .field("bos_id", &self.bos_id)
            .finish()
    }
}

/// A metadata value, or an error naming the key.
fn meta<'a>(c: &'a Content, key: &str) -> Result<&'a Value> {
    c.metadata
        .get(key)
        .ok_or_else(|| Error::EvalModel(format!("GGUF metadata has no {key}")))
}

/// A metadata array of strings.
fn meta_strings<'a>(c: &'a Content, key: &str) -> Result<Vec<&'a str>> {
    let bad = |e: candle_core::Error| Error::EvalModel(format!("GGUF metadata {key}: {e}"));
    meta(c, key)?
        .to_vec()
        .map_err(bad)?
        .iter()
        .map(|v| v.to_string().map(|s| s.as_str()).map_err(bad))
        .collect()
}

/// A metadata integer as u32.
fn meta_u32(c: &Content, key: &str) -> Result<u32> {
    meta(c, key)?
        .to_u32()
        .map_err(|e| Error::EvalModel(format!("GGUF metadata {key}: {e}")))
}

impl GgufTokenizer {
    /// Build from GGUF metadata; only the GPT-2-style byte-level BPE (`tokenizer.ggml.model` =
    /// "gpt2") is supported.
    pub fn from_gguf(c: &Content) -> Result<Self> {
        let model = meta(c, "tokenizer.ggml.model")?
            .to_string()
            .map_err(|e| Error::EvalModel(format!("GGUF metadata tokenizer.ggml.model: {e}")))?;
        if model != "gpt2" {
            return Err(Error::EvalModel(format!(
                "tokenizer.ggml.model is {model:?}; only byte-level BPE (\"gpt2\") is supported"
            )));
        }
        let tokens = meta_strings(c, "tokenizer.ggml.tokens")?;
        let merges = meta_strings(c, "tokenizer.ggml.merges")?;
        let types: Vec<i32> = match c.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .and_then(|a| a.iter().map(|x| x.to_i32()).collect())
                .map_err(|e| Error::EvalModel(format!("GGUF metadata token_type: {e}")))?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(Error::EvalModel(format!(
                "GGUF has {} tokens but {} token types",
                tokens.len(),
                types.len()
            )));
        }
        let eos_id = meta_u32(c, "tokenizer.ggml.eos_token_id")?;
        let bos_id = meta_u32(c, "tokenizer.ggml.bos_token_id").ok();
        Self::from_parts(&tokens, &types, &merges, eos_id, bos_id)
    }

    /// Build from the vocabulary (id order), GGUF token types, merges ("a b") and the EOS id.
    pub fn from_parts(
        tokens: &[&str],
        types: &[i32],
        merges: &[&str],
        eos_id: u32,
        bos_id: Option<u32>,
    ) -> Result<Self> {
        if tokens.is_empty() || tokens.len() >= u32::MAX as usize {
            return Err(Error::EvalModel(format!(
                "GGUF vocabulary has {} tokens",
                tokens.len()
            )));
        }
        if eos_id as usize >= tokens.len() {
            return Err(Error::EvalModel(format!(
                "EOS id {eos_id} is outside the vocabulary of {}",
                tokens.len()
            )));
        }
        let mut vocab = Map::with_capacity(tokens.len());
        let mut added = Vec::new();
        for (id, tok) in tokens.iter().enumerate() {
            if vocab.insert(tok.to_string(), json!(id)).is_some() {
                return Err(Error::EvalModel(format!(
                    "GGUF vocabulary lists {tok:?} twice"
                )));
            }
            let ty = types.get(id).copied().unwrap_or(1);
            if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
                added.push(json!({
                    "id": id, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": ty == TOKEN_TYPE_CONTROL,
                }));
            }
        }
        let mut pairs = Vec::with_capacity(merges.len());
        for m in merges {
            // Byte-level symbols never contain a space (it is mapped to 'Ġ'), so the first space
            // separates the pair.
            let Some((a, b)) = m.split_once(' ') else {
                return Err(Error::EvalModel(format!("GGUF merge {m:?} is not a pair")));
            };
            pairs.push(json!([a, b]));
        }
        let byte_level = json!({
            "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
        });
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Digits", "individual_digits": true},
                    byte_level,
                ],
            },
            "post_processor": null,
            "decoder": byte_level,
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": Json::Object(vocab), "merges": pairs,
            },
        });
        let inner = Tokenizer::from_str(&doc.to_string())
            .map_err(|e| Error::Tokenizer(format!("building the GGUF tokenizer: {e}")))?;
        Ok(GgufTokenizer {
            inner,
            vocab_size: tokens.len(),
            eos_id,
            bos_id,
        })
    }

    /// The underlying `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// `tokenizer.ggml.eos_token_id` (SmolLM2-Instruct: 2, `<|im_end|>`).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// `tokenizer.ggml.bos_token_id`, if the GGUF has one (never added by [`Self::encode`]).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The id of a token string (special tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token ids of `text`; special-token text (e.g. `<|endoftext|>`) maps to its id; no BOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("eval tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// [`Self::encode`] over many texts (in parallel).
    pub fn encode_batch(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        let inputs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let encs = self
            .inner
            .encode_batch(inputs, false)
            .map_err(|e| Error::Tokenizer(format!("eval tokenizer: {e}")))?;
        Ok(encs.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Text of `ids`, special tokens kept as text.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(format!("eval tokenizer: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: a control token, the byte symbols we need, and two merges.
    fn toy() -> GgufTokenizer {
        let mut tokens = vec!["<|endoftext|>"];
        let syms = [
            "a", "b", "c", "1", "2", "3", "Ġ", "ab", "Ġa", "<", ">", "|", "e", "d", "o", "f", "t",
            "x", "n", "12",
        ];
        tokens.extend(syms);
        let mut types = vec![3];
        types.extend(std::iter::repeat_n(1, syms.len()));
        GgufTokenizer::from_parts(&tokens, &types, &["a b", "Ġ a", "1 2"], 0, None).unwrap()
    }

    #[test]
    fn toy_merges_digits_and_special_tokens() {
        let t = toy();
        let id = |s: &str| t.token_to_id(s).unwrap();
        assert_eq!(t.encode("ab").unwrap(), [id("ab")]);
        assert_eq!(t.encode(" a").unwrap(), [id("Ġa")]);
        // "123" splits into single digits although the merge "1 2" could join them.
        assert_eq!(t.encode("x12").unwrap(), [id("x"), id("1"), id("2")]);
        assert_eq!(t.encode("123").unwrap(), [id("1"), id("2"), id("3")]);
        let ids = t.encode("ab<|endoftext|>c").unwrap();
        assert_eq!(ids, [id("ab"), 0, id("c")]);
        assert_eq!(t.decode(&ids).unwrap(), "ab<|endoftext|>c");
        assert_eq!(
            t.decode(&t.encode(" a ab 12").unwrap()).unwrap(),
            " a ab 12"
        );
    }

    #[test]
    fn bad_metadata_is_an_error() {
        assert!(GgufTokenizer::from_parts(&["a", "a"], &[1, 1], &[], 0, None).is_err());
        assert!(GgufTokenizer::from_parts(&["a"], &[1], &["ab"], 0, None).is_err());
        assert!(GgufTokenizer::from_parts(&["a"], &[1], &[], 5, None).is_err());
    }
}
