//! GenPPL with the real SmolLM2-135M eval model (docs/design.md §4 acceptance test).
//!
//! Most of these tests need the model in the cache (`idlm data fetch`): they are `#[ignore]`d so a
//! clone without a network tests on its own, and `.ci/run` runs them after fetching (they fail,
//! never pass silently, when the model is absent).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Tensor;
use candle_core::quantized::gguf_file::Content;
use idlm::data::{cache_dir, shared_data_dir};
use idlm::eval::genppl::{GenPpl, token_weights};
use idlm::eval::gguf_tokenizer::GgufTokenizer;
use idlm::eval::llama::{QLlama, RopeStyle, WeightMode, target_log_probs};
use idlm::eval::models::smollm2_path;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// The cached GGUF.
fn gguf() -> PathBuf {
    smollm2_path(&cache_dir()).unwrap_or_else(|e| {
        panic!("the SmolLM2 eval model is not in the cache: {e} (run `idlm data fetch`)")
    })
}

/// The first `words` words of each of the State-of-the-Union addresses `files`.
fn sotu(files: &[&str], words: usize) -> Vec<String> {
    let mut roots: Vec<PathBuf> = shared_data_dir().into_iter().collect();
    roots.push(cache_dir());
    let dir = roots
        .into_iter()
        .map(|r| r.join("text/sotu"))
        .find(|d| d.is_dir());
    let dir =
        dir.expect("no State-of-the-Union corpus (shared folder or cache): run `idlm data fetch`");
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        let w: Vec<&str> = text.split_whitespace().take(words).collect();
        assert_eq!(w.len(), words, "{f} is shorter than {words} words");
        out.push(w.join(" "));
    }
    out
}

/// The same words in a seeded random order.
fn shuffled(texts: &[String], seed: u64) -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    texts
        .iter()
        .map(|t| {
            let mut w: Vec<&str> = t.split_whitespace().collect();
            w.shuffle(&mut rng);
            w.join(" ")
        })
        .collect()
}

/// The acceptance test: real prose ~35, the same words shuffled ~1000 (docs/design.md §4). The first
/// 1000 words of three addresses, ~1300 eval tokens each, so every text spans two windows.
#[test]
#[ignore = "needs the eval models and corpus in the cache (`idlm data fetch`): run by .ci/run"]
fn real_prose_scores_far_lower_than_shuffled_words() {
    let path = gguf();
    let files = [
        "1861_abraham_lincoln_r.txt",
        "1934_franklin_d_roosevelt_d.txt",
        "2014_barack_obama_d.txt",
    ];
    let real = sotu(&files, 1000);
    let fake = shuffled(&real, 7);
    let m = GenPpl::load(&path).unwrap();
    let t0 = Instant::now();
    let r = m.score(&real, 4, None).unwrap();
    let s = m.score(&fake, 4, None).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let toks = r.tokens + s.tokens;
    eprintln!(
        "SOTU GenPPL {:.2} ({} tokens), shuffled {:.1} ({} tokens); {:.2} s per 1000 tokens",
        r.genppl,
        r.tokens,
        s.genppl,
        s.tokens,
        1000.0 * secs / toks as f64
    );
    assert_eq!(r.per_sample.len(), 3);
    // Longer than the context: scored in overlapping windows.
    assert!(r.per_sample.iter().all(|p| p.1 >= m.context()), "{r:?}");
    assert!(
        r.genppl > 10.0 && r.genppl < 80.0,
        "real prose {}",
        r.genppl
    );
    assert!(s.genppl > 300.0, "shuffled {}", s.genppl);
    assert!(s.genppl > 10.0 * r.genppl);
    // Totals are the sums of the per-sample parts.
    let nll: f64 = r.per_sample.iter().map(|p| p.0).sum();
    assert!((nll - r.nll_sum).abs() < 1e-6 * nll);
    assert_eq!(r.per_sample.iter().map(|p| p.1).sum::<usize>(), r.tokens);
}

/// Perplexity of one token sequence under `model`.
fn ppl(model: &QLlama, ids: &[u32]) -> f64 {
    let x = Tensor::new(ids, model.device())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model.forward(&x).unwrap().squeeze(0).unwrap();
    let n = ids.len() - 1;
    let lp = target_log_probs(&logits.narrow(0, 0, n).unwrap(), &ids[1..]).unwrap();
    (-lp.iter().map(|&v| v as f64).sum::<f64>() / n as f64).exp()
}

/// The interleaved rotary is the one the GGUF weights need (the half-split form is far worse),
/// and the dequantized f32 weights score like the quantized ones.
#[test]
#[ignore = "needs the eval models and corpus in the cache (`idlm data fetch`): run by .ci/run"]
fn gguf_rotary_is_interleaved_and_dequantized_matches_quantized() {
    let path = gguf();
    let text = sotu(&["1934_franklin_d_roosevelt_d.txt"], 150);
    let (mut model, content) = QLlama::load(&path, WeightMode::Dequantized).unwrap();
    let tok = GgufTokenizer::from_gguf(&content).unwrap();
    let ids = tok.encode(&text[0]).unwrap();
    let inter = ppl(&model, &ids);
    model.set_rope_style(RopeStyle::HalfSplit);
    let half = ppl(&model, &ids);
    drop(model);
    let (q, _) = QLlama::load(&path, WeightMode::Quantized).unwrap();
    let t0 = Instant::now();
    let quant = ppl(&q, &ids);
    let qs = t0.elapsed().as_secs_f64();
    eprintln!(
        "rotary: interleaved {inter:.2}, half-split {half:.2}; quantized weights {quant:.2} ({:.1} s per 1000 tokens)",
        1000.0 * qs / ids.len() as f64
    );
    assert!(inter < 80.0, "{inter}");
    assert!(half > 3.0 * inter, "{half} vs {inter}");
    assert!((quant.ln() - inter.ln()).abs() < 0.03, "{quant} vs {inter}");
}

/// Batching, right padding and windowing change nothing but rounding; the first-EOS rule applies
/// to `<|endoftext|>` text, which the eval tokenizer maps to its special id 0.
#[test]
#[ignore = "needs the eval models and corpus in the cache (`idlm data fetch`): run by .ci/run"]
fn batching_windows_and_eos_mask() {
    let path = gguf();
    let m = GenPpl::load(&path).unwrap();
    assert_eq!(m.eos_id(), 0);
    let texts: Vec<String> = [
        "The Congress shall have power to lay and collect taxes.<|endoftext|>We the people<|endoftext|><|endoftext|>",
        "Four score and seven years ago our fathers brought forth on this continent a new nation.",
        "In 1861 there were 34 states.",
        "x",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let ids = m.encode_batch(&texts).unwrap();
    let one = m.score(&texts, 1, None).unwrap();
    let all = m.score(&texts, 4, None).unwrap();
    for (a, b) in one.per_sample.iter().zip(&all.per_sample) {
        assert_eq!(a.1, b.1);
        assert!((a.0 - b.0).abs() < 1e-3 * a.0.max(1.0), "{a:?} {b:?}");
    }
    // Counts follow the mask: sample 0 has three EOS, of which only the first counts.
    let eos: Vec<usize> = (0..ids[0].len()).filter(|&i| ids[0][i] == 0).collect();
    assert_eq!(eos.len(), 3, "{:?}", ids[0]);
    assert_eq!(one.per_sample[0].1, ids[0].len() - 1 - 2);
    assert_eq!(
        one.per_sample[0].1,
        token_weights(&ids[0], 0).iter().filter(|&&w| w).count()
    );
    assert_eq!(one.per_sample[1].1, ids[1].len() - 1);
    // A one-token text scores nothing.
    assert_eq!(ids[3].len(), 1);
    assert_eq!(one.per_sample[3], (0.0, 0));
    // Windows of 8 tokens score the same tokens, with less context.
    let short = GenPpl::load(&path)
        .unwrap()
        .with_context(8)
        .unwrap()
        .score(&texts, 3, None)
        .unwrap();
    assert_eq!(short.tokens, one.tokens);
    assert!(short.genppl > one.genppl);
    // Out-of-vocabulary ids and empty input are errors, not panics.
    assert!(m.score_ids(&[vec![1, 60000]], 1, None).is_err());
    assert!(m.score(&["".to_string()], 1, None).is_err());
    assert!(m.score(&texts, 0, None).is_err());
}

/// The eval tokenizer rebuilt from the GGUF round-trips text and splits digits one by one.
#[test]
#[ignore = "needs the eval models and corpus in the cache (`idlm data fetch`): run by .ci/run"]
fn eval_tokenizer_round_trips_and_splits_digits() {
    let path = gguf();
    let mut f = std::fs::File::open(&path).unwrap();
    let c = Content::read(&mut f).unwrap();
    let t = GgufTokenizer::from_gguf(&c).unwrap();
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!(t.eos_id(), 2);
    assert_eq!(t.token_to_id("<|endoftext|>"), Some(0));
    assert_eq!(t.token_to_id("<|im_end|>"), Some(2));
    for s in [
        "Fellow-Citizens of the Senate and House of Representatives:",
        "  indented\n\ttabs and  double spaces, ünïcödé — “quotes” 日本語 🙂",
        "In 1790 the debt was $75,463,476.52.",
        "<|endoftext|>Next document.",
    ] {
        let ids = t.encode(s).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), s);
    }
    let ids = t.encode("1790").unwrap();
    let pieces: Vec<String> = ids.iter().map(|&i| t.decode(&[i]).unwrap()).collect();
    assert_eq!(pieces, ["1", "7", "9", "0"]);
    let ids = t.encode(" the United States").unwrap();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(t.encode("a<|endoftext|>b").unwrap()[1], 0);
    assert_eq!(t.encode("<|im_end|>").unwrap(), [2]);
}

/// A file that is not a GGUF, or a truncated one, is a clear error naming the file.
#[test]
fn corrupt_model_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"this is not a model").unwrap();
    let e = GenPpl::load(&junk).unwrap_err().to_string();
    assert!(e.contains("junk.gguf"), "{e}");
    let e = GenPpl::load(&dir.path().join("absent.gguf"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.gguf"), "{e}");
}

/// A truncated GGUF is a clear error naming the file.
#[test]
#[ignore = "needs the eval models and corpus in the cache (`idlm data fetch`): run by .ci/run"]
fn truncated_model_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = gguf();
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = GenPpl::load(&cut).unwrap_err().to_string();
    assert!(e.contains("cut.gguf"), "{e}");
    eprintln!("truncated GGUF: {e}");
}
