//! The autoregressive baseline: KV-cache decoding equals the full forward, causal masking, the
//! nucleus, learning a pattern, checkpoint round trip and exact resume, and refusal of the wrong
//! kind of checkpoint.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use idlm::ar::{
    ArObjective, ArSamplerOptions, ArTrainer, ar_nll, draw_next, init_lm, lm_from_checkpoint,
    next_token_probs, sample_ar,
};
use idlm::checkpoint::{self, DataInfo};
use idlm::config::RunConfig;
use idlm::data::{PackedHeader, PackedTokens, PackedWriter};
use idlm::nn::ops::attention::{RotaryAttention, rotary_attention};
use idlm::nn::rotary::Rotary;
use idlm::nn::{CausalLm, CausalLmConfig};
use idlm::train::Trainer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn tiny_cfg(vocab: usize, length: usize) -> CausalLmConfig {
    CausalLmConfig {
        vocab_size: vocab,
        hidden_size: 16,
        n_blocks: 2,
        n_heads: 2,
        mlp_ratio: 4,
        length,
        dropout: 0.0,
    }
}

/// A causal LM with every weight random (the trainer's init zeroes the output layer, which would
/// make all logits equal and every comparison trivial).
fn random_lm(cfg: &CausalLmConfig, seed: u64) -> CausalLm {
    let (varmap, lm) = init_lm(cfg, seed).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<String> = data.keys().cloned().collect();
    names.sort();
    for n in names {
        let v = &data[&n];
        let vals: Vec<f32> = (0..v.elem_count())
            .map(|_| {
                let u = rng.random::<f32>() - 0.5;
                if n.contains("norm") { 1.0 + 0.4 * u } else { u }
            })
            .collect();
        v.set(&Tensor::from_vec(vals, v.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    lm
}

fn random_ids(rng: &mut ChaCha8Rng, n: usize, vocab: u32) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..vocab)).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn kv_cache_logits_equal_full_sequence_logits_at_every_position() {
    let (v, l, b) = (23, 12, 3);
    let lm = random_lm(&tiny_cfg(v, l), 7);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let ids = random_ids(&mut rng, b * l, v as u32);
    let full = lm
        .forward(
            &Tensor::from_slice(&ids, (b, l), &Device::Cpu).unwrap(),
            None,
        )
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let mut cache = lm.new_cache(b);
    for p in 0..l {
        let cur: Vec<u32> = (0..b).map(|r| ids[r * l + p]).collect();
        let step = lm.step(&mut cache, &cur).unwrap().to_vec2::<f32>().unwrap();
        for r in 0..b {
            let d = max_abs_diff(&step[r], &full[r][p]);
            assert!(
                d < 1e-4,
                "row {r} position {p}: cached vs full logits differ by {d}"
            );
        }
    }
    assert_eq!(cache.len(), l);
    // A full cache refuses another token instead of writing past the rotary tables.
    let e = lm.step(&mut cache, &[0, 0, 0]).unwrap_err().to_string();
    assert!(e.contains("full"), "{e}");
    let e = lm.step(&mut lm.new_cache(2), &[0]).unwrap_err().to_string();
    assert!(e.contains("1 tokens fed to a KV cache of 2"), "{e}");
}

#[test]
fn step_many_batches_caches_of_different_lengths_like_separate_steps() {
    // Continuous batching in `idlm serve`: requests that started at different times share one call.
    let (v, l) = (23, 12);
    let lm = random_lm(&tiny_cfg(v, l), 11);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (mut a, mut b) = (lm.new_cache(2), lm.new_cache(1));
    let (mut a_ref, mut b_ref) = (lm.new_cache(2), lm.new_cache(1));
    // `a` starts 3 positions ahead of `b`.
    for _ in 0..3 {
        let t = random_ids(&mut rng, 2, v as u32);
        lm.step(&mut a, &t).unwrap();
        lm.step(&mut a_ref, &t).unwrap();
    }
    for _ in 0..5 {
        let (ta, tb) = (
            random_ids(&mut rng, 2, v as u32),
            random_ids(&mut rng, 1, v as u32),
        );
        let ids: Vec<u32> = ta.iter().chain(&tb).copied().collect();
        let many = lm
            .step_many(&mut [&mut a, &mut b], &ids)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let ra = lm.step(&mut a_ref, &ta).unwrap().to_vec2::<f32>().unwrap();
        let rb = lm.step(&mut b_ref, &tb).unwrap().to_vec2::<f32>().unwrap();
        for (got, want) in many.iter().zip(ra.iter().chain(&rb)) {
            let d = max_abs_diff(got, want);
            assert!(d < 1e-5, "batched vs separate logits differ by {d}");
        }
    }
    assert_eq!((a.len(), b.len()), (8, 5));
    let e = lm
        .step_many(&mut [&mut a, &mut b], &[0, 0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 tokens fed to KV caches of 3"), "{e}");
}

#[test]
fn changing_token_j_leaves_earlier_logits_unchanged() {
    let (v, l) = (19, 10);
    let lm = random_lm(&tiny_cfg(v, l), 3);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let ids = random_ids(&mut rng, l, v as u32);
    let logits = |ids: &[u32]| {
        lm.forward(
            &Tensor::from_slice(ids, (1, l), &Device::Cpu).unwrap(),
            None,
        )
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
    };
    let base = logits(&ids);
    for j in [0, 4, l - 1] {
        let mut alt = ids.clone();
        alt[j] = (alt[j] + 1) % v as u32;
        let changed = logits(&alt);
        for p in 0..l {
            let d = max_abs_diff(&base[p], &changed[p]);
            if p < j {
                assert!(d < 1e-6, "position {p} saw token {j}: diff {d}");
            } else {
                assert!(d > 1e-4, "position {p} ignores token {j}: diff {d}");
            }
        }
    }
}

#[test]
fn composed_causal_attention_matches_the_fused_kernel() {
    let (b, l, h, dh) = (2, 9, 2, 8);
    let qkv = Tensor::randn(0f32, 1.0, (b, l, 3 * h * dh), &Device::Cpu).unwrap();
    let fused = rotary_attention(&qkv, &RotaryAttention::causal(h, dh, l)).unwrap();
    let rot = Rotary::new(dh, l, &Device::Cpu).unwrap();
    let composed =
        idlm::nn::causal_lm::causal_attention_composed(&qkv, &rot, h, b, l, h * dh).unwrap();
    let d = (fused - composed)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-5, "{d}");
}

/// The nucleus as the definition says: most likely tokens (MASK excluded) until the mass reaches p.
fn nucleus(logits: &[f32], temperature: f64, top_p: f64, exclude: usize) -> Vec<bool> {
    let z: Vec<f64> = logits.iter().map(|&x| x as f64 / temperature).collect();
    let m = z
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != exclude)
        .map(|(_, &x)| x)
        .fold(f64::NEG_INFINITY, f64::max);
    let p: Vec<f64> = z
        .iter()
        .enumerate()
        .map(|(i, &x)| if i == exclude { 0.0 } else { (x - m).exp() })
        .collect();
    let total: f64 = p.iter().sum();
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    let mut inside = vec![false; p.len()];
    let mut cum = 0.0;
    for i in order {
        inside[i] = true;
        cum += p[i] / total;
        if cum >= top_p {
            break;
        }
    }
    inside
}

#[test]
fn top_p_draws_never_leave_the_nucleus() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let logits: Vec<f32> = (0..50).map(|_| 3.0 * rng.random::<f32>()).collect();
    let opts = ArSamplerOptions {
        temperature: 0.8,
        top_p: 0.7,
        ..Default::default()
    };
    let inside = nucleus(&logits, 0.8, 0.7, 3);
    let kept = next_token_probs(&logits, 0.8, 0.7, Some(3));
    for (i, &k) in kept.iter().enumerate() {
        assert_eq!(k > 0.0, inside[i], "token {i}");
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3000 {
        let t = draw_next(&logits, &opts, Some(3), &mut rng) as usize;
        assert!(inside[t], "drew {t} outside the nucleus");
        seen.insert(t);
    }
    assert!(seen.len() > 1);
    // Without truncation the excluded id (MASK) is still never drawn; temperature 0 is argmax.
    let mut flat = vec![0f32; 8];
    flat[5] = 10.0;
    let all = ArSamplerOptions::default();
    for _ in 0..200 {
        assert_ne!(draw_next(&flat, &all, Some(5), &mut rng), 5);
    }
    let greedy = ArSamplerOptions {
        temperature: 0.0,
        ..Default::default()
    };
    assert_eq!(draw_next(&logits, &greedy, Some(3), &mut rng) as usize, {
        let mut best = 0;
        for i in 0..logits.len() {
            if i != 3 && logits[i] > logits[best] {
                best = i;
            }
        }
        best
    });
}

#[test]
fn sampler_draws_stay_in_the_model_nucleus_and_ignore_batching() {
    let (v, l) = (23, 12);
    let lm = random_lm(&tiny_cfg(v, l), 11);
    let mask = (v - 1) as u32;
    let opts = |batch_size| ArSamplerOptions {
        temperature: 0.9,
        top_p: 0.5,
        batch_size,
        seed: 3,
    };
    let s = sample_ar(&lm, 5, l, &[0], Some(mask), &opts(2), None).unwrap();
    let s1 = sample_ar(&lm, 5, l, &[0], Some(mask), &opts(5), None).unwrap();
    for (a, b) in s.iter().zip(&s1) {
        assert_eq!(a.ids, b.ids, "sample {} depends on the batching", a.index);
        assert_eq!((a.ids.len(), a.ids[0], a.nfe), (l, 0, l - 1));
    }
    for smp in &s {
        let full = lm
            .forward(
                &Tensor::from_slice(&smp.ids, (1, l), &Device::Cpu).unwrap(),
                None,
            )
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (p, logits) in full.iter().take(l - 1).enumerate() {
            // A hair of slack for the 1e-6 difference between cached and full logits.
            let inside = nucleus(logits, 0.9, 0.5 + 1e-4, mask as usize);
            let t = smp.ids[p + 1] as usize;
            assert!(
                inside[t],
                "sample {} position {}: {t} outside",
                smp.index,
                p + 1
            );
        }
    }
}

/// Rows `[BOS, c1, c2, ...]` cycling 1..=5 from a random start: the only uncertainty is c1.
fn pattern_data(path: &Path, n: usize, l: usize) -> PackedTokens {
    let header = PackedHeader::new(7, 6, 0, 0, l as u32, [0u8; 32]);
    let mut w = PackedWriter::create(path, header).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for _ in 0..n {
        let s = rng.random_range(0..5u32);
        let row: Vec<u32> = (0..l as u32)
            .map(|k| if k == 0 { 0 } else { (s + k - 1) % 5 + 1 })
            .collect();
        w.push_row(&row).unwrap();
    }
    w.finish().unwrap();
    PackedTokens::open(path).unwrap()
}

fn ar_cfg(extra: &[&str]) -> RunConfig {
    let mut sets: Vec<String> = vec![
        "train.process=ar".into(),
        "train.batch_size=16".into(),
        "train.lr=3e-3".into(),
        "train.warmup_steps=10".into(),
        "train.ema_decay=0.9".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    RunConfig::load("tiny")
        .unwrap()
        .with_overrides(&sets)
        .unwrap()
}

#[test]
fn tiny_ar_model_learns_a_repeated_pattern() {
    idlm::runtime::tune_malloc();
    let tmp = tempfile::tempdir().unwrap();
    let l = 16;
    let data = pattern_data(&tmp.path().join("p.bin"), 256, l);
    let cfg = ar_cfg(&[]);
    let mut tr = ArTrainer::new(&cfg, &cfg.model.dit(7, l)).unwrap();
    let obj = ArObjective {
        mask_id: 6,
        layout: Default::default(),
    };
    let mut last = Vec::new();
    for _ in 0..300 {
        last.push(obj.step(&mut tr, &data).unwrap().loss);
    }
    // The floor is the entropy of c1 spread over the 15 predicted tokens: ln 5 / 15.
    let floor = 5f64.ln() / (l - 1) as f64;
    let tail = last[last.len() - 20..].iter().sum::<f64>() / 20.0;
    assert!(tail < floor + 0.03, "loss {tail} vs floor {floor}");
    let s = ar_nll(&tr.model, &data, &Default::default(), 64, 16, 6).unwrap();
    assert!(s.nll < floor + 0.03 && (s.perplexity - s.nll.exp()).abs() < 1e-9);
    assert_eq!(s.tokens, 64 * (l as u64 - 1));
    let greedy = ArSamplerOptions {
        temperature: 0.0,
        ..Default::default()
    };
    for smp in sample_ar(&tr.model, 4, l, &[0], Some(6), &greedy, None).unwrap() {
        for k in 1..l - 1 {
            assert_eq!(smp.ids[k + 1], smp.ids[k] % 5 + 1, "{:?}", smp.ids);
        }
    }
}

fn data_info(l: usize) -> DataInfo {
    DataInfo {
        tokenizer_sha256: "00".repeat(32),
        vocab_size: 7,
        mask_id: 6,
        bos_id: 0,
        eos_id: 0,
        seq_len: l,
        data_dir: "synthetic".into(),
        rows: Default::default(),
    }
}

fn logits_of(lm: &CausalLm, l: usize) -> Vec<f32> {
    let ids: Vec<u32> = (0..l as u32).map(|k| k % 6).collect();
    lm.forward(
        &Tensor::from_slice(&ids, (1, l), &Device::Cpu).unwrap(),
        None,
    )
    .unwrap()
    .flatten_all()
    .unwrap()
    .to_vec1::<f32>()
    .unwrap()
}

#[test]
fn checkpoint_round_trip_exact_resume_and_wrong_kind_errors() {
    idlm::runtime::tune_malloc();
    let tmp = tempfile::tempdir().unwrap();
    let l = 16;
    let data = pattern_data(&tmp.path().join("p.bin"), 64, l);
    let cfg = ar_cfg(&["model.dropout=0.1", "train.grad_accum=2"]);
    let arch = cfg.model.dit(7, l);
    let mut a = ArTrainer::new(&cfg, &arch).unwrap();
    let obj = ArObjective {
        mask_id: 6,
        layout: Default::default(),
    };
    for _ in 0..3 {
        obj.step(&mut a, &data).unwrap();
    }
    let run = tmp.path().join("ar");
    a.save(&run, &data_info(l), "{}", Some(1.5)).unwrap();
    let ck = checkpoint::load(&run).unwrap();
    assert_eq!(ck.meta.process, idlm::process::ModelFamily::Ar);
    assert_eq!((ck.meta.step, ck.meta.val_nelbo), (3, Some(1.5)));
    let raw = lm_from_checkpoint(&ck, false).unwrap();
    assert_eq!(logits_of(&raw, l), logits_of(&a.model, l));
    let ema = lm_from_checkpoint(&ck, true).unwrap();
    assert_eq!(logits_of(&ema, l), logits_of(&a.ema_model().unwrap(), l));
    // Exact resume: the next losses equal the uninterrupted run's (data order, dropout, AdamW).
    let mut b = ArTrainer::from_checkpoint(&ck, &cfg).unwrap();
    for _ in 0..2 {
        assert_eq!(
            obj.step(&mut a, &data).unwrap().loss,
            obj.step(&mut b, &data).unwrap().loss
        );
    }
    // The wrong kind of checkpoint gives a clear error either way.
    let e = ck.dit(true).err().unwrap().to_string();
    assert!(e.contains("autoregressive model"), "{e}");
    let dcfg = RunConfig::load("tiny").unwrap();
    let dit = Trainer::new(&dcfg, &dcfg.model.dit(7, l)).unwrap();
    let drun = tmp.path().join("dit");
    dit.save(&drun, &data_info(l), "{}", None).unwrap();
    let dck = checkpoint::load(&drun).unwrap();
    let e = lm_from_checkpoint(&dck, true).err().unwrap().to_string();
    assert!(e.contains("diffusion model (process 'mdlm')"), "{e}");
    let e = ArTrainer::from_checkpoint(&dck, &cfg)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not an autoregressive"), "{e}");
    // A missing tensor is named.
    let mut broken: HashMap<String, Tensor> = ck.weights.clone();
    broken.remove("blocks.0.attn_qkv.weight");
    let e = idlm::ar::train::lm_from_tensors(&broken, &arch, Path::new("x"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("attn_qkv"), "{e}");
}
