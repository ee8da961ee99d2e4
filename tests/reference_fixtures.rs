//! The DiT and the MDLM loss against vectors computed by the reference PyTorch code
//! (../shared/fixtures, see its README).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use idlm::nn::{Dit, DitConfig, DitInput};
use idlm::process::{ForwardProcess, Masked, Target};

const FIX: &str = "../shared/fixtures";

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
    // 169,627,218 trainable parameters for V = 50258 (algorithms.md §2.4).
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
