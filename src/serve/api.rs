//! The completions API: a request body read field by field (so every refusal names its field, and
//! unknown fields are refused) into validated sampling parameters, and the response bodies in the
//! OpenAI shape with the diffusion extras (`nfe`, `seconds`, `steps`).

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::limits::Limits;
use super::prompt::{Conditioned, PromptCodec};
use crate::process::NoiseRemoval;

/// What the server knows about a model it serves.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Its name in requests (`model`).
    pub name: String,
    /// "mdlm", "duo" or "ar".
    pub process: String,
    /// Longest sequence (the default `max_tokens`).
    pub length: usize,
    /// Default reverse steps (the checkpoint's sampler default; AR: length - 1).
    pub steps: usize,
    /// Default seed (the checkpoint's, as `idlm sample`).
    pub seed: u64,
    /// Default noise removal (diffusion).
    pub noise_removal: NoiseRemoval,
    /// Nucleus mass the model is served with (Duo, AR); None for MDLM.
    pub top_p: Option<f64>,
    /// Checkpoint directory.
    pub checkpoint: String,
    /// Its training step.
    pub checkpoint_step: u64,
    /// Its tokenizer, for prompts (None: prompts are refused).
    #[serde(skip)]
    pub codec: Option<PromptCodec>,
}

impl ModelInfo {
    /// Whether it is the AR baseline.
    pub fn is_ar(&self) -> bool {
        self.process == "ar"
    }
}

/// A validated completions request.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Index of the model in the server's list.
    pub model: usize,
    /// Sequences.
    pub n: usize,
    /// Tokens per sequence.
    pub len: usize,
    /// Reverse steps (diffusion; AR: len - 1, one per token).
    pub steps: usize,
    /// Seed: sequence i uses stream i, as `idlm sample --seed`.
    pub seed: u64,
    /// Final noise removal (diffusion).
    pub noise_removal: NoiseRemoval,
    /// Skip network calls whose output a step cannot use (`sampler`: ancestral_cache).
    pub cache: bool,
    /// Softmax temperature (AR).
    pub temperature: f64,
    /// Nucleus mass (AR).
    pub top_p: f64,
    /// Answer as Server-Sent Events, one per denoising step.
    pub stream: bool,
    /// The prompt / suffix row (None: unconditional).
    pub cond: Option<Conditioned>,
}

const FIELDS: &[&str] = &[
    "model",
    "prompt",
    "suffix",
    "max_tokens",
    "n",
    "seed",
    "temperature",
    "top_p",
    "stream",
    "steps",
    "noise_removal",
    "sampler",
];

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An integer field in lo..=hi (None when absent or null).
fn int(o: &Map<String, Value>, key: &str, lo: u64, hi: u64) -> Result<Option<u64>, ApiError> {
    let range = || ApiError::field(key, format!("{key} must be an integer in {lo}..={hi}"));
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) if (lo..=hi).contains(&u) => Ok(Some(u)),
            (Some(_), _, _) | (None, Some(_), _) => Err(range()),
            (None, None, Some(f)) if f.fract() == 0.0 => Err(range()),
            _ => Err(ApiError::field(
                key,
                format!("{key} must be an integer, got {n}"),
            )),
        },
        Some(v) => Err(ApiError::field(
            key,
            format!("{key} must be an integer, got {}", type_name(v)),
        )),
    }
}

fn float(o: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() => Ok(Some(f)),
            _ => Err(ApiError::field(
                key,
                format!("{key} must be a finite number"),
            )),
        },
        Some(v) => Err(ApiError::field(
            key,
            format!("{key} must be a number, got {}", type_name(v)),
        )),
    }
}

fn string<'a>(o: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(ApiError::field(
            key,
            format!("{key} must be a string, got {}", type_name(v)),
        )),
    }
}

fn boolean(o: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::field(
            key,
            format!("{key} must be true or false, got {}", type_name(v)),
        )),
    }
}

/// Read a completions request body for one of `models` within `limits`.
pub fn parse(body: &[u8], models: &[ModelInfo], limits: &Limits) -> Result<Params, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::field("body", format!("the body is not valid JSON: {e}")))?;
    let o = match v {
        Value::Object(o) => o,
        other => {
            return Err(ApiError::field(
                "body",
                format!("the body must be a JSON object, got {}", type_name(&other)),
            ));
        }
    };
    if let Some(k) = o.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::field(
            k,
            format!("unknown field '{k}'; the fields are {}", FIELDS.join(", ")),
        ));
    }
    let (model, info) = match string(&o, "model")? {
        None => (0, models.first()),
        Some(name) => match models.iter().position(|m| m.name == name) {
            Some(i) => (i, models.get(i)),
            None => {
                let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
                return Err(ApiError::field(
                    "model",
                    format!("no model '{name}': this server has {}", names.join(", ")),
                ));
            }
        },
    };
    let Some(info) = info else {
        return Err(ApiError::field("model", "this server has no model"));
    };
    let max_len = limits.max_tokens.min(info.length);
    let max_tokens = int(&o, "max_tokens", 1, max_len as u64)?.map(|x| x as usize);
    let (prompt, suffix) = (
        string(&o, "prompt")?.unwrap_or(""),
        string(&o, "suffix")?.unwrap_or(""),
    );
    // With a prompt, max_tokens counts generated tokens; without, the whole row.
    let (len, cond) = if prompt.is_empty() && suffix.is_empty() {
        (max_tokens.unwrap_or(max_len), None)
    } else {
        let Some(codec) = &info.codec else {
            return Err(ApiError::field(
                "prompt",
                format!(
                    "model '{}' has no tokenizer to read a prompt with",
                    info.name
                ),
            ));
        };
        let c = codec.condition(prompt, suffix, max_tokens, info.length)?;
        (c.template.len(), Some(c))
    };
    let n = int(&o, "n", 1, limits.max_n as u64)?.map_or(1, |x| x as usize);
    let seed = int(&o, "seed", 0, u64::MAX)?.unwrap_or(info.seed);
    let stream = boolean(&o, "stream")?.unwrap_or(false);
    let mut p = Params {
        model,
        n,
        len,
        steps: 0,
        seed,
        noise_removal: info.noise_removal,
        cache: true,
        temperature: 1.0,
        top_p: info.top_p.unwrap_or(1.0),
        stream,
        cond,
    };
    let top_p = float(&o, "top_p")?;
    if top_p.is_some_and(|t| !(t > 0.0 && t <= 1.0)) {
        return Err(ApiError::field("top_p", "top_p must be in (0, 1]"));
    }
    let temperature = float(&o, "temperature")?;
    let sampler = string(&o, "sampler")?;
    if info.is_ar() {
        for key in ["steps", "noise_removal"] {
            if o.get(key).is_some_and(|v| !v.is_null()) {
                return Err(ApiError::field(
                    key,
                    format!(
                        "model '{}' is autoregressive: it takes one step per token, so {key} \
                         does not apply",
                        info.name
                    ),
                ));
            }
        }
        if sampler.is_some_and(|s| s != "kv_cache") {
            return Err(ApiError::field(
                "sampler",
                "an autoregressive model has one sampler: kv_cache",
            ));
        }
        if let Some(t) = temperature {
            if !(0.0..=100.0).contains(&t) {
                return Err(ApiError::field(
                    "temperature",
                    "temperature must be in 0..=100",
                ));
            }
            p.temperature = t;
        }
        if let Some(t) = top_p {
            p.top_p = t;
        }
        p.steps = len.saturating_sub(1);
        return Ok(p);
    }
    if temperature.is_some_and(|t| t != 1.0) {
        return Err(ApiError::field(
            "temperature",
            "the diffusion sampler has no temperature (leave it out or 1)",
        ));
    }
    if let Some(t) = top_p
        && t != p.top_p
    {
        return Err(ApiError::field(
            "top_p",
            format!(
                "model '{}' is served with top_p {} (idlm serve --top-p); a diffusion request \
                 cannot change it",
                info.name, p.top_p
            ),
        ));
    }
    p.steps = int(&o, "steps", 1, limits.max_steps as u64)?.map_or(info.steps, |x| x as usize);
    if let Some(s) = string(&o, "noise_removal")? {
        p.noise_removal = s.parse().map_err(|_| {
            ApiError::field(
                "noise_removal",
                "noise_removal must be 'ancestral' or 'greedy'",
            )
        })?;
    }
    p.cache = match sampler {
        None | Some("ancestral_cache") => true,
        Some("ancestral") => false,
        Some(_) => {
            return Err(ApiError::field(
                "sampler",
                "sampler must be 'ancestral_cache' or 'ancestral'",
            ));
        }
    };
    Ok(p)
}

/// One finished sequence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    /// Index (random stream) within the request.
    pub index: usize,
    /// Decoded text, as `idlm sample` writes it (the whole row, any prompt included).
    pub text: String,
    /// The text generated after a prompt (None without one, or with a suffix).
    pub completion: Option<String>,
    /// Token ids.
    pub token_ids: Vec<u32>,
    /// Network calls spent on it.
    pub nfe: usize,
    /// Wall-clock seconds attributed to it.
    pub seconds: f64,
}

/// The state of one sequence after a denoising step (an SSE event).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepUpdate {
    /// The sequence's index.
    pub index: usize,
    /// Denoising steps reported for it so far (1, 2, ...).
    pub step: usize,
    /// Network calls spent on it.
    pub nfe: usize,
    /// The text now, "[MASK]" where positions are still masked.
    pub text: String,
    /// Positions still masked.
    pub masked: Vec<u32>,
    /// Positions that changed at this step (revealed, or resampled by a uniform process).
    pub revealed: Vec<u32>,
}

/// Seconds since the Unix epoch (the `created` field).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A whole completion response.
pub fn completion_json(id: &str, model: &str, p: &Params, choices: &[Choice], secs: f64) -> Value {
    let nfe: usize = choices.iter().map(|c| c.nfe).sum();
    let tokens: usize = choices.iter().map(|c| c.token_ids.len()).sum();
    let prompt = p.cond.as_ref().map_or(0, |c| c.prompt_tokens) * choices.len();
    let choices: Vec<Value> = choices
        .iter()
        .map(|c| {
            let mut v = json!({"index": c.index, "text": c.text, "token_ids": c.token_ids,
                               "nfe": c.nfe, "seconds": c.seconds, "logprobs": null,
                               "finish_reason": "length"});
            if let Some(t) = &c.completion {
                v["completion"] = json!(t);
            }
            v
        })
        .collect();
    json!({
        "id": id, "object": "text_completion", "created": unix_now(), "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt, "completion_tokens": tokens - prompt,
                  "total_tokens": tokens,
                  "nfe": nfe, "seconds": secs, "steps": p.steps, "seed": p.seed},
    })
}

/// One step event of a streamed completion.
pub fn step_json(id: &str, model: &str, u: &StepUpdate) -> Value {
    json!({"id": id, "object": "text_completion.step", "created": unix_now(), "model": model,
           "choices": [u]})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> Vec<ModelInfo> {
        let m = ModelInfo {
            name: "teacher".into(),
            process: "mdlm".into(),
            length: 64,
            steps: 16,
            seed: 1,
            noise_removal: NoiseRemoval::Ancestral,
            top_p: None,
            checkpoint: "runs/t".into(),
            checkpoint_step: 8,
            codec: None,
        };
        let ar = ModelInfo {
            name: "ar".into(),
            process: "ar".into(),
            steps: 63,
            top_p: Some(1.0),
            ..m.clone()
        };
        vec![m, ar]
    }

    fn ok(body: &str) -> Params {
        parse(body.as_bytes(), &models(), &Limits::default()).unwrap()
    }

    fn param(body: &str) -> Option<String> {
        parse(body.as_bytes(), &models(), &Limits::default())
            .unwrap_err()
            .param
    }

    #[test]
    fn defaults_are_the_checkpoints_and_fields_are_read() {
        let p = ok("{}");
        assert_eq!((p.model, p.n, p.len, p.steps, p.seed), (0, 1, 64, 16, 1));
        assert!(p.cache && !p.stream);
        let p = ok(
            r#"{"model": "teacher", "prompt": "", "max_tokens": 8, "n": 3, "seed": 9,
                     "steps": 4, "noise_removal": "greedy", "sampler": "ancestral",
                     "stream": true, "temperature": 1, "top_p": 1.0}"#,
        );
        assert_eq!((p.n, p.len, p.steps, p.seed), (3, 8, 4, 9));
        assert_eq!(p.noise_removal, NoiseRemoval::Greedy);
        assert!(!p.cache && p.stream);
        let p = ok(r#"{"model": "ar", "temperature": 0, "top_p": 0.5, "max_tokens": 10}"#);
        assert_eq!((p.model, p.steps, p.temperature, p.top_p), (1, 9, 0.0, 0.5));
    }

    #[test]
    fn refusals_name_their_field() {
        assert_eq!(param("{").as_deref(), Some("body"));
        assert_eq!(param(r#"{"x": 1}"#).as_deref(), Some("x"));
        assert_eq!(param(r#"{"n": 17}"#).as_deref(), Some("n"));
        assert_eq!(
            param(r#"{"max_tokens": 65}"#).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(param(r#"{"steps": 0}"#).as_deref(), Some("steps"));
        assert_eq!(param(r#"{"steps": 4097}"#).as_deref(), Some("steps"));
        assert_eq!(param(r#"{"prompt": "hi"}"#).as_deref(), Some("prompt"));
        assert_eq!(
            param(r#"{"model": "ar", "noise_removal": "greedy"}"#).as_deref(),
            Some("noise_removal")
        );
        assert_eq!(param(r#"{"top_p": 0.9}"#).as_deref(), Some("top_p"));
    }
}
