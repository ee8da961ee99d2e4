#!/usr/bin/env bash
# Writes results/teacher/: validation NELBO (EMA and raw weights), loss curve, 1024-step samples and
# their GenPPL / entropy under protocol idlm-eval-v1, and a README.md with the numbers.
# Usage: scripts/teacher_report.sh [RUN] [DATA] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/teacher}
data=${2:-runs/data/english-4096-256}
out=${3:-results/teacher}
bin=target/release/idlm
mkdir -p "$out"
$bin nll --ckpt "$run" --data "$data" --time-samples 4 > "$out/nll_ema.json"
$bin nll --ckpt "$run" --data "$data" --time-samples 4 --raw > "$out/nll_raw.json"
$bin plot-metrics "$run" --data "$data" --out "$out/loss.png"
$bin sample --ckpt "$run" --steps 1024 -n 8 --seed 1 --out "$out/samples_1024.jsonl"
$bin eval "$out/samples_1024.jsonl" --out "$out/eval_1024.json"
cp "$run/config.toml" "$out/config.toml"
cp "$run/metrics.jsonl" "$out/metrics.jsonl"
cp "$data/data.json" "$out/data.json"
python3 - "$out" "$run" "$data" <<'PY'
import json, sys
out, run, data = sys.argv[1:]
ema = json.load(open(f"{out}/nll_ema.json")); raw = json.load(open(f"{out}/nll_raw.json"))
ev = json.load(open(f"{out}/eval_1024.json"))
meta = json.load(open(f"{out}/data.json"))
samples = [json.loads(l) for l in open(f"{out}/samples_1024.jsonl")]
m = [json.loads(l) for l in open(f"{out}/metrics.jsonl")]
train_s = max(x.get("elapsed_s", 0) for x in m)
lines = [
    "# MDLM teacher on the default corpus",
    "",
    f"Made by `scripts/teacher_report.sh {run} {data} {out}` from a run of `idlm train` (config: `config.toml`).",
    "",
    "| quantity | value |",
    "|---|---|",
    f"| steps / training tokens | {ema['step']} / {max(x.get('tokens', 0) for x in m):,} |",
    f"| training time (sum of step times) | {train_s / 60:.1f} min |",
    f"| validation NELBO, EMA weights (nats/token) | {ema['nelbo_per_token']:.4f} +- {ema['stderr']:.4f} |",
    f"| validation NELBO, raw weights (nats/token) | {raw['nelbo_per_token']:.4f} +- {raw['stderr']:.4f} |",
    f"| unigram entropy of the training tokens (nats/token) | {ema['unigram_entropy']:.4f} |",
    f"| validation tokens x time samples | {ema['tokens']:,} x {ema['time_samples']} |",
    f"| 1024-step samples: GenPPL (SmolLM2-135M) / entropy | {ev['genppl']:.1f} / {ev['entropy']:.3f} |",
    f"| mean NFE of the cached sampler at 1024 steps | {sum(s['nfe'] for s in samples) / len(samples):.1f} |",
    "",
    f"Data: {meta['source']}, BPE {meta['tokenizer']['vocab_size']} (+ MASK), rows of {meta['seq_len']}.",
    "",
    "![loss](loss.png)",
    "",
    "## 1024-step samples (first 400 characters)",
    "",
]
for s in samples:
    lines += ["```", s["text"][:400], "```", ""]
open(f"{out}/README.md", "w").write("\n".join(lines))
PY
echo "wrote $out"
