#!/usr/bin/env python3
"""Speed at the paper's scale: `idlm bench --paper-scale` and bench/paper_scale_torch.py, one
configuration at a time, interleaved (idlm then torch for each configuration and batch, each in
its own process, so each peak memory is its own and the host's drift hits both alike); writes the
sitting into bench/results.json under "paper_scale" (every other key is kept) and prints the
markdown table for the README.

Usage (from the repository root, after cargo build --release; nothing else may run meanwhile):
  python3 bench/paper_scale.py [--threads 2] [--batches 1,8] [--calls 32] [--smoke]
  python3 bench/paper_scale.py --table        (print the table of the stored sitting)
--calls K times only the first K network calls of a diffusion run and extrapolates (the teacher's
1024-step run; the students make at most 17 calls and run whole for K >= 17). TORCH_PYTHON names
the interpreter with torch (default: this one).
"""
import argparse, json, os, subprocess, sys, time

CONFIGS = ["teacher1024", "student16", "student8", "student4", "ar"]
RESULTS = "bench/results.json"
python = os.environ.get("TORCH_PYTHON", sys.executable)


def last_json(cmd, threads):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS=str(threads))).stdout
    return json.loads(out.strip().splitlines()[-1])


def common(a, config, b):
    extra = ["--calls", str(a.calls)] if a.calls else []
    return extra + (["--smoke"] if a.smoke else []) + ["--only", config, "--batch", str(b)]


def table(ps):
    """Markdown: one row per configuration and batch, then the two ratios per batch."""
    f = lambda x, d=2: "-" if x is None else f"{x:.{d}f}"
    lines = [f"Sitting of {ps['date']}, {ps['threads']} threads, `{ps['command']}`"
             + (" (SMOKE SHAPE: not a result)" if ps.get("smoke") else ""), "",
             "| config | batch | NFE (idlm / torch) | s/sample idlm | s/sample torch | peak MiB idlm | peak MiB torch |",
             "|---|---|---|---|---|---|---|"]
    for r in ps["rows"]:
        i, t = r["idlm"], r["torch"]
        mark = lambda x: f"{f(x['seconds_per_sample'])}{'*' if x['extrapolated'] else ''}"
        lines.append(f"| {r['config']} | {r['batch']} | {i['nfe_per_seq']:.1f} / {t['nfe_per_seq']:.1f} | "
                     f"{mark(i)} | {mark(t)} | {f(i['peak_rss_mib'], 0)} | {f(t['peak_rss_mib'], 0)} |")
    lines += ["", "\\* extrapolated from the first K timed network calls (the NFE is the real count).", "",
              "| batch | teacher@1024 / student@16 idlm | torch | student@16 / AR idlm | torch |", "|---|---|---|---|---|"]
    for b, q in sorted(ps["ratios"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {b} | {f(q['idlm']['teacher_over_student16'], 1)}x | {f(q['torch']['teacher_over_student16'], 1)}x"
                     f" | {f(q['idlm']['student16_over_ar'])}x | {f(q['torch']['student16_over_ar'])}x |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--calls", type=int)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--table", action="store_true")
    a = ap.parse_args()
    with open(RESULTS) as fh:
        res = json.load(fh)
    if a.table:
        print(table(res["paper_scale"]))
        return
    rows = []
    for config in CONFIGS:
        for b in (int(x) for x in a.batches.split(",")):
            i = last_json(["target/release/idlm", "--threads", str(a.threads), "bench", "--paper-scale",
                           *common(a, config, b)], a.threads)
            t = last_json([python, "bench/paper_scale_torch.py", "--threads", str(a.threads),
                           *common(a, config, b)], a.threads)
            rows.append(dict(config=config, batch=b, idlm=i, torch=t))
            print(f"{config:>11} batch {b}: idlm {i['seconds_per_sample']:.2f} s/sample ({i['nfe_per_seq']:.1f} NFE, "
                  f"peak {i['peak_rss_mib'] or 0:.0f} MiB) | torch {t['seconds_per_sample']:.2f} s/sample "
                  f"({t['nfe_per_seq']:.1f} NFE, peak {t['peak_rss_mib'] or 0:.0f} MiB)", flush=True)
    ratios = {}
    for b in {r["batch"] for r in rows}:
        get = lambda c, side: next(r[side]["seconds_per_sample"] for r in rows if r["config"] == c and r["batch"] == b)
        ratios[str(b)] = {side: dict(teacher_over_student16=get("teacher1024", side) / get("student16", side),
                                     student16_over_ar=get("student16", side) / get("ar", side))
                          for side in ("idlm", "torch")}
    cmd = " ".join(["python3 bench/paper_scale.py", "--threads", str(a.threads), "--batches", a.batches]
                   + (["--calls", str(a.calls)] if a.calls else []) + (["--smoke"] if a.smoke else []))
    res["paper_scale"] = dict(command=cmd, date=time.strftime("%Y-%m-%d %H:%M:%S"), threads=a.threads,
                              smoke=a.smoke, rows=rows, ratios=ratios)
    with open(RESULTS, "w") as fh:
        json.dump(res, fh, indent=1)
    print(table(res["paper_scale"]))


if __name__ == "__main__":
    main()
