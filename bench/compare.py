#!/usr/bin/env python3
"""Run `idlm bench` and ../shared/bench/torch_dit_bench.py interleaved in one sitting and print the
ratios; writes bench/results.json. Needs torch (pip install torch) for the PyTorch side only.

Usage: python3 bench/compare.py [ROUNDS=4] [THREADS=2]  (from the repository root, after
       cargo build --release). Nothing else may run on the machine meanwhile.
"""
import json, os, re, subprocess, sys, statistics, time

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 4
threads = sys.argv[2] if len(sys.argv) > 2 else "2"
torch_script = os.path.join("..", "shared", "bench", "torch_dit_bench.py")
python = os.environ.get("TORCH_PYTHON", sys.executable)


# PyTorch's train step takes ~4 steps to settle (1.3-1.5 s, then 1.08-1.13 s steady on the
# benchmark machine), so it gets 4 warm-up steps; its forward and idlm are steady after one.
TORCH_WARMUP = {"train": "4", "infer": "1"}


def torch(mode):
    out = subprocess.run([python, torch_script, mode, TORCH_WARMUP[mode], "3"], capture_output=True, text=True,
                         env=dict(os.environ, NT=threads), check=True).stdout
    return float(re.search(r"median ([0-9.]+)", out).group(1))


def idlm(*extra):
    path = "bench/.last_idlm.json"
    subprocess.run(["target/release/idlm", "--threads", threads, "bench", "--iters", "3",
                    "--json", path, *extra], check=True, capture_output=True)
    with open(path) as f:
        return json.load(f)


runs = {"idlm": [], "torch_train": [], "torch_infer": []}
for r in range(rounds):
    runs["idlm"].append(idlm())
    runs["torch_train"].append(torch("train"))
    runs["torch_infer"].append(torch("infer"))
    print(f"round {r + 1}: idlm train {runs['idlm'][-1]['train_step_ms']:.0f} ms "
          f"(MDLM {runs['idlm'][-1]['mdlm_train_step_ms']:.0f}), forward {runs['idlm'][-1]['forward_ms']:.0f} ms | "
          f"torch train {runs['torch_train'][-1]:.0f} ms, forward {runs['torch_infer'][-1]:.0f} ms", flush=True)

med = statistics.median
res = {
    "command": "python3 bench/compare.py %d %s" % (rounds, threads),
    "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    "threads": int(threads),
    "model": "vocab 8192, d 256, 4 layers, 4 heads, T 128, B 32 (docs/design.md section 3)",
    "idlm_train_step_ms": med([x["train_step_ms"] for x in runs["idlm"]]),
    "idlm_mdlm_train_step_ms": med([x["mdlm_train_step_ms"] for x in runs["idlm"]]),
    "idlm_forward_ms": med([x["forward_ms"] for x in runs["idlm"]]),
    "torch_train_step_ms": med(runs["torch_train"]),
    "torch_forward_ms": med(runs["torch_infer"]),
    "sampler16_tokens_per_s": med([x["sampler16_tokens_per_s"] for x in runs["idlm"]]),
    "sampler1024_cached_tokens_per_s": med([x["sampler1024_cached_tokens_per_s"] for x in runs["idlm"]]),
    "ar_kv_tokens_per_s": med([x["ar_kv_tokens_per_s"] for x in runs["idlm"]]),
    "ar_kv_b1_tokens_per_s": med([x["sampler"]["ar_kv_b1_tokens_per_s"] for x in runs["idlm"]]),
    "idlm_alternation_ms": med([x["idlm"]["idlm_alternation_ms"] for x in runs["idlm"]]),
    "idlm_teacher_step_ms": med([x["idlm"]["teacher_step_ms"] for x in runs["idlm"]]),
    "idlm_alternation_peak_mib": med([x["idlm"]["idlm_alternation_peak_mib"] or 0 for x in runs["idlm"]]),
    "idlm_teacher_step_peak_mib": med([x["idlm"]["teacher_step_peak_mib"] or 0 for x in runs["idlm"]]),
    "gemm_peak_gflops": med([x["gemm_peak_gflops"] for x in runs["idlm"]]),
    "gemm_peak_best_gflops": max(x["gemm_peak_best_gflops"] for x in runs["idlm"]),
    "idlm_train_step_peak_fraction": med([x["train_step_peak_fraction"] for x in runs["idlm"]]),
    "idlm_forward_peak_fraction": med([x["forward_peak_fraction"] for x in runs["idlm"]]),
    "idlm_train_step_best_peak_fraction": med([x["train_step_best_peak_fraction"] for x in runs["idlm"]]),
    "idlm_forward_best_peak_fraction": med([x["forward_best_peak_fraction"] for x in runs["idlm"]]),
    "raw": runs,
}
# The host's speed drifts by tens of percent between minutes, so each round's ratio compares two
# measurements taken back to back; the headline ratio is the median of those.
res["train_ratio_rounds"] = [x["train_step_ms"] / t for x, t in zip(runs["idlm"], runs["torch_train"])]
res["forward_ratio_rounds"] = [x["forward_ms"] / t for x, t in zip(runs["idlm"], runs["torch_infer"])]
res["train_ratio"] = med(res["train_ratio_rounds"])
res["forward_ratio"] = med(res["forward_ratio_rounds"])
res["train_ratio_of_medians"] = res["idlm_train_step_ms"] / res["torch_train_step_ms"]
res["sampler16_over_ar_kv"] = res["sampler16_tokens_per_s"] / res["ar_kv_tokens_per_s"]
# The sampler table (steps x batch x time input), medians over rounds, each against AR decoding at
# the same batch in the same run.
table = []
for i, row in enumerate(runs["idlm"][0]["sampler"]["rows"]):
    ar_key = "ar_kv_b1_tokens_per_s" if row["batch"] == 1 else "ar_kv_tokens_per_s"
    tps = med([x["sampler"]["rows"][i]["tokens_per_s"] for x in runs["idlm"]])
    over = med([x["sampler"]["rows"][i]["tokens_per_s"] / x["sampler"][ar_key] for x in runs["idlm"]])
    table.append(dict(row, tokens_per_s=tps, over_ar_kv=over))
    print(f"sampler {row['steps']:>4} steps, batch {row['batch']:>2}"
          f"{'' if row['time_conditioned'] else ' (no time input)'}: {tps:.0f} tokens/s = {over:.2f}x AR KV "
          f"| {row['nfe_per_seq']:.1f} calls per sequence", flush=True)
res["sampler_table"] = table
print(f"train step: idlm {res['idlm_train_step_ms']:.0f} ms vs torch {res['torch_train_step_ms']:.0f} ms; "
      f"per-round ratios {', '.join(f'{r:.2f}' for r in res['train_ratio_rounds'])}, median {res['train_ratio']:.2f}x | "
      f"forward {res['idlm_forward_ms']:.0f} vs {res['torch_forward_ms']:.0f} ms; per-round "
      f"{', '.join(f'{r:.2f}' for r in res['forward_ratio_rounds'])}, median {res['forward_ratio']:.2f}x")
print(f"GEMM peak {res['gemm_peak_gflops']:.0f} GFLOP/s (median of the 2048^3 products run before each timed "
      f"step; best {res['gemm_peak_best_gflops']:.0f}); train step at {res['idlm_train_step_peak_fraction']:.0%} of "
      f"it, forward at {res['idlm_forward_peak_fraction']:.0%} (each step against the product just before it; "
      f"medians over steps, then rounds); against each round's best product: train step "
      f"{res['idlm_train_step_best_peak_fraction']:.0%}, forward {res['idlm_forward_best_peak_fraction']:.0%}")
# The reproduction's model size (configs mini: BPE 512, d 128, 4 blocks, 4 heads, rows of 256),
# ours only: the PyTorch mirror is fixed to the benchmark DiT.
res["mini"] = idlm("--vocab", "512", "--hidden", "128", "--blocks", "4", "--heads", "4",
                   "--len", "256", "--batch", "32")
print(f"mini size: train {res['mini']['train_step_ms']:.0f} ms, MDLM {res['mini']['mdlm_train_step_ms']:.0f} ms, "
      f"forward {res['mini']['forward_ms']:.0f} ms, sampler16 {res['mini']['sampler16_tokens_per_s']:.0f} tok/s, "
      f"AR KV {res['mini']['ar_kv_tokens_per_s']:.0f} tok/s")
with open("bench/results.json", "w") as f:
    json.dump(res, f, indent=1)
