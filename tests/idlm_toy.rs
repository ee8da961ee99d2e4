//! IDLM in the exact toy world of docs/toy-world.md: a tiny DiT student distilled from the exact
//! teacher, with p_theta, the objective J and the K-step sampler distributions computed exactly.

mod common;

use idlm::config::RunConfig;
use idlm::data::PackedTokens;
use idlm::distill::{DistillConfig, Idlm, TimeCoupling};
use idlm::nn::Denoiser;
use idlm::process::{LogLinear, Masked};
use idlm::toy::idlm::{entropy, k_step_distribution, kl, objective, p_theta, tabulate};
use idlm::toy::{ExactDenoiser, ToyWorld};
use idlm::train::{DiffusionObjective, Trainer};

fn tiny_cfg() -> RunConfig {
    RunConfig::load("tiny")
        .unwrap()
        .with_overrides(&[
            "model.hidden_size=32".into(),
            "model.n_heads=2".into(),
            "train.batch_size=256".into(),
            "train.grad_clip=0".into(),
            "train.lr=3e-3".into(),
            "train.warmup_steps=20".into(),
            "train.ema_decay=0.99".into(),
        ])
        .unwrap()
}

/// A tiny DiT fitted to the exact denoiser of the world (the "teacher's EMA weights").
fn pretrained(world: &ToyWorld, data: &PackedTokens) -> Trainer {
    let cfg = tiny_cfg();
    let dit_cfg = cfg.model.dit(world.v + 1, world.l);
    let mut tr = Trainer::new(&cfg, &dit_cfg).unwrap();
    let process = Masked::new(world.v + 1, world.mask()).unwrap();
    let obj = DiffusionObjective::new(&process, None);
    for i in 0..600 {
        if i == 400 {
            tr.cfg.train.lr = 3e-4;
        }
        obj.step(&mut tr, data).unwrap();
    }
    tr
}

struct Outcome {
    j0: f64,
    j: f64,
    kl0: f64,
    kl: f64,
    table: idlm::toy::idlm::Table,
}

fn distill(
    world: &ToyWorld,
    data: &PackedTokens,
    init: &Trainer,
    coupling: TimeCoupling,
    steps: usize,
) -> Outcome {
    let s = LogLinear::default();
    let process = Masked::new(world.v + 1, world.mask()).unwrap();
    let teacher = ExactDenoiser { world };
    let cfg = DistillConfig {
        batch_size: std::env::var("IDLM_TOY_B")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024),
        lr: std::env::var("IDLM_TOY_LR")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1e-4),
        warmup_steps: 10,
        ema_decay: 0.95,
        coupling,
        ..DistillConfig::default()
    };
    let w = init.ema_weights();
    let mut idlm = Idlm::new(
        &cfg,
        &init.cfg,
        &init.arch,
        &w,
        std::path::Path::new("init"),
    )
    .unwrap();
    let g0 = tabulate(world, &idlm.student.model).unwrap();
    let p0 = p_theta(world, &g0, s);
    let (j0, kl0) = (objective(world, &p0, s).unwrap(), kl(&p0, &world.p));
    for i in 0..steps {
        let st = idlm
            .step(&teacher as &dyn Denoiser, &process.relaxation(), data)
            .unwrap();
        if std::env::var("IDLM_TOY_TRACE").is_ok() && i % 50 == 0 {
            let g = tabulate(world, &idlm.student.model).unwrap();
            let p = p_theta(world, &g, s);
            let fake = tabulate(world, &idlm.fake.as_ref().unwrap().model).unwrap();
            let sub = ToyWorld {
                v: world.v,
                l: world.l,
                p: p.clone(),
            };
            let mut err = 0f64;
            for (si, x) in world.noisy_states().iter().enumerate() {
                if let Some(d) = sub.denoiser(x) {
                    for (a, b) in d.iter().zip(&fake[si]) {
                        err = err.max((a - b).abs());
                    }
                }
            }
            eprintln!(
                "step {i}: J {:.5} KL {:.5} fake err {err:.4} | fake loss {:.4} student loss {:.5} p {:?}",
                objective(world, &p, s).unwrap(),
                kl(&p, &world.p),
                st.fake_loss,
                st.student_loss,
                p
            );
        }
    }
    // The student's EMA: the raw weights of an adversarial pair oscillate around the optimum.
    let table = tabulate(world, &idlm.student.ema_model().unwrap()).unwrap();
    let p = p_theta(world, &table, s);
    Outcome {
        j0,
        j: objective(world, &p, s).unwrap(),
        kl0,
        kl: kl(&p, &world.p),
        table,
    }
}

const STEPS: usize = 300;

#[test]
fn idlm_from_the_exact_teacher_lowers_the_exact_objective_and_sharpens_few_step_sampling() {
    idlm::runtime::tune_malloc();
    let world = ToyWorld::two_by_two();
    let dir = tempfile::tempdir().unwrap();
    let data = common::toy_packed(&world, 16384, &dir.path().join("train.bin"));
    let init = pretrained(&world, &data);
    let s = LogLinear::default();
    let out = distill(&world, &data, &init, TimeCoupling::Independent, STEPS);
    println!(
        "independent: J {:.5} -> {:.5}, KL(p_theta||p*) {:.5} -> {:.5}",
        out.j0, out.j, out.kl0, out.kl
    );
    // docs/toy-world.md: J = 0.0745 at the exact teacher, 0.0442 at the optimum (a 41% reduction).
    assert!((out.j0 - 0.0745).abs() < 0.01, "J at init {}", out.j0);
    assert!(out.j < out.j0 * 2.0 / 3.0, "J {} -> {}", out.j0, out.j);
    assert!(out.kl < out.kl0 * 2.0 / 3.0, "KL {} -> {}", out.kl0, out.kl);
    // (c) Reported, not asserted: the K-step distributions of teacher and student.
    let teacher = idlm::toy::idlm::teacher_table(&world);
    println!(
        "K | teacher KL(pK||p*) | student KL(pK||p*) | student KL(p*||pK) | student H | teacher H"
    );
    for k in [1, 2, 4, 8, 64] {
        let pt = k_step_distribution(&world, &teacher, k, s);
        let ps = k_step_distribution(&world, &out.table, k, s);
        println!(
            "{k} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4}",
            kl(&pt, &world.p),
            kl(&ps, &world.p),
            kl(&world.p, &ps),
            entropy(&ps),
            entropy(&pt)
        );
    }
    let shared = distill(&world, &data, &init, TimeCoupling::Shared, STEPS);
    println!(
        "shared: J {:.5} -> {:.5}, KL(p_theta||p*) {:.5} -> {:.5}",
        shared.j0, shared.j, shared.kl0, shared.kl
    );
}
