//! `idlm bench` through the binary at a tiny size: the JSON report carries every figure the
//! comparison script reads, each in range, and bad options are named errors.

mod common;

use common::{err, idlm, ok};

#[test]
fn bench_writes_the_json_report_the_comparison_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = ok(&idlm(
        &[
            "--threads",
            "1",
            "bench",
            "--vocab",
            "64",
            "--hidden",
            "32",
            "--blocks",
            "1",
            "--heads",
            "2",
            "--len",
            "16",
            "--batch",
            "2",
            "--iters",
            "2",
            "--json",
            "b.json",
        ],
        dir,
    ));
    assert!(s.contains("GEMM peak") && s.contains("AR KV-cache"), "{s}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("b.json")).unwrap()).unwrap();
    for key in [
        "train_step_ms",
        "mdlm_train_step_ms",
        "relaxed_train_step_ms",
        "forward_ms",
        "sampler16_tokens_per_s",
        "sampler1024_cached_tokens_per_s",
        "ar_kv_tokens_per_s",
        "gemm_peak_gflops",
        "gemm_peak_best_gflops",
        "train_step_peak_fraction",
        "forward_peak_fraction",
        "train_step_best_peak_fraction",
        "forward_best_peak_fraction",
    ] {
        let v = r[key].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    // One probe before each of the warm-up and timed train steps and forwards: 2 x (1 + 2).
    let probes = r["gemm_probe_gflops"].as_array().unwrap();
    assert_eq!(probes.len(), 6);
    // The peak readings use the probes next to the timed steps, not the warm-up ones (probes 0
    // and 3): a warm-up probe can be the fastest on a quiet host.
    let best = [1, 2, 4, 5]
        .iter()
        .filter_map(|&i| probes[i].as_f64())
        .fold(0.0, f64::max);
    assert!(r["gemm_peak_gflops"].as_f64().unwrap() <= best);
    assert_eq!(r["gemm_peak_best_gflops"].as_f64().unwrap(), best);
    // The other reading: the median step's rate over the best product.
    let at_best = r["train_step_best_peak_fraction"].as_f64().unwrap();
    let by_median = 3.0 * 2.0 * 32.0 * (12.0 * 32.0 * 32.0 + 2.0 * 16.0 * 32.0 + 32.0 * 64.0)
        / 1e9
        / (r["train_step_ms"].as_f64().unwrap() / 1e3)
        / best;
    assert!(
        (at_best - by_median).abs() < 1e-9 * by_median.max(1.0),
        "{at_best} vs {by_median}"
    );
    // 3x the forward's matrix FLOPs: 2 (B L) (blocks (12 d^2 + 2 L d) + d V) for the train step.
    let fwd = 2.0 * 32.0 * (1.0 * (12.0 * 32.0 * 32.0 + 2.0 * 16.0 * 32.0) + 32.0 * 64.0);
    let want = 3.0 * fwd / 1e9;
    let got = r["train_step_gflop"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    assert!(r["idlm"]["idlm_alternation_ms"].as_f64().unwrap() > 0.0);

    let e = err(&idlm(&["bench", "--iters", "0"], dir));
    assert!(e.contains("--iters"), "{e}");
}
