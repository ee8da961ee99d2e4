//! Released checkpoints in every layout, on the small reference DiT of tests/fixtures: each loads
//! and gives the reference logits; the doubled prefix, OmegaConf configs and the Lightning EMA
//! list map to the right names; export -> import is bit-identical; hostile, truncated and
//! misshapen files get named errors and write nothing.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::{err, idlm, ok};
use idlm::checkpoint::{self, Checkpoint};
use idlm::interop::{ImportOptions, Role, export_hf, import};
use idlm::nn::DitInput;
use idlm::process::{ModelFamily, ProcessKind};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        format!("{FIX}/dit_reference/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(format!("{FIX}/dit_reference/io.safetensors"), &Device::Cpu)
        .unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Logits of the checkpoint's network (EMA unless `raw`) on the reference inputs.
fn logits(ck: &Checkpoint, raw: bool) -> Tensor {
    let io = io();
    let ids = io["ids"].to_dtype(DType::U32).unwrap();
    ck.dit(!raw)
        .unwrap()
        .forward(DitInput::Ids(&ids), &io["sigma"], None)
        .unwrap()
}

fn assert_reference_logits(ck: &Checkpoint, raw: bool) {
    let d = max_abs(&logits(ck, raw), &io()["logits"]);
    assert!(d < 1e-3, "max abs diff {d} from the reference logits");
}

/// A 60-token word-level tokenizer with `<|endoftext|>` = 59 (the fixture model has 61 ids).
fn tiny_tokenizer_json() -> String {
    word_tokenizer_json(59)
}

/// A word-level tokenizer of `words` words and `<|endoftext|>` after them.
fn word_tokenizer_json(words: u32) -> String {
    let mut vocab: HashMap<String, u32> = (0..words).map(|i| (format!("w{i}"), i)).collect();
    vocab.insert("<|endoftext|>".into(), words);
    common::word_level_json(vocab, "w0", &["<|endoftext|>"])
}

/// An mdlm-owt-layout directory: config.json with MDLMConfig's keys, the reference weights.
fn hf_dir(root: &Path, tensors: &HashMap<String, Tensor>, config: serde_json::Value) -> PathBuf {
    let dir = root.join("hf");
    std::fs::create_dir_all(&dir).unwrap();
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tiny_tokenizer_json()).unwrap();
    dir
}

fn mdlm_owt_config() -> serde_json::Value {
    // mdlm-owt's keys and values, scaled down; time conditioning on because the reference logits
    // were computed with sigma fed.
    serde_json::json!({
        "_name_or_path": "kuleshov-group/mdlm-owt",
        "architectures": ["MDLM"],
        "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig",
                     "AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
        "cond_dim": 32, "dropout": 0.1, "hidden_dim": 64, "model_length": 24,
        "model_type": "mdlm", "n_blocks": 2, "n_heads": 4, "return_dict": false,
        "time_conditioning": true, "torch_dtype": "float32",
        "transformers_version": "4.38.2", "vocab_size": 61
    })
}

#[test]
fn hf_mdlm_owt_layout_gives_the_reference_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = hf_dir(tmp.path(), &reference(), mdlm_owt_config());
    let ck = checkpoint::load(&dir).unwrap();
    assert_eq!(ck.meta.process, ModelFamily::Diffusion(ProcessKind::Mdlm));
    assert_eq!(ck.meta.model.n_heads, 4);
    assert_eq!(ck.meta.model.length, 24);
    assert_eq!((ck.meta.data.mask_id, ck.meta.data.eos_id), (60, 59));
    assert!(ck.ema.is_none());
    assert_reference_logits(&ck, false);
    // The raw weights are what `--raw` and the default both use when there is no EMA.
    assert_reference_logits(&ck, true);
}

#[test]
fn duo_config_means_time_conditioning_and_a_pad_id() {
    // Duo's HF config: MDLM's keys plus `causal` / `var_min`, no `time_conditioning` key.
    let mut c = mdlm_owt_config();
    let o = c.as_object_mut().unwrap();
    o.remove("time_conditioning");
    o.insert("model_type".into(), "duo".into());
    o.insert("causal".into(), false.into());
    o.insert("var_min".into(), true.into());
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint::load(&hf_dir(tmp.path(), &reference(), c)).unwrap();
    assert_eq!(ck.meta.process, ModelFamily::Diffusion(ProcessKind::Duo));
    assert!(ck.meta.model.time_conditioning);
    // Id 60 is Duo's [PAD]: one of the ids the uniform process draws over.
    assert_eq!(ck.meta.data.mask_id, 60);
    assert_reference_logits(&ck, false);
    // --process overrides the config (an IDLM-MDLM student shipped with Duo's config).
    let forced = import(
        &ck.dir,
        &ImportOptions {
            process: Some(ProcessKind::Mdlm),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        forced.meta.process,
        ModelFamily::Diffusion(ProcessKind::Mdlm)
    );
}

#[test]
fn sdtt_layout_doubled_prefix_omegaconf_config_and_no_rotary_buffer() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t: HashMap<String, Tensor> = reference()
        .into_iter()
        .filter(|(k, _)| !k.ends_with("inv_freq"))
        .map(|(k, v)| (format!("backbone.{k}"), v))
        .collect();
    // The rest of the LightningModule's state dict is not the DiT's and is left alone.
    t.insert(
        "noise.sigmas".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let config = serde_json::json!({
        "mode": "train",
        "time_conditioning": true,
        "T": 0,
        "tokenizer": {"name": "gpt2"},
        "parameterization": {"name": "multi-round-sdtt", "start_from_hf": true},
        "model": {"name": "small", "type": "ddit-orig", "hidden_size": 64, "cond_dim": 32,
                  "length": 24, "n_blocks": 2, "n_heads": 4, "scale_by_sigma": true,
                  "dropout": 0.1, "tie_word_embeddings": false},
        "data_preprocess": {"seq_len": "${model.length}"}
    });
    let dir = hf_dir(tmp.path(), &t, config);
    let ck = checkpoint::load(&dir).unwrap();
    assert_eq!(ck.meta.process, ModelFamily::Diffusion(ProcessKind::Mdlm));
    let source = ck.meta.source.clone().unwrap_or_default();
    assert!(source.contains("`backbone.backbone.`"), "{source}");
    // A released checkpoint names no training data.
    assert!(ck.meta.data.data_dir.is_empty());
    assert_reference_logits(&ck, false);
}

#[test]
fn lightning_ckpt_maps_the_ema_list_and_each_network() {
    let path = Path::new(FIX).join("lightning_idlm/idlm.ckpt");
    let ck = import(&path, &ImportOptions::default()).unwrap();
    assert_eq!(ck.meta.step, 1234);
    assert_eq!(ck.meta.ema_updates, 1234);
    assert_eq!(ck.meta.process, ModelFamily::Diffusion(ProcessKind::Mdlm));
    // The EMA (the default, as the reference evaluates) is the reference network...
    assert_reference_logits(&ck, false);
    // ...and the raw student weights are the reference x 0.5, under their own names.
    let r = reference();
    for (k, v) in &ck.weights {
        let want = (&r[&format!("backbone.{k}")] * 0.5).unwrap();
        assert_eq!(max_abs(v, &want), 0.0, "{k}");
    }
    // The tokenizer came out of the pickled hyper-parameters: 60 tokens, mask 60.
    assert_eq!(ck.meta.data.mask_id, 60);
    assert!(ck.tokenizer_json().unwrap().contains("w58"));
    let teacher = import(
        &path,
        &ImportOptions {
            role: Role::Teacher,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(teacher.ema.is_none());
    assert_reference_logits(&teacher, true);
    let fake = import(
        &path,
        &ImportOptions {
            role: Role::Fake,
            ..Default::default()
        },
    )
    .unwrap();
    // bfloat16 in the file: x 0.25 within bf16 rounding, and its EMA list mapped the same way.
    let ema = fake.ema.as_ref().unwrap();
    for (k, v) in &fake.weights {
        let want = (&r[&format!("backbone.{k}")] * 0.25).unwrap();
        let tol = want
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            / 128.0;
        assert!(max_abs(v, &want) <= tol, "{k}");
        assert_eq!(max_abs(v, &ema[k]), 0.0, "{k}");
    }
}

#[test]
fn export_then_import_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = import(
        &Path::new(FIX).join("lightning_idlm/idlm.ckpt"),
        &ImportOptions::default(),
    )
    .unwrap();
    let out = tmp.path().join("export");
    export_hf(&ck, &out, false).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    for key in [
        "architectures",
        "auto_map",
        "cond_dim",
        "dropout",
        "hidden_dim",
        "model_length",
        "model_type",
        "n_blocks",
        "n_heads",
        "return_dict",
        "time_conditioning",
        "torch_dtype",
        "vocab_size",
    ] {
        assert!(cfg.get(key).is_some(), "config.json lacks {key}");
    }
    let names =
        candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut want: Vec<String> = reference().into_keys().collect();
    let mut got: Vec<String> = names.into_keys().collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "the exported names are the public layout's");
    let back = checkpoint::load(&out).unwrap();
    assert_eq!(max_abs(&logits(&ck, false), &logits(&back, false)), 0.0);
    // Writing over an existing folder is refused.
    assert!(export_hf(&ck, &out, false).is_err());
}

/// The error message of importing `path` with default options.
fn import_err(path: &Path) -> String {
    match import(path, &ImportOptions::default()) {
        Ok(_) => panic!("{} imported", path.display()),
        Err(e) => e.to_string(),
    }
}

/// A `torch.save`-shaped zip holding `pickle` as its data.pkl.
fn zip_with_pickle(path: &Path, pickle: &[u8]) {
    use std::io::Write;
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let o =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", o).unwrap();
    z.write_all(pickle).unwrap();
    z.start_file("archive/version", o).unwrap();
    z.write_all(b"3\n").unwrap();
    z.finish().unwrap();
}

#[test]
fn hostile_truncated_and_misshapen_files_get_named_errors_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    // A pickle that would run os.system: refused by name, before anything else.
    let evil = cwd.join("evil.ckpt");
    let mut p = vec![0x80, 2, b'c'];
    p.extend(b"posix\nsystem\nq\x00X\x0a\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.");
    zip_with_pickle(&evil, &p);
    let e = err(&idlm(&["import", "evil.ckpt", "--out", "x"], cwd));
    assert!(e.contains("refused global `posix.system`"), "{e}");
    assert!(!cwd.join("x").exists());
    // A truncated archive.
    let full = std::fs::read(Path::new(FIX).join("lightning_idlm/idlm.ckpt")).unwrap();
    std::fs::write(cwd.join("cut.ckpt"), &full[..full.len() / 2]).unwrap();
    let e = err(&idlm(
        &["sample", "--ckpt", "cut.ckpt", "--steps", "2", "-n", "1"],
        cwd,
    ));
    assert!(e.contains("cut.ckpt"), "{e}");
    // A truncated safetensors file in a Hugging Face directory.
    let dir = hf_dir(&cwd.join("t"), &reference(), mdlm_owt_config());
    let st = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &st[..st.len() - 100]).unwrap();
    let e = err(&idlm(&["import", dir.to_str().unwrap(), "--out", "y"], cwd));
    assert!(e.contains("model.safetensors"), "{e}");
    assert!(!cwd.join("y").exists());
    // A misshapen, a missing and an unexpected tensor, all named at once.
    let mut t = reference();
    let w = t["backbone.blocks.0.mlp.0.weight"]
        .t()
        .unwrap()
        .contiguous()
        .unwrap();
    t.insert("backbone.blocks.0.mlp.0.weight".into(), w);
    t.remove("backbone.blocks.1.attn_out.weight");
    t.insert(
        "backbone.blocks.1.extra".into(),
        Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
    );
    let bad = hf_dir(&cwd.join("m"), &t, mdlm_owt_config());
    let e = import_err(&bad);
    for needle in [
        "blocks.0.mlp.0.weight",
        "missing tensor blocks.1.attn_out.weight",
        "unexpected tensor blocks.1.extra",
    ] {
        assert!(e.contains(needle), "{needle} not in: {e}");
    }
    // A config whose head count contradicts the stored rotary buffer.
    let mut c = mdlm_owt_config();
    c["n_heads"] = serde_json::json!(2);
    let e = import_err(&hf_dir(&cwd.join("h"), &reference(), c));
    assert!(
        e.contains("rotary_emb.inv_freq") && e.contains("n_heads"),
        "{e}"
    );
    // A tokenizer of the wrong size.
    let d = hf_dir(&cwd.join("v"), &reference(), mdlm_owt_config());
    std::fs::write(d.join("tokenizer.json"), word_tokenizer_json(58)).unwrap();
    let e = import_err(&d);
    assert!(e.contains("does not fit"), "{e}");
}

#[test]
fn cli_samples_a_released_checkpoint_in_place_and_after_import() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    hf_dir(cwd, &reference(), mdlm_owt_config());
    ok(&idlm(
        &[
            "sample", "--ckpt", "hf", "--steps", "4", "-n", "2", "--out", "s.jsonl",
        ],
        cwd,
    ));
    assert_eq!(
        std::fs::read_to_string(cwd.join("s.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    // The .ckpt sampled in place and its import give the same samples.
    let ckpt = Path::new(FIX).join("lightning_idlm/idlm.ckpt");
    let ckpt = ckpt.to_str().unwrap();
    ok(&idlm(&["import", ckpt, "--out", "imp"], cwd));
    assert!(cwd.join("imp/meta.json").is_file());
    for (src, out) in [(ckpt, "a.jsonl"), ("imp", "b.jsonl")] {
        ok(&idlm(
            &[
                "sample", "--ckpt", src, "--steps", "4", "-n", "2", "--seed", "3", "--out", out,
            ],
            cwd,
        ));
    }
    let text = |f: &str| -> Vec<String> {
        std::fs::read_to_string(cwd.join(f))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].to_string())
            .collect()
    };
    assert_eq!(text("a.jsonl"), text("b.jsonl"));
    // Importing over an existing folder is refused.
    let e = err(&idlm(&["import", ckpt, "--out", "imp"], cwd));
    assert!(e.contains("already exists"), "{e}");
}

#[test]
fn a_released_teacher_scores_and_distils_on_data_prepared_with_its_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    hf_dir(cwd, &reference(), mdlm_owt_config());
    let corp = cwd.join("corp");
    std::fs::create_dir_all(&corp).unwrap();
    for d in 0..8 {
        let words: Vec<String> = (0..60)
            .map(|i| format!("w{}", (i * 7 + d * 3) % 59))
            .collect();
        std::fs::write(corp.join(format!("d{d}.txt")), words.join(" ")).unwrap();
    }
    std::fs::write(cwd.join("tok.json"), tiny_tokenizer_json()).unwrap();
    ok(&idlm(
        &[
            "prepare",
            "--corpus",
            "corp",
            "--tokenizer",
            "tok.json",
            "--seq-len",
            "24",
            "--valid-fraction",
            "0.25",
            "--out",
            "data",
        ],
        cwd,
    ));
    // A released checkpoint names no data: the error says what to pass.
    let e = err(&idlm(&["nll", "--ckpt", "hf"], cwd));
    assert!(e.contains("pass --data"), "{e}");
    ok(&idlm(
        &[
            "nll",
            "--ckpt",
            "hf",
            "--data",
            "data",
            "--time-samples",
            "1",
        ],
        cwd,
    ));
    ok(&idlm(
        &[
            "distill",
            "--teacher",
            "hf",
            "--data",
            "data",
            "--method",
            "idlm",
            "--out",
            "st",
            "--max-steps",
            "2",
            "--no-genppl",
            "--quiet",
            "--set",
            "batch_size=2",
            "--set",
            "val_every=0",
        ],
        cwd,
    ));
    ok(&idlm(
        &[
            "sample", "--ckpt", "st", "--steps", "4", "-n", "2", "--out", "st.jsonl",
        ],
        cwd,
    ));
    // The student is an idlm checkpoint, so it exports to the released layout.
    ok(&idlm(&["export", "st", "--hf", "st-hf"], cwd));
    assert!(cwd.join("st-hf/model.safetensors").is_file());
}
