//! One sequence's walk down its own time grid: which steps need the network, at which positions,
//! and the update once the prediction is there. Each sequence carries its own grid and random
//! stream, so sequences of different requests (step counts, noise removal) share network calls.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::template::Template;
use crate::process::schedule::{T_FINAL, sampling_grid};
use crate::process::{ForwardProcess, NoiseRemoval, StepPlan, argmax, draw_f64};

/// What a sequence needs from the next network call: p(x0 | x_t) at time `t` at `positions`
/// (ascending indices into the row).
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    /// Time of the prediction.
    pub t: f64,
    /// Positions whose clean-token distribution is needed.
    pub positions: Vec<u32>,
}

/// The update waiting for a prediction.
enum Pending {
    /// Set these positions (ascending) by a draw, or by the argmax when `greedy`, from their rows.
    Reveal { pos: Vec<u32>, greedy: bool },
    /// `posterior_row` / `noise_removal_row` on the whole table.
    Full,
}

/// A sequence being sampled.
pub struct Seq {
    /// Which request it belongs to.
    pub request: usize,
    /// Its index within the request (its random stream).
    pub index: usize,
    /// Current x_t.
    pub x: Vec<u32>,
    /// Network calls spent on it.
    pub nfe: usize,
    /// Wall-clock seconds attributed to it (each call's time shared by the sequences in it).
    pub seconds: f64,
    rng: ChaCha8Rng,
    grid: std::sync::Arc<Vec<f64>>,
    dt: f64,
    /// Next step: 0..K are reverse steps grid[k] -> grid[k] - dt, K is the noise removal, K + 1 done.
    k: usize,
    mode: NoiseRemoval,
    /// The last prediction may be reused while x_t is unchanged (a network without time input).
    cache_ok: bool,
    /// Call the network at every step, as the reference sampler does, even when the step's plan
    /// needs no prediction (for cost comparisons; same samples).
    every_step: bool,
    /// The L x V table of p(x0 | x_t) of the last Full prediction (Reveal steps read the rows of
    /// the call directly).
    probs: Vec<f32>,
    /// Whether `probs` is the full-table prediction for the current x (Full plans only).
    fresh: bool,
    pending: Option<Pending>,
    /// Positions no step may change (a prompt, the text around infilling holes).
    template: Option<std::sync::Arc<Template>>,
}

/// The grid shared by every sequence of one step count.
pub fn grid(steps: usize) -> std::sync::Arc<Vec<f64>> {
    std::sync::Arc::new(sampling_grid(steps))
}

impl Seq {
    /// Draw x_1 from the prior on stream `index` of `seed`, then put the template's clamped tokens
    /// in (the draws at clamped positions are made and discarded, so the free positions get the
    /// same draws with or without a template).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        process: &dyn ForwardProcess,
        request: usize,
        index: usize,
        len: usize,
        seed: u64,
        grid: std::sync::Arc<Vec<f64>>,
        mode: NoiseRemoval,
        cache_ok: bool,
        every_step: bool,
        template: Option<std::sync::Arc<Template>>,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(index as u64);
        let mut x = vec![0u32; len];
        process.prior_row(&mut x, &mut rng);
        if let Some(t) = &template {
            t.apply(&mut x);
        }
        let steps = grid.len() - 1;
        Self {
            request,
            index,
            x,
            nfe: 0,
            seconds: 0.0,
            rng,
            grid,
            dt: (1.0 - T_FINAL) / steps as f64,
            k: 0,
            mode,
            cache_ok,
            every_step,
            probs: Vec::new(),
            fresh: false,
            pending: None,
            template,
        }
    }

    fn steps(&self) -> usize {
        self.grid.len() - 1
    }

    /// Walk through every step that needs no prediction (a masked step that reveals nothing, a
    /// cached prediction) and stop at the next one that does: Some(need), or None when finished.
    pub fn advance(&mut self, process: &dyn ForwardProcess) -> Option<Need> {
        debug_assert!(self.pending.is_none(), "advance with an update pending");
        loop {
            let steps = self.steps();
            if self.k > steps || process.is_final(&self.x) {
                self.k = steps + 1;
                return None;
            }
            let last = self.k == steps;
            let t = if last { T_FINAL } else { self.grid[self.k] };
            let plan = if last {
                process.plan_noise_removal(&self.x, t, self.mode, &mut self.rng)
            } else {
                process.plan_step(&self.x, t, t - self.dt, &mut self.rng)
            };
            match plan {
                StepPlan::Reveal(pos) if pos.is_empty() && !self.every_step => self.k += 1,
                StepPlan::Reveal(pos) => {
                    let positions = if self.every_step {
                        self.active(process)
                    } else {
                        pos.clone()
                    };
                    let greedy = last && self.mode == NoiseRemoval::Greedy;
                    self.pending = Some(Pending::Reveal { pos, greedy });
                    return Some(Need { t, positions });
                }
                StepPlan::Full if self.fresh => self.apply_full(process),
                StepPlan::Full => {
                    self.pending = Some(Pending::Full);
                    return Some(Need {
                        t,
                        positions: self.active(process),
                    });
                }
            }
        }
    }

    /// Positions a full prediction must cover (MDLM: the masked ones; Duo: all).
    fn active(&self, process: &dyn ForwardProcess) -> Vec<u32> {
        process
            .active_positions(&self.x)
            .unwrap_or_else(|| (0..self.x.len() as u32).collect())
    }

    /// Take the prediction for the last `Need` (`rows`: one row of `v` probabilities per needed
    /// position, in order) and make the pending update.
    pub fn receive(&mut self, process: &dyn ForwardProcess, need: &Need, rows: &[f32], v: usize) {
        self.nfe += 1;
        match self.pending.take() {
            Some(Pending::Reveal { pos, greedy }) => {
                for &l in &pos {
                    // `pos` is a subset of the (ascending) needed positions.
                    let r = need.positions.partition_point(|&h| h < l);
                    let row = &rows[r * v..(r + 1) * v];
                    self.x[l as usize] = if greedy {
                        argmax(row) as u32
                    } else {
                        draw_f64(row, &mut self.rng) as u32
                    };
                }
                self.fresh = false;
                self.k += 1;
            }
            Some(Pending::Full) => {
                let len = self.x.len();
                if self.probs.len() != len * v {
                    // Rows a process never reads (MDLM's unmasked ones) may hold anything.
                    self.probs = vec![0f32; len * v];
                }
                for (r, &l) in need.positions.iter().enumerate() {
                    let l = l as usize;
                    self.probs[l * v..(l + 1) * v].copy_from_slice(&rows[r * v..(r + 1) * v]);
                }
                self.fresh = true;
                self.apply_full(process);
            }
            None => {}
        }
    }

    fn apply_full(&mut self, process: &dyn ForwardProcess) {
        let steps = self.steps();
        let changed = if self.k < steps {
            let t = self.grid[self.k];
            process.posterior_row(&self.probs, &mut self.x, t, t - self.dt, &mut self.rng)
        } else {
            process.noise_removal_row(&self.probs, &mut self.x, T_FINAL, self.mode, &mut self.rng)
        };
        // A process that may move any token (Duo) moved clamped ones too: put them back.
        let restored = self.template.as_ref().is_some_and(|t| t.apply(&mut self.x));
        self.fresh = !changed && !restored && self.cache_ok;
        self.k += 1;
    }
}
