//! The DiT and the MDLM loss against vectors computed by the reference PyTorch code
//! (tests/fixtures, see its README).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use idlm::nn::{Dit, DitConfig, DitInput};
use idlm::process::uniform::Signal;
use idlm::process::{ForwardProcess, Masked, Target, Uniform};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn load(path: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(format!("{FIX}/{path}"), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn fixture_dit() -> Dit {
    let cfg = DitConfig {
        vocab_size: 61,
        hidden_size: 64,
        cond_dim: 32,
        n_blocks: 2,
        n_heads: 4,
        mlp_ratio: 4,
        length: 24,
        dropout: 0.0,
        time_conditioning: true,
    };
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[format!("{FIX}/dit_reference/model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let dit = Dit::new(vb.pp("backbone"), &cfg).unwrap();
    let inv = load("dit_reference/model.safetensors")
        .remove("backbone.rotary_emb.inv_freq")
        .unwrap();
    assert!(max_abs_diff(dit.inv_freq(), &inv) < 1e-7);
    dit
}

#[test]
fn dit_logits_match_reference_on_ids() {
    let dit = fixture_dit();
    let io = load("dit_reference/io.safetensors");
    let ids = io["ids"].to_dtype(DType::U32).unwrap();
    let got = dit
        .forward(DitInput::Ids(&ids), &io["sigma"], None)
        .unwrap();
    let d = max_abs_diff(&got, &io["logits"]);
    assert!(d < 1e-3, "max abs diff {d}");
}

#[test]
fn dit_logits_match_reference_on_soft_input() {
    let dit = fixture_dit();
    let io = load("dit_reference/io.safetensors");
    let got = dit
        .forward(DitInput::Soft(&io["soft"]), &io["sigma_soft"], None)
        .unwrap();
    let d = max_abs_diff(&got, &io["logits_soft"]);
    assert!(d < 1e-3, "max abs diff {d}");
}

#[test]
fn param_count_formula_matches_the_public_small_model() {
    // 169,627,218 trainable parameters for V = 50258 (docs/algorithms.md §2.4).
    let cfg = DitConfig {
        vocab_size: 50258,
        hidden_size: 768,
        cond_dim: 128,
        n_blocks: 12,
        n_heads: 12,
        mlp_ratio: 4,
        length: 1024,
        dropout: 0.1,
        time_conditioning: false,
    };
    assert_eq!(cfg.n_params(), 169_627_218);
}

#[test]
fn mdlm_subs_and_nll_match_reference() {
    let f = load("losses_reference.safetensors");
    let proc = Masked::new(61, 60).unwrap();
    let xt = f["mdlm_xt"].to_dtype(DType::U32).unwrap();
    let x0 = f["mdlm_x0"].to_dtype(DType::U32).unwrap();
    let t: Vec<f64> = f["mdlm_t"]
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    let logp = proc.log_probs(&f["mdlm_logits"], &xt).unwrap();
    let want = &f["mdlm_subs_logprobs"];
    // Relative 1e-4 on log-probs (the -1e6 entries agree exactly).
    let rel = ((&logp - want).unwrap().abs().unwrap() / (want.abs().unwrap() + 1.0).unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(rel < 1e-4, "SUBS rel diff {rel}");
    let nll = proc
        .loss_per_token(&f["mdlm_logits"], &xt, Target::Hard(&x0), &t)
        .unwrap();
    let want = &f["mdlm_nll_per_token"];
    let rel = ((&nll - want).unwrap().abs().unwrap() / (want.abs().unwrap() + 1e-6).unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(rel < 1e-4, "NLL rel diff {rel}");
    // The soft form with a one-hot target is the hard form.
    let onehot = candle_nn::encoding::one_hot(x0.clone(), 61, 1f32, 0f32).unwrap();
    let soft = proc
        .loss_per_token(&f["mdlm_logits"], &xt, Target::Soft(&onehot), &t)
        .unwrap();
    assert!(max_abs_diff(&soft, &nll) < 1e-4);
}

#[test]
fn duo_nll_and_posterior_match_reference() {
    let f = load("losses_reference.safetensors");
    let proc = Uniform::new(61).unwrap();
    let xt = f["duo_xt"].to_dtype(DType::U32).unwrap();
    let x0 = f["duo_x0"].to_dtype(DType::U32).unwrap();
    let times = |k: &str| -> Vec<f64> {
        f[k].to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect()
    };
    // The reference computes in f64 from these f32 logits.
    let logits = f["duo_logits"].to_dtype(DType::F64).unwrap();
    let nll = proc
        .loss_per_token(&logits, &xt, Target::Hard(&x0), &times("duo_t"))
        .unwrap();
    // The reference forms alpha_t and alpha'_t in f32 (its t is f32) and the rest in f64.
    let sig: Vec<Signal> = f["duo_t"]
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .flat_map(|&t| {
            let s = Signal {
                alpha: (1f32 - (1f32 - 1e-3f32) * t) as f64,
                dalpha: -(1f32 - 1e-3f32) as f64,
            };
            std::iter::repeat_n(s, 24)
        })
        .collect();
    let ids: Vec<u32> = xt.flatten_all().unwrap().to_vec1().unwrap();
    let one_hot = candle_nn::encoding::one_hot(x0.flatten_all().unwrap(), 61, 1f64, 0f64).unwrap();
    let nll32 = proc
        .integrand_rows(&logits.reshape((72, 61)).unwrap(), &ids, &one_hot, &sig)
        .unwrap()
        .reshape((3, 24))
        .unwrap();
    let d = |a: &Tensor, b: &Tensor| -> f64 {
        ((a - b).unwrap().abs().unwrap() / (b.abs().unwrap() + 1e-300).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let want = &f["duo_nll_per_token"];
    assert!(
        d(&nll32, want) < 1e-9,
        "Duo NLL rel diff {}",
        d(&nll32, want)
    );
    // With alpha in f64 the difference is the f32 rounding of alpha, nothing more.
    assert!(
        d(&nll, want) < 1e-6,
        "Duo NLL (f64 alpha) rel diff {}",
        d(&nll, want)
    );
    // Posterior q(x_s | x_t, f) per position, f64.
    let (ts, ss) = (times("duo_post_t"), times("duo_post_s"));
    let probs = candle_nn::ops::softmax_last_dim(&logits).unwrap();
    let probs = probs.to_vec3::<f64>().unwrap();
    let want = f["duo_posterior"].to_vec3::<f64>().unwrap();
    let ids = xt.to_vec2::<u32>().unwrap();
    let alpha32 = |t: f64| (1f32 - (1f32 - 1e-3f32) * t as f32) as f64;
    let mut worst = 0f64;
    for b in 0..3 {
        let (at, as_) = (alpha32(ts[b]), alpha32(ss[b]));
        for l in 0..24 {
            let q = proc.posterior(&probs[b][l], ids[b][l], at, as_);
            for (a, w) in q.iter().zip(&want[b][l]) {
                worst = worst.max((a - w).abs() / w.abs().max(1e-300));
            }
        }
    }
    assert!(worst < 1e-9, "Duo posterior rel diff {worst}");
}
