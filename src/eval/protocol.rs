//! Evaluation protocol idlm-eval-v1 (design.md §6): read a samples JSONL, compute the chosen
//! metrics, and write one JSON that records the protocol, its parameters and the eval models.

use std::path::Path;

use serde_json::{Value, json};

use super::entropy::entropy_stats;
use super::genppl::GenPpl;
use super::models::SMOLLM2;
use crate::sample::Progress;
use crate::{Error, Result};

/// The protocol name written into every result.
pub const PROTOCOL: &str = "idlm-eval-v1";

/// Metrics this build computes.
pub const METRICS: &[&str] = &["genppl", "entropy"];

/// One sample read from a JSONL file.
#[derive(Debug, Clone)]
pub struct SampleRecord {
    /// Decoded text.
    pub text: String,
    /// The generator's own token ids, when the file has them (idlm samples).
    pub ids: Option<Vec<u32>>,
    /// Sampler seed recorded with the sample, if any.
    pub seed: Option<u64>,
}

/// Read a samples file: one JSON object per line with a `text` string and optional `ids`.
pub fn read_samples(path: &Path) -> Result<Vec<SampleRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: &str| Error::Data(format!("{} line {}: {m}", path.display(), i + 1));
        let v: Value = serde_json::from_str(line).map_err(|e| bad(&format!("not JSON: {e}")))?;
        let text = v
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| bad("no \"text\" string"))?
            .to_string();
        let ids = match v.get("ids") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
                    .collect::<Option<Vec<u32>>>()
                    .ok_or_else(|| bad("\"ids\" must be non-negative integers"))?,
            ),
            Some(_) => return Err(bad("\"ids\" must be an array")),
        };
        out.push(SampleRecord {
            text,
            ids,
            seed: v.get("seed").and_then(|s| s.as_u64()),
        });
    }
    if out.is_empty() {
        return Err(Error::Data(format!("{} has no samples", path.display())));
    }
    Ok(out)
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

/// Evaluate `samples` with `metrics`; `genppl_model` is the SmolLM2 GGUF path.
pub fn evaluate(
    samples: &[SampleRecord],
    metrics: &[String],
    genppl_model: Option<&Path>,
    batch: usize,
    progress: Option<Progress>,
) -> Result<Value> {
    let mut out = json!({
        "protocol": PROTOCOL,
        "samples": samples.len(),
        "seeds": samples.iter().filter_map(|s| s.seed).collect::<std::collections::BTreeSet<_>>(),
    });
    let mut params = json!({});
    let has_ids = samples.iter().all(|s| s.ids.is_some());
    let texts: Vec<String> = samples.iter().map(|s| s.text.clone()).collect();
    let scorer = if metrics.iter().any(|m| m == "genppl") || !has_ids {
        let path = genppl_model.ok_or_else(|| {
            Error::EvalModel("the GenPPL model is needed; run `idlm data fetch`".into())
        })?;
        Some(GenPpl::load(path)?)
    } else {
        None
    };
    if metrics.iter().any(|m| m == "genppl") {
        let g = scorer
            .as_ref()
            .ok_or_else(|| Error::EvalModel("GenPPL model not loaded".into()))?;
        let r = g.score(&texts, batch, progress)?;
        out["genppl"] = json!(r.genppl);
        out["genppl_tokens"] = json!(r.tokens);
        params["genppl"] = json!({
            "model": "SmolLM2-135M-Instruct Q4_1 GGUF (weights dequantised to f32)",
            "retokenize": "eval tokenizer from the GGUF, no BOS added",
            "scored": "every token after the first",
            "mask": "non-EOS tokens plus the first EOS",
            "eos_id": g.eos_id(),
            "context": g.context(),
            "aggregate": "exp(sum NLL / count) over all samples",
        });
        out["eval_model_sha256"] = json!({ "smollm2": SMOLLM2.files[0].sha256 });
    }
    if metrics.iter().any(|m| m == "entropy") {
        let (ids, source): (Vec<Vec<u32>>, &str) = if has_ids {
            (
                samples.iter().filter_map(|s| s.ids.clone()).collect(),
                "generator token ids",
            )
        } else {
            let g = scorer
                .as_ref()
                .ok_or_else(|| Error::EvalModel("eval tokenizer not loaded".into()))?;
            (
                g.tokenizer().encode_batch(&texts)?,
                "eval tokenizer ids (the file has no generator ids)",
            )
        };
        let e = entropy_stats(&ids);
        out["entropy"] = json!(e.mean);
        out["entropy_pooled"] = json!(e.pooled);
        params["entropy"] = json!({
            "unit": "nats",
            "per_sample": "unigram entropy of each sample's ids, mean over samples",
            "ids": source,
        });
    }
    out["protocol_params"] = params;
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
            },
            SampleRecord {
                text: "y".into(),
                ids: Some(vec![5, 5, 5, 5]),
                seed: Some(3),
            },
        ];
        let v = evaluate(&s, &["entropy".to_string()], None, 1, None).unwrap();
        assert!((v["entropy"].as_f64().unwrap() - std::f64::consts::LN_2 / 2.0).abs() < 1e-12);
        assert_eq!(v["protocol"], PROTOCOL);
        assert_eq!(v["samples"], 2);
    }
}
