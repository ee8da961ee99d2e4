#!/usr/bin/env bash
# The miniature of the paper's conditional experiment, teacher only (issue 21, part 5): seeded
# TinyGSM-style problems (idlm data synth-math), prompt/answer rows of 128-144 tokens (BPE 512), a
# `mini` MDLM teacher trained on 2 cores for at most MINUTES, then accuracy by execution on both
# held-out splits (unseen numbers, unseen templates) at several step counts, greedy noise removal.
# STYLE=varied (the default: equivalent programs, random input order and return form; see
# src/task/style.rs)
# or fixed (one program per problem; results/synth-math-teacher-fixed came from it, as it was
# the only style then, with WORK_DIR runs/gsm). Writes results/synth-math-teacher-$STYLE/
# summary.json (+ the eval JSONs); results/synth-math-teacher-varied came from MINUTES=60. Usage:
#   bash scripts/synth_math_teacher.sh [WORK_DIR]   (STYLE=varied MINUTES=50 STEPS="1024 64 16 8 4" N=200)
set -euo pipefail
cd "$(dirname "$0")/.."
style=${STYLE:-varied}
work=${1:-runs/gsm-$style}
minutes=${MINUTES:-50}
steps=${STEPS:-1024 64 16 8 4}
n=${N:-200}
# Varied programs get the rows of the mini-gsm preset (144 tokens), so its data is this data.
seq_len=${SEQ_LEN:-$([ "$style" = fixed ] && echo 128 || echo 144)}
out=results/synth-math-teacher-$style
cargo build --release --bin idlm
mkdir -p "$work" "$out"
# A copy, so that rebuilding the checkout while this runs does not swap the binary under it.
cp target/release/idlm "$work/idlm.bin"
idlm=$work/idlm.bin
[ -d "$work/synth" ] || $idlm data synth-math --out "$work/synth" --style "$style" --seed 0 --train 50000 --test "$n"
[ -d "$work/data" ] || $idlm prepare --corpus "$work/synth/train.jsonl" --format pairs --vocab 512 \
    --seq-len "$seq_len" --valid-fraction 0.02 --out "$work/data"
[ -d "$work/teacher" ] || $idlm train --data "$work/data" --preset mini --out "$work/teacher" \
    --max-steps 20000 --max-minutes "$minutes" --set train.eval_every=500 --set train.ckpt_every=500 --quiet
for split in test_numbers test_templates; do
    for k in $steps; do
        s="$work/$split-$k.jsonl"
        $idlm sample --ckpt "$work/teacher" --prompts "$work/synth/$split.jsonl" -n 1 --steps "$k" \
            --noise-removal greedy --batch-size 64 --out "$s"
        $idlm eval "$s" --metrics accuracy --answers "$work/synth/$split.jsonl" --out "$out/$split-$k.json"
    done
done
python3 - "$out" "$work" <<'PY'
import json, sys, glob, os
out, work = sys.argv[1], sys.argv[2]
rows = []
for f in sorted(glob.glob(os.path.join(out, "test_*-*.json"))):
    d = json.load(open(f))
    split, k = os.path.basename(f)[:-5].rsplit("-", 1)
    s = [json.loads(l) for l in open(os.path.join(work, f"{split}-{k}.jsonl"))]
    rows.append({"method": "mdlm-teacher", "process": "mdlm", "steps": int(k), "split": split,
                 "style": os.path.basename(out).rsplit("-", 1)[1],
                 "accuracy": d["accuracy"], "accuracy_se": d["accuracy_se"],
                 "nfe": sum(r["nfe"] for r in s) / len(s),
                 "seconds_per_sample": sum(r["seconds"] for r in s) / len(s), "samples": len(s),
                 "checkpoint_step": s[0]["checkpoint_step"]})
rows.sort(key=lambda r: (r["split"], -r["steps"]))
json.dump(rows, open(os.path.join(out, "summary.json"), "w"), indent=1)
print("| split | steps | accuracy | NFE | s/problem |\n|---|---|---|---|---|")
for r in rows:
    print(f"| {r['split']} | {r['steps']} | {100*r['accuracy']:.1f} +- {100*r['accuracy_se']:.1f}% "
          f"| {r['nfe']:.1f} | {r['seconds_per_sample']:.3f} |")
PY
