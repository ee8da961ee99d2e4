//! Conditional sampling: clamped positions (a prompt, infilling text) never change at any step, for
//! every process, sampler and noise removal, including requests that join a running batch; with the
//! exact toy denoiser, a clamped prefix gives the world's exact conditional distribution.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use idlm::nn::Denoiser;
use idlm::process::{ForwardProcess, Masked, NoiseRemoval, Uniform};
use idlm::sample::{Engine, Event, Request, SamplerOptions, Template, sample_requests};
use idlm::toy::{ExactDenoiser, ToyWorld};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const V: usize = 12;
const L: usize = 10;

fn opts(steps: usize, noise_removal: NoiseRemoval, cache: bool, seed: u64) -> SamplerOptions {
    SamplerOptions {
        steps,
        noise_removal,
        cache,
        batch_size: 5,
        seed,
    }
}

/// A random template over tokens 0..vocab: each position clamped with probability 1/3, the last
/// one always free.
fn random_template(rng: &mut ChaCha8Rng, len: usize, vocab: u32) -> Template {
    let fixed = (0..len)
        .map(|i| (i + 1 < len && rng.random_bool(1.0 / 3.0)).then(|| rng.random_range(0..vocab)))
        .collect();
    Template::new(fixed)
}

/// Run the requests through the stepping engine with every request watched, adding the second
/// half after two calls; check the clamped tokens at every reported step and in the samples.
fn check_never_changed(den: &dyn Denoiser, process: &dyn ForwardProcess, reqs: &[Request]) {
    let mut e = Engine::new(den, process, 6).unwrap();
    let half = reqs.len() / 2;
    let mut ids = Vec::new();
    for q in &reqs[..half] {
        ids.push(e.add(q.clone(), true).unwrap());
    }
    let mut events = Vec::new();
    for _ in 0..2 {
        events.extend(e.step().unwrap());
    }
    for q in &reqs[half..] {
        ids.push(e.add(q.clone(), true).unwrap());
    }
    while !e.is_idle() {
        events.extend(e.step().unwrap());
    }
    let by_id: HashMap<usize, &Request> = ids.iter().copied().zip(reqs).collect();
    let (mut steps, mut done) = (0, 0);
    for ev in events {
        let (q, rows) = match ev {
            Event::Step { request, ids, .. } => {
                steps += 1;
                (by_id[&request], vec![ids])
            }
            Event::Done { request, samples } => {
                done += 1;
                (
                    by_id[&request],
                    samples.into_iter().map(|s| s.ids).collect(),
                )
            }
        };
        let t = q.template.as_ref().unwrap();
        for x in rows {
            for i in t.clamped() {
                assert_eq!(
                    Some(x[i as usize]),
                    t.get(i as usize),
                    "clamped position {i} changed: {x:?}"
                );
            }
        }
    }
    assert_eq!(done, reqs.len());
    assert!(steps > reqs.len(), "too few steps watched: {steps}");
}

fn requests(rng: &mut ChaCha8Rng, vocab: u32, len: usize) -> Vec<Request> {
    let mut out = Vec::new();
    for (k, steps) in [1usize, 2, 4, 16, 128].into_iter().enumerate() {
        for (m, mode) in [NoiseRemoval::Ancestral, NoiseRemoval::Greedy]
            .into_iter()
            .enumerate()
        {
            for cache in [true, false] {
                let t = random_template(rng, len, vocab);
                out.push(Request {
                    n: 3,
                    len,
                    opts: opts(steps, mode, cache, (10 * k + m) as u64),
                    template: Some(Arc::new(t)),
                });
            }
        }
    }
    out
}

#[test]
fn clamped_positions_never_change_for_any_process_or_sampler() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let masked = Masked::new(V, (V - 1) as u32).unwrap();
    let uniform = Uniform::new(V).unwrap();
    for tc in [false, true] {
        let dit = common::nets::noisy_dit(V, L, tc);
        check_never_changed(&dit, &masked, &requests(&mut rng, (V - 1) as u32, L));
        check_never_changed(&dit, &uniform, &requests(&mut rng, V as u32, L));
        // Shorter rows than the model's length batch with full ones.
        check_never_changed(&dit, &masked, &requests(&mut rng, (V - 1) as u32, 6));
    }
}

#[test]
fn a_clamped_prefix_samples_the_exact_conditional_of_the_toy_world() {
    // p(x) over 3 tokens of 3 values; clamp x0 = 1 and compare the samples of x1 x2 with
    // p(x1, x2 | x0 = 1), which the exact denoiser implies (and nothing else does).
    let mut w = Vec::new();
    for i in 0..27usize {
        let x = [i / 9, (i / 3) % 3, i % 3];
        w.push(
            0.2 + x[0] as f64 * 0.3
                + 6.0 * (x[1] == 2) as u8 as f64
                + 2.0 * (x[0] == x[2]) as u8 as f64
                + (x[1] == x[2]) as u8 as f64,
        );
    }
    let world = ToyWorld::new(3, 3, w.clone()).unwrap();
    let process = Masked::new(world.v + 1, world.mask()).unwrap();
    let den = ExactDenoiser { world: &world };
    let t = Template::prefix(&[1], 3).unwrap();
    let n = 6000;
    let req = Request {
        n,
        len: 3,
        opts: opts(64, NoiseRemoval::Ancestral, true, 3),
        template: Some(Arc::new(t)),
    };
    let out = sample_requests(&den, &process, &[req], 64, None).unwrap();
    let mut counts = [0usize; 9];
    for s in &out[0] {
        assert_eq!(s.ids[0], 1);
        counts[(s.ids[1] * 3 + s.ids[2]) as usize] += 1;
    }
    let z: f64 = w[9..18].iter().sum();
    let mut chi2 = 0.0;
    for j in 0..9 {
        let e = n as f64 * w[9 + j] / z;
        chi2 += (counts[j] as f64 - e).powi(2) / e;
    }
    // 8 degrees of freedom: the 0.999 quantile is 26.1. The unconditional marginal of (x1, x2)
    // would give a chi2 in the hundreds (x0 = x2 is strongly favoured).
    assert!(chi2 < 26.1, "chi2 {chi2}: counts {counts:?}");
}

#[test]
fn a_template_of_the_wrong_length_or_vocabulary_is_refused() {
    let dit = common::nets::noisy_dit(V, L, false);
    let masked = Masked::new(V, (V - 1) as u32).unwrap();
    let mut e = Engine::new(&dit, &masked, 4).unwrap();
    let q = Request {
        n: 1,
        len: L,
        opts: opts(4, NoiseRemoval::Ancestral, true, 1),
        template: Some(Arc::new(Template::prefix(&[1, 2], L - 1).unwrap())),
    };
    let err = e.add(q.clone(), false).unwrap_err().to_string();
    assert!(err.contains("template has 9 positions"), "{err}");
    let q = Request {
        template: Some(Arc::new(Template::prefix(&[99], L).unwrap())),
        ..q
    };
    let err = e.add(q, false).unwrap_err().to_string();
    assert!(err.contains("clamped token 99"), "{err}");
}
