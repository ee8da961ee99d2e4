#!/usr/bin/env python3
"""results/fuzz/report.json from the logs of `fuzz/run.sh` (fuzz/logs/<target>.log) and what the runs
kept (fuzz/artifacts/<target>/: open findings; fuzz/regressions/<target>/: fixed ones, replayed by
tests/fuzz_corpus.rs; fuzz/corpus-run/<target>/). Run from fuzz/: `python3 report.py`."""
import json, os, re, subprocess

targets = re.findall(r'^name = "(.*)"$', open("Cargo.toml").read(), re.M)
targets = [t for t in targets if t != "idlm-fuzz"]
out = {"command": "bash fuzz/run.sh (then python3 fuzz/report.py)", "targets": {}}
try:
    out["idlm_commit"] = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
except Exception:
    pass
count = lambda d: len(os.listdir(d)) if os.path.isdir(d) else 0
for t in targets:
    path = f"logs/{t}.log"
    log = open(path, errors="replace").read() if os.path.exists(path) else ""
    stats = re.findall(r"#(\d+): cov: (\d+) ft: (\d+) corp: (\d+) exec/s: (\d+).*?time: (\d+)s", log)
    last = stats[-1] if stats else ("0",) * 6
    arts = sorted(os.listdir(f"artifacts/{t}")) if os.path.isdir(f"artifacts/{t}") else []
    out["targets"][t] = {
        "seconds": int(last[5]),
        "executions": int(last[0]),
        "coverage_edges": int(last[1]),
        "features": int(last[2]),
        "corpus_inputs": count(f"corpus-run/{t}"),
        "execs_per_s": int(last[4]),
        "seeds_committed": count(f"corpus/{t}"),
        "fixed_findings": sorted(os.listdir(f"regressions/{t}")) if os.path.isdir(f"regressions/{t}") else [],
        "crashes": sum(a.startswith("crash") for a in arts),
        "timeouts": sum(a.startswith("timeout") for a in arts),
        "ooms": sum(a.startswith("oom") for a in arts),
        "artifacts": arts,
    }
os.makedirs("../results/fuzz", exist_ok=True)
tmp = "../results/fuzz/report.json.tmp"
with open(tmp, "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
os.replace(tmp, "../results/fuzz/report.json")
for t, r in out["targets"].items():
    print(f"{t:12} {r['seconds']:4d}s {r['executions']:9d} runs {r['coverage_edges']:6d} edges "
          f"crash/timeout/oom {r['crashes']}/{r['timeouts']}/{r['ooms']}")

rows = ["| target | seconds | runs | coverage edges | open crash / timeout / oom | fixed findings |",
        "|---|---|---|---|---|---|"]
for t, r in out["targets"].items():
    fixed = ", ".join(f"`{f}`" for f in r["fixed_findings"]) or "-"
    rows.append(f"| `{t}` | {r['seconds']} | {r['executions']:,} | {r['coverage_edges']:,} | "
                f"{r['crashes']} / {r['timeouts']} / {r['ooms']} | {fixed} |")
readme = f"""# Fuzzing report

Made by `bash fuzz/run.sh` (cargo-fuzz, libFuzzer with AddressSanitizer, 2 GiB memory and
allocation limits, 10 s per input; 2-3 targets at a time on 2 cores), then `python3 fuzz/report.py`
(idlm commit {out.get('idlm_commit', '?')} at report time). Each target's last run is counted; the
findings were fixed, their inputs are in `fuzz/regressions/<target>/`, and the targets whose code
changed (packed, template, pickle) were run again for 10 minutes afterwards. What each target
feeds is in [fuzz/README.md](../../fuzz/README.md).

""" + "\n".join(rows) + "\n"
tmp = "../results/fuzz/README.md.tmp"
open(tmp, "w").write(readme)
os.replace(tmp, "../results/fuzz/README.md")
