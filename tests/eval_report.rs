//! Held-out text as a table row and `idlm report` end to end: the data row is disjoint from
//! MAUVE's references, shuffling keeps the words, and a report is made from `idlm eval` output.

mod common;

use common::idlm;

use idlm::data::DataDir;
use idlm::eval::heldout::heldout_records;
use idlm::eval::protocol::read_references;

fn sorted_words(t: &str) -> Vec<&str> {
    let mut w: Vec<&str> = t.split_whitespace().collect();
    w.sort();
    w
}

#[test]
fn heldout_rows_are_disjoint_from_references_and_shuffling_keeps_words() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::tiny_data(dir.path(), 300, 32);
    let rows = DataDir::open(&data).unwrap().valid.n_rows();
    let n = rows / 2;
    let held = heldout_records(&data, n, None).unwrap();
    let refs = read_references(&data, n).unwrap();
    assert_eq!(held.len(), n);
    // Midpoints between reference rows: never the same row (texts could repeat by chance, so
    // compare the ids the references were decoded from).
    let d = DataDir::open(&data).unwrap();
    for (i, h) in held.iter().enumerate() {
        let ids = h.ids.as_ref().unwrap();
        assert_eq!(ids, &d.valid.row((2 * i + 1) * rows / (2 * n)).unwrap());
        assert_ne!((2 * i + 1) * rows / (2 * n), i * rows / n);
        assert_eq!(h.text, d.tokenizer.decode(ids).unwrap());
    }
    assert_eq!(refs.texts.len(), n);
    let shuf = heldout_records(&data, n, Some(7)).unwrap();
    let mut changed = 0;
    for (a, b) in held.iter().zip(&shuf) {
        assert!(b.ids.is_none(), "shuffled text has no generator ids");
        assert_eq!(sorted_words(&a.text), sorted_words(&b.text));
        changed += usize::from(a.text != b.text);
    }
    assert!(changed > n / 2, "only {changed} of {n} texts changed");
    // Seeded: the same seed gives the same order.
    let again = heldout_records(&data, n, Some(7)).unwrap();
    assert!(shuf.iter().zip(&again).all(|(a, b)| a.text == b.text));
    // More than half the split would overlap the references: a named error.
    let e = heldout_records(&data, rows / 2 + 1, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("validation rows"), "{e}");
}

#[test]
fn report_from_eval_output_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let data = common::tiny_data(root, 300, 32);
    let d = data.to_str().unwrap();
    let o = idlm(
        &[
            "data", "heldout", "--data", d, "-n", "4", "--out", "h.jsonl",
        ],
        root,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Entropy needs no eval model when the file has the generator's ids.
    let o = idlm(
        &[
            "eval",
            "h.jsonl",
            "--metrics",
            "entropy",
            "--out",
            "h.eval.json",
        ],
        root,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("h.eval.json")).unwrap()).unwrap();
    assert_eq!(v["sample_info"]["method"], "held-out text");
    let o = idlm(
        &["report", "data=h.eval.json", "h.eval.json", "--out", "rep"],
        root,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(root.join("rep/README.md")).unwrap();
    assert!(md.contains("Made by `idlm report data=h.eval.json h.eval.json --out rep`"));
    assert!(
        md.contains("| data |") && md.contains("| held-out text |"),
        "{md}"
    );
    // A non-result file is refused with its name.
    std::fs::write(root.join("x.json"), "{\"a\": 1}").unwrap();
    let o = idlm(&["report", "x.json", "--out", "rep2"], root);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("x.json") && err.contains("protocol"), "{err}");
    assert!(!root.join("rep2").exists(), "nothing written on bad input");
}
