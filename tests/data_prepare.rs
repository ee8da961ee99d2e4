//! End to end: a tiny corpus on disk -> `prepare` (trained BPE) -> `DataDir::open` -> rows.

use std::path::Path;

use idlm::data::{
    DataDir, PrepareOptions, TokenizerChoice, prepare, read_documents, resolve_corpus,
};

/// Short ASCII documents with enough repetition for BPE merges.
fn write_corpus(dir: &Path) {
    let sub = dir.join("nested");
    std::fs::create_dir_all(&sub).unwrap();
    let animals = ["cat", "dog", "owl", "fox", "eel", "bee"];
    for i in 0..24 {
        let a = animals[i % animals.len()];
        let b = animals[(i * 5 + 1) % animals.len()];
        let text = format!(
            "Document {i}. The {a} met the {b} by the river.\nThe {b} said: \"{a}, you are late again ({}).\"\n",
            i * 37
        );
        let target = if i % 3 == 0 {
            sub.join(format!("doc{i:02}.txt"))
        } else {
            dir.join(format!("doc{i:02}.txt"))
        };
        std::fs::write(target, text).unwrap();
    }
    std::fs::write(dir.join("README.md"), "not part of the corpus").unwrap();
}

#[test]
fn prepare_then_open_reproduces_the_text() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("tiny");
    write_corpus(&corpus);
    let out = tmp.path().join("data");
    let mut opts = PrepareOptions::new(
        "tiny",
        vec![corpus.clone()],
        TokenizerChoice::Train { vocab_size: 320 },
        16,
        &out,
    );
    opts.valid_fraction = 0.2;
    let report = prepare(&opts).unwrap();
    let shown = report.to_string();
    assert!(shown.contains("unigram entropy"), "{shown}");

    let dd = DataDir::open(&out).unwrap();
    let tok = &dd.tokenizer;
    assert_eq!(tok.vocab_size(), 320);
    assert_eq!(tok.mask_id(), 320);
    assert_eq!(dd.model_vocab_size(), 321);
    assert_eq!(dd.seq_len(), 16);
    assert_eq!(tok.bos_id(), tok.eos_id());
    assert_eq!(dd.info.train.documents + dd.info.valid.documents, 24);
    assert!(dd.valid.n_rows() >= 1 && dd.train.n_rows() > dd.valid.n_rows());
    // The saved tokenizer is the one the token files were made with.
    assert_eq!(dd.train.header().tokenizer_sha256, tok.sha256());
    assert_eq!(dd.info.tokenizer.sha256, tok.sha256_hex());

    // Expected text of each split: its documents in order, each followed by <|endoftext|>.
    let docs = read_documents(&corpus).unwrap();
    assert_eq!(docs.len(), 24);
    let is_valid = idlm::data::split_documents(&docs, 0.2);
    let mut want = [String::new(), String::new()];
    for (d, &v) in docs.iter().zip(&is_valid) {
        want[v as usize].push_str(&d.text);
        want[v as usize].push_str("<|endoftext|>");
    }
    let mut row = vec![0u32; 16];
    for (k, packed) in [&dd.train, &dd.valid].into_iter().enumerate() {
        let mut body = Vec::new();
        for r in 0..packed.n_rows() {
            packed.row_into(r, &mut row).unwrap();
            assert_eq!(row[0], tok.bos_id(), "row {r} starts with BOS");
            assert_eq!(row[15], tok.eos_id(), "row {r} ends with EOS");
            assert!(row.iter().all(|&t| t < tok.mask_id()));
            body.extend_from_slice(&row[1..15]);
        }
        let text = tok.decode(&body).unwrap();
        assert!(!text.is_empty());
        // Rows hold the stream exactly, minus only the dropped partial chunk at the end.
        assert!(
            want[k].starts_with(&text),
            "split {k}: decoded rows are not a prefix of the documents"
        );
        let stream_len = tok
            .encode_batch(
                &docs
                    .iter()
                    .zip(&is_valid)
                    .filter(|(_, v)| **v == (k == 1))
                    .map(|(d, _)| d.text.as_str())
                    .collect::<Vec<_>>(),
            )
            .unwrap()
            .iter()
            .map(|ids| ids.len() + 1)
            .sum::<usize>();
        let stats = if k == 0 {
            &dd.info.train
        } else {
            &dd.info.valid
        };
        assert_eq!(stats.stream_tokens as usize, stream_len);
        assert_eq!(body.len(), stream_len - stream_len % 14);
    }

    // Same corpus, same options: byte-identical tokenizer and token files.
    let out2 = tmp.path().join("data2");
    opts.out_dir = out2.clone();
    prepare(&opts).unwrap();
    for f in ["tokenizer.json", "train.bin", "valid.bin"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(out2.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
#[ignore = "needs ../shared/data/gpt2_bpe beside the checkout: run by .ci/run"]
fn gpt2_tokenizer_gives_a_u16_file_with_mask_50257() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("tiny");
    write_corpus(&corpus);
    let out = tmp.path().join("data");
    let gpt2 = Path::new("../shared/data/gpt2_bpe/tokenizer.json");
    let opts = PrepareOptions::new(
        "tiny",
        vec![corpus],
        TokenizerChoice::Load(gpt2.into()),
        8,
        &out,
    );
    prepare(&opts).unwrap();
    let dd = DataDir::open(&out).unwrap();
    let h = dd.train.header();
    assert_eq!(
        (
            h.vocab_size,
            h.mask_id,
            h.bos_id,
            h.eos_id,
            h.bytes_per_token
        ),
        (50258, 50257, 50256, 50256, 2)
    );
    // Every document starts with "Document" (GPT-2 id 24941 in encoder.json).
    assert_eq!(dd.train.row(0).unwrap()[..2], [50256, 24941]);
    assert_eq!(dd.valid.row(0).unwrap()[..2], [50256, 24941]);
}

/// Timing on the whole default corpus (run by hand: `cargo test --release --test data_prepare -- --ignored --nocapture`).
#[test]
#[ignore]
fn prepare_default_corpus_timing() {
    let tmp = tempfile::tempdir().unwrap();
    let sources = resolve_corpus("english", &idlm::data::cache_dir()).unwrap();
    for vocab in [4096, 8192] {
        let out = tmp.path().join(format!("english-{vocab}"));
        let opts = PrepareOptions::new(
            "english",
            sources.clone(),
            TokenizerChoice::Train { vocab_size: vocab },
            256,
            &out,
        );
        let rep = prepare(&opts).unwrap();
        println!("--- vocab {vocab}\n{rep}");
        let dd = DataDir::open(&out).unwrap();
        assert_eq!(dd.tokenizer.vocab_size(), vocab);
        println!("tokenizer sha256 {}", dd.tokenizer.sha256_hex());
    }
}
