//! Checkpoints and resume: round trip, exact continuation, torn writes, divergence, mismatched
//! data, and what kill -9 leaves behind.

mod common;

use std::path::Path;

use idlm::checkpoint;
use idlm::config::RunConfig;
use idlm::data::DataDir;
use idlm::nn::DitInput;
use idlm::run::{TrainRunOptions, make_process};
use idlm::train::run_training;
use idlm::train::{DiffusionObjective, Trainer};

fn cfg(max_steps: u64) -> RunConfig {
    RunConfig::load("tiny")
        .unwrap()
        .with_overrides(&[
            format!("train.max_steps={max_steps}"),
            "train.ckpt_every=3".into(),
            "train.eval_every=3".into(),
            "train.log_every=1".into(),
            "train.grad_accum=2".into(),
            "model.dropout=0.1".into(),
        ])
        .unwrap()
}

fn train(run: &Path, data: &Path, max_steps: u64, resume: bool) {
    run_training(&TrainRunOptions {
        run_dir: run.to_path_buf(),
        data_dir: data.to_path_buf(),
        cfg: cfg(max_steps),
        resume,
        progress: false,
    })
    .unwrap();
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Some((v["step"].as_u64()?, v.get("loss")?.as_f64()?))
        })
        .collect()
}

#[test]
fn resume_continues_with_identical_losses() {
    idlm::runtime::tune_malloc();
    let tmp = tempfile::tempdir().unwrap();
    let data = common::tiny_data(tmp.path(), 300, 32);
    let a = tmp.path().join("a");
    train(&a, &data, 6, false);
    let b = tmp.path().join("b");
    train(&b, &data, 3, false);
    train(&b, &data, 6, true);
    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.len(), 6);
    assert_eq!(la, lb, "resumed losses differ");
    // A fresh run in an existing run directory is refused rather than overwriting it.
    let err = run_training(&TrainRunOptions {
        run_dir: b.clone(),
        data_dir: data.clone(),
        cfg: cfg(6),
        resume: false,
        progress: false,
    })
    .unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
}

#[test]
fn checkpoint_round_trip_restores_weights_and_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = common::tiny_data(tmp.path(), 300, 32);
    let run = tmp.path().join("run");
    train(&run, &data_dir, 3, false);
    let ck = checkpoint::load(&run).unwrap();
    assert_eq!(ck.meta.step, 3);
    let c = ck.meta.config.clone();
    let tr = Trainer::from_checkpoint(&ck, &c).unwrap();
    for (name, w) in tr.weights() {
        let saved = &ck.weights[&name];
        let d = (&w - saved).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{name}");
    }
    let data = DataDir::open(&data_dir).unwrap();
    let ids = candle_core::Tensor::from_vec(
        data.valid.row(0).unwrap(),
        (1, 32),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let sigma =
        candle_core::Tensor::zeros(1, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let a = tr
        .ema_model()
        .unwrap()
        .forward(DitInput::Ids(&ids), &sigma, None)
        .unwrap();
    let b = ck
        .dit(true)
        .unwrap()
        .forward(DitInput::Ids(&ids), &sigma, None)
        .unwrap();
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn torn_checkpoint_write_leaves_the_previous_one_loadable() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::tiny_data(tmp.path(), 300, 32);
    let run = tmp.path().join("run");
    train(&run, &data, 3, false);
    let good = checkpoint::load(&run).unwrap();
    // A crash half-way through the next save: the temp dir holds a torn weights file and no
    // meta.json, and `latest` was never updated.
    let root = run.join("checkpoints");
    let torn = root.join(".tmp-step-00000006-999");
    std::fs::create_dir_all(&torn).unwrap();
    let bytes = std::fs::read(good.dir.join("model.safetensors")).unwrap();
    std::fs::write(torn.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let again = checkpoint::load(&run).unwrap();
    assert_eq!(again.meta.step, 3);
    assert!(again.dit(true).is_ok());
    // A corrupt checkpoint is reported by name, not loaded.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for f in ["meta.json", "tokenizer.json"] {
        std::fs::copy(good.dir.join(f), bad.join(f)).unwrap();
    }
    std::fs::write(bad.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = checkpoint::load(&bad).err().unwrap().to_string();
    assert!(
        err.contains("corrupt") && err.contains("model.safetensors"),
        "{err}"
    );
    std::fs::write(bad.join("meta.json"), b"{ not json").unwrap();
    let err = checkpoint::load(&bad).err().unwrap().to_string();
    assert!(err.contains("corrupt meta.json"), "{err}");
    // And resuming the run still works from the good checkpoint.
    train(&run, &data, 4, true);
    assert_eq!(checkpoint::load(&run).unwrap().meta.step, 4);
}

#[test]
fn non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = common::tiny_data(tmp.path(), 300, 32);
    let run = tmp.path().join("run");
    train(&run, &data_dir, 3, false);
    let ck = checkpoint::load(&run).unwrap();
    let mut tr = Trainer::from_checkpoint(&ck, &ck.meta.config).unwrap();
    // Poison one weight: the next step must fail and name step 4.
    {
        let vars = tr.varmap().data().lock().unwrap();
        let v = &vars["vocab_embed.embedding"];
        let nan = (v.as_tensor() * f64::NAN).unwrap();
        v.set(&nan).unwrap();
    }
    let data = DataDir::open(&data_dir).unwrap();
    let process = make_process(ck.meta.process.process().unwrap(), &data).unwrap();
    let obj = DiffusionObjective::from_config(&tr.cfg, process.as_ref()).unwrap();
    let err = obj.step(&mut tr, &data.train).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("non-finite") && msg.contains("step 4"),
        "{msg}"
    );
    let again = checkpoint::load(&run).unwrap();
    assert_eq!(again.meta.step, 3);
    assert!(again.dit(true).is_ok());
}

#[test]
fn resuming_on_data_from_another_tokenizer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::tiny_data(tmp.path(), 300, 32);
    let other = common::tiny_data(tmp.path(), 280, 32);
    let run = tmp.path().join("run");
    train(&run, &data, 3, false);
    let err = run_training(&TrainRunOptions {
        run_dir: run.clone(),
        data_dir: other,
        cfg: cfg(6),
        resume: true,
        progress: false,
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("tokenizer mismatch"), "{err}");
    assert_eq!(checkpoint::load(&run).unwrap().meta.step, 3);
}

/// What kill -9 before the first checkpoint leaves (found by scripts/kill_soak.sh): metric lines
/// and no checkpoint. `--resume` says to start again; starting again must not keep those lines.
#[test]
fn a_run_killed_before_its_first_checkpoint_starts_again_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::tiny_data(tmp.path(), 300, 32);
    let clean = tmp.path().join("clean");
    train(&clean, &data, 3, false);
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("metrics.jsonl"),
        "{\"step\":1,\"loss\":9.0}\n{\"step\":2,\"lo",
    )
    .unwrap();
    let err = common::try_train(&run, &data, cfg(3), true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("holds no checkpoint to resume") && err.contains("without --resume"),
        "{err}"
    );
    train(&run, &data, 3, false);
    assert_eq!(losses(&run), losses(&clean));
}

/// What kill -9 at other instants leaves (found by scripts/kill_soak.sh): a staged checkpoint,
/// a `latest` temp, a folder moved aside, one checkpoint too many (killed before pruning), or a
/// finished run not yet exited. The next process clears them; a resume with nothing to do writes
/// nothing (rewriting the checkpoint `latest` names opened a window where a second kill left
/// nothing to resume, and it dropped `val_nelbo`); a checkpoint written after a resume but before
/// the next validation records the last validation, as in a run never stopped.
#[test]
fn a_killed_runs_leftovers_are_cleared_and_a_resume_with_nothing_to_do_writes_nothing() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = common::tiny_data(tmp.path(), 300, 32);
    let run = tmp.path().join("run");
    train(&run, &data, 6, false);
    let root = run.join("checkpoints");
    let six = root.join("step-00000006");
    let staged = root.join(".step-00000009.tmp-2000000001-5");
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::write(staged.join("model.safetensors"), b"torn").unwrap();
    std::fs::write(root.join("latest.tmp-2000000001-6"), b"step-").unwrap();
    std::fs::create_dir_all(root.join("step-00000006.old-2000000001-7")).unwrap();
    std::fs::create_dir_all(root.join("step-00000001")).unwrap();
    for f in ["meta.json", "model.safetensors"] {
        std::fs::copy(six.join(f), root.join("step-00000001").join(f)).unwrap();
    }
    let (ino, metrics) = (
        std::fs::metadata(&six).unwrap().ino(),
        std::fs::read(run.join("metrics.jsonl")).unwrap(),
    );
    let val6 = checkpoint::load(&run).unwrap().meta.val_nelbo;
    assert!(val6.is_some());
    train(&run, &data, 6, true);
    assert_eq!(
        common::names(&root),
        ["latest", "step-00000003", "step-00000006"]
    );
    assert_eq!(std::fs::metadata(&six).unwrap().ino(), ino, "rewritten");
    assert_eq!(checkpoint::load(&run).unwrap().meta.val_nelbo, val6);
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), metrics);
    // Checkpoints every step, validation every 3: step 7 is checkpointed between validations.
    let every = cfg(8)
        .with_overrides(&["train.ckpt_every=1".into()])
        .unwrap();
    common::try_train(&run, &data, every, true).unwrap();
    let seven = checkpoint::read_meta(&root.join("step-00000007")).unwrap();
    assert_eq!(seven.val_nelbo, val6);
}
