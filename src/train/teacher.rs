//! What a diffusion teacher minimises: the NELBO of its forward process, through Duo's Gaussian
//! curriculum (soft inputs at temperature tau) while the curriculum lasts. The trainer core is
//! given this object; it never asks which process it trains.

use crate::Result;
use crate::config::RunConfig;
use crate::data::PackedTokens;
use crate::nn::DropoutRng;
use crate::process::ForwardProcess;
use crate::process::curriculum::DuoCurriculum;
use crate::process::schedule::antithetic_times;
use crate::trainer::{StepStats, Trainer};

use super::losses::prompted_batch_loss;
use crate::data::pairs::{RowLayout, clamp_prompts, prompt_lens};

/// A teacher's training objective: a process and, for Duo, its curriculum.
pub struct DiffusionObjective<'a> {
    process: &'a dyn ForwardProcess,
    curriculum: Option<DuoCurriculum>,
    layout: RowLayout,
}

impl<'a> DiffusionObjective<'a> {
    /// The plain NELBO of `process`, with a Gaussian curriculum in front when one is given.
    pub fn new(process: &'a dyn ForwardProcess, curriculum: Option<DuoCurriculum>) -> Self {
        Self {
            process,
            curriculum,
            layout: RowLayout::Stream,
        }
    }

    /// Train on rows of this layout: a pairs layout clamps each row's prompt (never noised, not
    /// in the loss), in Duo's Gaussian curriculum as after it.
    pub fn with_layout(mut self, layout: RowLayout) -> Result<Self> {
        self.layout = layout;
        Ok(self)
    }

    /// The row layout trained on.
    pub fn layout(&self) -> &RowLayout {
        &self.layout
    }

    /// The objective a run config asks for: Duo's curriculum when `duo.curriculum_end > 0`
    /// (its T(gamma) table built once into the cache).
    pub fn from_config(cfg: &RunConfig, process: &'a dyn ForwardProcess) -> Result<Self> {
        let curriculum = match process.kind() {
            crate::process::ProcessKind::Duo if cfg.duo.curriculum_end > 0 => {
                let dir = crate::data::cache_dir().join("duality");
                Some(DuoCurriculum::new(&cfg.duo, process.vocab_size(), &dir)?)
            }
            _ => None,
        };
        Ok(Self::new(process, curriculum))
    }

    /// The process.
    pub fn process(&self) -> &dyn ForwardProcess {
        self.process
    }

    /// One optimizer step over `grad_accum` micro-batches of fresh rows.
    pub fn step(&self, tr: &mut Trainer, data: &PackedTokens) -> Result<StepStats> {
        let t = tr.cfg.train.clone();
        let (b, l) = (t.batch_size, data.row_len());
        let tokens = (b * l * t.grad_accum) as u64;
        let p = tr.arch.dropout;
        // Strata cover the whole accumulated batch; each micro-batch takes a contiguous run.
        let times = antithetic_times(b * t.grad_accum, &mut tr.rngs.time);
        let tau = self.curriculum.as_ref().and_then(|c| c.tau(tr.step + 1));
        if let (Some(c), Some(tau)) = (&self.curriculum, tau) {
            let dev = tr.model.device().clone();
            let mut batches = Vec::with_capacity(t.grad_accum);
            for micro in 0..t.grad_accum {
                let x0 = tr.next_rows(data, b)?;
                let tt = &times[micro * b..(micro + 1) * b];
                let prompts = prompt_lens(&x0, l, &self.layout);
                let relaxed = c.corrupt(&x0, l, tt, &prompts, tau, &mut tr.rngs.noise, &dev)?;
                batches.push((x0, relaxed, prompts));
            }
            return tr.optimize(tokens, |model, micro, rng| {
                let (x0, relaxed, prompts) = &batches[micro];
                c.batch_loss(
                    model,
                    x0,
                    relaxed,
                    prompts,
                    Some(&mut DropoutRng { p, rng }),
                )
            });
        }
        let mut batches = Vec::with_capacity(t.grad_accum);
        for micro in 0..t.grad_accum {
            let x0 = tr.next_rows(data, b)?;
            let tt = times[micro * b..(micro + 1) * b].to_vec();
            let mut xt = vec![0u32; b * l];
            for (r, &ti) in tt.iter().enumerate() {
                let row = r * l..(r + 1) * l;
                self.process
                    .corrupt_row(&x0[row.clone()], ti, &mut tr.rngs.noise, &mut xt[row]);
            }
            let prompts = prompt_lens(&x0, l, &self.layout);
            clamp_prompts(&x0, &mut xt, l, &prompts);
            batches.push((x0, xt, tt, prompts));
        }
        let process = self.process;
        tr.optimize(tokens, |model, micro, rng| {
            let (x0, xt, tt, prompts) = &batches[micro];
            let mut drop = DropoutRng { p, rng };
            prompted_batch_loss(model, process, x0, xt, b, l, tt, prompts, Some(&mut drop))
        })
    }
}
