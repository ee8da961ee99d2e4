//! Continuous batching across requests: every live sequence walks its own time grid (its request's
//! step count and noise removal), the sequences that need a prediction share one network call with
//! one sigma per row, and a finished sequence's slot goes to the next waiting one at once.
//!
//! `Engine` is the stepping form (requests join between network calls, watched sequences report
//! their tokens after each call: what `idlm serve` runs); `sample_requests` drives it over a fixed
//! list of requests.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use rayon::prelude::*;

use super::sequence::{Need, Seq, grid};
use super::template::Template;
use super::{Denoiser, Progress, Sample, SamplerOptions};
use crate::process::ForwardProcess;
use crate::{Error, Result};

/// One sampling request: `n` sequences of length `len` under `opts` (its `batch_size` is not read
/// here: the engine's `max_batch` bounds every call).
#[derive(Debug, Clone)]
pub struct Request {
    /// Number of sequences.
    pub n: usize,
    /// Sequence length.
    pub len: usize,
    /// Steps, noise removal, caching and seed of this request.
    pub opts: SamplerOptions,
    /// Clamped positions (a prompt, an infilling template) of every sequence; None: unconditional.
    /// Its length must be `len`.
    pub template: Option<Arc<Template>>,
}

/// Names a request added to an `Engine` (the order of addition: 0, 1, ...).
pub type RequestId = usize;

/// What a step did to a request.
#[derive(Debug, Clone)]
pub enum Event {
    /// A sequence of a watched request after a network call: its tokens now (MASK where still
    /// masked) and the calls spent on it so far.
    Step {
        /// The request.
        request: RequestId,
        /// The sequence's index within it.
        index: usize,
        /// Its tokens.
        ids: Vec<u32>,
        /// Network calls spent on it.
        nfe: usize,
    },
    /// Every sequence of the request is finished: its samples, in index order.
    Done {
        /// The request.
        request: RequestId,
        /// Its samples.
        samples: Vec<Sample>,
    },
}

fn check(den: &dyn Denoiser, r: usize, q: &Request) -> Result<()> {
    if q.opts.steps == 0 {
        return Err(Error::InvalidArgument(format!(
            "request {r}: the number of sampling steps must be at least 1"
        )));
    }
    if q.opts.batch_size == 0 {
        return Err(Error::InvalidArgument(format!(
            "request {r}: batch size must be at least 1"
        )));
    }
    if q.len == 0 || q.len > den.max_len() {
        return Err(Error::InvalidArgument(format!(
            "request {r}: sequence length {} must be in 1..={} (the model's length)",
            q.len,
            den.max_len()
        )));
    }
    if let Some(t) = &q.template
        && t.len() != q.len
    {
        return Err(Error::InvalidArgument(format!(
            "request {r}: its template has {} positions but the sequence length is {}",
            t.len(),
            q.len
        )));
    }
    Ok(())
}

/// A live sequence and the prediction it waits for (None: not advanced yet, or finished).
struct Slot {
    seq: Seq,
    need: Option<Need>,
    done: bool,
}

/// A request being sampled: its finished samples and how many are still to come.
struct Job {
    req: Request,
    watch: bool,
    out: Vec<Option<Sample>>,
    left: usize,
}

/// The continuous-batching sampler, one network call per `step`. Sample i of a request uses stream
/// i of its seed, so its tokens do not depend on what it was batched with or when it was added.
pub struct Engine<'a> {
    den: &'a dyn Denoiser,
    process: &'a dyn ForwardProcess,
    max_batch: usize,
    cache_net: bool,
    grids: HashMap<usize, Arc<Vec<f64>>>,
    jobs: HashMap<RequestId, Job>,
    /// Sequences without a slot yet, oldest request first.
    waiting: VecDeque<(RequestId, Range<usize>)>,
    live: Vec<Slot>,
    /// Events due at the next step (requests of no sequences).
    ready: Vec<Event>,
    next: RequestId,
    finished: usize,
    clock: Instant,
}

impl<'a> Engine<'a> {
    /// An idle engine running `den` under `process`, at most `max_batch` sequences per call.
    pub fn new(
        den: &'a dyn Denoiser,
        process: &'a dyn ForwardProcess,
        max_batch: usize,
    ) -> Result<Self> {
        if max_batch == 0 {
            return Err(Error::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        Ok(Self {
            den,
            process,
            max_batch,
            cache_net: !den.time_conditioned(),
            grids: HashMap::new(),
            jobs: HashMap::new(),
            waiting: VecDeque::new(),
            live: Vec::with_capacity(max_batch),
            ready: Vec::new(),
            next: 0,
            finished: 0,
            clock: Instant::now(),
        })
    }

    /// Queue a request (checked here); its sequences take slots at the next step, after those of
    /// earlier requests. `watch`: report each of its sequences after every network call.
    pub fn add(&mut self, req: Request, watch: bool) -> Result<RequestId> {
        let id = self.next;
        check(self.den, id, &req)?;
        if let Some(t) = &req.template {
            t.check(self.process.vocab_size(), None)?;
        }
        self.next += 1;
        self.grids
            .entry(req.opts.steps)
            .or_insert_with(|| grid(req.opts.steps));
        if req.n == 0 {
            self.ready.push(Event::Done {
                request: id,
                samples: Vec::new(),
            });
            return Ok(id);
        }
        self.waiting.push_back((id, 0..req.n));
        self.jobs.insert(
            id,
            Job {
                out: vec![None; req.n],
                left: req.n,
                req,
                watch,
            },
        );
        Ok(id)
    }

    /// Drop a request's sequences, waiting or live (its client went away); false if unknown.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        if self.jobs.remove(&id).is_none() {
            return false;
        }
        self.waiting.retain(|(r, _)| *r != id);
        self.live.retain(|s| s.seq.request != id);
        true
    }

    /// The requests not finished yet.
    pub fn requests(&self) -> Vec<RequestId> {
        self.jobs.keys().copied().collect()
    }

    /// Nothing to do: no live or waiting sequence and no event due.
    pub fn is_idle(&self) -> bool {
        self.live.is_empty() && self.waiting.is_empty() && self.ready.is_empty()
    }

    /// Sequences finished since the engine was made.
    pub fn finished(&self) -> usize {
        self.finished
    }

    /// Sequences in slots now (the rows of the next network call, before deduplication).
    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// One network call per sequence length for every live sequence (new requests take free slots
    /// first), each sequence's update, and what happened: finished requests, watched sequences.
    pub fn step(&mut self) -> Result<Vec<Event>> {
        let mut ev = std::mem::take(&mut self.ready);
        if self.live.is_empty() {
            // Idle time is nobody's.
            self.clock = Instant::now();
        }
        self.settle(&mut ev);
        if self.live.is_empty() {
            return Ok(ev);
        }
        // One call per sequence length (one request, or requests of the same length, per call).
        let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (j, s) in self.live.iter().enumerate() {
            by_len.entry(s.seq.x.len()).or_default().push(j);
        }
        for members in by_len.values() {
            predict_and_update(self.den, self.process, &mut self.live, members)?;
        }
        // Share the wall time since the last share among the sequences that were live.
        let share = self.clock.elapsed().as_secs_f64() / self.live.len() as f64;
        self.clock = Instant::now();
        for s in &mut self.live {
            s.seq.seconds += share;
        }
        for s in &self.live {
            if self.jobs.get(&s.seq.request).is_some_and(|j| j.watch) {
                ev.push(Event::Step {
                    request: s.seq.request,
                    index: s.seq.index,
                    ids: s.seq.x.clone(),
                    nfe: s.seq.nfe,
                });
            }
        }
        // Finished sequences are reported with this call, and their slots refilled for the next.
        self.settle(&mut ev);
        Ok(ev)
    }

    fn next_waiting(&mut self) -> Option<(RequestId, usize)> {
        let (r, range) = self.waiting.front_mut()?;
        let r = *r;
        let i = range.next()?;
        if range.start >= range.end {
            self.waiting.pop_front();
        }
        Some((r, i))
    }

    /// Fill the free slots and advance every sequence to its next network call; a sequence that
    /// finishes without one frees its slot for the next waiting one.
    fn settle(&mut self, ev: &mut Vec<Event>) {
        let process = self.process;
        loop {
            while self.live.len() < self.max_batch {
                let Some((r, i)) = self.next_waiting() else {
                    break;
                };
                let Some(job) = self.jobs.get(&r) else {
                    continue;
                };
                let q = &job.req;
                let g = Arc::clone(&self.grids[&q.opts.steps]);
                let seq = Seq::new(
                    process,
                    r,
                    i,
                    q.len,
                    q.opts.seed,
                    g,
                    q.opts.noise_removal,
                    q.opts.cache && self.cache_net,
                    !q.opts.cache,
                    q.template.clone(),
                );
                self.live.push(Slot {
                    seq,
                    need: None,
                    done: false,
                });
            }
            self.live
                .par_iter_mut()
                .filter(|s| s.need.is_none())
                .for_each(|s| {
                    s.need = s.seq.advance(process);
                    s.done = s.need.is_none();
                });
            let done: Vec<Slot> = self.live.extract_if(.., |s| s.done).collect();
            let any = !done.is_empty();
            for s in done {
                self.finish(s.seq, ev);
            }
            if !any || self.waiting.is_empty() {
                break;
            }
        }
    }

    fn finish(&mut self, q: Seq, ev: &mut Vec<Event>) {
        let Some(job) = self.jobs.get_mut(&q.request) else {
            return;
        };
        let r = q.request;
        job.out[q.index] = Some(Sample {
            index: q.index,
            ids: q.x,
            nfe: q.nfe,
            seconds: q.seconds,
        });
        job.left -= 1;
        self.finished += 1;
        if job.left == 0
            && let Some(job) = self.jobs.remove(&r)
        {
            ev.push(Event::Done {
                request: r,
                samples: job.out.into_iter().flatten().collect(),
            });
        }
    }
}

/// Sample every request, at most `max_batch` sequences per network call, with continuous batching
/// across requests. Sample i of a request uses stream i of its seed, so its tokens do not depend on
/// what it was batched with. Returns the samples of each request, in order.
pub fn sample_requests(
    den: &dyn Denoiser,
    process: &dyn ForwardProcess,
    requests: &[Request],
    max_batch: usize,
    progress: Option<Progress>,
) -> Result<Vec<Vec<Sample>>> {
    let mut engine = Engine::new(den, process, max_batch)?;
    // Every request is checked before any is sampled; ids are 0, 1, ... in order.
    for q in requests {
        engine.add(q.clone(), false)?;
    }
    let total: usize = requests.iter().map(|q| q.n).sum();
    let mut out: Vec<Option<Vec<Sample>>> = vec![None; requests.len()];
    let mut reported = 0;
    while !engine.is_idle() {
        for e in engine.step()? {
            if let Event::Done { request, samples } = e
                && let Some(o) = out.get_mut(request)
            {
                *o = Some(samples);
            }
        }
        if engine.finished() != reported {
            reported = engine.finished();
            if let Some(p) = progress {
                p(reported, total);
            }
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(r, s)| s.ok_or_else(|| Error::InvalidArgument(format!("request {r}: sample lost"))))
        .collect()
}

/// One network call for the live sequences `members` (all of one length), then each one's update.
fn predict_and_update(
    den: &dyn Denoiser,
    process: &dyn ForwardProcess,
    live: &mut [Slot],
    members: &[usize],
) -> Result<()> {
    let len = live[members[0]].seq.x.len();
    let mut ids = Vec::with_capacity(members.len() * len);
    let mut sigma: Vec<f32> = Vec::with_capacity(members.len());
    let mut flat = Vec::new();
    let mut at = Vec::new();
    {
        // Members with the same x_t and sigma get the same prediction, so each distinct row is
        // computed once: at the first step of unconditional sampling every row is all-mask at
        // t = 1, and the call shrinks to one sequence (a quarter of a 4-step sampler's work).
        let mut distinct: HashMap<(&[u32], u32), u32> = HashMap::new();
        for &j in members {
            let s = &live[j];
            let need = s.need.as_ref().ok_or_else(|| {
                Error::InvalidArgument("a sequence without a pending prediction was batched".into())
            })?;
            let sg = process.sigma(need.t) as f32;
            let row = *distinct
                .entry((s.seq.x.as_slice(), sg.to_bits()))
                .or_insert_with(|| {
                    ids.extend_from_slice(&s.seq.x);
                    sigma.push(sg);
                    (sigma.len() - 1) as u32
                });
            for &p in &need.positions {
                flat.push(row * len as u32 + p);
                at.push(s.seq.x[p as usize]);
            }
        }
    }
    let b = sigma.len();
    if flat.is_empty() {
        for &j in members {
            let s = &mut live[j];
            if let Some(need) = s.need.take() {
                s.seq.receive(process, &need, &[], 0);
            }
        }
        return Ok(());
    }
    let dev = den.device();
    let xt = Tensor::from_slice(&ids, (b, len), &dev)?;
    let sigma = Tensor::from_vec(sigma, b, &dev)?;
    let logits = den.logits(&xt, &sigma, Some(&flat))?;
    let v = logits.dim(1)?;
    let rows = process.clean_probs(&logits, &at)?;
    // Each member's rows are one run of `rows`, in member order.
    let mut offsets = Vec::with_capacity(members.len());
    let mut o = 0;
    for &j in members {
        let n = live[j].need.as_ref().map_or(0, |n| n.positions.len());
        offsets.push((j, o, n));
        o += n;
    }
    let mut slots: Vec<(&mut Slot, usize, usize)> = {
        let mut by_index: Vec<Option<&mut Slot>> = live.iter_mut().map(Some).collect();
        offsets
            .iter()
            .filter_map(|&(j, o, n)| by_index[j].take().map(|s| (s, o, n)))
            .collect()
    };
    slots.par_iter_mut().for_each(|(s, o, n)| {
        if let Some(need) = s.need.take() {
            s.seq
                .receive(process, &need, &rows[*o * v..(*o + *n) * v], v);
        }
    });
    Ok(())
}
