//! Continuous batching across requests: every live sequence walks its own time grid (its request's
//! step count and noise removal), the sequences that need a prediction share one network call with
//! one sigma per row, and a finished sequence's slot goes to the next waiting one at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use rayon::prelude::*;

use super::sequence::{Need, Seq, grid};
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
    Ok(())
}

/// A live sequence and the prediction it waits for (None: not advanced yet, or finished).
struct Slot {
    seq: Seq,
    need: Option<Need>,
    done: bool,
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
    if max_batch == 0 {
        return Err(Error::InvalidArgument(
            "batch size must be at least 1".into(),
        ));
    }
    for (r, q) in requests.iter().enumerate() {
        check(den, r, q)?;
    }
    let cache_net = !den.time_conditioned();
    let mut grids: HashMap<usize, Arc<Vec<f64>>> = HashMap::new();
    for q in requests {
        grids
            .entry(q.opts.steps)
            .or_insert_with(|| grid(q.opts.steps));
    }
    let total: usize = requests.iter().map(|q| q.n).sum();
    let mut queue = requests
        .iter()
        .enumerate()
        .flat_map(|(r, q)| (0..q.n).map(move |i| (r, i)));
    let mut out: Vec<Vec<Option<Sample>>> = requests.iter().map(|q| vec![None; q.n]).collect();
    let mut finished = 0usize;
    let mut live: Vec<Slot> = Vec::with_capacity(max_batch);
    let mut clock = Instant::now();
    loop {
        // Fill the free slots and advance every sequence to its next network call; a sequence that
        // finishes without one frees its slot for the next waiting one.
        loop {
            while live.len() < max_batch {
                let Some((r, i)) = queue.next() else { break };
                let q = &requests[r];
                let g = Arc::clone(&grids[&q.opts.steps]);
                let seq = Seq::new(
                    process,
                    r,
                    i,
                    q.len,
                    q.opts.seed,
                    g,
                    q.opts.noise_removal,
                    q.opts.cache && cache_net,
                    !q.opts.cache,
                );
                live.push(Slot {
                    seq,
                    need: None,
                    done: false,
                });
            }
            live.par_iter_mut()
                .filter(|s| s.need.is_none())
                .for_each(|s| {
                    s.need = s.seq.advance(process);
                    s.done = s.need.is_none();
                });
            let before = live.len();
            for s in live.extract_if(.., |s| s.done) {
                let q = s.seq;
                out[q.request][q.index] = Some(Sample {
                    index: q.index,
                    ids: q.x,
                    nfe: q.nfe,
                    seconds: q.seconds,
                });
                finished += 1;
            }
            if live.len() < before
                && let Some(p) = progress
            {
                p(finished, total);
            }
            if live.len() == before || finished == total {
                break;
            }
        }
        if live.is_empty() {
            break;
        }
        // One call per sequence length (one request, or requests of the same length, per call).
        let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (j, s) in live.iter().enumerate() {
            by_len.entry(s.seq.x.len()).or_default().push(j);
        }
        for members in by_len.values() {
            predict_and_update(den, process, &mut live, members)?;
        }
        // Share the wall time since the last share among the sequences that were live.
        let share = clock.elapsed().as_secs_f64() / live.len() as f64;
        clock = Instant::now();
        for s in &mut live {
            s.seq.seconds += share;
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(r, v)| {
            v.into_iter()
                .map(|s| {
                    s.ok_or_else(|| Error::InvalidArgument(format!("request {r}: sample lost")))
                })
                .collect()
        })
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
