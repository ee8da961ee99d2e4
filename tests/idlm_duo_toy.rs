//! IDLM-Duo in the exact toy world (docs/toy-world.md's p*, with the MASK id as a third uniform state):
//! a tiny Duo teacher trained through the Gaussian curriculum, distilled with IDLM-Duo. The exact
//! objective over the Gaussian window, J = L(f*, p_theta) - min_f L(f, p_theta) with f* the exact
//! denoiser of p* and the minimiser the exact denoiser of p_theta (both the leave-one-out
//! denoisers of the mean parameterisation), is computed by enumeration and must fall.

mod common;

use candle_core::{Device, Tensor};
use idlm::config::RunConfig;
use idlm::data::PackedTokens;
use idlm::distill::{DistillConfig, DuoGradient, Idlm};
use idlm::nn::{Dit, DitInput};
use idlm::process::curriculum::{DuoConfig, DuoCurriculum};
use idlm::process::uniform::Signal;
use idlm::process::{ForwardProcess, Uniform};
use idlm::toy::{ToyWorld, gauss_legendre};
use idlm::train::{DiffusionObjective, Trainer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TAU: f64 = 1e-3;

fn duo_cfg() -> RunConfig {
    RunConfig::load("tiny")
        .unwrap()
        .with_overrides(&[
            "train.process=\"duo\"".into(),
            "model.hidden_size=32".into(),
            "model.n_heads=2".into(),
            "model.time_conditioning=true".into(),
            "train.batch_size=256".into(),
            "train.grad_clip=0".into(),
            "train.lr=3e-3".into(),
            "train.warmup_steps=20".into(),
            "train.ema_decay=0.99".into(),
            "duo.curriculum_end=100000".into(),
            "duo.table_points=2000".into(),
        ])
        .unwrap()
}

/// All N^L states, first position most significant.
fn states(n: usize, l: usize) -> Vec<Vec<u32>> {
    (0..n.pow(l as u32))
        .map(|mut i| {
            let mut x = vec![0u32; l];
            for p in (0..l).rev() {
                x[p] = (i % n) as u32;
                i /= n;
            }
            x
        })
        .collect()
}

/// The leave-one-out denoiser of `p` (over N^L) at signal alpha: l x N.
fn denoiser(p: &[f64], n: usize, l: usize, xt: &[u32], alpha: f64) -> Vec<f64> {
    let all = states(n, l);
    let lik = |a: u32, b: u32| alpha * f64::from(u8::from(a == b)) + (1.0 - alpha) / n as f64;
    let mut out = vec![0.0; l * n];
    for pos in 0..l {
        for (x0, &px) in all.iter().zip(p) {
            let w: f64 = px
                * (0..l)
                    .filter(|&m| m != pos)
                    .map(|m| lik(xt[m], x0[m]))
                    .product::<f64>();
            out[pos * n + x0[pos] as usize] += w;
        }
        let z: f64 = out[pos * n..(pos + 1) * n].iter().sum();
        out[pos * n..(pos + 1) * n].iter_mut().for_each(|o| *o /= z);
    }
    out
}

/// The exact objective over the latent's window (48-point Gauss-Legendre in t).
fn objective(p_star: &[f64], p_theta: &[f64], n: usize, l: usize, latent: &DuoCurriculum) -> f64 {
    let proc = Uniform::new(n).unwrap();
    let all = states(n, l);
    let (x, w) = gauss_legendre(48);
    let mut total = 0.0;
    for (xi, wi) in x.iter().zip(&w) {
        let t = 0.5 * (xi + 1.0);
        let (_, s) = latent.signal(t);
        let mut inner = 0.0;
        for xt in &all {
            let loss = |f: &[f64], x0: &[u32]| -> f64 {
                let logits: Vec<f64> = f.iter().map(|v| v.max(1e-300).ln()).collect();
                let logits = Tensor::from_vec(logits, (l, n), &Device::Cpu).unwrap();
                let sig: Vec<Signal> = vec![s; l];
                let mut g = vec![0.0; l * n];
                for (pos, &tok) in x0.iter().enumerate() {
                    g[pos * n + tok as usize] = 1.0;
                }
                let g = Tensor::from_vec(g, (l, n), &Device::Cpu).unwrap();
                proc.integrand_rows(&logits, xt, &g, &sig)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
                    .iter()
                    .sum()
            };
            let fs = denoiser(p_star, n, l, xt, s.alpha);
            let ft = denoiser(p_theta, n, l, xt, s.alpha);
            for (x0, &px) in all.iter().zip(p_theta) {
                if px == 0.0 {
                    continue;
                }
                let q: f64 = xt
                    .iter()
                    .zip(x0)
                    .map(|(&a, &b)| {
                        s.alpha * f64::from(u8::from(a == b)) + (1.0 - s.alpha) / n as f64
                    })
                    .product();
                inner += px * q * (loss(&fs, x0) - loss(&ft, x0));
            }
        }
        total += 0.5 * wi * inner;
    }
    total
}

/// p_theta over N^L: the student's product distribution averaged over its inputs (real rows
/// through the Gaussian latent at stratified t'), on a fixed set of 4096 inputs.
fn p_theta(
    student: &Dit,
    latent: &DuoCurriculum,
    data: &PackedTokens,
    n: usize,
    l: usize,
) -> Vec<f64> {
    let m = 4096;
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let x0: Vec<u32> = (0..m)
        .flat_map(|i| data.row(i % data.n_rows()).unwrap())
        .collect();
    let t: Vec<f64> = (0..m)
        .map(|i| (i as f64 + rng.random::<f64>()) / m as f64)
        .collect();
    let rel = latent
        .corrupt(&x0, l, &t, &vec![0; m], TAU, &mut rng, &Device::Cpu)
        .unwrap();
    let sigma = Tensor::from_slice(&rel.sigma, m, &Device::Cpu).unwrap();
    let feats = student
        .features(DitInput::Soft(&rel.input), &sigma, None)
        .unwrap();
    let d = feats.dim(2).unwrap();
    let logits = student.head(&feats.reshape((m * l, d)).unwrap()).unwrap();
    let g = candle_nn::ops::softmax(&logits, 1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let mut p = vec![0.0; n.pow(l as u32)];
    for (si, x) in states(n, l).iter().enumerate() {
        for i in 0..m {
            p[si] += (0..l)
                .map(|pos| g[i * l + pos][x[pos] as usize] as f64)
                .product::<f64>();
        }
        p[si] /= m as f64;
    }
    p
}

/// A value parsed from the environment (how the seed sweep and the lr / step probes are run).
fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Alternations between checkpoints of J.
const EVERY: usize = 25;

#[test]
fn idlm_duo_lowers_the_exact_objective_in_the_toy_world() {
    idlm::runtime::tune_malloc();
    let world = ToyWorld::two_by_two();
    let (n, l) = (world.v + 1, world.l);
    let dir = tempfile::tempdir().unwrap();
    let data = common::toy_packed(&world, 16384, &dir.path().join("train.bin"));
    // IDLM_DUO_TOY_SEED=s seeds both the teacher's and the distillation's streams with s (the
    // sweep behind the thresholds below); unset, the configs' own seeds (1 and 1).
    let seed: Option<u64> = env("IDLM_DUO_TOY_SEED");
    let mut cfg = duo_cfg();
    if let Some(s) = seed {
        cfg.train.seed = s;
    }
    let latent = DuoCurriculum::new(
        &DuoConfig {
            table_points: 2000,
            ..cfg.duo.clone()
        },
        n,
        &dir.path().join("duality"),
    )
    .unwrap();
    // The teacher: a tiny DiT trained through the curriculum on samples of p*.
    unsafe { std::env::set_var("IDLM_HOME", dir.path()) };
    let mut teacher = Trainer::new(&cfg, &cfg.model.dit(n, l)).unwrap();
    let process = Uniform::new(n).unwrap();
    assert_eq!(process.vocab_size(), n);
    let obj = DiffusionObjective::from_config(&teacher.cfg, &process).unwrap();
    for _ in 0..600 {
        obj.step(&mut teacher, &data).unwrap();
    }
    let mut p_star = vec![0.0; n.pow(l as u32)];
    for (i, &pi) in world.p.iter().enumerate() {
        let x = world.decode(i);
        p_star[x.iter().fold(0, |a, &t| a * n + t as usize)] = pi;
    }
    let mut dc = DistillConfig {
        batch_size: 512,
        lr: env("IDLM_DUO_TOY_LR").unwrap_or(3e-4),
        warmup_steps: 10,
        ema_decay: 0.95,
        ..DistillConfig::default()
    };
    if let Some(s) = seed {
        dc.seed = s;
    }
    let w = teacher.ema_weights();
    let tnet = teacher.ema_model().unwrap();
    let mut idlm = Idlm::new(
        &dc,
        &teacher.cfg,
        &teacher.arch,
        &w,
        std::path::Path::new("t"),
    )
    .unwrap();
    let relax = latent.relaxation(TAU, DuoGradient::Pathwise);
    let latent = &relax.latent;
    let p0 = p_theta(&idlm.student.model, latent, &data, n, l);
    let j0 = objective(&p_star, &p0, n, l, latent);
    let steps: usize = env("IDLM_DUO_TOY_STEPS").unwrap_or(400);
    // J of the student's EMA every EVERY alternations (the evaluation draws from its own stream,
    // so it does not change the trajectory).
    let mut traj = vec![j0];
    for s in 0..steps {
        idlm.step(&tnet, &relax, &data).unwrap();
        if (s + 1) % EVERY == 0 || s + 1 == steps {
            let p = p_theta(&idlm.student.ema_model().unwrap(), latent, &data, n, l);
            traj.push(objective(&p_star, &p, n, l, latent));
        }
    }
    let p1 = p_theta(&idlm.student.ema_model().unwrap(), latent, &data, n, l);
    let t: Vec<String> = traj.iter().map(|j| format!("{j:.4}")).collect();
    println!(
        "IDLM-Duo toy (seed {seed:?}): J every {EVERY} alternations [{}]; p_theta {p0:.3?} -> {p1:.3?}",
        t.join(", ")
    );
    assert!(traj.iter().all(|&j| j >= 0.0), "J {traj:?}");
    // The game is chaotic: a change of float summation order (the fused LayerNorm + modulation)
    // gives another trajectory, as another seed does, so no single checkpoint can be asserted.
    // Measured over seeds 1-8 (IDLM_DUO_TOY_SEED; seed 1 is the default), with and without the
    // fused op, 16 runs: the mean of J over the last quarter's checkpoints (alternations 325-400)
    // is 0.24-0.61 j0 for 15 runs and 0.96 j0 for one slow start (fused, seed 3: J rises to
    // 1.045 j0 at 150, falls after 250, 0.58 j0 by 600-800); the highest checkpoint of any run is
    // that 1.045 j0. The endpoint alone ranges 0.24-0.94 j0: the old check (J falls from the
    // midpoint to the end, and ends below j0 / 2) held in 6 of 8 seeds without the fused op and 4
    // of 8 with it (seed 1 with it: 0.43 j0 at 200, 0.48 j0 at 400, the CI failure). With the
    // student loss's sign flipped J rises steadily (1.12 j0 at 75, 2.05 j0 at 400); with no
    // student gradient it stays at j0. Hence: the late mean below 0.99 j0 (a fall, with room
    // above the slow start's 0.96), and no checkpoint above 1.15 j0 (10% above the highest).
    let late = &traj[1 + 3 * (traj.len() - 1) / 4..];
    let late_mean = late.iter().sum::<f64>() / late.len() as f64;
    assert!(late_mean < 0.99 * j0, "late mean {late_mean}; J {traj:?}");
    let top = traj.iter().cloned().fold(f64::MIN, f64::max);
    assert!(top < 1.15 * j0, "highest J {top}; J {traj:?}");
}
