//! The AR baseline served the way the diffusion engine is: requests join between network calls
//! and each `step` decodes one more token of every running request in one network call. Each
//! request keeps a KV cache of its own (they hold different numbers of positions); the projections
//! and MLP of all of them share the call (`CausalLm::step_many`), attention runs per cache.

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

    /// Start `n` sequences of `len` tokens under `opts` at the next step, from `prefix` (BOS
    /// and a prompt; empty: BOS alone).
    pub fn add(
        &mut self,
        n: usize,
        len: usize,
        prefix: &[u32],
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
        let bos = [self.bos];
        let prefix = if prefix.is_empty() { &bos[..] } else { prefix };
        crate::ar::sample::check_prefix(prefix, len, self.model.config().vocab_size)?;
        let id = self.next;
        self.next += 1;
        if n == 0 {
            self.ready.push(Event::Done {
                request: id,
                samples: Vec::new(),
            });
            return Ok(id);
        }
        let batch = ArBatch::new(&self.model, 0..n, len, prefix, Some(self.mask), opts);
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
        let stepped: Vec<RequestId> = self
            .running
            .iter()
            .filter(|(_, r)| !r.batch.is_done())
            .map(|(&id, _)| id)
            .collect();
        let live: Vec<&mut Running> = self
            .running
            .values_mut()
            .filter(|r| !r.batch.is_done())
            .collect();
        if !live.is_empty() {
            let ids: Vec<u32> = live.iter().flat_map(|r| r.batch.current()).collect();
            let mut live = live;
            let logits = {
                let mut caches: Vec<&mut crate::nn::KvCache> =
                    live.iter_mut().map(|r| r.batch.cache_mut()).collect();
                self.model.step_many(&mut caches, &ids)?
            };
            let v = logits.dim(1)?;
            let flat = logits.flatten_all()?.to_vec1::<f32>()?;
            let mut row = 0;
            for r in live {
                let n = r.batch.seqs().len();
                r.batch.accept(&flat[row * v..(row + n) * v])?;
                row += n;
            }
        }
        let mut done = Vec::new();
        for (&id, r) in &self.running {
            if r.watch && stepped.contains(&id) {
                let prefix = r.batch.prefix();
                for (index, s) in r.batch.seqs().iter().enumerate() {
                    // The prompt is given whole, even while the cache is still being filled.
                    let mut ids = s.clone();
                    if ids.len() < prefix.len() {
                        ids.extend_from_slice(&prefix[ids.len()..]);
                    }
                    ids.resize(r.len, self.mask);
                    ev.push(Event::Step {
                        request: id,
                        index,
                        ids,
                        nfe: s.len() - 1,
                    });
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
