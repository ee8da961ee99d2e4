//! Generative perplexity (docs/algorithms.md §6.1, docs/design.md §6) under the SmolLM2 eval model
//! (the default) or GPT-2 ([`super::scorer`]).
//!
//! Texts are retokenised with the eval tokenizer (no BOS added); every token after the first is
//! scored with `nll_i = -ln p(token_i | tokens_<i)`; the weights are the §6.1 mask, non-EOS tokens
//! plus the first EOS; GenPPL = exp(Σ weighted NLL / Σ weights) over all samples together.
//!
//! EOS: SmolLM2-Instruct's GGUF `eos_token_id` is 2 (`<|im_end|>`, the chat turn end), while
//! `<|endoftext|>` is id 0, a control (special) token: SmolLM2's pre-training document separator.
//! Our samples decode their end-of-text token as the text `<|endoftext|>`, which the eval tokenizer
//! maps to id 0, so id 0 plays the role gpt2-large's `<|endoftext|>` plays in the reference: it is
//! the EOS of the mask rule. (With id 2 the rule would never fire on our samples.)
//!
//! Texts longer than the context are scored in windows of `context` tokens that overlap by one
//! token, so that every token after the first is scored exactly once (the reference truncates at
//! 1024 instead; protocol v1 keeps the whole text).
//!
//! [`GenPpl::load`] dequantizes the Q4_1 weights to f32 once (~0.55 GB; ~10x faster on x86 than
//! candle's scalar Q4_1 kernel; perplexities within ~2% of the quantized path).

use std::ops::Range;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::llama::{WeightMode, in_file, target_log_probs};
use super::scorer::{ScorerLm, ScorerSource};
use crate::error::{Error, Result};
use crate::progress::Progress;

/// The protocol's eval context in tokens (the reference's gpt2-large context).
pub const DEFAULT_CONTEXT: usize = 1024;
/// The text whose eval-vocabulary id is the EOS of the mask rule.
pub const EOS_TEXT: &str = "<|endoftext|>";
/// Hidden-state rows per vocabulary projection: bounds the logits buffer (~100 MB at 49152).
const HEAD_ROWS: usize = 512;

/// GenPPL over a set of texts.
#[derive(Debug, Clone, PartialEq)]
pub struct GenPplResult {
    /// exp(nll_sum / tokens).
    pub genppl: f64,
    /// Σ weighted NLL (nats) over all samples.
    pub nll_sum: f64,
    /// Σ weights: the number of scored tokens.
    pub tokens: usize,
    /// Per sample: (Σ weighted NLL, scored tokens).
    pub per_sample: Vec<(f64, usize)>,
}

/// The §6.1 weights of one token sequence: `w_i = i >= 1 && (id_i != eos || (#eos in 0..=i) == 1)`.
pub fn token_weights(ids: &[u32], eos: u32) -> Vec<bool> {
    let mut seen = 0usize;
    ids.iter()
        .enumerate()
        .map(|(i, &t)| {
            if t == eos {
                seen += 1;
            }
            i >= 1 && (t != eos || seen == 1)
        })
        .collect()
}

/// Windows of at most `ctx` tokens covering 0..n, each starting at the previous one's last token,
/// so that positions 1..n are each predicted exactly once. Empty when n < 2.
pub fn windows(n: usize, ctx: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    if n < 2 || ctx < 2 {
        return out;
    }
    let mut start = 0;
    loop {
        let end = (start + ctx).min(n);
        out.push(start..end);
        if end == n {
            return out;
        }
        start = end - 1;
    }
}

/// The GenPPL scorer: the eval LM with its tokenizer, the EOS id of the mask rule, the context.
#[derive(Debug)]
pub struct GenPpl {
    lm: ScorerLm,
    eos_id: u32,
    context: usize,
}

/// One scoring job: a window of one sample.
struct Job {
    sample: usize,
    range: Range<usize>,
}

impl GenPpl {
    /// Load the eval model and tokenizer from a GGUF file (e.g. [`super::models::smollm2_path`]),
    /// weights dequantized to f32 (the fast path on CPU).
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, WeightMode::Dequantized)
    }

    /// [`Self::load`] with the weights held as `mode` says.
    pub fn load_with(path: &Path, mode: WeightMode) -> Result<Self> {
        Self::from_lm(ScorerLm::smollm2(path, mode)?).map_err(|e| in_file(path, e))
    }

    /// GPT-2 from a Hugging Face directory (`--scorer DIR`), on `device`.
    pub fn load_gpt2(dir: &Path, device: &Device) -> Result<Self> {
        Self::from_lm(ScorerLm::gpt2(dir, device)?).map_err(|e| in_file(dir, e))
    }

    /// The scorer `source` names (GPT-2 on `device`; SmolLM2 always on the CPU).
    pub fn open(source: ScorerSource, device: &Device) -> Result<Self> {
        match source {
            ScorerSource::SmolLm2(p) => Self::load(p),
            ScorerSource::Gpt2(d) => Self::load_gpt2(d, device),
        }
    }

    /// Score with `lm`: the EOS of the mask rule is the id of `<|endoftext|>` (else the GGUF's
    /// EOS), the context min(1024, the model's).
    pub fn from_lm(lm: ScorerLm) -> Result<Self> {
        if lm.tokenizer_vocab() > lm.vocab() {
            return Err(Error::EvalModel(format!(
                "tokenizer has {} tokens, the embedding {}",
                lm.tokenizer_vocab(),
                lm.vocab()
            )));
        }
        let eos_id = lm
            .token_to_id(EOS_TEXT)
            .or(lm.fallback_eos())
            .ok_or_else(|| Error::EvalModel(format!("the tokenizer has no {EOS_TEXT} token")))?;
        let context = DEFAULT_CONTEXT.min(lm.context_length());
        Ok(GenPpl {
            lm,
            eos_id,
            context,
        })
    }

    /// Use windows of `context` tokens (2..=the model's training context).
    pub fn with_context(mut self, context: usize) -> Result<Self> {
        let max = self.lm.context_length();
        if !(2..=max).contains(&context) {
            return Err(Error::InvalidArgument(format!(
                "eval context {context} must be in 2..={max}"
            )));
        }
        self.context = context;
        Ok(self)
    }

    /// Use another EOS id for the mask rule.
    pub fn with_eos(mut self, eos: u32) -> Result<Self> {
        let n = self.lm.tokenizer_vocab();
        if eos as usize >= n {
            return Err(Error::InvalidArgument(format!(
                "EOS id {eos} is outside the eval vocabulary of {n}"
            )));
        }
        self.eos_id = eos;
        Ok(self)
    }

    /// The eval model with its tokenizer.
    pub fn lm(&self) -> &ScorerLm {
        &self.lm
    }

    /// Eval-tokenizer ids of `texts` (no BOS).
    pub fn encode_batch(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        self.lm.encode_batch(texts)
    }

    /// The EOS id of the mask rule (SmolLM2: 0, GPT-2: 50256; both `<|endoftext|>`).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Window length in tokens.
    pub fn context(&self) -> usize {
        self.context
    }

    /// GenPPL of `texts`, retokenised with the eval tokenizer, `batch` windows per forward pass.
    /// `progress` gets (windows scored, total windows).
    pub fn score(
        &self,
        texts: &[String],
        batch: usize,
        progress: Option<Progress>,
    ) -> Result<GenPplResult> {
        let ids = self.lm.encode_batch(texts)?;
        self.score_ids(&ids, batch, progress)
    }

    /// GenPPL of sequences already in the eval vocabulary.
    pub fn score_ids(
        &self,
        seqs: &[Vec<u32>],
        batch: usize,
        progress: Option<Progress>,
    ) -> Result<GenPplResult> {
        if batch == 0 {
            return Err(Error::InvalidArgument(
                "GenPPL batch size must be at least 1".into(),
            ));
        }
        let vocab = self.lm.vocab();
        for (i, s) in seqs.iter().enumerate() {
            if let Some(&bad) = s.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::InvalidArgument(format!(
                    "sample {i}: token id {bad} is outside the eval vocabulary of {vocab}"
                )));
            }
        }
        let weights: Vec<Vec<bool>> = seqs.iter().map(|s| token_weights(s, self.eos_id)).collect();
        // Windows with nothing to score are skipped.
        let jobs: Vec<Job> = seqs
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                windows(s.len(), self.context)
                    .into_iter()
                    .map(move |range| Job { sample: i, range })
            })
            .filter(|j| weights[j.sample][j.range.start + 1..j.range.end].contains(&true))
            .collect();
        // Longest first, so each batch pads little.
        let mut order: Vec<usize> = (0..jobs.len()).collect();
        order.sort_by_key(|&j| std::cmp::Reverse(jobs[j].range.len()));
        let mut job_nll = vec![0f64; jobs.len()];
        let mut done = 0;
        for chunk in order.chunks(batch) {
            let part: Vec<&Job> = chunk.iter().map(|&j| &jobs[j]).collect();
            let nll = self.score_batch(&part, seqs, &weights)?;
            for (&j, v) in chunk.iter().zip(nll) {
                job_nll[j] = v;
            }
            done += chunk.len();
            if let Some(p) = progress {
                p(done, jobs.len());
            }
        }
        let mut per_sample = vec![(0f64, 0usize); seqs.len()];
        for (job, nll) in jobs.iter().zip(&job_nll) {
            let w = &weights[job.sample][job.range.start + 1..job.range.end];
            let e = &mut per_sample[job.sample];
            e.0 += nll;
            e.1 += w.iter().filter(|&&x| x).count();
        }
        let nll_sum: f64 = per_sample.iter().map(|p| p.0).sum();
        let tokens: usize = per_sample.iter().map(|p| p.1).sum();
        if tokens == 0 {
            return Err(Error::InvalidArgument(
                "GenPPL: nothing to score (every text has fewer than two eval tokens)".into(),
            ));
        }
        Ok(GenPplResult {
            genppl: (nll_sum / tokens as f64).exp(),
            nll_sum,
            tokens,
            per_sample,
        })
    }

    /// Σ weighted NLL of each job's window, in one right-padded forward pass.
    fn score_batch(
        &self,
        jobs: &[&Job],
        seqs: &[Vec<u32>],
        weights: &[Vec<bool>],
    ) -> Result<Vec<f64>> {
        let t = jobs.iter().map(|j| j.range.len()).max().unwrap_or(0);
        let b = jobs.len();
        let mut ids = vec![self.eos_id; b * t];
        // (hidden row, target, job) of every weighted prediction.
        let mut rows: Vec<u32> = Vec::new();
        let mut targets: Vec<u32> = Vec::new();
        let mut owner: Vec<usize> = Vec::new();
        for (bi, job) in jobs.iter().enumerate() {
            let seq = &seqs[job.sample][job.range.clone()];
            ids[bi * t..bi * t + seq.len()].copy_from_slice(seq);
            let w = &weights[job.sample][job.range.clone()];
            for p in 1..seq.len() {
                if w[p] {
                    rows.push((bi * t + p - 1) as u32);
                    targets.push(seq[p]);
                    owner.push(bi);
                }
            }
        }
        let dev = self.lm.device();
        let ids = Tensor::from_vec(ids, (b, t), dev)?;
        let hidden = self.lm.hidden(&ids)?;
        let d = hidden.dim(2)?;
        let hidden = hidden.reshape((b * t, d))?;
        let mut out = vec![0f64; b];
        for start in (0..rows.len()).step_by(HEAD_ROWS) {
            let end = (start + HEAD_ROWS).min(rows.len());
            let idx = Tensor::from_slice(&rows[start..end], end - start, dev)?;
            let h = hidden.index_select(&idx, 0)?;
            let logits = self.lm.logits(&h)?;
            let lp = target_log_probs(&logits, &targets[start..end])?;
            for (k, v) in lp.into_iter().enumerate() {
                if !v.is_finite() {
                    return Err(Error::EvalModel(format!(
                        "non-finite log-probability {v} from the eval model"
                    )));
                }
                out[owner[start + k]] -= v as f64;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_eos_rule_on_crafted_inputs() {
        let e = 0;
        // Position 0 never counts; non-EOS tokens count; only the first EOS counts.
        assert_eq!(
            token_weights(&[5, 6, e, 7, e, e, 8], e),
            [false, true, true, true, false, false, true]
        );
        // A leading EOS is the first EOS but sits at position 0: later EOS tokens are excluded.
        assert_eq!(token_weights(&[e, 5, e, 6], e), [false, true, false, true]);
        // No EOS: every token after the first.
        assert_eq!(token_weights(&[1, 2, 3], e), [false, true, true]);
        // Trailing EOS padding: the first pad counts, the rest do not.
        assert_eq!(
            token_weights(&[1, 2, e, e, e], e),
            [false, true, true, false, false]
        );
        assert!(token_weights(&[], e).is_empty());
        assert_eq!(token_weights(&[e], e), [false]);
    }

    #[test]
    fn windows_predict_each_position_once() {
        assert!(windows(0, 4).is_empty());
        assert!(windows(1, 4).is_empty());
        assert_eq!(windows(3, 4), vec![0..3]);
        assert_eq!(windows(4, 4), vec![0..4]);
        assert_eq!(windows(5, 4), [0..4, 3..5]);
        assert_eq!(windows(10, 4), [0..4, 3..7, 6..10]);
        for n in 2..40 {
            for ctx in 2..9 {
                let mut predicted = vec![0; n];
                for w in windows(n, ctx) {
                    assert!(w.len() <= ctx && w.len() >= 2, "{n} {ctx} {w:?}");
                    for c in &mut predicted[w.start + 1..w.end] {
                        *c += 1;
                    }
                }
                assert_eq!(predicted[0], 0);
                assert!(predicted[1..].iter().all(|&c| c == 1), "{n} {ctx}");
            }
        }
    }
}
