#!/usr/bin/env bash
# Behaviour check for refactors: run `reproduce` for both presets with every stage made tiny, and
# summarise each output (stages, commands, log lines, files, JSON key paths, configs) with
# scripts/repro_summarize.py. Run it before and after a change and `diff` the two summaries.
# Usage: scripts/repro_compare.sh OUT_PREFIX   (from the repository root, after cargo build --release)
set -euo pipefail
out=${1:?usage: scripts/repro_compare.sh OUT_PREFIX}
tiny=(--set samples=4 --set 'teacher_steps=[8,4]' --set 'student_steps=[4,2]'
      --set teacher.train.max_steps=4 --set teacher.train.batch_size=4 --set teacher.train.warmup_steps=2
      --set teacher.train.eval_every=2 --set teacher.train.eval_batches=1 --set teacher.train.ckpt_every=2
      --set teacher.train.log_every=1)
# student NAME MAX_STEPS [EXTRA_KEY=VALUE]: one student's tiny settings (the extra key, a round
# length, right after max_steps, in the order the recorded baselines used).
student() { for k in "max_steps=$2" ${3:+"$3"} batch_size=2 warmup_steps=1 val_every=2 val_samples=2 val_steps=4 ckpt_every=2 log_every=1; do
    printf -- '--set\n%s.%s\n' "$1" "$k"; done; }
mapfile -t mini < <(student idlm 2; student sdtt 4 sdtt_round_steps=2)
mapfile -t duo < <(student dcd 4 dcd_round_steps=2; student idlm 2; student idlm-dcd 2)
target/release/idlm --threads 2 reproduce --preset mini --work "$out-mini/work" --out "$out-mini/report" \
    "${tiny[@]}" "${mini[@]}" > "$out-mini.log" 2>&1
python3 scripts/repro_summarize.py "$out-mini" > "$out-mini.txt"
target/release/idlm --threads 2 reproduce --preset mini-duo --work "$out-duo/work" --out "$out-duo/report" \
    "${tiny[@]}" "${duo[@]}" > "$out-duo.log" 2>&1
python3 scripts/repro_summarize.py "$out-duo" > "$out-duo.txt"
echo "summaries: $out-mini.txt $out-duo.txt"
