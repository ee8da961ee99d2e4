//! Continuous batching across requests: a request's samples do not depend on what they were batched
//! with (step counts, noise removal, lengths, batch sizes), the masked plan skips exactly the calls
//! whose output a step cannot use, and bad requests are refused by name.

mod common;

use candle_core::{Device, Tensor};
use idlm::nn::Dit;
use idlm::process::{ForwardProcess, Masked, NoiseRemoval, Uniform};
use idlm::sample::{
    Denoiser, Engine, Event, Request, Sample, SamplerOptions, sample, sample_requests,
};
use idlm::toy::{ExactDenoiser, ExactUniformDenoiser, ToyWorld};

fn opts(steps: usize, noise_removal: NoiseRemoval, cache: bool, seed: u64) -> SamplerOptions {
    SamplerOptions {
        steps,
        noise_removal,
        cache,
        batch_size: 7,
        seed,
    }
}

fn ids(s: &[Sample]) -> Vec<Vec<u32>> {
    s.iter().map(|s| s.ids.clone()).collect()
}

/// Sample the requests together (small calls, so slots are refilled mid-walk) and each one alone
/// with another batch size; the tokens and call counts must agree sample by sample.
fn check_mixed_equals_alone(den: &dyn Denoiser, process: &dyn ForwardProcess, reqs: &[Request]) {
    let mixed = sample_requests(den, process, reqs, 13, None).unwrap();
    assert_eq!(mixed.len(), reqs.len());
    for (r, q) in reqs.iter().enumerate() {
        let alone = sample(den, process, q.n, q.len, &q.opts, None).unwrap();
        assert_eq!(mixed[r].len(), q.n);
        assert_eq!(ids(&mixed[r]), ids(&alone), "request {r}: tokens differ");
        let nfe = |s: &[Sample]| s.iter().map(|s| s.nfe).collect::<Vec<_>>();
        assert_eq!(
            nfe(&mixed[r]),
            nfe(&alone),
            "request {r}: call counts differ"
        );
        for (i, s) in mixed[r].iter().enumerate() {
            assert_eq!(s.index, i);
            assert_eq!(s.ids.len(), q.len);
            assert!(s.seconds >= 0.0);
        }
    }
}

fn world3() -> ToyWorld {
    let mut w = Vec::new();
    for i in 0..27usize {
        let x = [i / 9, (i / 3) % 3, i % 3];
        w.push(
            0.2 + x[0] as f64 * 0.3
                + 6.0 * (x[0] == x[1]) as u8 as f64
                + (x[1] == x[2]) as u8 as f64,
        );
    }
    ToyWorld::new(3, 3, w).unwrap()
}

#[test]
fn masked_requests_with_different_steps_and_noise_removal_batch_together() {
    let world = world3();
    let process = Masked::new(world.v + 1, world.mask()).unwrap();
    let den = ExactDenoiser { world: &world };
    let reqs = [
        Request {
            n: 40,
            len: 3,
            opts: opts(1024, NoiseRemoval::Ancestral, true, 5),
            template: None,
        },
        Request {
            n: 25,
            len: 3,
            opts: opts(4, NoiseRemoval::Greedy, true, 6),
            template: None,
        },
        Request {
            n: 30,
            len: 3,
            opts: opts(16, NoiseRemoval::Ancestral, false, 7),
            template: None,
        },
        Request {
            n: 9,
            len: 2,
            opts: opts(2, NoiseRemoval::Ancestral, true, 8),
            template: None,
        },
    ];
    check_mixed_equals_alone(&den, &process, &reqs);
}

#[test]
fn uniform_requests_with_different_steps_batch_together() {
    let world = ToyWorld::two_by_two();
    let process = Uniform::new(world.v + 1).unwrap();
    let den = ExactUniformDenoiser { world: &world };
    let reqs = [
        Request {
            n: 30,
            len: 2,
            opts: opts(8, NoiseRemoval::Ancestral, true, 3),
            template: None,
        },
        Request {
            n: 20,
            len: 2,
            opts: opts(3, NoiseRemoval::Greedy, true, 4),
            template: None,
        },
        Request {
            n: 11,
            len: 1,
            opts: opts(5, NoiseRemoval::Ancestral, false, 9),
            template: None,
        },
    ];
    check_mixed_equals_alone(&den, &process, &reqs);
    // Duo's posterior needs the network at every step and at the noise removal.
    let out = sample_requests(&den, &process, &reqs, 4, None).unwrap();
    for (q, s) in reqs.iter().zip(&out) {
        assert!(s.iter().all(|s| s.nfe == q.opts.steps + 1));
    }
}

const V: usize = 12;
const L: usize = 10;

fn tiny_dit(time_conditioning: bool) -> Dit {
    common::nets::noisy_dit(V, L, time_conditioning)
}

#[test]
fn a_time_conditioned_dit_batches_lengths_and_skips_only_unused_calls() {
    let dit = tiny_dit(true);
    let process = Masked::new(V, (V - 1) as u32).unwrap();
    let reqs = [
        Request {
            n: 9,
            len: L,
            opts: opts(1024, NoiseRemoval::Ancestral, true, 1),
            template: None,
        },
        Request {
            n: 6,
            len: 4,
            opts: opts(16, NoiseRemoval::Greedy, true, 2),
            template: None,
        },
        Request {
            n: 5,
            len: L,
            opts: opts(4, NoiseRemoval::Ancestral, true, 3),
            template: None,
        },
    ];
    check_mixed_equals_alone(&dit, &process, &reqs);
    // Skipping steps that reveal nothing is exact even with time input: the same samples as one
    // call per step, with at most one call per revealed position plus the noise removal.
    let planned = sample(&dit, &process, 9, L, &reqs[0].opts, None).unwrap();
    let every = opts(1024, NoiseRemoval::Ancestral, false, 1);
    let plain = sample(&dit, &process, 9, L, &every, None).unwrap();
    assert_eq!(ids(&planned), ids(&plain));
    for (a, b) in planned.iter().zip(&plain) {
        assert!(a.nfe <= L + 1, "planned sampler used {} calls", a.nfe);
        // The plain one calls at every step until the last MASK is gone.
        assert!(b.nfe > 20 * a.nfe, "plain sampler used {} calls", b.nfe);
        assert!(
            a.ids.iter().all(|&t| t < (V - 1) as u32),
            "MASK left in {:?}",
            a.ids
        );
    }
}

#[test]
fn the_samples_depend_on_the_network_and_the_seed() {
    // Guards the tests above against a sampler that ignores the prediction or the stream.
    let process = Masked::new(V, (V - 1) as u32).unwrap();
    let o = opts(8, NoiseRemoval::Ancestral, true, 1);
    let a = sample(&tiny_dit(false), &process, 16, L, &o, None).unwrap();
    let b = sample(&tiny_dit(true), &process, 16, L, &o, None).unwrap();
    let c = sample(
        &tiny_dit(false),
        &process,
        16,
        L,
        &opts(8, NoiseRemoval::Ancestral, true, 2),
        None,
    )
    .unwrap();
    assert_ne!(ids(&a), ids(&b));
    assert_ne!(ids(&a), ids(&c));
    // Distinct streams within a request.
    assert!(ids(&a).windows(2).any(|w| w[0] != w[1]));
}

#[test]
fn bad_requests_are_refused_by_name() {
    let dit = tiny_dit(false);
    let process = Masked::new(V, (V - 1) as u32).unwrap();
    let good = Request {
        n: 2,
        len: L,
        opts: opts(4, NoiseRemoval::Ancestral, true, 1),
        template: None,
    };
    let err = |reqs: &[Request], b: usize| {
        sample_requests(&dit, &process, reqs, b, None)
            .unwrap_err()
            .to_string()
    };
    let mut zero_steps = good.clone();
    zero_steps.opts.steps = 0;
    let e = err(&[good.clone(), zero_steps], 4);
    assert!(e.contains("request 1") && e.contains("steps"), "{e}");
    let mut long = good.clone();
    long.len = L + 1;
    let e = err(&[long], 4);
    assert!(e.contains("request 0") && e.contains("length 11"), "{e}");
    let mut empty = good.clone();
    empty.len = 0;
    assert!(err(&[empty], 4).contains("length 0"));
    assert!(err(std::slice::from_ref(&good), 0).contains("batch size"));
    // No requests, or requests for no sequences, give nothing back.
    assert!(
        sample_requests(&dit, &process, &[], 4, None)
            .unwrap()
            .is_empty()
    );
    let none = Request { n: 0, ..good };
    let out = sample_requests(&dit, &process, &[none], 4, None).unwrap();
    assert!(out.len() == 1 && out[0].is_empty());
}

/// A denoiser that records the rows (sequences) of every call it serves.
struct Counting<'a> {
    inner: &'a Dit,
    rows: std::sync::Mutex<Vec<usize>>,
}

impl Denoiser for Counting<'_> {
    fn logits(
        &self,
        xt: &Tensor,
        sigma: &Tensor,
        positions: Option<&[u32]>,
    ) -> idlm::Result<Tensor> {
        self.rows.lock().unwrap().push(xt.dim(0)?);
        self.inner.logits(xt, sigma, positions)
    }
    fn time_conditioned(&self) -> bool {
        self.inner.time_conditioned()
    }
    fn max_len(&self) -> usize {
        self.inner.max_len()
    }
    fn device(&self) -> Device {
        Denoiser::device(self.inner)
    }
}

#[test]
fn identical_rows_of_a_call_are_computed_once_with_the_same_samples() {
    let dit = tiny_dit(true);
    let process = Masked::new(V, (V - 1) as u32).unwrap();
    let den = Counting {
        inner: &dit,
        rows: Default::default(),
    };
    let mut o = opts(4, NoiseRemoval::Ancestral, false, 5);
    o.batch_size = 6;
    let together = sample(&den, &process, 6, L, &o, None).unwrap();
    let rows = den.rows.lock().unwrap().clone();
    // Step one: six all-mask rows at t = 1 are one row; after it the rows differ (later calls
    // may have fewer: a sequence with no MASK left needs none).
    assert_eq!(rows[0], 1, "calls {rows:?}");
    assert_eq!(rows[1], 6, "calls {rows:?}");
    o.batch_size = 1;
    let alone = sample(&dit, &process, 6, L, &o, None).unwrap();
    assert_eq!(ids(&together), ids(&alone));
    let distinct: std::collections::HashSet<_> = together.iter().map(|s| s.ids.clone()).collect();
    assert_eq!(distinct.len(), 6, "{:?}", ids(&together));
}

type Steps = Vec<(usize, usize, Vec<u32>, usize)>;

/// Sort events into each request's samples (by id) and the watched steps, in order.
fn collect(
    events: Vec<Event>,
    done: &mut std::collections::HashMap<usize, Vec<Sample>>,
    steps: &mut Steps,
) {
    for ev in events {
        match ev {
            Event::Done { request, samples } => {
                assert!(done.insert(request, samples).is_none(), "done twice");
            }
            Event::Step {
                request,
                index,
                ids,
                nfe,
            } => steps.push((request, index, ids, nfe)),
        }
    }
}

#[test]
fn a_request_added_while_others_run_joins_at_the_next_call_with_the_same_samples() {
    let dit = tiny_dit(true);
    let process = Masked::new(V, (V - 1) as u32).unwrap();
    let den = Counting {
        inner: &dit,
        rows: Default::default(),
    };
    let mut e = Engine::new(&den, &process, 16).unwrap();
    // One call per step, so the first request is still running after a few steps.
    let a = Request {
        n: 3,
        len: L,
        opts: opts(64, NoiseRemoval::Ancestral, false, 1),
        template: None,
    };
    let ida = e.add(a.clone(), false).unwrap();
    for _ in 0..5 {
        assert!(e.step().unwrap().is_empty(), "unwatched and unfinished");
    }
    let b = Request {
        n: 2,
        len: 4,
        opts: opts(8, NoiseRemoval::Greedy, true, 2),
        template: None,
    };
    let idb = e.add(b.clone(), true).unwrap();
    // b's sequences are in the very next step: a call of their own length, then a's call.
    let calls = den.rows.lock().unwrap().len();
    let ev = e.step().unwrap();
    let b_now: Vec<usize> = ev
        .iter()
        .filter_map(|x| match x {
            Event::Step { request, index, .. } if *request == idb => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(b_now, [0, 1]);
    let rows = den.rows.lock().unwrap().clone();
    assert_eq!(rows.len(), calls + 2, "{rows:?}");
    let mut done = std::collections::HashMap::new();
    let mut steps = Steps::new();
    collect(ev, &mut done, &mut steps);
    // A third request is cancelled: it never finishes, and the others are unchanged.
    let c = Request {
        n: 4,
        len: L,
        opts: opts(16, NoiseRemoval::Ancestral, true, 3),
        template: None,
    };
    let idc = e.add(c, true).unwrap();
    collect(e.step().unwrap(), &mut done, &mut steps);
    assert!(e.cancel(idc) && !e.cancel(idc));
    assert!(!e.requests().contains(&idc));
    while !e.is_idle() {
        collect(e.step().unwrap(), &mut done, &mut steps);
    }
    assert!(!done.contains_key(&idc));
    assert!(steps.iter().all(|s| s.0 != ida), "a is not watched");
    for (id, q) in [(ida, &a), (idb, &b)] {
        let alone = sample(&dit, &process, q.n, q.len, &q.opts, None).unwrap();
        assert_eq!(ids(&done[&id]), ids(&alone), "request {id}");
    }
    // b's events: one per call per sequence, the last one its sample, masks only resolve.
    for (i, s) in done[&idb].iter().enumerate() {
        let mine: Vec<_> = steps.iter().filter(|x| x.0 == idb && x.1 == i).collect();
        assert_eq!(mine.len(), s.nfe, "sequence {i}");
        assert_eq!(mine.last().unwrap().2, s.ids);
        let masks = |v: &[u32]| v.iter().filter(|&&t| t == (V - 1) as u32).count();
        assert!(mine.windows(2).all(|w| masks(&w[1].2) <= masks(&w[0].2)));
        assert!(mine.iter().enumerate().all(|(k, x)| x.3 == k + 1));
    }
}
