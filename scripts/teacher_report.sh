#!/usr/bin/env bash
# Writes results/teacher/: validation NELBO, loss curve, 1024-step samples of a trained teacher.
# Usage: scripts/teacher_report.sh [RUN] [DATA] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/teacher}
data=${2:-runs/data/english-4096-256}
out=${3:-results/teacher}
bin=target/release/idlm
mkdir -p "$out"
$bin nll --ckpt "$run" --data "$data" --time-samples 4 > "$out/nll.json"
$bin plot-metrics "$run" --data "$data" --out "$out/loss.png"
$bin sample --ckpt "$run" --steps 1024 -n 8 --seed 1 --out "$out/samples_1024.jsonl"
cp "$run/config.toml" "$out/config.toml"
cp "$run/metrics.jsonl" "$out/metrics.jsonl"
cp "$data/data.json" "$out/data.json"
echo "wrote $out"
