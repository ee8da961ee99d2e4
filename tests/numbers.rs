//! Numbers (issue 23, part 4): non-finite or degenerate values anywhere (settings, weights in a
//! file, weights about to be saved, a huge learning rate, batches of padding or with nothing
//! masked, a vocabulary of two, rows of one token) give a named error or a correct, finite result;
//! never a NaN in a checkpoint or a results file.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use candle_core::Tensor;
use idlm::checkpoint::{self, check_finite};
use idlm::config::RunConfig;
use idlm::data::{PackedHeader, PackedTokens, PackedWriter};
use idlm::distill::{DistillConfig, Method};
use idlm::process::curriculum::DuoCurriculum;
use idlm::process::{ForwardProcess, Masked, ProcessKind, build_process};
use idlm::sample::{SamplerOptions, sample};
use idlm::train::{ArTrainer, DiffusionObjective, Trainer, batch_loss, nelbo};

fn tiny(overrides: &[&str]) -> idlm::Result<RunConfig> {
    common::tiny_config(overrides)
}

fn train(run: &Path, data: &Path, cfg: RunConfig) -> idlm::Result<()> {
    common::try_train(run, data, cfg, false)
}

/// Every number of every line of a run's metrics.jsonl and checkpoints' meta.json is finite
/// (serde_json writes NaN as null: no null may stand where a number was), and every checkpoint
/// loads (loading refuses non-finite tensors).
fn assert_run_is_finite(run: &Path) {
    if let Ok(text) = fs::read_to_string(run.join("metrics.jsonl")) {
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            for (k, x) in v.as_object().unwrap() {
                assert!(
                    !x.is_null() || k == "val_genppl",
                    "null {k} in metrics: {line}"
                );
            }
        }
    }
    let root = run.join("checkpoints");
    if !root.exists() {
        return;
    }
    for e in fs::read_dir(&root).unwrap() {
        let p = e.unwrap().path();
        if p.join("meta.json").is_file() {
            let ck = checkpoint::load(&p).unwrap_or_else(|e| panic!("{e}"));
            // Every safetensors file (optimizer, a distiller's fake and teacher): reading one
            // refuses NaN or Inf.
            for name in common::names(&p) {
                if name.ends_with(".safetensors") {
                    ck.safetensors(&name).unwrap_or_else(|e| panic!("{e}"));
                }
            }
        }
    }
}

#[test]
fn non_finite_and_out_of_range_settings_are_refused_by_name() {
    for (set, key) in [
        ("train.lr=0", "train.lr"),
        ("train.lr=nan", "train.lr"),
        ("train.lr=inf", "train.lr"),
        ("train.weight_decay=nan", "train.weight_decay"),
        ("train.adam_eps=inf", "train.adam_eps"),
        ("train.adam_eps=0", "train.adam_eps"),
        ("train.grad_clip=-inf", "train.grad_clip"),
        ("train.grad_clip=-1", "train.grad_clip"),
        ("train.beta1=nan", "train.beta1"),
        ("model.dropout=nan", "model.dropout"),
        ("model.dropout=1", "model.dropout"),
        ("duo.tau_log10_start=nan", "duo.tau_log10_start"),
    ] {
        let err = tiny(&[set])
            .err()
            .unwrap_or_else(|| panic!("{set} accepted"));
        let msg = err.to_string();
        assert!(msg.contains(key), "{set}: {msg}");
    }
    let d = DistillConfig::default();
    for (set, key) in [
        ("lr=0", "lr"),
        ("lr=nan", "lr"),
        ("weight_decay=inf", "weight_decay"),
        ("adam_eps=nan", "adam_eps"),
        ("val_min_entropy_ratio=nan", "val_min_entropy_ratio"),
        ("dcd_alpha_max=nan", "dcd_alpha_max"),
    ] {
        let err = d
            .with_overrides(&[set.to_string()])
            .err()
            .unwrap_or_else(|| panic!("{set} accepted"));
        assert!(err.to_string().contains(key), "{set}: {err}");
    }
}

#[test]
fn weights_holding_nan_or_inf_are_never_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = common::three_step_run(tmp.path());
    let ck = checkpoint::load(&run).unwrap();
    let dd = idlm::data::DataDir::open(&data).unwrap();
    let info = idlm::run::data_info(&dd);
    let tok = dd.tokenizer.to_json().to_string();
    let save = |tr: &mut Trainer| tr.save(&run, &info, &tok, None).unwrap_err();
    // A raw weight, an EMA shadow, an AdamW moment: each refused by name, nothing written.
    let mut tr = Trainer::from_checkpoint(&ck, &ck.meta.config).unwrap();
    tr.step = 4;
    {
        let vars = tr.varmap().data().lock().unwrap();
        let v = &vars["vocab_embed.embedding"];
        v.set(&(v.as_tensor() * f64::INFINITY).unwrap()).unwrap();
    }
    let err = save(&mut tr);
    assert!(
        matches!(&err, idlm::Error::NonFiniteTensor { tensor, .. } if tensor == "vocab_embed.embedding"),
        "{err}"
    );
    assert!(err.to_string().contains("step 4"), "{err}");
    let mut tr = Trainer::from_checkpoint(&ck, &ck.meta.config).unwrap();
    tr.step = 4;
    let i = tr.names().len() - 1;
    tr.ema.shadow[i] = (&tr.ema.shadow[i] * f64::NAN).unwrap();
    let err = save(&mut tr);
    assert!(matches!(err, idlm::Error::NonFiniteTensor { .. }), "{err}");
    let mut tr = Trainer::from_checkpoint(&ck, &ck.meta.config).unwrap();
    tr.step = 4;
    tr.opt.v[0][0] = f32::NAN;
    let err = save(&mut tr);
    assert!(
        matches!(&err, idlm::Error::NonFiniteTensor { tensor, .. } if tensor.starts_with("v.")),
        "{err}"
    );
    assert_eq!(
        common::names(&run.join("checkpoints")),
        ["latest", "step-00000003"]
    );
    assert_eq!(checkpoint::load(&run).unwrap().meta.step, 3);
}

#[test]
fn a_checkpoint_file_holding_nan_or_inf_is_refused_on_load() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = common::three_step_run(tmp.path());
    let dir = checkpoint::load(&run).unwrap().dir;
    // Rewritten with one Inf weight and a checksum that matches (as if written that way).
    let path = dir.join("model.safetensors");
    let mut t = checkpoint::load_safetensors(&path).unwrap();
    let name = "ema.backbone.blocks.0.attn_qkv.weight".to_string();
    let w = t[&name].clone();
    let poisoned = (w.ones_like().unwrap() * f64::INFINITY).unwrap();
    t.insert(name.clone(), poisoned);
    candle_core::safetensors::save(&t, &path).unwrap();
    let meta_path = dir.join("meta.json");
    let mut meta = checkpoint::read_meta(&dir).unwrap();
    meta.files.insert(
        "model.safetensors".into(),
        checkpoint::file_sum(&path).unwrap(),
    );
    fs::write(&meta_path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    let err = checkpoint::load(&run).err().unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains(&name) && msg.contains("model.safetensors") && msg.contains("NaN or Inf"),
        "{msg}"
    );
    // Sampling, resuming and distilling from it are all refused with that error.
    let err =
        common::try_train(&run, &data, tiny(&["train.max_steps=6"]).unwrap(), true).unwrap_err();
    assert!(err.to_string().contains(&name), "{err}");
    let c = DistillConfig {
        method: Method::Idlm,
        max_steps: 1,
        val_every: 0,
        ..DistillConfig::default()
    };
    let err = common::distill(&tmp.path().join("student"), &run, c, false).unwrap_err();
    assert!(err.to_string().contains(&name), "{err}");
}

#[test]
fn a_huge_learning_rate_stops_by_name_and_writes_no_nan() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::tiny_data(tmp.path(), 300, 32);
    let run = tmp.path().join("run");
    let cfg = tiny(&[
        "train.lr=1e9",
        "train.warmup_steps=0",
        "train.grad_clip=0",
        "train.max_steps=12",
        "train.ckpt_every=1",
        "train.eval_every=1",
        "train.keep_checkpoints=100",
    ])
    .unwrap();
    match train(&run, &data, cfg) {
        Ok(()) => eprintln!("lr 1e9: the run ended with finite weights"),
        Err(e @ (idlm::Error::NonFinite { .. } | idlm::Error::NonFiniteTensor { .. })) => {
            eprintln!("lr 1e9: {e}")
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
    assert_run_is_finite(&run);
}

/// A packed file of `rows` (each of the same length) over a model vocabulary of `vocab` (the
/// last id is MASK; BOS 0, EOS 1).
fn packed(dir: &Path, vocab: u32, rows: &[Vec<u32>]) -> PackedTokens {
    let path = dir.join(format!("v{vocab}-l{}.bin", rows[0].len()));
    let header = PackedHeader::new(vocab, vocab - 1, 0, 1, rows[0].len() as u32, [0u8; 32]);
    let mut w = PackedWriter::create(&path, header).unwrap();
    for r in rows {
        w.push_row(r).unwrap();
    }
    w.finish().unwrap();
    PackedTokens::open(&path).unwrap()
}

fn weights_finite(tr: &Trainer) {
    let w: HashMap<String, Tensor> = tr.weights();
    check_finite(&w, Path::new("weights")).unwrap();
    check_finite(&tr.ema_weights(), Path::new("EMA")).unwrap();
}

#[test]
fn a_vocabulary_of_two_and_rows_of_one_token_train_validate_and_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny(&["train.warmup_steps=0", "train.batch_size=4"]).unwrap();
    for len in [1usize, 2, 5] {
        // Two real tokens (0 and 1) and MASK (2).
        let rows: Vec<Vec<u32>> = (0..8)
            .map(|r| (0..len).map(|i| ((r + i) % 2) as u32).collect())
            .collect();
        let data = packed(tmp.path(), 3, &rows);
        let process = Masked::new(3, 2).unwrap();
        let mut tr = Trainer::new(&cfg, &cfg.model.dit(3, len)).unwrap();
        let obj = DiffusionObjective::new(&process, None);
        for _ in 0..4 {
            let st = obj.step(&mut tr, &data).unwrap();
            assert!(st.loss.is_finite() && st.grad_norm.is_finite(), "{st:?}");
        }
        weights_finite(&tr);
        let ema = tr.ema_model().unwrap();
        let s = nelbo(&ema, &process, &data, &Default::default(), 8, 4, 2, 1).unwrap();
        assert!(s.nelbo.is_finite() && s.nelbo >= 0.0, "len {len}: {s:?}");
        let opts = SamplerOptions {
            steps: 4,
            ..SamplerOptions::default()
        };
        for x in sample(&ema, &process, 3, len, &opts, None).unwrap() {
            assert_eq!(x.ids.len(), len);
            assert!(x.ids.iter().all(|&t| t < 2), "{:?}", x.ids);
        }
        // The AR baseline on the same rows.
        let ar_cfg = tiny(&["train.warmup_steps=0", "train.process=\"ar\""]).unwrap();
        let mut ar = ArTrainer::new(&ar_cfg, &ar_cfg.model.dit(3, len)).unwrap();
        let obj = idlm::ar::ArObjective {
            mask_id: 2,
            layout: Default::default(),
        };
        if len == 1 {
            // A row of one token has nothing to predict: refused by name.
            let err = obj.step(&mut ar, &data).unwrap_err().to_string();
            assert!(err.contains("at least 2 tokens"), "{err}");
            continue;
        }
        for _ in 0..3 {
            let st = obj.step(&mut ar, &data).unwrap();
            assert!(st.loss.is_finite() && st.grad_norm.is_finite(), "{st:?}");
        }
        check_finite(&ar.weights(), Path::new("AR weights")).unwrap();
    }
}

#[test]
fn a_duo_model_over_two_states_trains_with_and_without_its_curriculum() {
    let tmp = tempfile::tempdir().unwrap();
    // Duo over two states (the second is the PAD id, drawn like any other but never in the
    // data, so every row is token 0) and over three (two tokens and PAD).
    for (vocab, len) in [(2u32, 1usize), (2, 4), (3, 1), (3, 4)] {
        let rows: Vec<Vec<u32>> = (0..8)
            .map(|r| (0..len).map(|i| ((r + i) as u32) % (vocab - 1)).collect())
            .collect();
        let data = packed(tmp.path(), vocab, &rows);
        let process = build_process(ProcessKind::Duo, vocab as usize, vocab - 1, None).unwrap();
        let cfg = tiny(&[
            "train.warmup_steps=0",
            "train.process=\"duo\"",
            "model.time_conditioning=true",
            "duo.curriculum_end=2",
            "duo.table_points=2000",
        ])
        .unwrap();
        let curriculum =
            DuoCurriculum::new(&cfg.duo, vocab as usize, &tmp.path().join("duality")).unwrap();
        let obj = DiffusionObjective::new(process.as_ref(), Some(curriculum));
        let mut tr = Trainer::new(&cfg, &cfg.model.dit(vocab as usize, len)).unwrap();
        // Steps 1-2 under the curriculum, 3-4 on the plain NELBO.
        for _ in 0..4 {
            let st = obj.step(&mut tr, &data).unwrap();
            assert!(st.loss.is_finite() && st.grad_norm.is_finite(), "{st:?}");
        }
        weights_finite(&tr);
        let ema = tr.ema_model().unwrap();
        let s = nelbo(
            &ema,
            process.as_ref(),
            &data,
            &Default::default(),
            8,
            4,
            2,
            1,
        )
        .unwrap();
        assert!(s.nelbo.is_finite(), "vocab {vocab}, len {len}: {s:?}");
        let opts = SamplerOptions {
            steps: 4,
            ..SamplerOptions::default()
        };
        for x in sample(&ema, process.as_ref(), 3, len, &opts, None).unwrap() {
            assert!(x.ids.iter().all(|&t| t < vocab), "{:?}", x.ids);
        }
    }
}

#[test]
fn batches_of_padding_or_with_nothing_masked_give_finite_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny(&["train.warmup_steps=0"]).unwrap();
    let (v, l) = (40usize, 16usize);
    // Rows of nothing but EOS, the id packed rows are padded with.
    let data = packed(tmp.path(), v as u32, &vec![vec![1u32; l]; 8]);
    let process = Masked::new(v, (v - 1) as u32).unwrap();
    let mut tr = Trainer::new(&cfg, &cfg.model.dit(v, l)).unwrap();
    let obj = DiffusionObjective::new(&process, None);
    for _ in 0..3 {
        let st = obj.step(&mut tr, &data).unwrap();
        assert!(st.loss.is_finite() && st.grad_norm.is_finite(), "{st:?}");
    }
    weights_finite(&tr);
    // A batch in which no position is masked: loss exactly 0, no gradient, a finite update.
    let b = 4;
    let x0: Vec<u32> = (0..b * l).map(|i| (i % (v - 1)) as u32).collect();
    let t = vec![1e-6; b];
    let before = tr.step;
    let st = tr
        .optimize((b * l) as u64, |m, _, _| {
            batch_loss(m, &process, &x0, &x0, b, l, &t, None)
        })
        .unwrap();
    assert_eq!((st.loss, st.grad_norm, tr.step), (0.0, 0.0, before + 1));
    weights_finite(&tr);
    assert!(process.active_positions(&x0).is_some_and(|p| p.is_empty()));
}

#[test]
fn eval_values_that_are_not_finite_are_named_not_written() {
    use idlm::eval::protocol::finite;
    assert_eq!(finite("entropy", 1.5).unwrap(), 1.5);
    for x in [f64::NAN, f64::INFINITY] {
        let err = finite("GenPPL", x).unwrap_err().to_string();
        assert!(
            err.contains("GenPPL") && err.contains("not finite"),
            "{err}"
        );
    }
}

#[test]
fn prepare_refuses_a_vocabulary_of_two_and_rows_of_one_token_by_name() {
    use idlm::data::{PrepareOptions, TokenizerChoice, prepare};
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::tiny_corpus(&tmp.path().join("corpus"), 4, 100);
    for (vocab, len, says) in [(2, 32, "below 257"), (300, 1, "at least 3")] {
        let opts = PrepareOptions::new(
            "tiny",
            vec![corpus.clone()],
            TokenizerChoice::Train { vocab_size: vocab },
            len,
            &tmp.path().join("out"),
        );
        let err = prepare(&opts).unwrap_err().to_string();
        assert!(err.contains(says), "vocab {vocab}, len {len}: {err}");
    }
}

#[test]
fn a_distillation_at_a_huge_learning_rate_writes_no_nan() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, teacher) = common::three_step_run(tmp.path());
    let run = tmp.path().join("idlm");
    let c = DistillConfig {
        method: Method::Idlm,
        lr: 1e9,
        warmup_steps: 0,
        batch_size: 2,
        max_steps: 8,
        ckpt_every: 1,
        val_every: 2,
        val_samples: 2,
        val_steps: 2,
        keep_checkpoints: 100,
        ..DistillConfig::default()
    };
    match common::distill(&run, &teacher, c, false) {
        Ok(()) => eprintln!("distill lr 1e9: the run ended with finite weights"),
        Err(e @ (idlm::Error::NonFinite { .. } | idlm::Error::NonFiniteTensor { .. })) => {
            eprintln!("distill lr 1e9: {e}")
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
    assert_run_is_finite(&run);
}
