//! The model thread: one per served model, off the async runtime (candle's work blocks). It loads
//! the checkpoint, then takes jobs from a channel between network calls, so a request that arrives
//! while others run joins at the next call; each job's replies (steps, samples) go back on its own
//! channel, and a job whose channel is closed (its client left) is dropped at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::api::{Choice, ModelInfo, Params, StepUpdate};
use super::ar_engine::ArEngine;
use super::metrics::Metrics;
use super::prompt::PromptCodec;
use crate::ar::{ArSamplerOptions, lm_from_checkpoint};
use crate::checkpoint;
use crate::data::TextTokenizer;
use crate::sample::{Engine, Event, Request, RequestId, Sample, SamplerOptions};
use crate::{Error, Result};

/// A model to serve.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Its name in requests.
    pub name: String,
    /// Checkpoint, run directory or released checkpoint.
    pub path: PathBuf,
    /// Raw weights instead of the EMA.
    pub raw: bool,
    /// Nucleus mass (Duo: fixed for the model; AR: the default).
    pub top_p: Option<f64>,
    /// Most sequences per network call (diffusion).
    pub batch_size: usize,
}

/// A request for the model thread.
pub struct Job {
    /// What to sample.
    pub params: Params,
    /// Where its replies go.
    pub reply: UnboundedSender<Reply>,
}

/// What the model thread says about a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A sequence after a denoising step (streamed jobs only).
    Step(StepUpdate),
    /// Every sequence, in index order.
    Done(Vec<Choice>),
    /// The job failed.
    Failed(String),
}

/// A running model thread.
pub struct Worker {
    /// The model.
    pub info: ModelInfo,
    /// Its job queue.
    pub jobs: Sender<Job>,
    /// The thread (ends once every sender is gone and its jobs are done).
    pub thread: JoinHandle<()>,
}

/// Load `spec` on a new thread and start serving jobs; returns once the model is loaded.
pub fn spawn(spec: ModelSpec, metrics: Arc<Metrics>) -> Result<Worker> {
    let (info_tx, info_rx) = std::sync::mpsc::sync_channel(1);
    let (jobs, rx) = std::sync::mpsc::channel();
    let name = spec.name.clone();
    let thread = std::thread::Builder::new()
        .name(format!("idlm-model-{name}"))
        .spawn(move || {
            if let Err(e) = run(&spec, &rx, &info_tx, &metrics) {
                let _ = info_tx.send(Err(e));
            }
        })
        .map_err(|e| Error::Serve(format!("cannot start the thread of model '{name}': {e}")))?;
    let info = info_rx
        .recv()
        .map_err(|_| Error::Serve(format!("the thread of model '{name}' ended while loading")))??;
    Ok(Worker { info, jobs, thread })
}

/// The two samplers behind one interface.
trait Stepper {
    fn add(&mut self, p: &Params, watch: bool) -> Result<RequestId>;
    fn cancel(&mut self, id: RequestId);
    fn step(&mut self) -> Result<Vec<Event>>;
    fn is_idle(&self) -> bool;
    fn requests(&self) -> Vec<RequestId>;
}

/// The diffusion engine and its batch size.
struct Diffusion<'a>(Engine<'a>, usize);

impl Stepper for Diffusion<'_> {
    fn add(&mut self, p: &Params, watch: bool) -> Result<RequestId> {
        let opts = SamplerOptions {
            steps: p.steps,
            noise_removal: p.noise_removal,
            cache: p.cache,
            batch_size: self.1,
            seed: p.seed,
        };
        let req = Request {
            n: p.n,
            len: p.len,
            opts,
            template: p.cond.as_ref().map(|c| c.template.clone()),
        };
        self.0.add(req, watch)
    }
    fn cancel(&mut self, id: RequestId) {
        self.0.cancel(id);
    }
    fn step(&mut self) -> Result<Vec<Event>> {
        self.0.step()
    }
    fn is_idle(&self) -> bool {
        self.0.is_idle()
    }
    fn requests(&self) -> Vec<RequestId> {
        self.0.requests()
    }
}

impl Stepper for ArEngine {
    fn add(&mut self, p: &Params, watch: bool) -> Result<RequestId> {
        let opts = ArSamplerOptions {
            temperature: p.temperature,
            top_p: p.top_p,
            batch_size: p.n.max(1),
            seed: p.seed,
        };
        let prefix = p
            .cond
            .as_ref()
            .and_then(|c| c.template.as_prefix())
            .unwrap_or_default();
        ArEngine::add(self, p.n, p.len, &prefix, &opts, watch)
    }
    fn cancel(&mut self, id: RequestId) {
        ArEngine::cancel(self, id);
    }
    fn step(&mut self) -> Result<Vec<Event>> {
        ArEngine::step(self)
    }
    fn is_idle(&self) -> bool {
        ArEngine::is_idle(self)
    }
    fn requests(&self) -> Vec<RequestId> {
        ArEngine::requests(self)
    }
}

fn run(
    spec: &ModelSpec,
    jobs: &Receiver<Job>,
    info_tx: &SyncSender<Result<ModelInfo>>,
    metrics: &Metrics,
) -> Result<()> {
    let ck = checkpoint::load(&spec.path)?;
    let tok = TextTokenizer::from_json(&ck.tokenizer_json()?)?;
    let meta = &ck.meta;
    let is_ar = meta.process.is_ar();
    let mut info = ModelInfo {
        name: spec.name.clone(),
        process: meta.process.name().to_string(),
        length: meta.model.length,
        steps: meta.config.sample.steps,
        seed: meta.config.sample.seed,
        noise_removal: meta.config.sample.noise_removal,
        top_p: spec.top_p,
        checkpoint: ck.dir.display().to_string(),
        checkpoint_step: meta.step,
        codec: Some(PromptCodec::new(
            tok.clone(),
            meta.data.bos_id,
            meta.data.rows.clone(),
            is_ar,
        )),
    };
    let mask = meta.data.mask_id;
    let out = Out {
        tok,
        mask,
        metrics,
        codec: info.codec.clone(),
    };
    if is_ar {
        let lm = lm_from_checkpoint(&ck, !spec.raw)?;
        info.steps = info.length.saturating_sub(1);
        info.top_p = Some(spec.top_p.unwrap_or(1.0));
        let mut eng = ArEngine::new(lm, meta.data.bos_id, mask);
        drop(ck);
        send_info(info_tx, info)?;
        serve_loop(&mut eng, jobs, &out);
    } else {
        let dit = ck.dit(!spec.raw)?;
        let process = ck.process(spec.top_p)?;
        drop(ck);
        let mut eng = Diffusion(
            Engine::new(&dit, process.as_ref(), spec.batch_size)?,
            spec.batch_size,
        );
        send_info(info_tx, info)?;
        serve_loop(&mut eng, jobs, &out);
    }
    Ok(())
}

fn send_info(tx: &SyncSender<Result<ModelInfo>>, info: ModelInfo) -> Result<()> {
    tx.send(Ok(info))
        .map_err(|_| Error::Serve("the server stopped while the model loaded".into()))
}

/// What turns engine events into replies.
struct Out<'a> {
    tok: TextTokenizer,
    mask: u32,
    metrics: &'a Metrics,
    codec: Option<PromptCodec>,
}

/// A job being sampled: its reply channel and, per streamed sequence, the tokens last reported.
struct Active {
    reply: UnboundedSender<Reply>,
    last: Vec<Option<Vec<u32>>>,
    steps: Vec<usize>,
    /// Where a prefix prompt ends (its completion follows).
    prefix: Option<usize>,
}

fn admit(eng: &mut dyn Stepper, active: &mut HashMap<RequestId, Active>, job: Job) {
    match eng.add(&job.params, job.params.stream) {
        Ok(id) => {
            let n = job.params.n;
            active.insert(
                id,
                Active {
                    reply: job.reply,
                    last: vec![None; n],
                    steps: vec![0; n],
                    prefix: job.params.cond.as_ref().and_then(|c| c.prefix),
                },
            );
        }
        Err(e) => {
            let _ = job.reply.send(Reply::Failed(e.to_string()));
        }
    }
}

/// Take jobs between network calls until every job sender is gone and the engine is idle.
fn serve_loop(eng: &mut dyn Stepper, jobs: &Receiver<Job>, out: &Out) {
    let mut active: HashMap<RequestId, Active> = HashMap::new();
    loop {
        if eng.is_idle() {
            match jobs.recv() {
                Ok(j) => admit(eng, &mut active, j),
                Err(_) => return,
            }
        }
        // Disconnected too: the jobs already taken still run.
        while let Ok(j) = jobs.try_recv() {
            admit(eng, &mut active, j);
        }
        let gone: Vec<RequestId> = active
            .iter()
            .filter(|(_, a)| a.reply.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            eng.cancel(id);
            active.remove(&id);
            out.metrics.cancelled();
        }
        if eng.is_idle() {
            continue;
        }
        let t0 = Instant::now();
        match eng.step() {
            Ok(events) => {
                out.metrics.engine_step(t0.elapsed());
                for e in events {
                    out.event(e, &mut active);
                }
            }
            Err(e) => {
                for id in eng.requests() {
                    eng.cancel(id);
                }
                for (_, a) in active.drain() {
                    let _ = a.reply.send(Reply::Failed(format!("sampling failed: {e}")));
                }
            }
        }
    }
}

impl Out<'_> {
    fn decode(&self, ids: &[u32]) -> String {
        self.tok
            .decode(ids)
            .unwrap_or_else(|e| format!("<cannot decode: {e}>"))
    }

    fn event(&self, e: Event, active: &mut HashMap<RequestId, Active>) {
        match e {
            Event::Step {
                request,
                index,
                ids,
                nfe,
            } => {
                let Some(a) = active.get_mut(&request) else {
                    return;
                };
                let (Some(last), Some(step)) = (a.last.get_mut(index), a.steps.get_mut(index))
                else {
                    return;
                };
                let masked: Vec<u32> = (0..ids.len() as u32)
                    .filter(|&p| ids[p as usize] == self.mask)
                    .collect();
                let prev = last.as_ref();
                let revealed: Vec<u32> = (0..ids.len())
                    .filter(|&p| match prev {
                        Some(prev) => prev.get(p) != ids.get(p),
                        None => ids[p] != self.mask,
                    })
                    .map(|p| p as u32)
                    .collect();
                *step += 1;
                let u = StepUpdate {
                    index,
                    step: *step,
                    nfe,
                    text: self.decode(&ids),
                    masked,
                    revealed,
                };
                *last = Some(ids);
                let _ = a.reply.send(Reply::Step(u));
            }
            Event::Done { request, samples } => {
                let Some(a) = active.remove(&request) else {
                    return;
                };
                let choices: Vec<Choice> = samples
                    .into_iter()
                    .map(|s| self.choice(s, a.prefix))
                    .collect();
                let tokens = choices.iter().map(|c| c.token_ids.len()).sum();
                let nfe = choices.iter().map(|c| c.nfe).sum();
                self.metrics.finished(tokens, nfe);
                let _ = a.reply.send(Reply::Done(choices));
            }
        }
    }

    fn choice(&self, s: Sample, prefix: Option<usize>) -> Choice {
        let completion = match (&self.codec, prefix) {
            (Some(c), Some(p)) => Some(c.completion(&s.ids, p)),
            _ => None,
        };
        Choice {
            index: s.index,
            text: self.decode(&s.ids),
            completion,
            token_ids: s.ids,
            nfe: s.nfe,
            seconds: s.seconds,
        }
    }
}
