//! Answering math problems with a model and scoring the answers by execution: the evaluation
//! path of the conditional reproduction and of released TinyGSM checkpoints. Each problem's
//! `[BOS] question SEP` (the model's row layout) is clamped, the answer is read up to the
//! layout's answer end and run by the interpreter; a question too long to leave room for an
//! answer in the model's row is a wrong answer of its own class.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use crate::Result;
use crate::ar::sample::check_prefix;
use crate::ar::{ArBatch, ArSamplerOptions};
use crate::data::TextTokenizer;
use crate::data::pairs::RowLayout;
use crate::nn::{CausalLm, Denoiser};
use crate::process::{ForwardProcess, NoiseRemoval};
use crate::sample::template::{completion_ids, prompt_prefix};
use crate::sample::{Request, SamplerOptions, Template, sample_requests};
use crate::task::{RefNumber, score_text};

/// One problem: its question and reference number.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The question (the clamped prompt).
    pub prompt: String,
    /// The reference number.
    pub number: RefNumber,
    /// The reference as written (for the samples file).
    pub number_text: String,
}

/// One answered problem.
#[derive(Debug, Clone, Serialize)]
pub struct Answered {
    /// Index of the problem.
    pub index: usize,
    /// The question.
    pub prompt: String,
    /// The generated answer (up to the answer's end).
    pub completion: String,
    /// The reference.
    pub number: String,
    /// Outcome class (`correct`, `wrong_number`, `syntax`, `runtime`, `limit`,
    /// `prompt_too_long`).
    pub outcome: &'static str,
    /// Network calls.
    pub nfe: usize,
    /// Seconds attributed to it.
    pub seconds: f64,
}

/// How a model answers: a diffusion denoiser at some steps, or the AR baseline.
pub enum Answerer<'a> {
    /// A diffusion model, greedy tail, `steps` steps.
    Diffusion {
        /// The network.
        model: &'a dyn Denoiser,
        /// Its process.
        process: &'a dyn ForwardProcess,
        /// Sampler settings (steps, noise removal, cache).
        opts: SamplerOptions,
    },
    /// The AR baseline (temperature 0: greedy).
    Ar {
        /// The network.
        model: &'a CausalLm,
        /// Temperature and top-p.
        opts: ArSamplerOptions,
        /// A token never drawn (the MASK id of the shared vocabulary).
        exclude: Option<u32>,
    },
}

/// Sampler settings of a diffusion row: `steps`, the greedy tail, the checkpoint's cache choice.
pub fn greedy(base: &SamplerOptions, steps: usize, batch_size: usize, seed: u64) -> SamplerOptions {
    SamplerOptions {
        steps,
        noise_removal: NoiseRemoval::Greedy,
        batch_size,
        seed,
        ..base.clone()
    }
}

/// Answer every problem (problem i on stream/seed `seed + i`, the same in every row) and score
/// it. `bos` and the prompt / answer `rows`: the model's row markers; `len`: its row length.
pub fn answer_all(
    who: &Answerer,
    problems: &[Problem],
    tok: &TextTokenizer,
    bos: u32,
    rows: &RowLayout,
    len: usize,
) -> Result<Vec<Answered>> {
    let end = rows.answer_end().ok_or_else(|| {
        crate::Error::InvalidArgument(
            "answering problems needs a model of prompt / answer rows; this one was trained on \
             unconditional text"
                .into(),
        )
    })?;
    let mut prefixes = Vec::with_capacity(problems.len());
    for p in problems {
        let prompt = tok.encode(rows.prompt_text(&p.prompt))?;
        let ids = prompt_prefix(bos, prompt, rows.prompt_sep());
        // An answer needs at least the separator that ends it and one token.
        prefixes.push((ids.len() + 2 <= len).then_some(ids));
    }
    let generated: Vec<Option<(Vec<u32>, usize, f64)>> = match who {
        Answerer::Diffusion {
            model,
            process,
            opts,
        } => {
            let fits: Vec<usize> = (0..problems.len())
                .filter(|&i| prefixes[i].is_some())
                .collect();
            let mut requests = Vec::with_capacity(fits.len());
            for &i in &fits {
                let ids = prefixes[i].as_deref().unwrap_or_default();
                requests.push(Request {
                    n: 1,
                    len,
                    opts: SamplerOptions {
                        seed: opts.seed + i as u64,
                        ..opts.clone()
                    },
                    template: Some(Arc::new(Template::prefix(ids, len)?)),
                });
            }
            let out = sample_requests(*model, *process, &requests, opts.batch_size, None)?;
            let mut by_problem = vec![None; problems.len()];
            for (i, mut s) in fits.into_iter().zip(out) {
                by_problem[i] = s.pop().map(|s| (s.ids, s.nfe, s.seconds));
            }
            by_problem
        }
        Answerer::Ar {
            model,
            opts,
            exclude,
        } => {
            let mut by_problem = Vec::with_capacity(problems.len());
            for (i, pre) in prefixes.iter().enumerate() {
                by_problem.push(match pre {
                    None => None,
                    Some(ids) => {
                        let o = ArSamplerOptions {
                            seed: opts.seed + i as u64,
                            batch_size: 1,
                            ..opts.clone()
                        };
                        Some(answer_ar(model, ids, len, end, *exclude, &o)?)
                    }
                });
            }
            by_problem
        }
    };
    let mut out = Vec::with_capacity(problems.len());
    for (i, (p, g)) in problems.iter().zip(generated).enumerate() {
        let (completion, outcome, nfe, seconds) = match (g, &prefixes[i]) {
            (Some((ids, nfe, seconds)), Some(pre)) => {
                let text = tok.decode(completion_ids(&ids, pre.len(), Some(end)))?;
                let outcome = score_text(&text, None, &p.number).class();
                (text, outcome, nfe, seconds)
            }
            _ => (String::new(), "prompt_too_long", 0, 0.0),
        };
        out.push(Answered {
            index: i,
            prompt: p.prompt.clone(),
            completion,
            number: p.number_text.clone(),
            outcome,
            nfe,
            seconds,
        });
    }
    Ok(out)
}

/// One AR answer after the clamped `prefix`, decoded until the id that ends it (or the row is
/// full): (ids, network calls, seconds).
fn answer_ar(
    model: &CausalLm,
    prefix: &[u32],
    len: usize,
    end: u32,
    exclude: Option<u32>,
    opts: &ArSamplerOptions,
) -> Result<(Vec<u32>, usize, f64)> {
    opts.validate()?;
    check_prefix(prefix, len, model.config().vocab_size)?;
    let t0 = Instant::now();
    let mut batch = ArBatch::new(model, 0..1, len, prefix, exclude, opts);
    let mut calls = 0;
    while !batch.is_done() {
        batch.step(model)?;
        calls += 1;
        let s = &batch.seqs()[0];
        if s.len() > prefix.len() && s.last() == Some(&end) {
            break;
        }
    }
    Ok((batch.seqs()[0].clone(), calls, t0.elapsed().as_secs_f64()))
}

/// Accuracy of a set of answers: (correct, n, outcome counts).
pub fn tally(answers: &[Answered]) -> (usize, usize, BTreeMap<&'static str, usize>) {
    let mut outcomes = BTreeMap::new();
    for a in answers {
        *outcomes.entry(a.outcome).or_insert(0) += 1;
    }
    let correct = outcomes.get("correct").copied().unwrap_or(0);
    (correct, answers.len(), outcomes)
}

/// Write the answers as JSONL (one object per problem) for inspection.
pub fn write_answers(path: &Path, answers: &[Answered]) -> Result<()> {
    let mut s = String::new();
    for a in answers {
        s.push_str(&json!(a).to_string());
        s.push('\n');
    }
    crate::atomic::write_file(path, s.as_bytes())
}

/// The problems of a synth-math / GSM8K-style JSONL (`prompt` + `number`, or `question` +
/// GSM8K's `answer` ending in `#### N`), the first `limit`.
pub fn read_problems(path: &Path, limit: usize) -> Result<Vec<Problem>> {
    let lines = crate::task::score::read_json_lines(path)?;
    let mut out = Vec::new();
    for (i, v) in lines.iter().take(limit).enumerate() {
        let bad = || {
            crate::Error::Data(format!(
                "{} line {}: needs \"prompt\" + \"number\" or \"question\" + an \"answer\" \
                 ending in '#### N'",
                path.display(),
                i + 1
            ))
        };
        let prompt = v
            .get("prompt")
            .or_else(|| v.get("question"))
            .and_then(|p| p.as_str())
            .ok_or_else(bad)?;
        let (number, text) = match (v.get("number"), v.get("answer")) {
            (Some(n), _) if !n.is_null() => {
                let t = n.as_str().map_or_else(|| n.to_string(), str::to_string);
                (RefNumber::parse(&t), t)
            }
            (_, Some(a)) => {
                let a = a.as_str().unwrap_or_default();
                let t = a
                    .rsplit("####")
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                (RefNumber::from_gsm8k_solution(a), t)
            }
            _ => (None, String::new()),
        };
        out.push(Problem {
            prompt: prompt.to_string(),
            number: number.ok_or_else(bad)?,
            number_text: text,
        });
    }
    if out.is_empty() {
        return Err(crate::Error::Data(format!(
            "{}: no problems",
            path.display()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::corpus::Document;
    use crate::process::Masked;
    use candle_core::{Device, Tensor};

    /// A denoiser that knows each prompt's row: at every position it puts all its mass on the
    /// row's token (found by the clamped prompt the row starts with).
    struct Oracle {
        rows: Vec<Vec<u32>>,
        prefix: Vec<usize>,
        vocab: usize,
        len: usize,
    }

    impl Denoiser for Oracle {
        fn logits(&self, xt: &Tensor, _: &Tensor, positions: Option<&[u32]>) -> Result<Tensor> {
            let (b, l) = xt.dims2()?;
            let ids = xt.to_vec2::<u32>()?;
            let mut out = Vec::new();
            let all: Vec<u32> = (0..(b * l) as u32).collect();
            for &p in positions.unwrap_or(&all) {
                let (r, j) = (p as usize / l, p as usize % l);
                let row = self
                    .rows
                    .iter()
                    .zip(&self.prefix)
                    .find(|(row, n)| row[..**n] == ids[r][..**n])
                    .map(|(row, _)| row)
                    .expect("an unknown prompt");
                let mut z = vec![-30f32; self.vocab];
                z[row[j] as usize] = 30.0;
                out.extend(z);
            }
            let m = out.len() / self.vocab;
            Ok(Tensor::from_vec(out, (m, self.vocab), &Device::Cpu)?)
        }
        fn time_conditioned(&self) -> bool {
            false
        }
        fn max_len(&self) -> usize {
            self.len
        }
        fn device(&self) -> Device {
            Device::Cpu
        }
    }

    #[test]
    fn an_oracle_scores_every_problem_and_a_wrong_one_none() {
        let texts: Vec<String> = (0..60)
            .map(|i| {
                format!(
                    "Ann has {i} pens and buys {} more. def simple_math_problem() -> int:\n    \
                     a = {i}\n    return a + 3\n",
                    i % 7
                )
            })
            .collect();
        let docs: Vec<Document> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| Document {
                name: format!("d{i}"),
                text: t.clone(),
            })
            .collect();
        let tok = TextTokenizer::train_bpe(&docs, 300).unwrap();
        let (bos, eos, len) = (tok.bos_id(), tok.eos_id(), 64usize);
        let vocab = tok.vocab_size() + 1;
        let problems: Vec<Problem> = (0..5)
            .map(|i| Problem {
                // The trailing space: the TinyGSM layout strips it, ours keeps it.
                prompt: format!("Ann has {i} pens and buys 3 more. "),
                number: RefNumber::parse(&(i + 3).to_string()).unwrap(),
                number_text: (i + 3).to_string(),
            })
            .chain([Problem {
                prompt: "Ann has pens ".repeat(40),
                number: RefNumber::parse("1").unwrap(),
                number_text: "1".into(),
            }])
            .collect();
        // Ours (the separator is EOS, which also ends and pads the answer) and the reference
        // TinyGSM rows (a separator of its own ids, EOS, then [PAD]: here another token).
        let sep2 = tok.encode("\\n").unwrap();
        assert!(!sep2.is_empty() && !sep2.contains(&eos));
        let pad = tok.encode("Ann").unwrap()[0];
        let layouts = [
            (RowLayout::Pairs { sep_id: eos }, eos),
            (
                RowLayout::Separated {
                    sep: sep2,
                    end_id: eos,
                },
                pad,
            ),
        ];
        let oracle = |shift: i64, rows_of: &RowLayout, pad: u32| {
            let mut rows = Vec::new();
            let mut prefix = Vec::new();
            for (i, p) in problems.iter().enumerate().take(5) {
                let q = tok.encode(rows_of.prompt_text(&p.prompt)).unwrap();
                let mut row = prompt_prefix(bos, q, rows_of.prompt_sep());
                prefix.push(row.len());
                let prog = format!(
                    "{}\n    a = {}\n    return a + 3\n",
                    crate::task::PROGRAM_HEADER,
                    i as i64 + shift
                );
                row.extend(tok.encode(&prog).unwrap());
                row.push(eos);
                row.resize(len, pad);
                rows.push(row);
            }
            Oracle {
                rows,
                prefix,
                vocab,
                len,
            }
        };
        let process = Masked::new(vocab, (vocab - 1) as u32).unwrap();
        for ((shift, want), (rows_of, pad)) in [(0, 5), (1, 0)]
            .into_iter()
            .flat_map(|s| layouts.iter().map(move |l| (s, l)))
        {
            let o = oracle(shift, rows_of, *pad);
            let who = Answerer::Diffusion {
                model: &o,
                process: &process,
                opts: greedy(&SamplerOptions::default(), 4, 3, 1),
            };
            let a = answer_all(&who, &problems, &tok, bos, rows_of, len).unwrap();
            let (correct, n, outcomes) = tally(&a);
            assert_eq!((correct, n), (want, 6), "{a:?}");
            assert_eq!(outcomes["prompt_too_long"], 1);
            assert!(a[0].completion.starts_with(crate::task::PROGRAM_HEADER));
            assert!(a[..5].iter().all(|x| x.nfe > 0 && x.nfe <= 4));
            if shift == 1 {
                assert_eq!(outcomes["wrong_number"], 5);
            }
        }
        let stream = answer_all(
            &Answerer::Diffusion {
                model: &oracle(0, &layouts[0].0, eos),
                process: &process,
                opts: greedy(&SamplerOptions::default(), 4, 3, 1),
            },
            &problems,
            &tok,
            bos,
            &RowLayout::Stream,
            len,
        );
        assert!(stream.unwrap_err().to_string().contains("unconditional"));
    }

    #[test]
    fn problems_read_from_synth_math_and_gsm8k_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.jsonl");
        std::fs::write(
            &f,
            "{\"prompt\": \"a\", \"number\": 7}\n{\"question\": \"b\", \"answer\": \"x\\n#### 1,200\"}\n",
        )
        .unwrap();
        let p = read_problems(&f, 10).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].prompt.as_str(), p[0].number_text.as_str()),
            ("a", "7")
        );
        assert_eq!(
            (p[1].prompt.as_str(), p[1].number_text.as_str()),
            ("b", "1,200")
        );
        assert_eq!(read_problems(&f, 1).unwrap().len(), 1);
        std::fs::write(&f, "{\"prompt\": \"a\"}\n").unwrap();
        assert!(
            read_problems(&f, 10)
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
        std::fs::write(&f, "\n").unwrap();
        assert!(
            read_problems(&f, 10)
                .unwrap_err()
                .to_string()
                .contains("no problems")
        );
    }
}
