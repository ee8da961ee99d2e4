//! The AR baseline served the way the diffusion engine is: requests join between network calls
//! and each `step` decodes one more token of every running request. Each request is one KV-cache
//! batch of its own (caches of different lengths do not share a call), so concurrent AR requests
//! interleave rather than batch.

use std::collections::BTreeMap;

use crate::ar::{ArBatch, ArSamplerOptions};
use crate::nn::CausalLm;
use crate::sample::{Event, RequestId};
use crate::{Error, Result};

/// A running AR request.
struct Running {
    batch: ArBatch,
    len: usize,
    watch: bool,
}

/// Stepping AR sampler over many requests.
pub struct ArEngine {
    model: CausalLm,
    bos: u32,
    mask: u32,
    running: BTreeMap<RequestId, Running>,
    ready: Vec<Event>,
    next: RequestId,
}

impl ArEngine {
    /// An idle engine; sequences start at `bos` and never draw `mask`.
    pub fn new(model: CausalLm, bos: u32, mask: u32) -> Self {
        Self {
            model,
            bos,
            mask,
            running: BTreeMap::new(),
            ready: Vec::new(),
            next: 0,
        }
    }

    /// Start `n` sequences of `len` tokens under `opts` at the next step.
    pub fn add(
        &mut self,
        n: usize,
        len: usize,
        opts: &ArSamplerOptions,
        watch: bool,
    ) -> Result<RequestId> {
        opts.validate()?;
        let max = self.model.config().length;
        if len == 0 || len > max {
            return Err(Error::InvalidArgument(format!(
                "sequence length {len} must be in 1..={max} (the model's length)"
            )));
        }
        let id = self.next;
        self.next += 1;
        if n == 0 {
            self.ready.push(Event::Done {
                request: id,
                samples: Vec::new(),
            });
            return Ok(id);
        }
        let batch = ArBatch::new(&self.model, 0..n, len, self.bos, Some(self.mask), opts);
        self.running.insert(id, Running { batch, len, watch });
        Ok(id)
    }

    /// Drop a request; false if unknown.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        self.running.remove(&id).is_some()
    }

    /// The requests not finished yet.
    pub fn requests(&self) -> Vec<RequestId> {
        self.running.keys().copied().collect()
    }

    /// Nothing running and no event due.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.ready.is_empty()
    }

    /// One more token of every running request; watched ones report their sequences (the tokens
    /// not decoded yet shown as MASK), finished ones their samples.
    pub fn step(&mut self) -> Result<Vec<Event>> {
        let mut ev = std::mem::take(&mut self.ready);
        let mut done = Vec::new();
        for (&id, r) in &mut self.running {
            if !r.batch.is_done() {
                r.batch.step(&self.model)?;
                if r.watch {
                    for (index, s) in r.batch.seqs().iter().enumerate() {
                        let mut ids = s.clone();
                        ids.resize(r.len, self.mask);
                        ev.push(Event::Step {
                            request: id,
                            index,
                            ids,
                            nfe: s.len() - 1,
                        });
                    }
                }
            }
            if r.batch.is_done() {
                done.push(id);
            }
        }
        for id in done {
            if let Some(r) = self.running.remove(&id) {
                ev.push(Event::Done {
                    request: id,
                    samples: r.batch.finish(),
                });
            }
        }
        Ok(ev)
    }
}
