//! Options with a closed set of values: `--help` lists the choices, and a wrong value is clap's
//! error naming them (before any file is touched, so no data is needed).

mod common;

use common::{err, idlm, ok};

/// (subcommand and the other arguments it needs, option, the choices clap must list).
const CASES: &[(&[&str], &str, &str)] = &[
    (
        &["sample", "--ckpt", "none"],
        "--sampler",
        "ancestral-cache, ancestral, kv-cache",
    ),
    (
        &["sample", "--ckpt", "none"],
        "--noise-removal",
        "ancestral, greedy",
    ),
    (
        &["distill", "--teacher", "none"],
        "--method",
        "idlm, sdtt, dcd",
    ),
    (&["train", "--data", "none"], "--process", "mdlm, duo, ar"),
    (
        &["eval", "none.jsonl"],
        "--metrics",
        "genppl, entropy, mauve, accuracy",
    ),
    (&["prepare"], "--format", "stream, pairs"),
];

#[test]
fn wrong_values_get_clap_errors_listing_the_choices() {
    let tmp = tempfile::tempdir().unwrap();
    for (cmd, opt, choices) in CASES {
        let mut args = cmd.to_vec();
        args.extend([*opt, "bogus"]);
        let e = err(&idlm(&args, tmp.path()));
        assert!(
            e.contains(&format!("invalid value 'bogus' for '{opt}")),
            "{opt}: {e}"
        );
        assert!(
            e.contains(&format!("[possible values: {choices}]")),
            "{opt}: {e}"
        );
    }
    // Presets are data: the choices come from configs/reproduce/.
    let e = err(&idlm(&["reproduce", "--preset", "bogus"], tmp.path()));
    assert!(
        e.contains("[possible values: mini, mini-duo, mini-gsm]"),
        "{e}"
    );
    // A comma list is checked item by item.
    let e = err(&idlm(
        &["eval", "none.jsonl", "--metrics", "entropy,bogus"],
        tmp.path(),
    ));
    assert!(e.contains("invalid value 'bogus'"), "{e}");
}

#[test]
fn help_lists_the_choices() {
    let tmp = tempfile::tempdir().unwrap();
    for (cmd, opt, choices) in CASES {
        let h = ok(&idlm(&[cmd[0], "--help"], tmp.path()));
        // The option's block: its line up to the next option's.
        let lines: Vec<&str> = h.lines().collect();
        let start = lines
            .iter()
            .position(|l| l.trim_start().starts_with(opt))
            .unwrap_or_else(|| panic!("{opt} not in {} --help:\n{h}", cmd[0]));
        let is_option = |l: &&str| {
            let t = l.trim_start();
            t.starts_with("--") || (t.starts_with('-') && !t.starts_with("- "))
        };
        let block: Vec<&str> = lines[start + 1..]
            .iter()
            .take_while(|l| !is_option(l))
            .copied()
            .collect();
        assert!(
            block.iter().any(|l| l.contains("Possible values:")),
            "{opt}: {block:?}"
        );
        // Each choice is listed with its description.
        for c in choices.split(", ") {
            assert!(
                block
                    .iter()
                    .any(|l| l.trim_start().starts_with(&format!("- {c}:"))),
                "{opt} {c}: {block:?}"
            );
        }
    }
}
