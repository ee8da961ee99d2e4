#!/usr/bin/env bash
# The naive ablation of `idlm reproduce --preset mini`: IDLM without the fake network (the student
# loss is only L(f*, G)), from the same teacher with the same settings; evaluated at 16 and 8 steps
# with the same seed, sample count and protocol. Writes results/mini/ablation-naive/.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/idlm
out=results/mini/ablation-naive
mkdir -p "$out" runs/mini/samples
[ -f runs/mini/naive/checkpoints/latest ] || $bin distill --teacher runs/mini/teacher \
  --out runs/mini/naive --quiet --set 'method="idlm"' --set 'generator="naive"' \
  --set max_steps=300 --set lr=1e-5 --set val_every=50 --set ckpt_every=50
ck=runs/mini/naive/best
[ -f "$ck/meta.json" ] || ck=runs/mini/naive
cp runs/mini/naive/metrics.jsonl "$out/metrics.jsonl"
for k in 16 8; do
  $bin sample --ckpt "$ck" --steps "$k" -n 64 --batch-size 32 --seed 1 \
    --out "runs/mini/samples/naive-$k.jsonl"
  $bin eval "runs/mini/samples/naive-$k.jsonl" --metrics genppl,entropy,mauve \
    --reference runs/mini/data/english-512-256 --out "$out/eval-$k.json"
done
