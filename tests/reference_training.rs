//! The training path against the reference PyTorch code, as llm.c's test_gpt2 does for GPT-2: not
//! only a forward, but the loss a training step computes, the gradient of every weight, and three
//! optimizer steps (AdamW, warmup schedule, clipping, EMA) with the tiny preset's hyper-parameters.
//! The reference values are in tests/fixtures/train_reference, made by scripts/make_fixtures.py
//! (see tests/fixtures/README.md).
//!
//! Tolerances: the generator computes everything in float32 (stored) and in float64; the spread
//! between the two is the size of float32 rounding on this problem: 2e-8 relative on the loss,
//! 7e-7 on the worst gradient tensor, and on the weights' changes after three steps ~1e-3 of the
//! change (one ulp of a weight near 4 against a step of 3e-4). This implementation differs from
//! the float32 reference by the same amounts (7e-8 on the loss, 6e-7 on the worst gradient, 8e-4 /
//! 1e-3 on the changes of weights / EMA). The bounds below sit 15-50x above the rounding: any
//! convention error (a SUBS entry, a loss weight, a chunk order, an LR step, a moment or bias
//! correction, the clipping) is off by 1e-2 or more and fails, while a different summation order in
//! a GEMM or reduction passes.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use idlm::config::RunConfig;
use idlm::nn::Dit;
use idlm::process::{ForwardProcess, Masked, Uniform};
use idlm::train::{StepStats, Trainer, batch_loss};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/train_reference"
);

/// Loss: relative to the reference value.
const LOSS_REL: f64 = 1e-6;
/// Gradients: per tensor, max |g - g_ref| relative to max |g_ref| of that tensor.
const GRAD_REL: f64 = 3e-5;
/// Weights after the steps are compared by their change Δw from the initial weights (the weights are
/// ~1, the changes ~3e-4: comparing the weights alone would say little about the update). Allowed:
/// this fraction of max |Δw_ref| plus [`UPDATE_ULPS`] float32 ulps of max |w| (a float32 weight of
/// size 4 is only stored to 5e-7, already 1e-3 of a 3e-4 step; PyTorch's own float32 and float64 runs
/// differ by that much).
const UPDATE_REL: f64 = 1e-3;
/// Float32 rounding of the weights themselves, in ulps of the tensor's largest weight.
const UPDATE_ULPS: f64 = 4.0;

// ---- The one place that uses the trainer API (adapt here when it is renamed). ----------------

/// The reference weights under the trainer's names (no `backbone.` prefix, no rotary buffer).
fn initial_weights() -> HashMap<String, Tensor> {
    let m =
        candle_core::safetensors::load(format!("{DIR}/model.safetensors"), &Device::Cpu).unwrap();
    m.into_iter()
        .filter(|(k, _)| k != "backbone.rotary_emb.inv_freq")
        .map(|(k, v)| (k.strip_prefix("backbone.").unwrap().to_string(), v))
        .collect()
}

/// The tiny preset (as the fixture was made with), optionally time-conditioned (Duo).
fn config(time_conditioning: bool) -> RunConfig {
    RunConfig::load("tiny")
        .unwrap()
        .with_overrides(&[format!("model.time_conditioning={time_conditioning}")])
        .unwrap()
}

/// A trainer starting from the reference weights.
fn trainer(time_conditioning: bool) -> Trainer {
    let cfg = config(time_conditioning);
    let fx = Fixture::load();
    let dit = cfg.model.dit(fx.vocab, fx.l);
    Trainer::from_weights(&cfg, &dit, &initial_weights(), Path::new(DIR)).unwrap()
}

/// The training loss of a batch, exactly as a training step computes it.
fn loss(model: &Dit, process: &dyn ForwardProcess, fx: &Fixture, xt: &[u32]) -> Tensor {
    batch_loss(model, process, &fx.x0, xt, fx.b, fx.l, &fx.t, None).unwrap()
}

/// d loss / d weight for every weight of the trainer, by name.
fn gradients(tr: &Trainer, loss: &Tensor) -> HashMap<String, Tensor> {
    let g = loss.backward().unwrap();
    tr.weights()
        .into_iter()
        .map(|(n, w)| {
            let gw = g
                .get(&w)
                .cloned()
                .unwrap_or_else(|| w.zeros_like().unwrap());
            (n, gw)
        })
        .collect()
}

/// One optimizer step on the MDLM loss of the fixture's batch.
fn step(tr: &mut Trainer, process: &Masked, fx: &Fixture) -> StepStats {
    let tokens = (fx.b * fx.l) as u64;
    tr.optimize(tokens, |m, _, _| Ok(loss(m, process, fx, &fx.xt)))
        .unwrap()
}

// ---- Fixture and comparisons. ------------------------------------------------------------------

struct Fixture {
    vocab: usize,
    mask: u32,
    b: usize,
    l: usize,
    x0: Vec<u32>,
    xt: Vec<u32>,
    duo_xt: Vec<u32>,
    t: Vec<f64>,
    tensors: HashMap<String, Tensor>,
}

impl Fixture {
    fn load() -> Self {
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/config.json")).unwrap())
                .unwrap();
        let tensors =
            candle_core::safetensors::load(format!("{DIR}/train.safetensors"), &Device::Cpu)
                .unwrap();
        let ids = |k: &str| -> Vec<u32> {
            tensors[k]
                .to_dtype(DType::U32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (b, l) = tensors["x0"].dims2().unwrap();
        Self {
            vocab: cfg["vocab_size"].as_u64().unwrap() as usize,
            mask: cfg["mask_id"].as_u64().unwrap() as u32,
            b,
            l,
            x0: ids("x0"),
            xt: ids("xt"),
            duo_xt: ids("duo_xt"),
            // The reference's t is float32; the same value, widened exactly.
            t: tensors["t"]
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect(),
            tensors,
        }
    }

    fn get(&self, k: &str) -> &Tensor {
        self.tensors
            .get(k)
            .unwrap_or_else(|| panic!("{k} not in the fixture"))
    }

    fn scalars(&self, k: &str) -> Vec<f64> {
        let v = self.get(k).flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.iter().map(|&x| x as f64).collect()
    }
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// max |got - want| / max |want|, with want required to be non-zero (a zero reference would make
/// the comparison check nothing).
fn rel_err(name: &str, got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let scale = max_abs(want);
    assert!(scale > 0.0, "{name}: the reference is all zeros");
    max_abs(&(got - want).unwrap()) / scale
}

/// Compare every tensor `got[name]` with `fixture[prefix + name]` (with `base`: their changes from
/// it, allowing `ulps` float32 ulps of the largest weight on top); returns the worst error relative
/// to the reference's scale.
fn compare_all(
    fx: &Fixture,
    prefix: &str,
    got: &HashMap<String, Tensor>,
    base: Option<&HashMap<String, Tensor>>,
    tol: f64,
    ulps: f64,
) -> f64 {
    let mut names: Vec<&String> = got.keys().collect();
    names.sort();
    let mut worst = (0.0f64, String::new());
    for n in names {
        let want = fx.get(&format!("{prefix}{n}"));
        let (g, w, slack) = match base {
            Some(b) => (
                (&got[n] - &b[n]).unwrap(),
                (want - &b[n]).unwrap(),
                ulps * f32::EPSILON as f64 * max_abs(want),
            ),
            None => (got[n].clone(), want.clone(), 0.0),
        };
        let e = rel_err(n, &g, &w);
        let allowed = tol + slack / max_abs(&w);
        assert!(
            e < allowed,
            "{prefix}{n}: relative error {e:.3e} (allowed {allowed:.3e})"
        );
        if e > worst.0 {
            worst = (e, n.clone());
        }
    }
    eprintln!(
        "{prefix}*: {} tensors, worst relative error {:.3e} ({})",
        got.len(),
        worst.0,
        worst.1
    );
    worst.0
}

fn close(what: &str, got: f64, want: f64, rel: f64) {
    let e = (got - want).abs() / want.abs().max(1e-30);
    eprintln!("{what}: got {got:.9} want {want:.9} rel {e:.2e}");
    assert!(
        e < rel,
        "{what}: {got} vs {want} (relative {e:.2e}, tolerance {rel:e})"
    );
}

// ---- Tests. ------------------------------------------------------------------------------------

#[test]
fn fixture_was_made_with_the_tiny_preset() {
    // A changed preset makes the reference stale: regenerate with scripts/make_fixtures.py.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/config.json")).unwrap())
            .unwrap();
    let c = config(false);
    let (m, t) = (&c.model, &c.train);
    let f = |k: &str| cfg[k].as_f64().unwrap();
    let u = |k: &str| cfg[k].as_u64().unwrap() as usize;
    assert_eq!(
        (
            m.hidden_size,
            m.cond_dim,
            m.n_blocks,
            m.n_heads,
            m.mlp_ratio
        ),
        (
            u("hidden_size"),
            u("cond_dim"),
            u("n_blocks"),
            u("n_heads"),
            u("mlp_ratio")
        )
    );
    assert_eq!(m.dropout, 0.0);
    assert_eq!(t.grad_accum, 1);
    assert_eq!(
        (t.lr, t.warmup_steps as usize, t.adam_eps, t.weight_decay),
        (f("lr"), u("warmup_steps"), f("adam_eps"), f("weight_decay"))
    );
    assert_eq!(
        (t.beta1, t.beta2),
        (
            cfg["betas"][0].as_f64().unwrap(),
            cfg["betas"][1].as_f64().unwrap()
        )
    );
    assert_eq!((t.grad_clip, t.ema_decay), (f("grad_clip"), f("ema_decay")));
}

#[test]
fn mdlm_loss_and_weight_gradients_match_reference() {
    let fx = Fixture::load();
    let tr = trainer(false);
    let process = Masked::new(fx.vocab, fx.mask).unwrap();
    let l = loss(&tr.model, &process, &fx, &fx.xt);
    let want = fx.scalars("mdlm_loss")[0];
    close(
        "MDLM loss",
        l.to_scalar::<f32>().unwrap() as f64,
        want,
        LOSS_REL,
    );
    let g = gradients(&tr, &l);
    assert_eq!(g.len(), 30, "every weight of the 2-block DiT");
    compare_all(&fx, "grad.", &g, None, GRAD_REL, 0.0);
}

#[test]
fn three_adamw_steps_match_reference() {
    let fx = Fixture::load();
    let mut tr = trainer(false);
    let process = Masked::new(fx.vocab, fx.mask).unwrap();
    let w0 = tr.weights();
    let w0: HashMap<String, Tensor> = w0
        .into_iter()
        .map(|(k, v)| (k, v.copy().unwrap()))
        .collect();
    let (losses, norms, lrs) = (
        fx.scalars("mdlm_loss"),
        fx.scalars("grad_norm"),
        fx.scalars("lr"),
    );
    for i in 0..losses.len() {
        let s = step(&mut tr, &process, &fx);
        close(&format!("step {} loss", i + 1), s.loss, losses[i], LOSS_REL);
        close(
            &format!("step {} grad norm", i + 1),
            s.grad_norm,
            norms[i],
            1e-4,
        );
        // The first step of the warmup has lr 0 (as get_constant_schedule_with_warmup).
        assert!(
            (s.lr - lrs[i]).abs() < 1e-9,
            "step {} lr {} vs {}",
            i + 1,
            s.lr,
            lrs[i]
        );
    }
    assert!(
        norms.iter().all(|&n| n > 1.0),
        "the clipping path is exercised"
    );
    let n = losses.len();
    let w = tr.weights();
    compare_all(
        &fx,
        &format!("step{n}."),
        &w,
        Some(&w0),
        UPDATE_REL,
        UPDATE_ULPS,
    );
    let e = tr.ema_weights();
    compare_all(
        &fx,
        &format!("ema{n}."),
        &e,
        Some(&w0),
        UPDATE_REL,
        UPDATE_ULPS,
    );
}

#[test]
fn duo_loss_and_weight_gradients_match_reference() {
    let fx = Fixture::load();
    let tr = trainer(true);
    let process = Uniform::new(fx.vocab).unwrap();
    let l = loss(&tr.model, &process, &fx, &fx.duo_xt);
    let want = fx.scalars("duo_loss")[0];
    close(
        "Duo loss",
        l.to_scalar::<f32>().unwrap() as f64,
        want,
        LOSS_REL,
    );
    let g = gradients(&tr, &l);
    compare_all(&fx, "duo_grad.", &g, None, GRAD_REL, 0.0);
}
