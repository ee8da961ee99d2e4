#!/usr/bin/env bash
# Coverage-guided fuzzing of every loader (issue 23): each target of src/fuzz.rs for SECONDS (600
# by default) under cargo-fuzz (libFuzzer, AddressSanitizer, needs a nightly toolchain:
# `cargo install cargo-fuzz`), LANES targets at a time. Crashes, hangs (> 10 s) and out-of-memory
# (> 2 GiB) do not stop a run: each is kept under fuzz/artifacts/<target>/. The committed seeds of
# fuzz/corpus/<target>/ start it; what it finds goes to fuzz/corpus-run/<target>/ (not committed:
# tens of MB), and results/fuzz/report.json gets the counts per target (fuzz/report.py).
#   bash fuzz/run.sh                 # every target, 10 minutes each, 2 at a time
#   SECONDS_PER=30 bash fuzz/run.sh config pickle
set -euo pipefail
cd "$(dirname "$0")"
PER=${SECONDS_PER:-600}
LANES=${LANES:-2}
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    mapfile -t TARGETS < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v idlm-fuzz)
fi
cargo +nightly fuzz build -O
mkdir -p logs
one() {
    t=$1
    mkdir -p "corpus-run/$t" "artifacts/$t"
    extra=()
    [ "$t" = ckpt_import ] && extra=(../tests/fixtures/lightning_idlm)
    ./target/x86_64-unknown-linux-gnu/release/"$t" "corpus-run/$t" "corpus/$t" "${extra[@]}" \
        -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
        -max_total_time="$PER" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" >"logs/$t.log" 2>&1 || true
    echo "$t done"
}
running=0
for t in "${TARGETS[@]}"; do
    one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$LANES" ]; then
        wait -n
        running=$((running - 1))
    fi
done
wait
python3 report.py
