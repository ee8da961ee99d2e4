//! What `idlm sample` conditions on: nothing, `--prompt`, each line of `--prompts FILE.jsonl`, or an
//! `--infill` template; each becomes one request of -n samples with its row template.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use super::SampleArgs;
use idlm::data::TextTokenizer;
use idlm::data::pairs::RowLayout;
use idlm::sample::Template;
use idlm::sample::record::SampleRecord;
use idlm::sample::template::{completion_ids, parse_infill, prompt_prefix};

/// One conditioning of a request.
pub struct Condition {
    /// The prompt text or infilling template (None: unconditional).
    pub text: Option<String>,
    /// Its line in the `--prompts` file.
    pub index: Option<usize>,
    /// The row: clamped tokens and free positions (None: all free).
    pub template: Option<Arc<Template>>,
    /// Row length.
    pub len: usize,
    /// The answer ends at this id (a pairs model's separator): the completion stops there.
    pub stop: Option<u32>,
}

impl Condition {
    /// Fill the conditioning keys of a sample's record: the prompt, its line, the clamped
    /// positions and, after a prompt prefix, the decoded completion.
    pub fn annotate(&self, r: &mut SampleRecord, tok: &TextTokenizer) -> Result<()> {
        let Some(t) = &self.template else {
            return Ok(());
        };
        r.prompt = self.text.clone();
        r.prompt_index = self.index;
        r.clamped = Some(t.clamped());
        if let (Some(p), Some(ids)) = (t.as_prefix(), &r.ids) {
            r.completion = Some(tok.decode(completion_ids(ids, p.len(), self.stop))?);
        }
        Ok(())
    }
}

/// A sample's record with what every sampler writes: the checkpoint, its step, the weights and
/// the process; the caller adds the sampler's own keys.
pub fn base_record(
    ck: &idlm::checkpoint::Checkpoint,
    raw: bool,
    index: usize,
    ids: &[u32],
    tok: &TextTokenizer,
) -> Result<SampleRecord> {
    Ok(SampleRecord {
        checkpoint: Some(ck.dir.display().to_string()),
        checkpoint_step: Some(ck.meta.step),
        weights: Some(if raw { "raw" } else { "ema" }.into()),
        process: Some(ck.meta.process.name().to_string()),
        ..SampleRecord::new(index, tok.decode(ids)?, Some(ids.to_vec()))
    })
}

/// Read the `"prompt"` strings of a JSONL file (other keys, e.g. an answer, are ignored).
pub fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading prompts {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
        match v.get("prompt").and_then(|p| p.as_str()) {
            Some(p) => out.push(p.to_string()),
            None => bail!(
                "{} line {}: no \"prompt\" string (each line is {{\"prompt\": \"...\"}})",
                path.display(),
                i + 1
            ),
        }
    }
    if out.is_empty() {
        bail!("{} holds no prompts", path.display());
    }
    Ok(out)
}

/// The conditions `a` asks for, with rows of `a.len` or `model_len` tokens starting at `bos`;
/// `infill_ok`: the model can fill holes (diffusion), not only continue a prefix (AR); `rows`: a
/// model trained on prompt/answer rows ends each prompt with its separator (`[BOS] prompt SEP`),
/// and its answer ends at the layout's answer end.
pub fn conditions(
    a: &SampleArgs,
    tok: &TextTokenizer,
    bos: u32,
    model_len: usize,
    infill_ok: bool,
    rows: &RowLayout,
) -> Result<Vec<Condition>> {
    let stop = rows.answer_end();
    let len = a.len.unwrap_or(model_len);
    let encode = |s: &str| -> idlm::Result<Vec<u32>> { tok.encode(s) };
    let prefix = |p: &str| -> Result<Arc<Template>> {
        let ids = prompt_prefix(bos, encode(rows.prompt_text(p))?, rows.prompt_sep());
        Ok(Arc::new(Template::prefix(&ids, len).with_context(
            || format!("prompt {:?}", p.chars().take(60).collect::<String>()),
        )?))
    };
    if let Some(t) = &a.infill {
        if !infill_ok {
            bail!(
                "--infill needs a diffusion model: an AR model only continues a prefix (use \
                 --prompt)"
            );
        }
        let pieces = parse_infill(t)?;
        let tpl = Template::infill(&[bos], &pieces, a.len, encode)?;
        if tpl.len() > model_len {
            bail!(
                "the infill template takes {} tokens, more than the model's length {model_len}",
                tpl.len()
            );
        }
        return Ok(vec![Condition {
            text: Some(t.clone()),
            index: None,
            len: tpl.len(),
            template: Some(Arc::new(tpl)),
            stop: None,
        }]);
    }
    if let Some(p) = &a.prompt {
        return Ok(vec![Condition {
            text: Some(p.clone()),
            index: None,
            template: Some(prefix(p)?),
            len,
            stop,
        }]);
    }
    if let Some(f) = &a.prompts {
        return read_prompts(f)?
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                Ok(Condition {
                    template: Some(
                        prefix(&p).with_context(|| format!("{} prompt {i}", f.display()))?,
                    ),
                    text: Some(p),
                    index: Some(i),
                    len,
                    stop,
                })
            })
            .collect();
    }
    Ok(vec![Condition {
        text: None,
        index: None,
        template: None,
        len,
        stop: None,
    }])
}
