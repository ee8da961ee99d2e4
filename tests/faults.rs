//! Faults a run or a result file must survive (issue 23, part 3): a full disk during a checkpoint,
//! a samples file and an eval output (a file-size limit, RLIMIT_FSIZE, in the child: unprivileged,
//! no mount); a read-only output folder; a checkpoint file truncated or bit-flipped after it was
//! written (checksums in meta.json); two processes on one run folder (the run lock).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use idlm::checkpoint;
use idlm::config::RunConfig;
use idlm::distill::{DistillConfig, Method};
use idlm::run::RunLock;

fn cfg(max_steps: u64) -> RunConfig {
    let steps = format!("train.max_steps={max_steps}");
    common::tiny_config(&[&steps, "train.ckpt_every=3", "train.eval_every=3"]).unwrap()
}

fn train(run: &Path, data: &Path, max_steps: u64, resume: bool) -> idlm::Result<()> {
    common::try_train(run, data, cfg(max_steps), resume)
}

/// The `idlm` binary with `args` in `cwd`; `fsize`: a file-size limit in bytes (RLIMIT_FSIZE,
/// with SIGXFSZ ignored so that a write past it fails with EFBIG, as a full disk fails with
/// ENOSPC); `uid`: run as this user.
fn idlm_with(args: &[&str], cwd: &Path, fsize: Option<u64>, uid: Option<u32>) -> Output {
    idlm_try(args, cwd, fsize, uid).unwrap()
}

/// [`idlm_with`], with the spawn's own failure returned (switching users may be refused).
fn idlm_try(
    args: &[&str],
    cwd: &Path,
    fsize: Option<u64>,
    uid: Option<u32>,
) -> std::io::Result<Output> {
    idlm_bin_try(Path::new(env!("CARGO_BIN_EXE_idlm")), args, cwd, fsize, uid)
}

/// [`idlm_try`] with the binary at `bin` (a copy another user can reach).
fn idlm_bin_try(
    bin: &Path,
    args: &[&str],
    cwd: &Path,
    fsize: Option<u64>,
    uid: Option<u32>,
) -> std::io::Result<Output> {
    let mut c = Command::new(bin);
    c.args(args)
        .current_dir(cwd)
        .env("IDLM_HOME", cwd.join("cache"));
    if let Some(uid) = uid {
        c.uid(uid).gid(uid);
    }
    if let Some(limit) = fsize {
        // SAFETY: only async-signal-safe calls (signal, setrlimit) between fork and exec.
        unsafe {
            c.pre_exec(move || {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let r = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    c.output()
}

/// `idlm train --resume` of `run` to `max_steps` through the binary, under a file-size limit.
fn resume_cli(cwd: &Path, data: &Path, run: &Path, max_steps: u64, fsize: Option<u64>) -> Output {
    let (d, r, n) = (
        data.to_str().unwrap(),
        run.to_str().unwrap(),
        max_steps.to_string(),
    );
    let args = ["train", "--data", d, "--out", r, "--resume", "--quiet"];
    idlm_with(
        &[&args[..], &["--max-steps", &n]].concat(),
        cwd,
        fsize,
        None,
    )
}

/// No temp file or folder (`.tmp-`) left anywhere under `dir`.
fn assert_no_temps(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains(".tmp-"),
            "temp {name} left in {}",
            dir.display()
        );
        if e.file_type().unwrap().is_dir() {
            assert_no_temps(&e.path());
        }
    }
}

/// Make everything under `dir` readable (and folders searchable) by everyone.
fn open_up(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            open_up(&p);
        } else {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
}

fn stderr(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "unexpected success: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn checksums_name_a_truncated_or_bit_flipped_checkpoint_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = common::three_step_run(tmp.path());
    let good = checkpoint::load(&run).unwrap();
    let dir = good.dir.clone();
    for f in ["model.safetensors", "optim.safetensors", "tokenizer.json"] {
        let sum = &good.meta.files[f];
        assert_eq!(sum.sha256.len(), 64, "{f}");
        assert_eq!(sum.bytes, fs::metadata(dir.join(f)).unwrap().len(), "{f}");
    }
    let pristine: Vec<(PathBuf, Vec<u8>)> = ["model.safetensors", "optim.safetensors"]
        .iter()
        .map(|f| (dir.join(f), fs::read(dir.join(f)).unwrap()))
        .collect();
    let restore = || {
        for (p, b) in &pristine {
            fs::write(p, b).unwrap();
        }
    };

    // One bit flipped in the last weight: the file still parses, only the checksum sees it.
    let mut bytes = pristine[0].1.clone();
    *bytes.last_mut().unwrap() ^= 0x01;
    fs::write(dir.join("model.safetensors"), &bytes).unwrap();
    let err = checkpoint::load(&run).err().unwrap();
    assert!(
        matches!(&err, idlm::Error::Checksum { what: "sha256", .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("model.safetensors")
            && msg.contains(&good.meta.files["model.safetensors"].sha256)
            && msg.contains("corrupt"),
        "{msg}"
    );
    // Resuming on it is refused with the same error, and nothing is trained or written.
    let err = train(&run, &data, 6, true).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    restore();

    // The optimizer state truncated: named by size, on resume.
    let o = &pristine[1].1;
    fs::write(dir.join("optim.safetensors"), &o[..o.len() - 100]).unwrap();
    let err = train(&run, &data, 6, true).unwrap_err().to_string();
    assert!(
        err.contains("optim.safetensors")
            && err.contains(&format!("{} bytes", o.len()))
            && err.contains(&format!("{} bytes", o.len() - 100)),
        "{err}"
    );
    restore();

    // The tokenizer edited.
    let tok = fs::read_to_string(dir.join("tokenizer.json")).unwrap();
    fs::write(dir.join("tokenizer.json"), tok.replacen("the", "thE", 1)).unwrap();
    let ck = checkpoint::load(&run).unwrap();
    let err = ck.tokenizer_json().unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    fs::write(dir.join("tokenizer.json"), &tok).unwrap();

    // A checkpoint written before checksums (no `files` in meta.json) loads unchecked.
    let meta_path = dir.join("meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta.as_object_mut().unwrap().remove("files").unwrap();
    fs::write(&meta_path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    fs::write(dir.join("model.safetensors"), &bytes).unwrap();
    let old = checkpoint::load(&run).unwrap();
    assert!(old.meta.files.is_empty());
    restore();
    // And a resume from it works, writing checksums again.
    train(&run, &data, 6, true).unwrap();
    let new = checkpoint::load(&run).unwrap();
    assert_eq!(new.meta.step, 6);
    assert!(new.meta.files.contains_key("model.safetensors"));
}

#[test]
fn distillation_checkpoints_verify_their_fake_and_teacher_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::tiny_data(tmp.path(), 300, 32);
    let teacher = tmp.path().join("teacher");
    train(&teacher, &data, 3, false).unwrap();
    let run = tmp.path().join("idlm");
    let c = DistillConfig {
        method: Method::Idlm,
        batch_size: 2,
        max_steps: 2,
        ckpt_every: 2,
        val_every: 0,
        ..DistillConfig::default()
    };
    common::distill(&run, &teacher, c.clone(), false).unwrap();
    let ck = checkpoint::load(&run).unwrap();
    for f in ["fake.safetensors", "teacher.safetensors"] {
        assert!(ck.meta.files.contains_key(f), "{f} has no checksum");
        let p = ck.dir.join(f);
        let mut b = fs::read(&p).unwrap();
        let keep = b.clone();
        *b.last_mut().unwrap() ^= 0x80;
        fs::write(&p, &b).unwrap();
        let mut more = c.clone();
        more.max_steps = 4;
        let err = common::distill(&run, &teacher, more, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains(f) && err.contains("sha256"), "{err}");
        fs::write(&p, keep).unwrap();
    }
}

#[test]
fn a_second_run_on_a_locked_folder_is_refused_with_the_holders_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = common::three_step_run(tmp.path());
    let before = fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    // Another holder (this process, through its own open of the lock file).
    let held = RunLock::acquire(&run).unwrap();
    let pid = std::process::id();
    let err = train(&run, &data, 6, true).unwrap_err();
    assert!(
        matches!(err, idlm::Error::RunLocked { pid: Some(p), .. } if p == pid),
        "{err}"
    );
    assert!(err.to_string().contains(&format!("pid {pid}")), "{err}");
    let c = DistillConfig {
        max_steps: 1,
        val_every: 0,
        ..DistillConfig::default()
    };
    let err = common::distill(&run, &run, c, true).unwrap_err();
    assert!(matches!(err, idlm::Error::RunLocked { .. }), "{err}");
    // The refused runs touched nothing (the resume would have truncated the metrics).
    assert_eq!(
        fs::read_to_string(run.join("metrics.jsonl")).unwrap(),
        before
    );
    assert_eq!(checkpoint::load(&run).unwrap().meta.step, 3);
    drop(held);
    train(&run, &data, 4, true).unwrap();
}

#[test]
fn two_train_processes_on_one_folder_and_the_lock_dies_with_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::tiny_data(tmp.path(), 300, 32);
    let run = tmp.path().join("run");
    let (d, r) = (data.to_str().unwrap(), run.to_str().unwrap());
    let mut first = Command::new(env!("CARGO_BIN_EXE_idlm"))
        .args([
            "train", "--data", d, "--preset", "tiny", "--out", r, "--quiet",
        ])
        .args(["--max-steps", "1000000", "--set", "train.ckpt_every=2"])
        .args(["--threads", "1"])
        .env("IDLM_HOME", tmp.path().join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = first.id();
    // Wait for its first checkpoint (it holds the lock from the start).
    let t0 = Instant::now();
    while checkpoint::load(&run).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint from the first process"
        );
        assert!(first.try_wait().unwrap().is_none(), "first process ended");
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = resume_cli(tmp.path(), &data, &run, 1_000_000, None);
    let msg = stderr(&second);
    assert!(
        msg.contains(&format!("pid {pid}")) && msg.contains("in use"),
        "{msg}"
    );
    // kill -9: the kernel drops the lock with the process; the stale pid file blocks nothing.
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    first.wait().unwrap();
    assert_eq!(
        fs::read_to_string(run.join("lock")).unwrap().trim(),
        pid.to_string()
    );
    let step = checkpoint::load(&run).unwrap().meta.step;
    let resumed = resume_cli(tmp.path(), &data, &run, step + 2, None);
    common::ok(&resumed);
    assert_eq!(checkpoint::load(&run).unwrap().meta.step, step + 2);
}

#[test]
fn a_full_disk_during_a_checkpoint_keeps_the_previous_one_and_leaves_no_temp() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = common::three_step_run(tmp.path());
    let model = checkpoint::load(&run)
        .unwrap()
        .dir
        .join("model.safetensors");
    let limit = fs::metadata(&model).unwrap().len() / 2;
    assert!(limit > 8192, "metrics and config must fit under the limit");
    let o = resume_cli(tmp.path(), &data, &run, 6, Some(limit));
    let msg = stderr(&o);
    assert!(
        msg.contains("step-00000006") && msg.contains("File too large"),
        "{msg}"
    );
    let ck = checkpoint::load(&run).unwrap();
    assert_eq!(ck.meta.step, 3);
    assert!(ck.dit(true).is_ok() && ck.optim().is_ok());
    assert_eq!(
        common::names(&run.join("checkpoints")),
        ["latest", "step-00000003"]
    );
    assert_no_temps(&run);
    // metrics.jsonl is appended in place: a write cut mid-line by a full disk leaves a torn line.
    let metrics = run.join("metrics.jsonl");
    let mut text = fs::read_to_string(&metrics).unwrap();
    text.push_str("{\"step\": 7, \"loss\": 4.1");
    fs::write(&metrics, text).unwrap();
    // Room again: the run resumes from step 3, the torn line and the lines past step 3 dropped.
    train(&run, &data, 6, true).unwrap();
    assert_eq!(checkpoint::load(&run).unwrap().meta.step, 6);
    let steps: Vec<u64> = fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}"))
        })
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
}

#[test]
fn a_full_disk_during_a_report_leaves_no_half_written_plot() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (steps, genppl) in [(4u64, 900.0), (16, 700.0)] {
        let p = tmp.path().join(format!("e{steps}.json"));
        let v = serde_json::json!({"protocol": "idlm-eval-v1", "samples": 8, "genppl": genppl,
            "entropy": 4.5, "sample_info": {"method": "idlm", "steps": steps, "process": "mdlm"}});
        fs::write(&p, v.to_string()).unwrap();
        files.push(p.to_str().unwrap().to_string());
    }
    let rep = tmp.path().join("rep");
    let args = [
        "report",
        &files[0],
        &files[1],
        "--out",
        rep.to_str().unwrap(),
    ];
    // The PNGs are tens of kB; the JSON and markdown fit under 4 kB.
    let msg = stderr(&idlm_with(&args, tmp.path(), Some(4096), None));
    assert!(
        msg.contains(".png") && msg.contains("File too large"),
        "{msg}"
    );
    assert!(
        common::names(&rep).iter().all(|n| !n.ends_with(".png")),
        "{:?}",
        common::names(&rep)
    );
    assert_no_temps(&rep);
    common::ok(&idlm_with(&args, tmp.path(), None, None));
    assert!(common::names(&rep).iter().any(|n| n.ends_with(".png")));
}

#[test]
fn a_full_disk_during_a_samples_or_eval_write_leaves_the_old_file_or_none() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, run) = common::three_step_run(tmp.path());
    let out = tmp.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let r = run.to_str().unwrap();
    let args = ["sample", "--ckpt", r, "-n", "4", "--steps", "4"];
    // A complete samples file first.
    let s = out.join("s.jsonl");
    let full = idlm_with(
        &[&args[..], &["--out", s.to_str().unwrap()]].concat(),
        tmp.path(),
        None,
        None,
    );
    common::ok(&full);
    let complete = fs::read(&s).unwrap();
    assert_eq!(complete.iter().filter(|&&b| b == b'\n').count(), 4);
    // The same again with a disk that holds only half of it: the old file stays whole.
    let limit = (complete.len() / 2) as u64;
    let o = idlm_with(
        &[&args[..], &["--out", s.to_str().unwrap()]].concat(),
        tmp.path(),
        Some(limit),
        None,
    );
    let msg = stderr(&o);
    assert!(
        msg.contains(s.to_str().unwrap()) && msg.contains("File too large"),
        "{msg}"
    );
    assert_eq!(fs::read(&s).unwrap(), complete);
    // A new file under the limit: not created at all.
    let fresh = out.join("fresh.jsonl");
    let o = idlm_with(
        &[&args[..], &["--out", fresh.to_str().unwrap()]].concat(),
        tmp.path(),
        Some(limit),
        None,
    );
    stderr(&o);
    assert!(!fresh.exists());
    // The eval JSON (entropy needs no model: the samples carry their ids).
    let e = out.join("e.json");
    let eval = [
        "eval",
        s.to_str().unwrap(),
        "--metrics",
        "entropy",
        "--out",
        e.to_str().unwrap(),
    ];
    let o = idlm_with(&eval, tmp.path(), Some(64), None);
    let msg = stderr(&o);
    assert!(
        msg.contains(e.to_str().unwrap()) && msg.contains("File too large"),
        "{msg}"
    );
    assert!(!e.exists());
    assert_eq!(common::names(&out), ["s.jsonl"]);
    // With room, the same command writes it.
    common::ok(&idlm_with(&eval, tmp.path(), None, None));
    let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&e).unwrap()).unwrap();
    assert!(v["entropy"].as_f64().unwrap().is_finite());
}

#[test]
fn a_read_only_output_folder_is_named_in_the_error() {
    // Root ignores permission bits: as root, the commands run as `nobody` (uid 65534), so the
    // folder's mode really refuses them; as any other user they run as that user.
    let root = unsafe { libc::geteuid() } == 0;
    let uid = root.then_some(65534u32);
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (data, run) = common::three_step_run(tmp.path());
    // The build's binary may sit under a folder `nobody` cannot traverse (a fresh clone in a 0700
    // temporary folder): run a copy from the opened-up temporary folder instead.
    let bin = tmp.path().join("idlm");
    fs::copy(env!("CARGO_BIN_EXE_idlm"), &bin).unwrap();
    if root {
        // Readable by `nobody` whatever this process's umask.
        open_up(tmp.path());
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let ro = tmp.path().join("ro");
    fs::create_dir_all(&ro).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    let s = ro.join("s.jsonl");
    let o = idlm_bin_try(
        &bin,
        &[
            "sample",
            "--ckpt",
            run.to_str().unwrap(),
            "-n",
            "2",
            "--steps",
            "2",
            "--out",
            s.to_str().unwrap(),
        ],
        tmp.path(),
        None,
        uid,
    )
    .unwrap_or_else(|e| panic!("cannot run {} as uid {uid:?}: {e}", bin.display()));
    let msg = stderr(&o);
    assert!(
        msg.contains(s.to_str().unwrap()) && msg.contains("Permission denied"),
        "{msg}"
    );
    let out = ro.join("run");
    let o = idlm_bin_try(
        &bin,
        &[
            "train",
            "--data",
            data.to_str().unwrap(),
            "--preset",
            "tiny",
            "--out",
            out.to_str().unwrap(),
            "--max-steps",
            "1",
            "--quiet",
        ],
        tmp.path(),
        None,
        uid,
    )
    .unwrap();
    let msg = stderr(&o);
    assert!(
        msg.contains(out.to_str().unwrap()) && msg.contains("Permission denied"),
        "{msg}"
    );
    assert!(common::names(&ro).is_empty());
    // Without switching users: a folder that cannot exist (its parent is a regular file).
    let file = tmp.path().join("file");
    fs::write(&file, "x").unwrap();
    let err = idlm::atomic::write_file(&file.join("s.jsonl"), b"x")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&file.join("s.jsonl").display().to_string()),
        "{err}"
    );
}
