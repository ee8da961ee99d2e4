//! Pieces every distiller shares: its networks started from a teacher or resumed from a
//! checkpoint, a network's logits at chosen positions, batch corruption, the time pairs of a
//! phase, and the random streams of a distillation run.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::config::{DistillConfig, TimeCoupling};
pub use super::state::DistillRngs;
use super::state::{Loaded, restore_tensors};
use crate::config::RunConfig;
use crate::nn::DitConfig;
pub use crate::process::relaxation::{active, corrupt, logits_at};
use crate::process::schedule::antithetic_times;
use crate::trainer::Trainer;
use crate::{Error, Result};

/// The (t', t) pairs of one update's `n` samples: t' is stratified over the accumulated batch; t
/// is a second stratified draw paired with it by stratum (shared) or shuffled (independent).
pub fn phase_times(n: usize, coupling: TimeCoupling, rng: &mut ChaCha8Rng) -> (Vec<f64>, Vec<f64>) {
    let tp = antithetic_times(n, rng);
    let mut t = antithetic_times(n, rng);
    if coupling == TimeCoupling::Independent {
        t.shuffle(rng);
    }
    (tp, t)
}

/// Per-position times (B x L) from per-row times.
pub fn per_position(t: &[f64], l: usize) -> Vec<f64> {
    t.iter()
        .flat_map(|&ti| std::iter::repeat_n(ti, l))
        .collect()
}

/// Which network of a distillation run a trainer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The student G.
    Student,
    /// IDLM's fake f: its own dropout stream (seed + 1).
    Fake,
}

/// The training config of one network of a run (the fake's seed is offset so its dropout
/// stream differs from the student's).
fn role_config(net_cfg: &RunConfig, cfg: &DistillConfig, role: Role) -> RunConfig {
    let mut c = net_cfg.clone();
    if role == Role::Fake {
        c.train.seed = cfg.seed.wrapping_add(1);
    }
    c
}

/// A network of a fresh run, starting from `weights` (the teacher's EMA weights), with the run's
/// dropout and optimiser settings and fresh AdamW state.
pub fn start_net(
    cfg: &DistillConfig,
    teacher_cfg: &RunConfig,
    arch: &DitConfig,
    weights: &HashMap<String, Tensor>,
    origin: &Path,
    role: Role,
) -> Result<Trainer> {
    let mut arch = arch.clone();
    arch.dropout = cfg.dropout;
    let c = role_config(&cfg.network_config(teacher_cfg), cfg, role);
    Trainer::from_weights(&c, &arch, weights, origin)
}

/// A network of a distillation checkpoint with its weights, EMA, AdamW state, counters and
/// streams: the student from the checkpoint itself, the fake from its own file.
pub fn resume_net(l: &Loaded, role: Role) -> Result<Trainer> {
    let dir = &l.ck.dir;
    let c = role_config(&l.ck.meta.config, &l.state.config, role);
    let mut tr = Trainer::new(&c, &l.ck.meta.model)?;
    match role {
        Role::Student => {
            let ema =
                l.ck.ema
                    .as_ref()
                    .ok_or_else(|| Error::ckpt(dir, "no student EMA: cannot resume"))?;
            tr.restore(&l.ck.weights, ema, &l.ck.optim()?, "", dir)?;
            l.state.student.apply(&mut tr);
        }
        Role::Fake => {
            let (Some(state), Some(t)) = (&l.state.fake, &l.fake) else {
                return Err(Error::ckpt(dir, "fake network file missing"));
            };
            restore_tensors(&mut tr, t, "", dir)?;
            state.apply(&mut tr);
        }
    }
    Ok(tr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn shared_times_share_a_stratum_and_independent_ones_do_not() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let n = 64;
        let (tp, t) = phase_times(n, TimeCoupling::Shared, &mut rng);
        assert!(
            tp.iter()
                .zip(&t)
                .all(|(a, b)| (a - b).abs() < 1.0 / n as f64)
        );
        let (tp, t) = phase_times(n, TimeCoupling::Independent, &mut rng);
        let far = tp
            .iter()
            .zip(&t)
            .filter(|(a, b)| (*a - *b).abs() > 0.25)
            .count();
        assert!(far > n / 8, "{far}");
    }
}
