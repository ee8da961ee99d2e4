//! Prompts and infilling in a completions request: `prompt` (and `suffix`, diffusion only)
//! encoded with the model's tokenizer into the row template the engine clamps, as
//! `idlm sample --prompt` / `--infill` do.

use std::sync::Arc;

use super::error::ApiError;
use crate::data::TextTokenizer;
use crate::data::pairs::RowLayout;
use crate::sample::Template;
use crate::sample::template::{completion_ids, prompt_prefix};

/// What a model needs to turn request text into a row template.
#[derive(Clone)]
pub struct PromptCodec {
    tok: Arc<TextTokenizer>,
    bos: u32,
    /// A model trained on prompt/answer rows ends each prompt with its separator, and its answer
    /// stops at the answer's end.
    rows: RowLayout,
    /// The AR baseline only continues a prefix.
    ar: bool,
}

impl std::fmt::Debug for PromptCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptCodec")
            .field("bos", &self.bos)
            .field("rows", &self.rows)
            .field("ar", &self.ar)
            .finish()
    }
}

/// A request's row: its template and how many tokens of it are given.
#[derive(Debug, Clone, PartialEq)]
pub struct Conditioned {
    /// Clamped and free positions of every sequence.
    pub template: Arc<Template>,
    /// Clamped tokens (BOS, prompt, separator, suffix).
    pub prompt_tokens: usize,
    /// The clamped prefix ends here when the rest is generated (a prompt without suffix).
    pub prefix: Option<usize>,
}

impl PromptCodec {
    /// The codec of a model with tokenizer `tok` whose rows start at `bos` and are laid out as
    /// `rows`.
    pub fn new(tok: TextTokenizer, bos: u32, rows: RowLayout, ar: bool) -> Self {
        Self {
            tok: Arc::new(tok),
            bos,
            rows,
            ar,
        }
    }

    fn encode(&self, field: &str, text: &str) -> Result<Vec<u32>, ApiError> {
        self.tok
            .encode(text)
            .map_err(|e| ApiError::field(field, format!("{field} cannot be encoded: {e}")))
    }

    /// The row for `prompt` then `generate` generated tokens then `suffix` (None: as many as the row
    /// of `max_len` leaves). Errors name the field that does not fit.
    pub fn condition(
        &self,
        prompt: &str,
        suffix: &str,
        generate: Option<usize>,
        max_len: usize,
    ) -> Result<Conditioned, ApiError> {
        if !suffix.is_empty() && self.ar {
            return Err(ApiError::field(
                "suffix",
                "an autoregressive model only continues a prompt: leave suffix out",
            ));
        }
        let head = prompt_prefix(
            self.bos,
            self.encode("prompt", self.rows.prompt_text(prompt))?,
            self.rows.prompt_sep(),
        );
        let tail = self.encode("suffix", suffix)?;
        let given = head.len() + tail.len();
        if given >= max_len {
            return Err(ApiError::field(
                if tail.is_empty() { "prompt" } else { "suffix" },
                format!(
                    "the prompt{} takes {given} tokens, which leaves nothing to generate in the \
                     model's rows of {max_len}",
                    if tail.is_empty() { "" } else { " and suffix" }
                ),
            ));
        }
        let room = max_len - given;
        let generate = generate.unwrap_or(room);
        if generate > room {
            return Err(ApiError::field(
                "max_tokens",
                format!(
                    "max_tokens {generate} does not fit: the prompt{} takes {given} of the model's \
                     {max_len} tokens, which leaves {room}",
                    if tail.is_empty() { "" } else { " and suffix" }
                ),
            ));
        }
        let mut fixed: Vec<Option<u32>> = head.iter().map(|&t| Some(t)).collect();
        fixed.extend(std::iter::repeat_n(None, generate));
        fixed.extend(tail.iter().map(|&t| Some(t)));
        Ok(Conditioned {
            template: Arc::new(Template::new(fixed)),
            prompt_tokens: given,
            prefix: tail.is_empty().then_some(head.len()),
        })
    }

    /// The text generated after a prefix prompt (up to a pairs model's separator).
    pub fn completion(&self, ids: &[u32], prefix: usize) -> String {
        self.tok
            .decode(completion_ids(ids, prefix, self.rows.answer_end()))
            .unwrap_or_else(|e| format!("<cannot decode: {e}>"))
    }
}
