//! `idlm sample --prompt / --prompts / --infill` end to end on tiny MDLM, Duo and AR checkpoints:
//! the clamped tokens are in every sample where the template puts them, the records name the
//! prompt, its clamped positions and the completion, entropy leaves the prompt out, and bad
//! templates and prompts are refused by name.

mod common;

use std::path::Path;

use common::{err, idlm, ok, server::fixture, train_tiny};
use idlm::data::TextTokenizer;
use serde_json::Value;

fn records(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn tokenizer(run: &Path) -> TextTokenizer {
    let ck = idlm::checkpoint::load(run).unwrap();
    TextTokenizer::from_json(&ck.tokenizer_json().unwrap()).unwrap()
}

fn ids(r: &Value) -> Vec<u32> {
    r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn prompts_and_infill_templates_are_kept_in_every_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mdlm, ar) = fixture(dir);
    let duo = dir.join("duo");
    let data = dir.join("data-300");
    train_tiny(
        &duo,
        &data,
        &["train.max_steps=4".into(), "train.process=\"duo\"".into()],
    );
    let tok = tokenizer(&mdlm);
    let bos = tok.bos_id();
    let (m, d, a) = (
        mdlm.to_str().unwrap(),
        duo.to_str().unwrap(),
        ar.to_str().unwrap(),
    );
    let mut want = vec![bos];
    want.extend(tok.encode("the whale and the sea").unwrap());
    for (run, extra) in [
        (m, vec!["--steps", "8"]),
        (d, vec!["--steps", "8"]),
        (a, vec![]),
    ] {
        let mut args = vec!["sample", "--ckpt", run, "-n", "3", "--len", "24"];
        args.extend(["--prompt", "the whale and the sea"]);
        args.extend(extra);
        let recs = records(&ok(&idlm(&args, dir)));
        assert_eq!(recs.len(), 3);
        for r in &recs {
            let x = ids(r);
            assert_eq!(x.len(), 24);
            assert_eq!(&x[..want.len()], &want[..], "{run}: prompt changed");
            assert_eq!(r["prompt"], "the whale and the sea");
            let clamped: Vec<u64> = (0..want.len() as u64).collect();
            assert_eq!(r["clamped"], serde_json::json!(clamped));
            assert_eq!(
                r["completion"].as_str().unwrap(),
                tok.decode(&x[want.len()..]).unwrap()
            );
        }
    }
    // Infilling: the text around the holes stays, the holes are filled.
    let tpl = "the [MASK:3] ship of the [MASK:2] nation";
    for run in [m, d] {
        let recs = records(&ok(&idlm(
            &[
                "sample", "--ckpt", run, "-n", "4", "--steps", "6", "--infill", tpl,
            ],
            dir,
        )));
        for r in &recs {
            let x = ids(r);
            let clamped: Vec<usize> = r["clamped"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(x.len(), clamped.len() + 5, "{run}: row is the template");
            let mut expect = vec![bos];
            expect.extend(tok.encode("the ").unwrap());
            assert_eq!(&x[..expect.len()], &expect[..]);
            let tail = tok.encode(" nation").unwrap();
            assert_eq!(&x[x.len() - tail.len()..], &tail[..], "{run}: tail changed");
            assert!(x.iter().all(|&t| t != tok.mask_id()), "{run}: MASK left");
        }
    }
    // A prompts file: -n samples per prompt, each naming its line.
    let pf = dir.join("prompts.jsonl");
    std::fs::write(
        &pf,
        "{\"prompt\": \"the king\", \"answer\": \"x\"}\n\n{\"prompt\": \"a queen\"}\n",
    )
    .unwrap();
    let recs = records(&ok(&idlm(
        &[
            "sample",
            "--ckpt",
            m,
            "-n",
            "2",
            "--steps",
            "4",
            "--prompts",
            pf.to_str().unwrap(),
        ],
        dir,
    )));
    let idx: Vec<(u64, u64)> = recs
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["prompt_index"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(idx, vec![(0, 0), (1, 0), (2, 1), (3, 1)]);
    // Without -n a prompts file is answered once per prompt (the GSM8K protocol).
    let once = records(&ok(&idlm(
        &[
            "sample",
            "--ckpt",
            m,
            "--steps",
            "4",
            "--prompts",
            pf.to_str().unwrap(),
        ],
        dir,
    )));
    let once: Vec<u64> = once
        .iter()
        .map(|r| r["prompt_index"].as_u64().unwrap())
        .collect();
    assert_eq!(once, vec![0, 1]);
    // Entropy counts generated tokens only.
    let out = dir.join("s.jsonl");
    std::fs::write(
        &out,
        recs.iter().map(|r| format!("{r}\n")).collect::<String>(),
    )
    .unwrap();
    let e = ok(&idlm(
        &["eval", out.to_str().unwrap(), "--metrics", "entropy"],
        dir,
    ));
    assert!(e.contains("clamped (prompt) positions excluded"), "{e}");
}

#[test]
fn bad_templates_and_prompts_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mdlm, ar) = fixture(dir);
    let (m, a) = (mdlm.to_str().unwrap(), ar.to_str().unwrap());
    let e = err(&idlm(
        &["sample", "--ckpt", m, "--infill", "no holes here"],
        dir,
    ));
    assert!(e.contains("no hole to fill"), "{e}");
    let e = err(&idlm(
        &["sample", "--ckpt", m, "--infill", "a [MASK:0] b"],
        dir,
    ));
    assert!(e.contains("[MASK:0]"), "{e}");
    let e = err(&idlm(
        &["sample", "--ckpt", a, "--infill", "a [MASK:2] b"],
        dir,
    ));
    assert!(e.contains("--infill needs a diffusion model"), "{e}");
    let long = "the whale ".repeat(40);
    let e = err(&idlm(
        &["sample", "--ckpt", m, "--len", "8", "--prompt", &long],
        dir,
    ));
    assert!(e.contains("leaves nothing to generate"), "{e}");
    let pf = dir.join("bad.jsonl");
    std::fs::write(&pf, "{\"question\": \"x\"}\n").unwrap();
    let e = err(&idlm(
        &["sample", "--ckpt", m, "--prompts", pf.to_str().unwrap()],
        dir,
    ));
    assert!(e.contains("line 1: no \"prompt\" string"), "{e}");
}
