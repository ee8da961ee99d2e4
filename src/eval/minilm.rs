//! all-MiniLM-L6-v2 sentence features for MAUVE (docs/design.md §4): the model's WordPiece
//! `tokenizer.json`, candle-transformers' BERT, mean pooling over the attention mask, L2
//! normalisation; at most 256 tokens ([CLS] and [SEP] included, as sentence-transformers'
//! `max_seq_length`). Texts are batched longest first so each batch pads little.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{Tokenizer, TruncationParams};

use super::models::{FETCH_COMMAND, MINILM, minilm_dir, verify_model_dir};
use crate::error::{Error, Result};
use crate::progress::Progress;

/// Longest input in tokens, special tokens included.
pub const MAX_TOKENS: usize = 256;
/// Texts per forward pass by default.
pub const DEFAULT_BATCH: usize = 32;
/// The feature model's name as recorded in eval results.
pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";

/// The MiniLM sentence encoder.
pub struct MiniLm {
    model: BertModel,
    tokenizer: Tokenizer,
    dim: usize,
    dir: PathBuf,
}

impl std::fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLm")
            .field("dir", &self.dir)
            .field("dim", &self.dim)
            .finish()
    }
}

/// An eval-model error for a file of the MiniLM folder, with the command that repairs it.
fn broken(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::EvalModel(format!(
        "{}: {what}; run `{FETCH_COMMAND}` to fetch all-MiniLM-L6-v2 again",
        path.display()
    ))
}

impl MiniLm {
    /// Load from the cache folder (`idlm data fetch` puts it there).
    pub fn from_cache(cache: &Path) -> Result<Self> {
        Self::load(&minilm_dir(cache)?)
    }

    /// Load from a folder holding `model.safetensors`, `config.json` and `tokenizer.json`, after
    /// checking their pinned sha256 (~0.3 s; a corrupt file would give silently wrong features).
    pub fn load(dir: &Path) -> Result<Self> {
        verify_model_dir(dir, &MINILM).map_err(|e| broken(dir, e))?;
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| broken(&cfg_path, e))?;
        let cfg: BertConfig = serde_json::from_str(&text).map_err(|e| broken(&cfg_path, e))?;
        let w_path = dir.join("model.safetensors");
        let bytes = std::fs::read(&w_path).map_err(|e| broken(&w_path, e))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)
            .map_err(|e| broken(&w_path, e))?;
        let model = BertModel::load(vb, &cfg).map_err(|e| broken(&w_path, e))?;
        let t_path = dir.join("tokenizer.json");
        let t_text = std::fs::read_to_string(&t_path).map_err(|e| broken(&t_path, e))?;
        let mut tokenizer = crate::data::tokenizer::parse_tokenizer_json(&t_text)
            .map_err(|e| broken(&t_path, e))?;
        // The file pads to a fixed 128 and truncates at 128; we pad per batch and keep 256.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| broken(&t_path, e))?;
        Ok(MiniLm {
            model,
            tokenizer,
            dim: cfg.hidden_size,
            dir: dir.to_path_buf(),
        })
    }

    /// Feature dimension (384).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The model folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Token ids of `text` as the encoder sees them: [CLS] ... [SEP], at most [`MAX_TOKENS`].
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode_fast(text, true)
            .map_err(|e| Error::Tokenizer(format!("MiniLM: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// One unit-norm feature row per text, `batch` texts per forward pass; `progress` gets
    /// (texts done, total).
    pub fn embed(
        &self,
        texts: &[String],
        batch: usize,
        progress: Option<Progress>,
    ) -> Result<Vec<Vec<f32>>> {
        if batch == 0 {
            return Err(Error::InvalidArgument(
                "MiniLM batch size must be at least 1".into(),
            ));
        }
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.tokenize(t))
            .collect::<Result<_>>()?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out = vec![Vec::new(); ids.len()];
        let mut done = 0;
        for chunk in order.chunks(batch) {
            let rows: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            for (&i, f) in chunk.iter().zip(self.embed_ids(&rows)?) {
                out[i] = f;
            }
            done += chunk.len();
            if let Some(p) = progress {
                p(done, ids.len());
            }
        }
        Ok(out)
    }

    /// Features of token sequences in one right-padded forward pass.
    fn embed_ids(&self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let b = rows.len();
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; b * t];
        let mut mask = vec![0u32; b * t];
        for (i, r) in rows.iter().enumerate() {
            ids[i * t..i * t + r.len()].copy_from_slice(r);
            mask[i * t..i * t + r.len()].fill(1);
        }
        let dev = &self.model.device;
        let ids = Tensor::from_vec(ids, (b, t), dev)?;
        let mask = Tensor::from_vec(mask, (b, t), dev)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        // Mean over real tokens (padding is masked out of attention but still has outputs).
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&m)?.sum(1)?;
        let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&count)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        let feats = mean.broadcast_div(&norm)?.to_vec2::<f32>()?;
        if let Some(i) = feats.iter().position(|f| f.iter().any(|x| !x.is_finite())) {
            return Err(Error::EvalModel(format!(
                "MiniLM gave a non-finite feature for a batch row {i}"
            )));
        }
        Ok(feats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_corrupt_model_names_the_fetch_command() {
        let cache = tempfile::tempdir().unwrap();
        let e = MiniLm::from_cache(cache.path()).unwrap_err().to_string();
        assert!(e.contains("run `idlm data fetch`"), "{e}");
        // Right sizes, wrong bytes: caught by the hash check.
        let dir = cache.path().join("models").join(MINILM.name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in MINILM.files {
            let file = std::fs::File::create(dir.join(f.name)).unwrap();
            file.set_len(f.size).unwrap();
        }
        let e = MiniLm::from_cache(cache.path()).unwrap_err().to_string();
        assert!(e.contains("sha256 mismatch"), "{e}");
        assert!(e.contains("run `idlm data fetch`"), "{e}");
    }
}
