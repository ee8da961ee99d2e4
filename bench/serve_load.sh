#!/usr/bin/env bash
# Load test of `idlm serve` on loopback (examples/serve_load.rs): a `mini`-sized MDLM teacher
# (a few training steps: serving cost does not depend on how well it is trained), a 4-step student
# distilled from it, and the AR baseline of the same size, all served by one server; 64 concurrent
# clients send 10,000 student requests, then the same requests go one at a time, then the AR
# baseline is served the same way. Writes bench/serve_load.json. Bounded: --max-seconds.
# Usage: bash bench/serve_load.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-runs/serve-load}
requests=${REQUESTS:-10000}
ar_requests=${AR_REQUESTS:-500}
serial=${SERIAL:-300}
len=${LEN:-128}
cargo build --release --bin idlm --example serve_load
idlm=target/release/idlm
mkdir -p "$work"
if [ ! -d "$work/data" ]; then
    $idlm prepare --corpus sotu --vocab 2048 --seq-len "$len" --out "$work/data"
fi
[ -d "$work/teacher" ] || $idlm train --data "$work/data" --preset mini --out "$work/teacher" --max-steps 4 --quiet
[ -d "$work/ar" ] || $idlm train --data "$work/data" --preset mini --process ar --out "$work/ar" --max-steps 4 --quiet
[ -d "$work/student" ] || $idlm distill --teacher "$work/teacher" --out "$work/student" --max-steps 2 --no-genppl --quiet
log="$work/serve.log"
$idlm serve --ckpt "student=$work/student" --ckpt "ar=$work/ar" --addr 127.0.0.1:0 --queue 64 --batch-size 64 \
    >"$work/serve.out" 2>"$log" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
    grep -q "listening on" "$work/serve.out" 2>/dev/null && break
    sleep 0.1
done
addr=$(sed -n 's#^listening on http://\([^ ]*\).*#\1#p' "$work/serve.out")
[ -n "$addr" ] || { cat "$log"; exit 1; }
target/release/examples/serve_load --addr "$addr" --pid "$pid" --model student --steps 4 \
    --clients 64 --requests "$requests" --serial "$serial" --ar ar --ar-requests "$ar_requests" \
    --max-seconds 1500 --out bench/serve_load.json
