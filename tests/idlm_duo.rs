//! IDLM for Duo teachers: the reparameterised student loss's gradient against finite differences
//! on tiny networks, the pathwise and stop-gradient variants, the exact zero when teacher = fake,
//! and a distillation run that resumes exactly.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use idlm::distill::{DistillConfig, DuoGradient, Method};
use idlm::nn::init::init_dit;
use idlm::nn::{Dit, DitConfig};
use idlm::process::curriculum::{DuoConfig, DuoCurriculum};
use idlm::process::duality::{alpha_tilde, sigma_tilde};
use idlm::process::relaxation::gaussian::{Clamp, Renoising, duo_generator_loss};
use rand::{Rng, SeedableRng};

const V: usize = 7;
const L: usize = 3;
const B: usize = 2;

fn net(seed: u64) -> Dit {
    let cfg = DitConfig {
        vocab_size: V,
        hidden_size: 16,
        cond_dim: 8,
        n_blocks: 1,
        n_heads: 2,
        mlp_ratio: 2,
        length: L,
        dropout: 0.0,
        time_conditioning: true,
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let d = Dit::new(vb, &cfg).unwrap();
    init_dit(&varmap, seed).unwrap();
    // Larger weights than the reference init, so the networks' input path carries a gradient
    // big enough to check against finite differences.
    for v in varmap.all_vars() {
        let t = (v.as_tensor() * 1.0).unwrap();
        let noise = Tensor::randn(0f32, 0.3, t.shape(), &Device::Cpu).unwrap();
        v.set(&(t + noise).unwrap()).unwrap();
    }
    d
}

struct Case {
    latent: DuoCurriculum,
    r: Renoising,
    _dir: tempfile::TempDir,
}

fn case() -> Case {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DuoConfig {
        table_points: 2000,
        ..Default::default()
    };
    let latent = DuoCurriculum::new(&cfg, V, dir.path()).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let xi: Vec<f32> = (0..B * L * V)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    let xi = Tensor::from_vec(xi, (B * L, V), &Device::Cpu).unwrap();
    let (mut scales, mut signals, mut sigma) = (vec![], vec![], vec![]);
    for t in [0.3, 0.7] {
        let (g, s) = latent.signal(t);
        scales.push((alpha_tilde(g), sigma_tilde(g)));
        signals.extend(std::iter::repeat_n(s, L));
        sigma.push(-(s.alpha.ln()) as f32);
    }
    Case {
        latent,
        r: Renoising {
            xi,
            scales,
            signals,
            sigma,
            l: L,
            tau: 1.0,
            clamp: None,
        },
        _dir: dir,
    }
}

/// The loss at student logits `z`, and its gradient with respect to them.
fn loss_and_grad(
    c: &Case,
    teacher: &Dit,
    fake: Option<&Dit>,
    z: &[f32],
    mode: DuoGradient,
) -> (f64, Vec<f32>) {
    let zv = Var::from_vec(z.to_vec(), (B * L, V), &Device::Cpu).unwrap();
    let g = candle_nn::ops::softmax(zv.as_tensor(), 1).unwrap();
    let loss = duo_generator_loss(&c.latent, teacher, fake, &g, &c.r, mode).unwrap();
    let grads = loss.backward().unwrap();
    let gz = grads
        .get(zv.as_tensor())
        .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .unwrap_or_else(|| vec![0.0; z.len()]);
    (loss.to_scalar::<f32>().unwrap() as f64, gz)
}

#[test]
fn reparameterised_gradient_matches_finite_differences() {
    let c = case();
    let (teacher, fake) = (net(1), net(2));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let z: Vec<f32> = (0..B * L * V)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    let (_, grad) = loss_and_grad(&c, &teacher, Some(&fake), &z, DuoGradient::Pathwise);
    let h = 1e-2f32;
    let mut checked = 0;
    let mut worst = 0f64;
    let mut fds = Vec::new();
    for i in 0..z.len() {
        let (mut a, mut b) = (z.clone(), z.clone());
        a[i] += h;
        b[i] -= h;
        let fa = loss_and_grad(&c, &teacher, Some(&fake), &a, DuoGradient::Pathwise).0;
        let fb = loss_and_grad(&c, &teacher, Some(&fake), &b, DuoGradient::Pathwise).0;
        let fd = (fa - fb) / (2.0 * h as f64);
        fds.push(fd);
        let err = (fd - grad[i] as f64).abs() / (fd.abs().max(grad[i].abs() as f64).max(1e-2));
        worst = worst.max(err);
        checked += 1;
    }
    // f32 networks and a step of 1e-2 (argmax w stays put: tau = 1, G moves by < 1e-2).
    assert_eq!(checked, B * L * V);
    assert!(worst < 0.05, "worst relative error {worst}");
    // The networks' input path is part of the true gradient: finite differences agree with the
    // pathwise gradient and not with the stop-gradient one (which drops that path).
    let (_, sg) = loss_and_grad(&c, &teacher, Some(&fake), &z, DuoGradient::StopGradient);
    let l1 = |g: &[f32]| -> f64 { fds.iter().zip(g).map(|(f, g)| (f - *g as f64).abs()).sum() };
    let (e_path, e_sg) = (l1(&grad), l1(&sg));
    eprintln!(
        "L1 distance to finite differences: pathwise {e_path:.2e}, stop-gradient {e_sg:.2e}, worst relative {worst:.1e}"
    );
    assert!(
        e_path < 0.25 * e_sg,
        "FD vs pathwise {e_path}, vs stop-gradient {e_sg}"
    );
}

#[test]
fn teacher_equal_to_fake_gives_zero_loss_and_gradient() {
    let c = case();
    let teacher = net(1);
    let z: Vec<f32> = (0..B * L * V)
        .map(|i| ((i * 37 % 11) as f32) / 5.0 - 1.0)
        .collect();
    let (loss, grad) = loss_and_grad(&c, &teacher, Some(&teacher), &z, DuoGradient::Pathwise);
    assert_eq!(loss, 0.0);
    assert!(grad.iter().all(|g| g.abs() < 1e-6), "{grad:?}");
    // Without a fake (the naive ablation) the loss is l(f*, G) > 0.
    let (naive, _) = loss_and_grad(&c, &teacher, None, &z, DuoGradient::Pathwise);
    assert!(naive > 0.0);
}

#[test]
fn clamped_prompts_get_no_loss_and_no_gradient() {
    let mut c = case();
    let (teacher, fake) = (net(1), net(2));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let z: Vec<f32> = (0..B * L * V)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    let (free, _) = loss_and_grad(&c, &teacher, Some(&fake), &z, DuoGradient::Pathwise);
    // Row 0 has a prompt of 2 tokens, row 1 none.
    let x0 = [3u32, 5, 1, 2, 4, 6];
    let prompts = [2usize, 0];
    c.r.clamp = Clamp::new(&x0, L, V, &prompts, &Device::Cpu).unwrap();
    assert!(c.r.clamp.is_some());
    let (loss, grad) = loss_and_grad(&c, &teacher, Some(&fake), &z, DuoGradient::Pathwise);
    assert!(
        (loss - free).abs() > 1e-6,
        "clamping changed nothing: {loss}"
    );
    let clamped = |i: usize| i / L == 0 && i % L < prompts[0];
    for (k, g) in grad.iter().enumerate() {
        let i = k / V;
        if clamped(i) {
            assert_eq!(*g, 0.0, "gradient reaches clamped position {i}");
        }
    }
    assert!(grad.iter().any(|g| g.abs() > 1e-6));
    // The student's output at a clamped position changes nothing.
    let mut z2 = z.clone();
    for (k, x) in z2.iter_mut().enumerate() {
        if clamped(k / V) {
            *x = -3.0 * *x + 1.0;
        }
    }
    let (loss2, _) = loss_and_grad(&c, &teacher, Some(&fake), &z2, DuoGradient::Pathwise);
    assert_eq!(loss, loss2);
    // Rows without prompts need no clamp.
    assert!(
        Clamp::new(&x0, L, V, &[0, 0], &Device::Cpu)
            .unwrap()
            .is_none()
    );
    assert!(Clamp::new(&x0[..4], L, V, &[1, 0], &Device::Cpu).is_err());
}

fn duo_teacher(root: &Path, data: &Path) -> std::path::PathBuf {
    let run = root.join("teacher");
    common::train_tiny(
        &run,
        data,
        &[
            "train.process=\"duo\"".into(),
            "train.max_steps=3".into(),
            "train.eval_every=0".into(),
            "model.time_conditioning=true".into(),
            "duo.curriculum_end=2".into(),
            "duo.table_points=2000".into(),
        ],
    );
    run
}

fn cfg(max_steps: u64, gradient: DuoGradient) -> DistillConfig {
    DistillConfig {
        method: Method::Idlm,
        batch_size: 2,
        grad_accum: 2,
        lr: 1e-3,
        warmup_steps: 1,
        max_steps,
        val_every: 2,
        val_samples: 2,
        val_steps: 2,
        ckpt_every: 2,
        log_every: 1,
        dropout: 0.1,
        duo_gradient: gradient,
        ..DistillConfig::default()
    }
}

#[test]
fn idlm_duo_distillation_resumes_exactly() {
    idlm::runtime::tune_malloc();
    let tmp = tempfile::tempdir().unwrap();
    unsafe { std::env::set_var("IDLM_HOME", tmp.path().join("cache")) };
    let data = common::tiny_data(tmp.path(), 300, 32);
    let t = duo_teacher(tmp.path(), &data);
    let a = tmp.path().join("a");
    common::distill(&a, &t, cfg(4, DuoGradient::Pathwise), false).unwrap();
    let b = tmp.path().join("b");
    common::distill(&b, &t, cfg(2, DuoGradient::Pathwise), false).unwrap();
    common::distill(&b, &t, cfg(4, DuoGradient::Pathwise), true).unwrap();
    for key in ["student_loss", "fake_loss", "student_grad_norm"] {
        let (la, lb) = (common::metric_lines(&a, key), common::metric_lines(&b, key));
        assert_eq!(la.len(), 4, "{key}");
        assert!(la.iter().all(|(_, x)| x.is_finite()), "{key} {la:?}");
        assert_eq!(la, lb, "resumed {key} differs");
    }
    // The first fake update runs at warmup lr 0, so the first student loss is exactly 0
    // (student = fake = teacher); the gradient norm of later updates is not.
    let gn = common::metric_lines(&a, "student_grad_norm");
    assert!(gn[2..].iter().all(|(_, g)| *g > 0.0), "{gn:?}");
    // The stop-gradient ablation runs too.
    let c = tmp.path().join("c");
    common::distill(&c, &t, cfg(2, DuoGradient::StopGradient), false).unwrap();
    assert_eq!(common::metric_lines(&c, "student_loss").len(), 2);
}
