#!/usr/bin/env bash
# The kill -9 soak (issue 23, part 2): a tiny teacher training run and a tiny IDLM distillation,
# each killed with SIGKILL 20+ times at seeded random instants (some while a checkpoint is being
# written) and resumed with --resume, then compared with uninterrupted runs of the same seed:
# checkpoint files byte for byte, metrics.jsonl line by line (wall-clock fields aside).
# Working files go to runs/kill-soak (replaced), the report to results/kill-soak/report.json.
# Arguments go to scripts/kill_soak.py (--help lists them). Exits non-zero unless all is identical.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec python3 scripts/kill_soak.py "$@"
