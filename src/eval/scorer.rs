//! The language models GenPPL can score with: SmolLM2-135M from its GGUF (protocol v1's default)
//! or GPT-2 from a Hugging Face directory (the reference protocol's gpt2-large, `--scorer DIR`).
//! Each brings its tokenizer and what the eval JSON records about it.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::gguf_tokenizer::GgufTokenizer;
use super::gpt2::Gpt2;
use super::gpt2_tokenizer::load_gpt2_tokenizer;
use super::llama::{QLlama, WeightMode, in_file};
use super::models::SMOLLM2;
use crate::error::{Error, Result};

/// Where a scorer's files are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScorerSource<'a> {
    /// The SmolLM2-135M GGUF file.
    SmolLm2(&'a Path),
    /// A Hugging Face GPT-2 directory (config.json, model.safetensors, tokenizer files).
    Gpt2(&'a Path),
}

/// A scoring LM with its tokenizer.
pub enum ScorerLm {
    /// SmolLM2-135M (Llama) with the tokenizer from its GGUF metadata.
    SmolLm2 {
        /// The model.
        model: QLlama,
        /// The GGUF's tokenizer.
        tokenizer: GgufTokenizer,
    },
    /// GPT-2 with its directory's tokenizer.
    Gpt2 {
        /// The model.
        model: Gpt2,
        /// The directory's tokenizer.
        tokenizer: Tokenizer,
        /// The directory it came from (recorded in results).
        dir: PathBuf,
    },
}

impl std::fmt::Debug for ScorerLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScorerLm::SmolLm2 { model, tokenizer } => f
                .debug_struct("SmolLm2")
                .field("config", model.config())
                .field("tokenizer", tokenizer)
                .finish(),
            ScorerLm::Gpt2 { model, dir, .. } => f
                .debug_struct("Gpt2")
                .field("config", model.config())
                .field("dir", dir)
                .finish(),
        }
    }
}

impl ScorerLm {
    /// SmolLM2 from its GGUF, weights held as `mode` says.
    pub fn smollm2(path: &Path, mode: WeightMode) -> Result<Self> {
        let (model, content) = QLlama::load(path, mode)?;
        let tokenizer = GgufTokenizer::from_gguf(&content).map_err(|e| in_file(path, e))?;
        Ok(ScorerLm::SmolLm2 { model, tokenizer })
    }

    /// GPT-2 from the Hugging Face directory `dir`, onto `device`.
    pub fn gpt2(dir: &Path, device: &Device) -> Result<Self> {
        let model = Gpt2::load(dir, device)?;
        let tokenizer = load_gpt2_tokenizer(dir)?;
        Ok(ScorerLm::Gpt2 {
            model,
            tokenizer,
            dir: dir.to_path_buf(),
        })
    }

    /// Load from `source`: SmolLM2 dequantized to f32 on the CPU (as before), GPT-2 on `device`.
    pub fn load(source: ScorerSource, device: &Device) -> Result<Self> {
        match source {
            ScorerSource::SmolLm2(p) => Self::smollm2(p, WeightMode::Dequantized),
            ScorerSource::Gpt2(d) => Self::gpt2(d, device),
        }
    }

    /// Final hidden states (b, t, d) of ids (b, t).
    pub fn hidden(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            ScorerLm::SmolLm2 { model, .. } => model.hidden(ids),
            ScorerLm::Gpt2 { model, .. } => model.hidden(ids),
        }
    }

    /// Logits (..., vocab) of final hidden states (..., d).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match self {
            ScorerLm::SmolLm2 { model, .. } => model.logits(hidden),
            ScorerLm::Gpt2 { model, .. } => model.logits(hidden),
        }
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        match self {
            ScorerLm::SmolLm2 { model, .. } => model.device(),
            ScorerLm::Gpt2 { model, .. } => model.device(),
        }
    }

    /// Rows of the embedding (every id fed must be below it).
    pub fn vocab(&self) -> usize {
        match self {
            ScorerLm::SmolLm2 { model, .. } => model.config().vocab,
            ScorerLm::Gpt2 { model, .. } => model.config().vocab_size,
        }
    }

    /// The longest input in tokens.
    pub fn context_length(&self) -> usize {
        match self {
            ScorerLm::SmolLm2 { model, .. } => model.config().context_length,
            ScorerLm::Gpt2 { model, .. } => model.config().n_positions,
        }
    }

    /// One past the largest id the tokenizer hands out.
    pub fn tokenizer_vocab(&self) -> usize {
        match self {
            ScorerLm::SmolLm2 { tokenizer, .. } => tokenizer.vocab_size(),
            ScorerLm::Gpt2 { tokenizer, .. } => tokenizer
                .get_vocab(true)
                .into_values()
                .max()
                .map_or(0, |m| m as usize + 1),
        }
    }

    /// The id of a token string (special tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match self {
            ScorerLm::SmolLm2 { tokenizer, .. } => tokenizer.token_to_id(token),
            ScorerLm::Gpt2 { tokenizer, .. } => tokenizer.token_to_id(token),
        }
    }

    /// The tokenizer's own EOS, when the EOS text is not a token (SmolLM2 only).
    pub fn fallback_eos(&self) -> Option<u32> {
        match self {
            ScorerLm::SmolLm2 { tokenizer, .. } => Some(tokenizer.eos_id()),
            ScorerLm::Gpt2 { .. } => None,
        }
    }

    /// Token ids of each text, no BOS; special-token text (`<|endoftext|>`) maps to its id.
    pub fn encode_batch(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        match self {
            ScorerLm::SmolLm2 { tokenizer, .. } => tokenizer.encode_batch(texts),
            ScorerLm::Gpt2 { tokenizer, .. } => {
                let inputs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
                let encs = tokenizer
                    .encode_batch(inputs, false)
                    .map_err(|e| Error::Tokenizer(format!("GPT-2 tokenizer: {e}")))?;
                Ok(encs.into_iter().map(|e| e.get_ids().to_vec()).collect())
            }
        }
    }

    /// What the eval JSON's `protocol_params.genppl` records about the scorer: (model, retokenize).
    pub fn describe(&self) -> (String, &'static str) {
        match self {
            ScorerLm::SmolLm2 { .. } => (
                "SmolLM2-135M-Instruct Q4_1 GGUF (weights dequantised to f32)".into(),
                "eval tokenizer from the GGUF, no BOS added",
            ),
            ScorerLm::Gpt2 { model, dir, .. } => {
                let c = model.config();
                (
                    format!(
                        "GPT-2 from {} (n_layer {}, n_embd {}, n_head {}, f32)",
                        dir.display(),
                        c.n_layer,
                        c.n_embd,
                        c.n_head
                    ),
                    "the directory's tokenizer (tokenizer.json, else vocab.json + merges.txt), no BOS added",
                )
            }
        }
    }

    /// The `eval_model_sha256` entry of the scorer: {name: sha256}.
    pub fn sha256_entry(&self) -> Value {
        match self {
            ScorerLm::SmolLm2 { .. } => json!({ "smollm2": SMOLLM2.files[0].sha256 }),
            ScorerLm::Gpt2 { model, .. } => json!({ "gpt2": model.weights_sha256() }),
        }
    }
}
