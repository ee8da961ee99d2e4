//! Conditional training on prompt/answer rows (`prepare --format pairs`): the row layout, the
//! loss leaving prompt positions out exactly (MDLM, Duo and AR), and a tiny MDLM teacher that
//! learns a one-template task from its prompts to 100%.

mod common;

use std::path::Path;

use common::{err, idlm, ok};
use idlm::ar::{init_lm, prompted_next_token_losses};
use idlm::config::RunConfig;
use idlm::data::DataDir;
use idlm::data::pairs::{RowLayout, clamp_prompts, prompt_len};
use idlm::nn::CausalLmConfig;
use idlm::process::{ForwardProcess, Masked, Uniform};
use idlm::train::Trainer;
use idlm::train::losses::prompted_batch_loss;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const WORDS: &[&str] = &[
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve",
];

/// "after N comes" -> the next number word: a one-template task over 11 prompts.
fn write_pairs(path: &Path, repeat: usize) {
    let mut s = String::new();
    for r in 0..repeat {
        for i in 0..WORDS.len() - 1 {
            s.push_str(&format!(
                "{{\"prompt\": \"after {} comes\", \"answer\": \"{}\", \"copy\": {r}}}\n",
                WORDS[i],
                WORDS[i + 1]
            ));
        }
    }
    std::fs::write(path, s).unwrap();
}

/// `idlm prepare --format pairs --corpus FILE` with more arguments.
fn prepare_pairs(dir: &Path, file: &Path, more: &[&str]) -> std::process::Output {
    let mut args = vec![
        "prepare",
        "--corpus",
        file.to_str().unwrap(),
        "--format",
        "pairs",
    ];
    args.extend(more);
    idlm(&args, dir)
}

#[test]
fn pairs_rows_are_bos_prompt_sep_answer_eos_padding() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let f = dir.join("pairs.jsonl");
    write_pairs(&f, 40);
    let mut long = std::fs::read_to_string(&f).unwrap();
    long.push_str(&format!(
        "{{\"prompt\": \"a long one\", \"answer\": \"{}\"}}\n",
        "seven ".repeat(40)
    ));
    std::fs::write(&f, long).unwrap();
    let out = dir.join("data");
    let o_s = out.to_str().unwrap();
    ok(&prepare_pairs(
        dir,
        &f,
        &[
            "--vocab",
            "300",
            "--seq-len",
            "16",
            "--valid-fraction",
            "0.2",
            "--out",
            o_s,
        ],
    ));
    let d = DataDir::open(&out).unwrap();
    let sep = d.tokenizer.eos_id();
    assert_eq!(d.info.rows, RowLayout::Pairs { sep_id: sep });
    let total = d.info.train.rows + d.info.valid.rows;
    assert_eq!(total, 440, "the pair longer than a row is dropped");
    assert!(d.info.train.dropped_tokens + d.info.valid.dropped_tokens > 40);
    for i in 0..d.train.n_rows() {
        let row = d.train.row(i).unwrap();
        assert_eq!(row[0], d.tokenizer.bos_id());
        let p = prompt_len(&row, &[sep]);
        let prompt = d.tokenizer.decode(&row[1..p - 1]).unwrap();
        assert!(
            prompt.starts_with("after ") && prompt.ends_with(" comes"),
            "{prompt}"
        );
        let rest = &row[p..];
        let end = rest.iter().position(|&t| t == sep).unwrap();
        let answer = d.tokenizer.decode(&rest[..end]).unwrap();
        assert!(WORDS.contains(&answer.as_str()), "{answer}");
        assert!(
            rest[end..].iter().all(|&t| t == sep),
            "padding is the separator"
        );
    }
    // A prompt holding the end-of-text token cannot be told from its separator.
    std::fs::write(
        &f,
        "{\"prompt\": \"x <|endoftext|> y\", \"answer\": \"z\"}\n".repeat(30),
    )
    .unwrap();
    let e = err(&prepare_pairs(
        dir,
        &f,
        &[
            "--vocab",
            "300",
            "--seq-len",
            "16",
            "--out",
            dir.join("bad").to_str().unwrap(),
        ],
    ));
    assert!(
        e.contains("the prompt contains the end-of-text token"),
        "{e}"
    );
    std::fs::write(&f, "{\"prompt\": \"x\"}\n").unwrap();
    let e = err(&prepare_pairs(
        dir,
        &f,
        &["--out", dir.join("bad2").to_str().unwrap()],
    ));
    assert!(
        e.contains("line 1: not a {\"prompt\": ..., \"answer\": ...} pair"),
        "{e}"
    );
}

/// Rows of 12 with prompts of 5 and 3; x_t corrupted by `process`, prompts clamped.
fn batch(process: &dyn ForwardProcess, v: u32) -> (Vec<u32>, Vec<u32>, Vec<usize>, Vec<f64>) {
    let l = 12;
    let x0: Vec<u32> = (0..2 * l as u32).map(|i| (i * 5 + 1) % v).collect();
    let mut xt = vec![0u32; 2 * l];
    let t = vec![0.7, 0.9];
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (r, &tr) in t.iter().enumerate() {
        let row = r * l..(r + 1) * l;
        process.corrupt_row(&x0[row.clone()], tr, &mut rng, &mut xt[row]);
    }
    let prompts = vec![5, 3];
    clamp_prompts(&x0, &mut xt, l, &prompts);
    (x0, xt, prompts, t)
}

#[test]
fn the_loss_leaves_prompt_positions_out_exactly() {
    let cfg = RunConfig::load("tiny").unwrap();
    let v = 20usize;
    let dit = cfg.model.dit(v, 12);
    let mut tr = Trainer::new(&cfg, &dit).unwrap();
    let masked = Masked::new(v, (v - 1) as u32).unwrap();
    let uniform = Uniform::new(v).unwrap();
    for process in [&masked as &dyn ForwardProcess, &uniform] {
        let (x0, xt, prompts, t) = batch(process, (v - 1) as u32);
        // Leave the zero-initialised output layer, so the loss depends on its targets.
        for _ in 0..5 {
            tr.optimize(24, |m, _, _| {
                prompted_batch_loss(m, process, &x0, &xt, 2, 12, &t, &prompts, None)
            })
            .unwrap();
        }
        let loss = |x0: &[u32]| {
            prompted_batch_loss(&tr.model, process, x0, &xt, 2, 12, &t, &prompts, None).unwrap()
        };
        let base = loss(&x0);
        // A change of the targets at prompt positions only: same loss, same gradient.
        let mut other = x0.clone();
        for (r, &p) in prompts.iter().enumerate() {
            for j in 0..p {
                other[r * 12 + j] = (other[r * 12 + j] + 3) % (v as u32 - 1);
            }
        }
        let changed = loss(&other);
        assert_eq!(
            base.to_scalar::<f32>().unwrap(),
            changed.to_scalar::<f32>().unwrap()
        );
        let (g1, g2) = (base.backward().unwrap(), changed.backward().unwrap());
        for var in tr.vars() {
            let a = g1.get(var.as_tensor()).unwrap().flatten_all().unwrap();
            let b = g2.get(var.as_tensor()).unwrap().flatten_all().unwrap();
            let d = (a - b).unwrap().abs().unwrap().max(0).unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        }
        // A change of an answer target does change it (the test can fail).
        let mut answer = x0.clone();
        answer[11] = (answer[11] + 1) % (v as u32 - 1);
        let mut xt2 = xt.clone();
        xt2[11] = if process.kind() == idlm::process::ProcessKind::Mdlm {
            (v - 1) as u32
        } else {
            xt2[11]
        };
        let moved =
            prompted_batch_loss(&tr.model, process, &answer, &xt2, 2, 12, &t, &prompts, None)
                .unwrap();
        assert_ne!(
            base.to_scalar::<f32>().unwrap(),
            moved.to_scalar::<f32>().unwrap()
        );
    }
    // AR: targets inside the prompt carry weight 0, the rest 1.
    let cfg = CausalLmConfig {
        vocab_size: v,
        hidden_size: 16,
        n_blocks: 1,
        n_heads: 2,
        mlp_ratio: 2,
        length: 12,
        dropout: 0.0,
    };
    let (_, lm) = init_lm(&cfg, 1).unwrap();
    let (x0, _, prompts, _) = batch(&masked, (v - 1) as u32);
    let (_, count) =
        prompted_next_token_losses(&lm, &x0, 2, 12, (v - 1) as u32, &prompts, None).unwrap();
    assert_eq!(count, 2 * 11 - (4 + 2));
}

/// The one-template task (60 copies of each pair) prepared in `dir/data`: BPE 300, rows of 12.
fn one_template_data(dir: &Path) -> std::path::PathBuf {
    let f = dir.join("pairs.jsonl");
    write_pairs(&f, 60);
    let data = dir.join("data");
    let d = data.to_str().unwrap();
    let prep = [
        "--vocab",
        "300",
        "--seq-len",
        "12",
        "--valid-fraction",
        "0.1",
        "--out",
        d,
    ];
    ok(&prepare_pairs(dir, &f, &prep));
    data
}

#[test]
fn a_tiny_teacher_learns_a_one_template_task_from_its_prompts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = one_template_data(dir);
    let run = dir.join("teacher");
    ok(&idlm(
        &[
            "train",
            "--data",
            data.to_str().unwrap(),
            "--preset",
            "tiny",
            "--out",
            run.to_str().unwrap(),
            "--max-steps",
            "400",
            "--set",
            "train.lr=3e-3",
            "--set",
            "train.batch_size=16",
            "--set",
            "train.ema_decay=0.9",
            "--set",
            "train.eval_every=400",
            "--set",
            "train.ckpt_every=400",
            "--quiet",
        ],
        dir,
    ));
    let prompts = dir.join("prompts.jsonl");
    write_prompts(&prompts);
    let (right, total) = right_answers(dir, &run, &prompts, "64", "2");
    assert_eq!(total, 22);
    assert_eq!(right, total, "teacher at 64 steps");

    // IDLM distils on the same rows with their prompts clamped; the student answers in 4 steps.
    let student = dir.join("student");
    let (t, st) = (run.to_str().unwrap(), student.to_str().unwrap());
    let distill = |method: &str, out: &str| {
        idlm(
            &[
                "distill",
                "--teacher",
                t,
                "--method",
                method,
                "--out",
                out,
                "--max-steps",
                "20",
                "--set",
                "batch_size=8",
                "--set",
                "val_every=0",
                "--no-genppl",
                "--quiet",
            ],
            dir,
        )
    };
    ok(&distill("idlm", st));
    let answers =
        |ckpt: &str, steps: &str| right_answers(dir, Path::new(ckpt), &prompts, steps, "8");
    let (teacher4, student4) = (answers(t, "4"), answers(st, "4"));
    eprintln!("right at 4 steps (right, of): teacher {teacher4:?}, student {student4:?}");
    assert_eq!(student4.1, 11 * 8);
    assert!(student4.0 * 10 >= student4.1 * 9, "student: {student4:?}");
    // SDTT too: x_t's prompts are clean, so neither the teacher's steps nor the KL touch them.
    let sdtt = dir.join("sdtt");
    ok(&distill("sdtt", sdtt.to_str().unwrap()));
    let sdtt4 = answers(sdtt.to_str().unwrap(), "4");
    eprintln!("SDTT student: {sdtt4:?}");
    assert!(sdtt4.0 * 10 >= sdtt4.1 * 9, "SDTT student: {sdtt4:?}");
}

/// (right, total) of `ckpt`'s greedy answers to the prompts file at `steps` steps, `n` each.
fn right_answers(dir: &Path, ckpt: &Path, prompts: &Path, steps: &str, n: &str) -> (usize, usize) {
    let out = ok(&idlm(
        &[
            "sample",
            "--ckpt",
            ckpt.to_str().unwrap(),
            "--prompts",
            prompts.to_str().unwrap(),
            "-n",
            n,
            "--steps",
            steps,
            "--noise-removal",
            "greedy",
        ],
        dir,
    ));
    let right = out
        .lines()
        .filter(|line| {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            let i = r["prompt_index"].as_u64().unwrap() as usize;
            r["completion"].as_str().unwrap().trim() == WORDS[i + 1]
        })
        .count();
    (right, out.lines().count())
}

/// The one-template task's prompts, one per line.
fn write_prompts(path: &Path) {
    let mut s = String::new();
    for w in &WORDS[..WORDS.len() - 1] {
        s.push_str(&format!("{{\"prompt\": \"after {w} comes\"}}\n"));
    }
    std::fs::write(path, s).unwrap();
}

#[test]
fn a_tiny_duo_teacher_and_its_dcd_and_idlm_students_answer_with_clamped_prompts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = one_template_data(dir);
    let d = data.to_str().unwrap();
    let prompts = dir.join("prompts.jsonl");
    write_prompts(&prompts);
    // Duo's Gaussian curriculum (with clamped prompts) for the first 200 steps, then the plain
    // NELBO (clamped too).
    let duo = dir.join("duo");
    let sets = [
        "train.lr=3e-3",
        "train.batch_size=16",
        "train.ema_decay=0.9",
        "train.eval_every=3000",
        "train.ckpt_every=3000",
        "model.time_conditioning=true",
        "duo.curriculum_end=200",
        "duo.table_points=2000",
    ];
    let mut args = vec!["train", "--data", d, "--preset", "tiny", "--process", "duo"];
    args.extend([
        "--out",
        duo.to_str().unwrap(),
        "--max-steps",
        "3000",
        "--quiet",
    ]);
    for s in &sets {
        args.extend(["--set", s]);
    }
    ok(&idlm(&args, dir));
    let teacher = right_answers(dir, &duo, &prompts, "64", "8");
    eprintln!("Duo teacher at 64 steps (right, of): {teacher:?}");
    assert_eq!(teacher.1, 88);
    assert!(teacher.0 * 10 >= teacher.1 * 9, "Duo teacher: {teacher:?}");
    // DCD and IDLM-Duo keep the prompts clean in their Gaussian latents and out of their losses.
    for method in ["dcd", "idlm"] {
        let out = dir.join(format!("duo-{method}"));
        ok(&idlm(
            &[
                "distill",
                "--teacher",
                duo.to_str().unwrap(),
                "--method",
                method,
                "--out",
                out.to_str().unwrap(),
                "--max-steps",
                "20",
                "--set",
                "batch_size=8",
                "--set",
                "val_every=10",
                "--set",
                "val_samples=6",
                "--set",
                "val_steps=4",
                "--no-genppl",
                "--quiet",
            ],
            dir,
        ));
        // Validation answers the validation rows' prompts and scores the answers alone (one
        // or two tokens: entropy below ln 3), not whole unconditional rows (entropy above 1).
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let vals: Vec<f64> = metrics
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["val_entropy"].as_f64())
            .collect();
        assert_eq!(vals.len(), 3, "validation at steps 0, 10, 20:\n{metrics}");
        assert!(vals.iter().all(|&e| e < 3f64.ln()), "{vals:?}");
        let student = right_answers(dir, &out, &prompts, "4", "8");
        eprintln!("{method} student at 4 steps: {student:?}");
        assert!(student.0 * 10 >= student.1 * 9, "{method}: {student:?}");
    }
}
