//! Duo's ancestral sampler driven by the exact uniform-process denoiser of a toy world: the exact
//! K-step distribution (by enumeration, through `Uniform::posterior`) converges to p* as K grows,
//! and the real batched sampler draws from that distribution.

use candle_core::{Device, Tensor};
use idlm::process::schedule::{T_FINAL, sampling_grid};
use idlm::process::{ForwardProcess, LogLinear, NoiseRemoval, Uniform};
use idlm::sample::{SamplerOptions, sample};
use idlm::toy::{ExactUniformDenoiser, ToyWorld};
use rand::{Rng, SeedableRng};

/// All (v + 1)^L states, first position most significant.
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

fn index(x: &[u32], n: usize) -> usize {
    x.iter().fold(0, |a, &t| a * n + t as usize)
}

/// The exact distribution of the K-step sampler over all states.
fn exact_k_step(world: &ToyWorld, k: usize, removal: NoiseRemoval) -> Vec<f64> {
    let n = world.v + 1;
    let l = world.l;
    let all = states(n, l);
    let proc = Uniform::new(n).unwrap();
    let sched = LogLinear::default();
    let mut p = vec![1.0 / all.len() as f64; all.len()];
    let grid = sampling_grid(k);
    let dt = (1.0 - T_FINAL) / k as f64;
    let step = |p: &[f64], at: f64, as_: Option<f64>| -> Vec<f64> {
        let mut q = vec![0.0; p.len()];
        for (i, x) in all.iter().enumerate() {
            if p[i] == 0.0 {
                continue;
            }
            let f = world.uniform_denoiser(x, at);
            let post: Vec<Vec<f64>> = (0..l)
                .map(|pos| {
                    let fl = &f[pos * n..(pos + 1) * n];
                    match as_ {
                        Some(a) => proc.posterior(fl, x[pos], at, a),
                        None => {
                            // Greedy: the argmax of f.
                            let best = (0..n).max_by(|&a, &b| fl[a].total_cmp(&fl[b])).unwrap();
                            (0..n).map(|v| f64::from(u8::from(v == best))).collect()
                        }
                    }
                })
                .collect();
            for (j, y) in all.iter().enumerate() {
                let pr: f64 = (0..l).map(|pos| post[pos][y[pos] as usize]).product();
                q[j] += p[i] * pr;
            }
        }
        q
    };
    for &t in grid.iter().take(k) {
        p = step(&p, sched.alpha(t), Some(sched.alpha(t - dt)));
    }
    let a_final = sched.alpha(T_FINAL);
    match removal {
        NoiseRemoval::Ancestral => step(&p, a_final, Some(1.0)),
        NoiseRemoval::Greedy => step(&p, a_final, None),
    }
}

/// p* over all (v + 1)^L states (zero where the MASK id appears).
fn p_star(world: &ToyWorld) -> Vec<f64> {
    let n = world.v + 1;
    let mut p = vec![0.0; n.pow(world.l as u32)];
    for (i, &pi) in world.p.iter().enumerate() {
        p[index(&world.decode(i), n)] = pi;
    }
    p
}

fn kl(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|(a, _)| **a > 0.0)
        .map(|(a, b)| a * (a / b).ln())
        .sum()
}

#[test]
fn exact_k_step_distribution_converges_to_p_star() {
    let world = ToyWorld::two_by_two();
    let star = p_star(&world);
    let mut kls = Vec::new();
    for k in [1usize, 4, 16, 64, 256, 1024] {
        let p = exact_k_step(&world, k, NoiseRemoval::Ancestral);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        kls.push(kl(&p, &star));
    }
    eprintln!("Duo toy, KL(p_K || p*) at K = 1, 4, 16, 64, 256, 1024: {kls:.5?}");
    // Few steps cannot model the correlation (positions are revised independently per step);
    // many steps can: the error falls with K and is tiny at 1024.
    assert!(kls[0] > 0.05, "{kls:?}");
    assert!(kls.windows(2).all(|w| w[1] < w[0]), "{kls:?}");
    assert!(kls[4] < 1e-4 && kls[5] < 1e-5, "{kls:?}");
    // Greedy noise removal ends on a data state too, and also approaches p* at many steps.
    let g = exact_k_step(&world, 256, NoiseRemoval::Greedy);
    assert!(kl(&g, &star) < 1e-2, "greedy {}", kl(&g, &star));
}

#[test]
fn the_sampler_draws_the_exact_k_step_distribution() {
    let world = ToyWorld::two_by_two();
    let n = world.v + 1;
    let proc = Uniform::new(n).unwrap();
    let den = ExactUniformDenoiser { world: &world };
    let k = 8;
    let opts = SamplerOptions {
        steps: k,
        noise_removal: NoiseRemoval::Ancestral,
        cache: true,
        batch_size: 500,
        seed: 3,
    };
    let draws = 6000;
    let out = sample(&den, &proc, draws, world.l, &opts, None).unwrap();
    let exact = exact_k_step(&world, k, NoiseRemoval::Ancestral);
    let mut counts = vec![0usize; exact.len()];
    for s in &out {
        assert_eq!(s.nfe, k + 1, "Duo calls the network at every step");
        counts[index(&s.ids, n)] += 1;
    }
    for (c, &p) in counts.iter().zip(&exact) {
        let se = (p * (1.0 - p) / draws as f64).sqrt().max(1e-9);
        let f = *c as f64 / draws as f64;
        assert!(
            (f - p).abs() < 4.5 * se + 1e-6,
            "count {c} ({f:.4}) vs exact {p:.4} ± {se:.4}"
        );
    }
}

/// E over x0 ~ p*, x_t ~ q_t of the summed UDLM integrand when the network at x_t outputs
/// `den(x_t)` (l x n probabilities), by enumeration.
fn expected_loss(world: &ToyWorld, t: f64, den: &dyn Fn(&[u32]) -> Vec<f64>) -> f64 {
    let n = world.v + 1;
    let l = world.l;
    let proc = Uniform::new(n).unwrap();
    let a = LogLinear::default().alpha(t);
    let mut total = 0.0;
    for xt in states(n, l) {
        let f = den(&xt);
        let logits: Vec<f64> = f.iter().map(|p| p.max(1e-300).ln()).collect();
        let logits = Tensor::from_vec(logits, (l, n), &Device::Cpu).unwrap();
        for (i, &pi) in world.p.iter().enumerate() {
            let x0 = world.decode(i);
            let q: f64 = xt
                .iter()
                .zip(&x0)
                .map(|(&a_, &b)| a * f64::from(u8::from(a_ == b)) + (1.0 - a) / n as f64)
                .product();
            let loss: f64 = proc
                .hard_loss_rows(&logits, &xt, &x0, &vec![t; l])
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
                .iter()
                .sum();
            total += pi * q * loss;
        }
    }
    total
}

#[test]
fn the_leave_one_out_denoiser_minimises_the_expected_loss() {
    let world = ToyWorld::two_by_two();
    let n = world.v + 1;
    let t = 0.5;
    let a = LogLinear::default().alpha(t);
    let best = expected_loss(&world, t, &|x| world.uniform_denoiser(x, a));
    // The full posterior p*(x0_l | x_t) (position l's own noisy token included) is worse.
    let full = |x: &[u32]| -> Vec<f64> {
        let mut out = vec![0.0; world.l * n];
        for (i, &pi) in world.p.iter().enumerate() {
            let x0 = world.decode(i);
            let lik: f64 = x
                .iter()
                .zip(&x0)
                .map(|(&u, &v)| a * f64::from(u8::from(u == v)) + (1.0 - a) / n as f64)
                .product();
            for (pos, &tok) in x0.iter().enumerate() {
                out[pos * n + tok as usize] += pi * lik;
            }
        }
        for row in out.chunks_mut(n) {
            let z: f64 = row.iter().sum();
            row.iter_mut().for_each(|o| *o /= z);
        }
        out
    };
    let full_loss = expected_loss(&world, t, &full);
    assert!(
        best < full_loss - 1e-4,
        "{best} vs full posterior {full_loss}"
    );
    // And every small perturbation is worse.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    for _ in 0..5 {
        let noise: Vec<f64> = (0..64).map(|_| rng.random::<f64>() - 0.5).collect();
        let pert = |x: &[u32]| -> Vec<f64> {
            let mut f = world.uniform_denoiser(x, a);
            let off = index(x, n) * 7;
            for (j, v) in f.iter_mut().enumerate() {
                *v = (*v).max(1e-12) * (0.2 * noise[(off + j) % 64]).exp();
            }
            for row in f.chunks_mut(n) {
                let z: f64 = row.iter().sum();
                row.iter_mut().for_each(|o| *o /= z);
            }
            f
        };
        let lp = expected_loss(&world, t, &pert);
        assert!(lp > best, "perturbed {lp} <= optimum {best}");
    }
}
