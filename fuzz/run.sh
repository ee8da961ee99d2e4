#!/usr/bin/env bash
# Coverage-guided fuzzing of every loader (issue 23): each target of src/fuzz.rs for SECONDS (600
# by default) under cargo-fuzz (libFuzzer, AddressSanitizer, needs a nightly toolchain:
# `cargo install cargo-fuzz`), LANES targets at a time. Crashes, hangs (> 10 s) and out-of-memory
# (> 2 GiB) do not stop a run: each is kept under fuzz/artifacts/<target>/. New inputs go to
# fuzz/corpus-run/<target>/ (not committed); at the end those adding coverage are merged into the
# committed fuzz/corpus/<target>/, and results/fuzz/report.json gets the counts per target.
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
    ./target/x86_64-unknown-linux-gnu/release/"$t" -merge=1 "corpus/$t" "corpus-run/$t" \
        >"logs/$t.merge.log" 2>&1 || true
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
python3 - "$PER" "${TARGETS[@]}" <<'PY'
import json, os, re, sys
per, targets = int(sys.argv[1]), sys.argv[2:]
path = "../results/fuzz/report.json"
report = json.load(open(path)) if os.path.exists(path) else {"targets": {}}
for t in targets:
    log = open(f"logs/{t}.log", errors="replace").read()
    stats = re.findall(r"#(\d+): cov: (\d+) ft: (\d+) corp: (\d+) exec/s: (\d+)", log)
    last = stats[-1] if stats else ("0", "0", "0", "0", "0")
    arts = sorted(os.listdir(f"artifacts/{t}")) if os.path.isdir(f"artifacts/{t}") else []
    report["targets"][t] = {
        "seconds": per, "executions": int(last[0]), "coverage_edges": int(last[1]),
        "features": int(last[2]), "corpus_run": int(last[3]), "execs_per_s": int(last[4]),
        "committed_corpus_files": len(os.listdir(f"corpus/{t}")),
        "crashes": len([a for a in arts if a.startswith("crash")]),
        "timeouts": len([a for a in arts if a.startswith("timeout")]),
        "ooms": len([a for a in arts if a.startswith("oom")]),
        "artifacts": arts,
    }
report["command"] = "bash fuzz/run.sh"
os.makedirs("../results/fuzz", exist_ok=True)
tmp = path + ".tmp"
json.dump(report, open(tmp, "w"), indent=1)
os.replace(tmp, path)
print(json.dumps({t: {k: report["targets"][t][k] for k in ("executions", "coverage_edges", "crashes", "timeouts", "ooms")} for t in targets}, indent=1))
PY
