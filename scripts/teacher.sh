#!/usr/bin/env bash
# The main job on the default corpus: fetch the public-domain English corpus, prepare it (BPE 4096,
# rows of 256), train an MDLM teacher for a bounded time, then print its validation NELBO and a
# few samples. Usage: scripts/teacher.sh [MINUTES] [PRESET]   (defaults: 20, small)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-20}
preset=${2:-small}
data=runs/data/english-4096-256
run=runs/teacher-$preset

cargo build --release
bin=target/release/idlm
$bin data fetch
[ -f "$data/data.json" ] || $bin prepare --corpus english --vocab 4096 --seq-len 256 \
  --valid-fraction 0.05 --out "$data"
if [ -f "$run/checkpoints/latest" ]; then
  $bin train --data "$data" --out "$run" --resume --max-minutes "$minutes"
else
  $bin train --data "$data" --preset "$preset" --out "$run" --max-minutes "$minutes" \
    --set model.dropout=0.0
fi
$bin nll --ckpt "$run" --time-samples 2
$bin sample --ckpt "$run" --steps 256 -n 4 --out "$run/samples.jsonl"
python3 -c '
import json, sys
for l in open(sys.argv[1]):
    s = json.loads(l)
    print("--- sample %d (%d steps, %d network calls, %.1f s)" % (s["index"], s["steps"], s["nfe"], s["seconds"]))
    print(s["text"][:600])
' "$run/samples.jsonl"
