//! The exact toy world (docs/design.md §7): the MDLM loss, a trained tiny DiT and the ancestral sampler
//! against quantities computed by enumeration.

use candle_core::{Device, Tensor};
use idlm::config::RunConfig;
use idlm::data::{PackedHeader, PackedTokens, PackedWriter};
use idlm::nn::DitInput;
use idlm::process::schedule::{SAMPLING_EPS, antithetic_times};
use idlm::process::{ForwardProcess, LogLinear, Masked, NoiseRemoval, Target};
use idlm::sample::{Denoiser, SamplerOptions, sample};
use idlm::toy::{ExactDenoiser, ToyWorld};
use idlm::train::{DiffusionObjective, Trainer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// V = 3, L = 3, strongly correlated: equal neighbours are favoured, with an asymmetry so that
/// the marginals are not uniform.
fn world3() -> ToyWorld {
    let mut w = Vec::new();
    for i in 0..27usize {
        let x = [i / 9, (i / 3) % 3, i % 3];
        let mut v = 0.2 + (x[0] as f64) * 0.3;
        if x[0] == x[1] {
            v += 6.0;
        }
        if x[1] == x[2] {
            v += 6.0;
        }
        if x[0] == x[2] {
            v += 2.0;
        }
        w.push(v);
    }
    ToyWorld::new(3, 3, w).unwrap()
}

/// V = 3, L = 3, invariant under cyclic shifts of the positions, so that every position has the
/// same marginal: at the all-MASK state the DiT (no absolute position embedding, unrotated values)
/// gives every position the same output and could not fit position-dependent marginals.
fn world3_cyclic() -> ToyWorld {
    let f = [1.0, 1.6, 2.4];
    let mut w = Vec::new();
    for i in 0..27usize {
        let x = [i / 9, (i / 3) % 3, i % 3];
        let eq = (x[0] == x[1]) as u8 + (x[1] == x[2]) as u8 + (x[2] == x[0]) as u8;
        w.push(f[x[0]] * f[x[1]] * f[x[2]] * (0.3 + 5.0 * eq as f64));
    }
    ToyWorld::new(3, 3, w).unwrap()
}

fn draw(world: &ToyWorld, rng: &mut ChaCha8Rng) -> Vec<u32> {
    let u: f64 = rng.random();
    let mut acc = 0.0;
    for (i, p) in world.p.iter().enumerate() {
        acc += p;
        if u < acc {
            return world.decode(i);
        }
    }
    world.decode(world.p.len() - 1)
}

/// Monte Carlo of the trainer's loss with the exact denoiser: (mean, standard error) per token.
fn mc_loss(world: &ToyWorld, n_batches: usize, b: usize, seed: u64) -> (f64, f64) {
    let process = Masked::new(world.v + 1, world.mask()).unwrap();
    let den = ExactDenoiser { world };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let l = world.l;
    let mut vals = Vec::new();
    for _ in 0..n_batches {
        let t = antithetic_times(b, &mut rng);
        let mut x0 = Vec::new();
        let mut xt = vec![0u32; b * l];
        for r in 0..b {
            let x = draw(world, &mut rng);
            process.corrupt_row(&x, t[r], &mut rng, &mut xt[r * l..(r + 1) * l]);
            x0.extend(x);
        }
        let x0t = Tensor::from_vec(x0, (b, l), &Device::Cpu).unwrap();
        let xtt = Tensor::from_vec(xt, (b, l), &Device::Cpu).unwrap();
        let logits = den
            .logits(
                &xtt,
                &Tensor::zeros(b, candle_core::DType::F32, &Device::Cpu).unwrap(),
                None,
            )
            .unwrap()
            .reshape((b, l, world.v + 1))
            .unwrap();
        let per = process
            .loss_per_token(&logits, &xtt, Target::Hard(&x0t), &t)
            .unwrap();
        // Unmasked positions contribute exactly zero.
        let per_v = per.to_vec2::<f32>().unwrap();
        let xt_v = xtt.to_vec2::<u32>().unwrap();
        for (row_l, row_x) in per_v.iter().zip(&xt_v) {
            for (v, x) in row_l.iter().zip(row_x) {
                if *x != world.mask() {
                    assert_eq!(*v, 0.0);
                }
            }
        }
        // The stratified times are correlated within a batch: one value per batch keeps the
        // standard error honest.
        vals.push(per.mean_all().unwrap().to_scalar::<f32>().unwrap() as f64);
    }
    let m = vals.iter().sum::<f64>() / vals.len() as f64;
    let var = vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (vals.len() - 1) as f64;
    (m, (var / vals.len() as f64).sqrt())
}

#[test]
fn loss_with_exact_denoiser_matches_enumerated_nelbo_and_bounds_entropy() {
    for world in [ToyWorld::two_by_two(), world3()] {
        let exact = world.exact_nelbo_per_token(LogLinear::default(), SAMPLING_EPS);
        let (m, se) = mc_loss(&world, 400, 64, 7);
        assert!(
            (m - exact).abs() < 3.0 * se,
            "MC {m} +- {se} vs enumerated {exact}"
        );
        // The full continuous-time NELBO (no eps truncation at either end) of the exact denoiser
        // upper-bounds the entropy of p*, and is tight: the reverse process is exact.
        let h = world.entropy() / world.l as f64;
        let full = world.exact_nelbo_per_token(LogLinear { eps: 0.0 }, 1e-12);
        assert!(full >= h - 1e-9, "NELBO {full} below entropy {h}");
        assert!(full - h < 1e-4, "NELBO {full} vs entropy {h}");
        // The trainer's truncated version differs from it by O(eps) only.
        assert!((exact - h).abs() < 3e-3, "NELBO {exact} vs entropy {h}");
    }
}

#[test]
fn loss_with_a_wrong_denoiser_is_larger() {
    // A denoiser that ignores the context (the marginals) pays the mutual information.
    let world = world3();
    let exact = world.exact_nelbo_per_token(LogLinear::default(), SAMPLING_EPS);
    let indep = ToyWorld::new(3, 3, world.product_of_marginals()).unwrap();
    let h_indep = indep.entropy() / 3.0;
    assert!(h_indep > exact + 0.1);
}

fn chi_square(counts: &[usize], probs: &[f64]) -> (f64, usize) {
    let n: usize = counts.iter().sum();
    let mut chi = 0.0;
    let mut dof = 0;
    for (&c, &p) in counts.iter().zip(probs) {
        let e = p * n as f64;
        if e > 0.0 {
            chi += (c as f64 - e).powi(2) / e;
            dof += 1;
        } else {
            assert_eq!(c, 0, "sampled an impossible sequence");
        }
    }
    (chi, dof - 1)
}

fn sampled_counts(world: &ToyWorld, steps: usize, n: usize, cache: bool) -> (Vec<usize>, usize) {
    let process = Masked::new(world.v + 1, world.mask()).unwrap();
    let den = ExactDenoiser { world };
    let opts = SamplerOptions {
        steps,
        noise_removal: NoiseRemoval::Ancestral,
        cache,
        batch_size: 500,
        seed: 11,
    };
    let out = sample(&den, &process, n, world.l, &opts, None).unwrap();
    let mut counts = vec![0usize; world.p.len()];
    let mut nfe = 0;
    for s in &out {
        counts[world.encode(&s.ids)] += 1;
        nfe += s.nfe;
    }
    (counts, nfe)
}

#[test]
fn ancestral_sampler_with_exact_denoiser_reproduces_p_star_for_many_steps() {
    let world = world3();
    let (counts, _) = sampled_counts(&world, 1024, 20000, true);
    let (chi, dof) = chi_square(&counts, &world.p);
    // 26 degrees of freedom: the 0.999 quantile is 54.05.
    assert!(chi < 54.05, "chi2 {chi} with {dof} dof");
    // And the product of marginals is rejected by the same test.
    let (chi_pm, _) = chi_square(&counts, &world.product_of_marginals());
    assert!(
        chi_pm > 1000.0,
        "chi2 against the product of marginals only {chi_pm}"
    );
}

#[test]
fn one_step_sampler_yields_the_product_of_marginals() {
    let world = world3();
    let (counts, _) = sampled_counts(&world, 1, 20000, true);
    let (chi, dof) = chi_square(&counts, &world.product_of_marginals());
    assert!(chi < 54.05, "chi2 {chi} with {dof} dof");
    let (chi_p, _) = chi_square(&counts, &world.p);
    assert!(chi_p > 1000.0, "one step should not reach p*: chi2 {chi_p}");
}

#[test]
fn cached_sampler_equals_uncached_with_fewer_calls() {
    let world = world3();
    let (a, nfe_cached) = sampled_counts(&world, 64, 2000, true);
    let (b, nfe_plain) = sampled_counts(&world, 64, 2000, false);
    assert_eq!(a, b);
    assert!(
        nfe_cached * 4 < nfe_plain,
        "cached NFE {nfe_cached} vs {nfe_plain}"
    );
    // At most one call per distinct state along a path: L + 1 for length L.
    assert!(nfe_cached <= 2000 * (world.l + 1));
}

/// Write `n` rows sampled from p* as a packed token file.
fn packed_from_world(world: &ToyWorld, n: usize, path: &std::path::Path) -> PackedTokens {
    let header = PackedHeader::new(
        (world.v + 1) as u32,
        world.mask(),
        0,
        0,
        world.l as u32,
        [0u8; 32],
    );
    let mut w = PackedWriter::create(path, header).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for _ in 0..n {
        w.push_row(&draw(world, &mut rng)).unwrap();
    }
    w.finish().unwrap();
    PackedTokens::open(path).unwrap()
}

#[test]
fn tiny_dit_trained_on_p_star_reaches_the_exact_denoiser() {
    idlm::runtime::tune_malloc();
    let world = world3_cyclic();
    let dir = tempfile::tempdir().unwrap();
    let data = packed_from_world(&world, 8192, &dir.path().join("train.bin"));
    let cfg = RunConfig::load("tiny")
        .unwrap()
        .with_overrides(&[
            "model.hidden_size=64".into(),
            "model.n_heads=4".into(),
            "train.batch_size=256".into(),
            "train.grad_clip=0".into(),
            "train.lr=1e-3".into(),
            "train.warmup_steps=20".into(),
            "train.ema_decay=0.995".into(),
        ])
        .unwrap();
    let dit_cfg = cfg.model.dit(world.v + 1, world.l);
    let mut tr = Trainer::new(&cfg, &dit_cfg).unwrap();
    let process = Masked::new(world.v + 1, world.mask()).unwrap();
    let obj = DiffusionObjective::new(&process, None);
    // Constant LR, then a short low-LR phase: the 1/t-weighted gradients are noisy, and the test
    // asks for the denoiser itself, not a noisy estimate of it.
    for i in 0..1000 {
        if i == 700 {
            tr.cfg.train.lr = 1e-4;
        }
        obj.step(&mut tr, &data).unwrap();
    }
    let model = tr.ema_model().unwrap();
    let worst = worst_error(&world, &model, &process);
    assert!(worst < 0.05, "largest probability error {worst}");
}

fn worst_error(world: &ToyWorld, model: &idlm::nn::Dit, process: &Masked) -> f64 {
    let mut worst = 0f64;
    for xt in world.noisy_states() {
        if !xt.contains(&world.mask()) {
            continue;
        }
        let Some(exact) = world.denoiser(&xt) else {
            continue;
        };
        let ids = Tensor::from_vec(xt.clone(), (1, world.l), &Device::Cpu).unwrap();
        let sigma = Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu).unwrap();
        let logits = model.forward(DitInput::Ids(&ids), &sigma, None).unwrap();
        let p = process
            .log_probs(&logits, &ids)
            .unwrap()
            .exp()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for pos in 0..world.l {
            if xt[pos] != world.mask() {
                continue;
            }
            for k in 0..world.v {
                let err = (p[pos * (world.v + 1) + k] as f64 - exact[pos * world.v + k]).abs();
                worst = worst.max(err);
            }
        }
    }
    worst
}
