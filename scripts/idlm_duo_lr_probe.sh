#!/usr/bin/env bash
# IDLM-Duo learning-rate probe for the mini-gsm preset (issue 21): distils the preset's Duo teacher
# at other learning rates (400 updates each, the preset's other settings) and scores the teacher,
# the preset's students and the probes on validation problems, never on the test splits: the
# prompt/answer pairs `idlm prepare` held out of training (its split rule: sha256("train.jsonl:N")
# [0..8] big-endian mod 1e6 < 20,000), the first N of them, greedy tail, 8 samples per
# prompt. Needs a finished `idlm reproduce --preset mini-gsm` in WORK (runs/mini-gsm). Writes
# results/idlm-duo-lr-probe/summary.tsv. Usage:
#   bash scripts/idlm_duo_lr_probe.sh [WORK]   (LRS="3e-5 1e-5" STEPS="4 8 16" N=200)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-runs/mini-gsm}
lrs=${LRS:-3e-5 1e-5}
steps=${STEPS:-4 8 16}
n=${N:-200}
probe=$work/lr-probe
out=results/idlm-duo-lr-probe
cargo build --release --bin idlm
mkdir -p "$probe" "$out"
cp target/release/idlm "$probe/idlm.bin"
idlm=$probe/idlm.bin
python3 - "$work/synth/train.jsonl" "$probe/dev.jsonl" "$n" <<'EOF'
import hashlib, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
kept = []
for i, line in enumerate(open(src)):
    h = hashlib.sha256(f"train.jsonl:{i + 1}".encode()).digest()[:8]
    if int.from_bytes(h, "big") % 1_000_000 < 20_000:
        kept.append(line)
open(dst, "w").writelines(kept[:n])
EOF
models="$work/duo $work/idlm-duo $work/dcd $work/idlm-dcd"
for lr in $lrs; do
    d=$probe/idlm-duo-$lr
    [ -f "$d/checkpoints/latest" ] || $idlm distill --teacher "$work/duo" --data "$work/data" \
        --out "$d" --no-genppl --quiet --set 'method="idlm"' --set max_steps=400 --set "lr=$lr" \
        --set val_every=100 --set ckpt_every=100
    models="$models $d"
done
printf 'model\tsteps\taccuracy\taccuracy_se\tcorrect\tsamples\n' > "$out/summary.tsv"
for m in $models; do
    for k in $steps; do
        s=$probe/$(basename "$m")-$k.jsonl
        # Samples already there are kept (a rerun only scores them again).
        [ -s "$s" ] || $idlm sample --ckpt "$m" --prompts "$probe/dev.jsonl" -n 8 --steps "$k" \
            --noise-removal greedy --batch-size 64 --out "$s" > /dev/null 2>&1
        $idlm eval "$s" --metrics accuracy --answers "$probe/dev.jsonl" --out "$s.eval.json" > /dev/null
        python3 -c 'import json, sys; e = json.load(open(sys.argv[1])); print("\t".join([sys.argv[2], sys.argv[3], "%.4f" % e["accuracy"], "%.4f" % e["accuracy_se"], str(e["accuracy_correct"]), str(e["samples"])]))' \
            "$s.eval.json" "$(basename "$m")" "$k" >> "$out/summary.tsv"
    done
done
cat "$out/summary.tsv"
