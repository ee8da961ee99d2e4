//! IDLM in an exact toy world (docs/toy-world.md): the student's training-time distribution
//! p_theta = E_eps[prod_l G_l(eps)], the exact objective J = L(f*, p_theta) - min_f L(f, p_theta),
//! and the exact distribution a K-step ancestral sampler produces, all by enumeration.

use candle_core::{Device, Tensor};

use crate::process::LogLinear;
use crate::process::schedule::{SAMPLING_EPS, T_FINAL, sampling_grid};
use crate::sample::Denoiser;
use crate::toy::world::{ToyWorld, gauss_legendre};
use crate::{Error, Result};

/// A denoiser tabulated on every noisy state: `table[s]` is l x v (row-major) for the state
/// `world.noisy_states()[s]`, one-hot at unmasked positions (SUBS).
pub type Table = Vec<Vec<f64>>;

/// Index of a noisy state in `world.noisy_states()` order.
pub fn state_index(world: &ToyWorld, xt: &[u32]) -> usize {
    xt.iter()
        .fold(0, |acc, &t| acc * (world.v + 1) + t as usize)
}

/// Tabulate a (non-time-conditioned) denoiser with the SUBS parameterisation.
pub fn tabulate(world: &ToyWorld, den: &dyn Denoiser) -> Result<Table> {
    let states = world.noisy_states();
    let (n, l, v) = (states.len(), world.l, world.v);
    let ids: Vec<u32> = states.iter().flatten().copied().collect();
    let xt = Tensor::from_vec(ids.clone(), (n, l), &Device::Cpu)?;
    let sigma = Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu)?;
    let logits = den.logits(&xt, &sigma, None)?.to_vec2::<f32>()?;
    let mut out = Vec::with_capacity(n);
    for (s, x) in states.iter().enumerate() {
        let mut row = vec![0f64; l * v];
        for pos in 0..l {
            let r = &mut row[pos * v..(pos + 1) * v];
            if x[pos] != world.mask() {
                r[x[pos] as usize] = 1.0;
                continue;
            }
            // Softmax over the clean tokens (the MASK column is excluded by SUBS).
            let z = &logits[s * l + pos][..v];
            let mx = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let e: Vec<f64> = z.iter().map(|&zi| (zi as f64 - mx).exp()).collect();
            let sum: f64 = e.iter().sum();
            r.iter_mut().zip(&e).for_each(|(o, ei)| *o = ei / sum);
        }
        out.push(row);
    }
    Ok(out)
}

/// The exact denoiser of p* as a table (uniform at states p* cannot produce).
pub fn teacher_table(world: &ToyWorld) -> Table {
    world
        .noisy_states()
        .iter()
        .map(|x| {
            world
                .denoiser(x)
                .unwrap_or_else(|| vec![1.0 / world.v as f64; world.l * world.v])
        })
        .collect()
}

/// q_t(x_t | x0) of the masked process.
fn q_t(world: &ToyWorld, xt: &[u32], x0: &[u32], alpha: f64) -> f64 {
    xt.iter()
        .zip(x0)
        .map(|(&a, &b)| {
            if a == world.mask() {
                1.0 - alpha
            } else if a == b {
                alpha
            } else {
                0.0
            }
        })
        .product()
}

/// Mean over t ~ U[t_min, 1] of `f(t)` by 48-point Gauss-Legendre.
fn time_mean(t_min: f64, f: impl Fn(f64) -> f64) -> f64 {
    let (x, w) = gauss_legendre(48);
    x.iter()
        .zip(&w)
        .map(|(xi, wi)| wi / 2.0 * f(t_min + (1.0 - t_min) * (xi + 1.0) / 2.0))
        .sum()
}

/// p_theta(x) = E_{x0 ~ p*, t' ~ U[1e-3, 1], x_t' ~ q_t'}[prod_l G_l(x_t')[x_l]] over clean x.
pub fn p_theta(world: &ToyWorld, g: &Table, schedule: LogLinear) -> Vec<f64> {
    let states = world.noisy_states();
    // Distribution of the student's input state x_t'.
    let q_in: Vec<f64> = states
        .iter()
        .map(|xt| {
            time_mean(SAMPLING_EPS, |t| {
                let a = schedule.alpha(t);
                (0..world.p.len())
                    .map(|i| world.p[i] * q_t(world, xt, &world.decode(i), a))
                    .sum()
            })
        })
        .collect();
    (0..world.p.len())
        .map(|i| {
            let x = world.decode(i);
            states
                .iter()
                .enumerate()
                .map(|(s, _)| {
                    q_in[s]
                        * (0..world.l)
                            .map(|pos| g[s][pos * world.v + x[pos] as usize])
                            .product::<f64>()
                })
                .sum()
        })
        .collect()
}

/// KL(p || q) in nats (infinite where q = 0 < p).
pub fn kl(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|(pi, _)| **pi > 0.0)
        .map(|(pi, qi)| {
            if *qi <= 0.0 {
                f64::INFINITY
            } else {
                pi * (pi / qi).ln()
            }
        })
        .sum()
}

/// Entropy in nats.
pub fn entropy(p: &[f64]) -> f64 {
    -p.iter()
        .filter(|&&x| x > 0.0)
        .map(|x| x * x.ln())
        .sum::<f64>()
}

/// The exact IDLM objective J = E_t (1/t) E_{x_t ~ q_t o p} sum over masked l of
/// KL(p(x0_l | x_t) || f*_l(x_t)), t ~ U[1e-3, 1], with f* the exact denoiser of p*.
pub fn objective(world: &ToyWorld, p: &[f64], schedule: LogLinear) -> Result<f64> {
    if p.len() != world.p.len() {
        return Err(Error::InvalidArgument(format!(
            "a distribution over {} sequences for a world of {}",
            p.len(),
            world.p.len()
        )));
    }
    let states = world.noisy_states();
    let sub = ToyWorld {
        v: world.v,
        l: world.l,
        p: p.to_vec(),
    };
    let teacher = teacher_table(world);
    let mut terms = Vec::with_capacity(states.len());
    for (s, xt) in states.iter().enumerate() {
        let Some(post) = sub.denoiser(xt) else {
            terms.push(None);
            continue;
        };
        let mut k = 0.0;
        for (pos, &x) in xt.iter().enumerate() {
            if x != world.mask() {
                continue;
            }
            let r = pos * world.v..(pos + 1) * world.v;
            k += kl(&post[r.clone()], &teacher[s][r]);
        }
        terms.push(Some(k));
    }
    Ok(time_mean(SAMPLING_EPS, |t| {
        let a = schedule.alpha(t);
        let inner: f64 = states
            .iter()
            .zip(&terms)
            .filter_map(|(xt, term)| {
                let term = (*term)?;
                let q: f64 = (0..p.len())
                    .map(|i| p[i] * q_t(world, xt, &world.decode(i), a))
                    .sum();
                Some(q * term)
            })
            .sum();
        inner / t
    }))
}

/// The exact distribution over clean sequences of the K-step ancestral sampler (grid
/// linspace(1, 1e-5, K + 1), ancestral noise removal) driven by a tabulated denoiser.
pub fn k_step_distribution(world: &ToyWorld, g: &Table, k: usize, schedule: LogLinear) -> Vec<f64> {
    let states = world.noisy_states();
    let mut dist = vec![0f64; states.len()];
    dist[state_index(world, &vec![world.mask(); world.l])] = 1.0;
    let grid = sampling_grid(k);
    let dt = (1.0 - T_FINAL) / k as f64;
    let step = |dist: &Vec<f64>, t: f64, s: f64| -> Vec<f64> {
        let (at, as_) = (schedule.alpha(t), schedule.alpha(s));
        let reveal = ((as_ - at) / (1.0 - at)).clamp(0.0, 1.0);
        let mut next = vec![0f64; states.len()];
        for (si, x) in states.iter().enumerate() {
            if dist[si] == 0.0 {
                continue;
            }
            // Each masked position independently stays or reveals a token from G.
            let mut outs: Vec<(Vec<u32>, f64)> = vec![(x.clone(), dist[si])];
            for pos in 0..world.l {
                if x[pos] != world.mask() {
                    continue;
                }
                let mut grown = Vec::new();
                for (y, w) in outs {
                    grown.push((y.clone(), w * (1.0 - reveal)));
                    for tok in 0..world.v {
                        let pr = g[si][pos * world.v + tok];
                        let mut z = y.clone();
                        z[pos] = tok as u32;
                        grown.push((z, w * reveal * pr));
                    }
                }
                outs = grown;
            }
            for (y, w) in outs {
                next[state_index(world, &y)] += w;
            }
        }
        next
    };
    for &t in grid.iter().take(k) {
        dist = step(&dist, t, t - dt);
    }
    // Noise removal: one more ancestral update to alpha = 1.
    dist = step(&dist, T_FINAL, 0.0);
    (0..world.p.len())
        .map(|i| dist[state_index(world, &world.decode(i))])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference numbers of docs/toy-world.md, with the student equal to the exact teacher.
    #[test]
    fn reference_numbers_at_init() {
        let w = ToyWorld::two_by_two();
        let s = LogLinear::default();
        let g = teacher_table(&w);
        let p = p_theta(&w, &g, s);
        let want = [0.3834, 0.1166, 0.1166, 0.3834];
        for (a, b) in p.iter().zip(want) {
            assert!((a - b).abs() < 1e-4, "{p:?}");
        }
        let j = objective(&w, &p, s).unwrap();
        assert!((j - 0.07449).abs() < 2e-4, "J = {j}");
        assert!((kl(&p, &w.p) - 0.07464).abs() < 1e-4);
        // The teacher's K-step distributions of the table in docs/toy-world.md.
        for (k, want) in [
            (1, 0.5108),
            (2, 0.1537),
            (4, 0.0444),
            (8, 0.0122),
            (64, 0.0002),
        ] {
            let pk = k_step_distribution(&w, &g, k, s);
            assert!((pk.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert!(
                (kl(&pk, &w.p) - want).abs() < 1e-4,
                "K = {k}: {}",
                kl(&pk, &w.p)
            );
        }
    }
}
