//! Evaluation protocol idlm-eval-v1 (docs/design.md §6): read a samples JSONL, compute the chosen
//! metrics, and write one JSON that records the protocol, its parameters and the eval models.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::entropy::entropy_stats;
use super::genppl::GenPpl;
use super::mauve::{MauveOptions, mauve_of_texts};
use super::minilm::{MAX_TOKENS, MODEL_NAME, MiniLm};
use super::models::MINILM;
use super::scorer::ScorerSource;
use crate::data::DataDir;
use crate::progress::Progress;
pub use crate::sample::record::SampleRecord;
use crate::sample::record::read_jsonl;
use crate::{Error, Result};

/// The protocol name written into every result.
pub const PROTOCOL: &str = "idlm-eval-v1";

/// Metrics this build computes.
/// `accuracy` needs an answers file and is computed by [`crate::task::score_files`] (it reads
/// the samples file itself, for its `prompt` and `prompt_index` keys); [`evaluate_with`] skips it.
pub const METRICS: &[&str] = &["genppl", "entropy", "mauve", "accuracy"];

/// MAUVE's reference texts and a description of where they came from.
#[derive(Debug, Clone)]
pub struct References {
    /// The texts, as many as there are samples.
    pub texts: Vec<String>,
    /// Where they came from (written into the protocol block).
    pub source: Value,
}

/// `n` reference texts from `path`: a prepared data folder (validation rows `floor(i N / n)` of
/// its N, evenly spaced over the split, decoded with the folder's tokenizer the way `idlm sample`
/// decodes samples) or a JSONL with a `text` field (its first `n` lines).
pub fn read_references(path: &Path, n: usize) -> Result<References> {
    if path.is_dir() {
        let data = DataDir::open(path)?;
        let rows = data.valid.n_rows();
        if rows < n {
            return Err(Error::Data(format!(
                "{}: {rows} validation rows, fewer than the {n} samples MAUVE compares them with",
                path.display()
            )));
        }
        let texts = (0..n)
            .map(|i| data.tokenizer.decode(&data.valid.row(i * rows / n)?))
            .collect::<Result<Vec<_>>>()?;
        let source = json!({
            "path": path.display().to_string(),
            "kind": "prepared data folder, validation split",
            "rows": format!("floor(i * {rows} / {n}) for i in 0..{n}"),
            "row_tokens": data.seq_len(),
            "tokenizer_sha256": data.info.tokenizer.sha256,
            "decode": "the data tokenizer, special tokens kept (as idlm sample)",
        });
        return Ok(References { texts, source });
    }
    let recs = read_samples(path)?;
    if recs.len() < n {
        return Err(Error::Data(format!(
            "{}: {} reference texts, fewer than the {n} samples MAUVE compares them with",
            path.display(),
            recs.len()
        )));
    }
    let texts = recs.into_iter().take(n).map(|r| r.text).collect();
    let source = json!({
        "path": path.display().to_string(),
        "kind": "JSONL, text field",
        "rows": format!("the first {n} lines"),
    });
    Ok(References { texts, source })
}

/// What MAUVE needs besides the samples.
pub struct MauveEval<'a> {
    /// The all-MiniLM-L6-v2 folder ([`super::models::minilm_dir`]).
    pub model_dir: PathBuf,
    /// Reference texts, one per sample.
    pub references: References,
    /// MAUVE parameters (defaults: protocol v1).
    pub options: MauveOptions,
    /// Texts per MiniLM forward pass.
    pub batch: usize,
    /// Featurisation progress: (texts done, samples + references).
    pub progress: Option<Progress<'a>>,
}

/// Read a samples file (`idlm sample`, `idlm data heldout`, or any JSONL with a `text` string).
pub fn read_samples(path: &Path) -> Result<Vec<SampleRecord>> {
    read_jsonl(path)
}

/// What a samples file says about how it was made: the keys every record agrees on (method,
/// process, steps, sampler, noise removal, checkpoint, ...) and the mean NFE and seconds per
/// sample, for reports.
pub fn sample_info(records: &[SampleRecord]) -> Result<Value> {
    const SHARED: &[&str] = &[
        "method",
        "process",
        "steps",
        "sampler",
        "noise_removal",
        "checkpoint",
        "checkpoint_step",
        "weights",
        "temperature",
        "top_p",
    ];
    // The records as written, so the keys are those of the file.
    let lines: Vec<Value> = records
        .iter()
        .map(serde_json::to_value)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Data(format!("cannot serialise a sample record: {e}")))?;
    let mut info = serde_json::Map::new();
    if let Some(first) = lines.first() {
        for &k in SHARED {
            if let Some(v) = first.get(k)
                && lines.iter().all(|l| l.get(k) == Some(v))
            {
                info.insert(k.to_string(), v.clone());
            }
        }
    }
    for (k, out) in [("nfe", "nfe_mean"), ("seconds", "seconds_mean")] {
        let xs: Vec<f64> = lines.iter().filter_map(|l| l.get(k)?.as_f64()).collect();
        if !xs.is_empty() && xs.len() == lines.len() {
            info.insert(out.into(), json!(xs.iter().sum::<f64>() / xs.len() as f64));
        }
    }
    Ok(Value::Object(info))
}

/// Check `metrics` names are known.
pub fn parse_metrics(list: &str) -> Result<Vec<String>> {
    let m: Vec<String> = list
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for x in &m {
        if !METRICS.contains(&x.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "unknown metric '{x}' (available: {})",
                METRICS.join(", ")
            )));
        }
    }
    if m.is_empty() {
        return Err(Error::InvalidArgument("no metrics chosen".into()));
    }
    Ok(m)
}

/// Evaluate `samples` with `metrics` other than MAUVE; `genppl_model` is the scorer (SmolLM2's
/// GGUF, or a GPT-2 directory).
pub fn evaluate(
    samples: &[SampleRecord],
    metrics: &[String],
    genppl_model: Option<ScorerSource>,
    batch: usize,
    progress: Option<Progress>,
) -> Result<Value> {
    evaluate_with(samples, metrics, genppl_model, batch, progress, None)
}

/// A metric's value, or an error naming it when it is NaN or infinite: JSON has no NaN (serde
/// writes null), and a results file never holds one silently.
pub fn finite(what: &str, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Error::NonFiniteValue {
            what: what.to_string(),
            value,
        })
    }
}

/// [`evaluate`], with what MAUVE needs when `metrics` has it.
pub fn evaluate_with(
    samples: &[SampleRecord],
    metrics: &[String],
    genppl_model: Option<ScorerSource>,
    batch: usize,
    progress: Option<Progress>,
    mauve: Option<&MauveEval>,
) -> Result<Value> {
    let mut out = json!({
        "protocol": PROTOCOL,
        "samples": samples.len(),
        "seeds": samples.iter().filter_map(|s| s.seed).collect::<std::collections::BTreeSet<_>>(),
    });
    let mut params = json!({});
    let mut timing = json!({});
    let has_ids = samples.iter().all(|s| s.ids.is_some());
    let texts: Vec<String> = samples.iter().map(|s| s.text.clone()).collect();
    let wants = |name: &str| metrics.iter().any(|m| m == name);
    // The eval tokenizer stands in for missing generator ids, which only entropy needs.
    let scorer = if wants("genppl") || (wants("entropy") && !has_ids) {
        let source = genppl_model.ok_or_else(|| {
            Error::EvalModel("the GenPPL model is needed; run `idlm data fetch`".into())
        })?;
        Some(GenPpl::open(source, &crate::runtime::device())?)
    } else {
        None
    };
    if metrics.iter().any(|m| m == "genppl") {
        let g = scorer
            .as_ref()
            .ok_or_else(|| Error::EvalModel("GenPPL model not loaded".into()))?;
        let t0 = std::time::Instant::now();
        let r = g.score(&texts, batch, progress)?;
        let secs = t0.elapsed().as_secs_f64();
        timing["genppl_seconds"] = json!(secs);
        timing["genppl_samples_per_s"] = json!(texts.len() as f64 / secs.max(1e-9));
        out["genppl"] = json!(finite("GenPPL", r.genppl)?);
        out["genppl_tokens"] = json!(r.tokens);
        let (model, retokenize) = g.lm().describe();
        params["genppl"] = json!({
            "model": model,
            "retokenize": retokenize,
            "scored": "every token after the first",
            "mask": "non-EOS tokens plus the first EOS",
            "eos_id": g.eos_id(),
            "context": g.context(),
            "aggregate": "exp(sum NLL / count) over all samples",
        });
        out["eval_model_sha256"] = g.lm().sha256_entry();
    }
    if metrics.iter().any(|m| m == "entropy") {
        let (ids, source): (Vec<Vec<u32>>, &str) = if has_ids {
            (
                samples.iter().filter_map(|s| s.generated_ids()).collect(),
                if samples.iter().any(|s| s.clamped.is_some()) {
                    "generator token ids, clamped (prompt) positions excluded"
                } else {
                    "generator token ids"
                },
            )
        } else {
            let g = scorer
                .as_ref()
                .ok_or_else(|| Error::EvalModel("eval tokenizer not loaded".into()))?;
            (
                g.encode_batch(&texts)?,
                "eval tokenizer ids (the file has no generator ids)",
            )
        };
        let e = entropy_stats(&ids);
        out["entropy"] = json!(finite("entropy", e.mean)?);
        out["entropy_pooled"] = json!(finite("pooled entropy", e.pooled)?);
        params["entropy"] = json!({
            "unit": "nats",
            "per_sample": "unigram entropy of each sample's ids, mean over samples",
            "ids": source,
        });
    }
    if metrics.iter().any(|m| m == "mauve") {
        let m = mauve.ok_or_else(|| {
            Error::InvalidArgument("MAUVE needs reference texts (--reference)".into())
        })?;
        let refs = &m.references.texts;
        if refs.len() != texts.len() {
            return Err(Error::InvalidArgument(format!(
                "MAUVE: {} reference texts for {} samples; the protocol uses as many of each",
                refs.len(),
                texts.len()
            )));
        }
        let model = MiniLm::load(&m.model_dir)?;
        let o = &m.options;
        let t0 = std::time::Instant::now();
        let r = mauve_of_texts(&model, &texts, refs, o, m.batch, m.progress)?;
        let secs = t0.elapsed().as_secs_f64();
        timing["mauve_seconds"] = json!(secs);
        // Features of samples and references; featurisation dominates MAUVE's time.
        timing["mauve_texts_per_s"] = json!((texts.len() + refs.len()) as f64 / secs.max(1e-9));
        out["mauve"] = json!(finite("MAUVE", r.mauve)?);
        out["mauve_frontier_integral"] =
            json!(finite("MAUVE frontier integral", r.frontier_integral)?);
        params["mauve"] = json!({
            "feature_model": format!(
                "{MODEL_NAME}: mean pooling over the attention mask, L2-normalised, at most {MAX_TOKENS} tokens"
            ),
            "feature_model_sha256": MINILM.files[0].sha256,
            "feature_dim": model.dim(),
            "rows": "[samples; references], each L2-normalised",
            "pca_explained_variance": o.explained_variance,
            "pca_components": r.pca_components,
            "kmeans_clusters": r.num_buckets,
            "kmeans_clusters_rule": "max(2, round(min(n_p, n_q) / 10))",
            "kmeans_init": "k-means++, ChaCha8 seeded with seed + 2",
            "kmeans_restarts": o.kmeans_restarts,
            "kmeans_max_iter": o.kmeans_max_iter,
            "divergence_curve_points": o.curve_points,
            "mixture_weights": "linspace(1e-6, 1 - 1e-6), plus the extreme points (1, 0) and (0, 1)",
            "scaling_c": o.scaling,
            "area": "1/2 [AUC(x sorted, y) + AUC(y sorted, x)], trapezoid",
            "seed": o.seed,
            "reference_source": m.references.source,
            "reference_count": refs.len(),
            "sample_count": texts.len(),
        });
        out["eval_model_sha256"]["minilm"] = json!(MINILM.files[0].sha256);
    }
    out["protocol_params"] = params;
    out["timing"] = timing;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_sample_files_and_metrics_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.jsonl");
        std::fs::write(&p, "").unwrap();
        assert!(
            read_samples(&p)
                .unwrap_err()
                .to_string()
                .contains("no samples")
        );
        std::fs::write(&p, "{\"text\": \"a\"}\n{oops\n").unwrap();
        assert!(read_samples(&p).unwrap_err().to_string().contains("line 2"));
        std::fs::write(&p, "{\"ids\": [1]}\n").unwrap();
        assert!(read_samples(&p).unwrap_err().to_string().contains("text"));
        std::fs::write(&p, "{\"text\": \"a\", \"ids\": [1, -2]}\n").unwrap();
        assert!(read_samples(&p).unwrap_err().to_string().contains("ids"));
        assert!(parse_metrics("genppl,bogus").is_err());
        assert_eq!(parse_metrics("entropy").unwrap(), vec!["entropy"]);
    }

    #[test]
    fn entropy_only_needs_no_model() {
        let s = vec![
            SampleRecord {
                text: "x".into(),
                ids: Some(vec![1, 1, 2, 2]),
                seed: Some(3),
                ..Default::default()
            },
            SampleRecord {
                text: "y".into(),
                ids: Some(vec![5, 5, 5, 5]),
                seed: Some(3),
                ..Default::default()
            },
        ];
        let v = evaluate(&s, &["entropy".to_string()], None, 1, None).unwrap();
        assert!((v["entropy"].as_f64().unwrap() - std::f64::consts::LN_2 / 2.0).abs() < 1e-12);
        assert_eq!(v["protocol"], PROTOCOL);
        assert_eq!(v["samples"], 2);
    }
}
