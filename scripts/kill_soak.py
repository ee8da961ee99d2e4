#!/usr/bin/env python3
"""The kill -9 soak (issue 23, part 2), driven by scripts/kill_soak.sh.

A small teacher training run and a small IDLM distillation are each run twice with one seed:
once uninterrupted (the reference), once as a victim that is killed with SIGKILL over and over
and resumed with `--resume` after every kill. The kills come from a seeded plan, so the same
seed gives the same plan (`plan_kills`): random delays after start, kills at each phase of a
checkpoint write (its staging folder `checkpoints/.step-N.tmp-*` appearing, then each of its files
as it is written, then `checkpoints/latest.tmp-*`), one kill before the first checkpoint and one
after the last (whose resume must write nothing). After each kill the script records the step of the last complete checkpoint and the
last step logged to metrics.jsonl (the work lost), and whether a checkpoint write was in progress
(its temp folder or file is left behind by the killed process). At the end the victim's
checkpoints are compared byte for byte with the reference's, meta.json field by field and
metrics.jsonl line by line, both without their wall-clock fields (WALL_CLOCK_*).

Writes OUT/report.json and exits 1 if anything is not identical or a bound is broken: fewer
kills than --min-kills or kills during a checkpoint write than --min-ckpt-kills, more steps lost
by a kill than one checkpoint interval, a resume that fails, temporaries left in the run folder.
Python 3 standard library only.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

# Names idlm's crash-safe writers give their temporaries (src/atomic.rs): `X.tmp-<pid>-<nanos>`
# (a file written then renamed; `.X.tmp-...` for a staged folder) and `X.old-<pid>-<nanos>` (a
# folder moved aside while it is replaced).
TEMP_RE = re.compile(r"\.(tmp|old)-\d+-\d+$")
# Wall-clock fields: seconds of this machine's time, different in every run by nature.
WALL_CLOCK_METRICS = ["elapsed_s", "tok_per_s"]
WALL_CLOCK_META = [
    ("train_seconds",),
    ("distill", "seconds"),
    ("distill", "student", "train_seconds"),
    ("distill", "fake", "train_seconds"),
]
POLL_S = 0.0005


def sh(cmd, **kw):
    """Run a command to completion; raise with its stderr on failure."""
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stderr[-4000:]}")
    return r.stdout


def temps(run: Path):
    """Temporaries of idlm's writers in the run folder and its checkpoints folder."""
    out = set()
    for d in (run, run / "checkpoints"):
        if d.is_dir():
            for n in os.listdir(d):
                if TEMP_RE.search(n):
                    out.add(str((d / n).relative_to(run)))
    return out


def latest_step(run: Path):
    """Step of the checkpoint `checkpoints/latest` names, if it is complete (meta.json there)."""
    latest = run / "checkpoints" / "latest"
    try:
        name = latest.read_text().strip()
    except FileNotFoundError:
        return None
    if not (run / "checkpoints" / name / "meta.json").is_file():
        return None
    return int(name.removeprefix("step-"))


def read_metrics(run: Path):
    """(parsed lines, lines that do not parse, whether the last line lacks its newline)."""
    p = run / "metrics.jsonl"
    if not p.is_file():
        return [], 0, False
    text = p.read_text(errors="replace")
    good, torn = [], 0
    for line in text.splitlines():
        try:
            good.append(json.loads(line))
        except json.JSONDecodeError:
            torn += 1
    return good, torn, bool(text) and not text.endswith("\n")


def plan_kills(rng, n_time, targets, n_latest, ref_seconds, share):
    """The kill plan of one victim: (mode, parameter) per life, shuffled by the seed.

    - "first": killed once metrics.jsonl has a line and no checkpoint exists yet (always first);
    - "time": killed after a delay: fractions of the reference run's wall time, drawn so that
      all of them together come to about `share` of it (the victim cannot finish early);
    - "ckpt": killed the moment a checkpoint's staging folder holds the file `parameter` (being
      written), or the folder itself appears ("");
    - "latest": killed the moment `checkpoints/latest.tmp-*` appears (the checkpoint is in place,
      `latest` not yet moved);
    - "final", then "resave": killed once `latest` names the last step, before the process
      exits; the resume that follows has nothing to do and must write nothing (it is killed if
      a staging folder appears).
    """
    mean = share * ref_seconds / max(1, n_time)
    mid = [("time", round(rng.uniform(0.1, 1.9) * mean, 4)) for _ in range(n_time)]
    mid += [("ckpt", t) for t in targets]
    mid += [("latest", "") for _ in range(n_latest)]
    rng.shuffle(mid)
    return [("first", "")] + mid + [("final", ""), ("resave", "")]


class Victim:
    """One victim run: its fresh and resume commands and the kill log."""

    def __init__(self, name, run, fresh, resume, max_steps, interval, logs):
        self.name, self.run, self.fresh, self.resume = name, run, fresh, resume
        self.max_steps, self.interval, self.logs = max_steps, interval, logs
        self.kills, self.lives, self.errors = [], 0, []
        # Whether the resume after the last checkpoint ran, finished and wrote no checkpoint.
        self.resave_wrote_nothing = None

    def command(self):
        # A run killed before its first checkpoint has nothing to resume: it starts again.
        return self.resume if latest_step(self.run) is not None else self.fresh

    def life(self, mode, param, timeout):
        """Start the run, kill it as `mode` says; a dict describing the kill, or None if the
        run ended by itself (an error then is recorded)."""
        self.lives += 1
        cmd = self.command()
        before = temps(self.run)
        err_path = self.logs / f"{self.name}-{self.lives:03d}.stderr"
        started_from = latest_step(self.run)
        staged_seen = set()
        t0 = time.monotonic()
        with open(err_path, "w") as err:
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
            trigger = None
            while p.poll() is None:
                now = time.monotonic()
                if now - t0 > timeout:
                    p.kill()
                    p.wait()
                    self.errors.append(f"{self.name} life {self.lives}: timed out ({timeout} s)")
                    return None
                trigger = self.triggered(mode, param, before, t0, now, staged_seen)
                if trigger is not None:
                    os.kill(p.pid, signal.SIGKILL)
                    break
                # Checkpoint triggers poll without sleeping: a tiny checkpoint is written in
                # milliseconds.
                if mode in ("time", "first", "final", "none"):
                    time.sleep(POLL_S)
            rc = p.wait()
        seconds = time.monotonic() - t0
        if rc != -signal.SIGKILL:
            if rc != 0:
                tail = err_path.read_text(errors="replace")[-2000:]
                self.errors.append(f"{self.name} life {self.lives} ({' '.join(cmd)}): exit {rc}\n{tail}")
            elif mode == "resave":
                self.resave_wrote_nothing = not staged_seen
            return None
        left = sorted(temps(self.run) - before)
        # Any temporary under checkpoints/: a staged step folder, `latest` being rewritten, or a
        # step folder moved aside while it was replaced.
        ckpt_writes = [t for t in left if t.startswith("checkpoints/")]
        ck = latest_step(self.run)
        lines, torn, unterminated = read_metrics(self.run)
        logged = max((l["step"] for l in lines if isinstance(l.get("step"), int)), default=0)
        return {
            "life": self.lives,
            "mode": mode,
            "param": param,
            "trigger": trigger,
            "resumed_from": started_from,
            "killed_after_s": round(seconds, 4),
            "last_checkpoint": ck,
            "last_logged_step": logged,
            "steps_lost": max(0, logged - (ck or 0)),
            "during_checkpoint_write": bool(ckpt_writes),
            "temps_left": left,
            "torn_metric_lines": torn,
            "unterminated_last_line": unterminated,
        }

    def triggered(self, mode, param, before, t0, now, staged_seen):
        """Why to kill now (a short string), or None."""
        if mode == "none":
            return None
        if mode == "time":
            return "delay" if now - t0 >= param else None
        if mode == "first":
            m = self.run / "metrics.jsonl"
            if m.is_file() and m.stat().st_size > 0 and latest_step(self.run) is None:
                return "metrics before a checkpoint"
            return None
        if mode == "final":
            return "latest names the last step" if latest_step(self.run) == self.max_steps else None
        ck = self.run / "checkpoints"
        try:
            names = os.listdir(ck)
        except FileNotFoundError:
            return None
        fresh = [n for n in names if TEMP_RE.search(n) and f"checkpoints/{n}" not in before]
        staged = [n for n in fresh if n.startswith(".step-")]
        staged_seen.update(staged)
        if mode == "resave":
            return "a staging folder appeared" if staged else None
        if mode == "latest":
            if any(n.startswith("latest.tmp-") for n in fresh):
                return "latest.tmp appeared"
            # Never seen in 8 checkpoints (a file system that syncs in microseconds): kill anyway.
            return "fallback after 8 checkpoints" if len(staged_seen) > 8 else None
        for n in staged:
            if param == "":
                return f"{n} appeared"
            try:
                if param in os.listdir(ck / n):
                    return f"{param} appeared in {n}"
            except FileNotFoundError:
                pass  # published meanwhile: wait for the next checkpoint
        return None


def strip_meta(meta):
    for path in WALL_CLOCK_META:
        d = meta
        for k in path[:-1]:
            d = d.get(k) if isinstance(d, dict) else None
        if isinstance(d, dict):
            d.pop(path[-1], None)
    return meta


def compare(ref: Path, vic: Path):
    """Byte comparison of every checkpoint file, meta.json without wall-clock fields, and
    metrics.jsonl line by line without wall-clock fields."""
    out = {"files": {}, "meta": {}}
    rc, vc = ref / "checkpoints", vic / "checkpoints"
    rsteps = sorted("checkpoints/" + n for n in os.listdir(rc) if n.startswith("step-"))
    vsteps = sorted("checkpoints/" + n for n in os.listdir(vc) if n.startswith("step-"))
    # `best/` (a distillation's best validation GenPPL) exists only with a GenPPL model.
    rsteps += ["best"] if (ref / "best").is_dir() else []
    vsteps += ["best"] if (vic / "best").is_dir() else []
    out["checkpoints_reference"], out["checkpoints_victim"] = rsteps, vsteps
    out["same_checkpoints_kept"] = rsteps == vsteps
    out["latest_identical"] = (rc / "latest").read_text() == (vc / "latest").read_text()
    for s in rsteps:
        if s not in vsteps:
            continue
        for n in sorted(os.listdir(ref / s)):
            if n == "meta.json":
                a = strip_meta(json.loads((ref / s / n).read_text()))
                b = strip_meta(json.loads((vic / s / n).read_text()))
                out["meta"][f"{s}/{n}"] = a == b
            else:
                vf = vic / s / n
                out["files"][f"{s}/{n}"] = vf.is_file() and (ref / s / n).read_bytes() == vf.read_bytes()
    ra, _, _ = read_metrics(ref)
    va, vtorn, vunterm = read_metrics(vic)
    for l in ra + va:
        for k in WALL_CLOCK_METRICS:
            l.pop(k, None)
    first_diff = next((i for i, (a, b) in enumerate(zip(ra, va)) if a != b), None)
    if first_diff is None and len(ra) != len(va):
        first_diff = min(len(ra), len(va))
    steps = [l.get("step") for l in va if "val_entropy" not in l and "val_nelbo" not in l]
    out["metrics"] = {
        "lines_reference": len(ra),
        "lines_victim": len(va),
        "identical": first_diff is None and vtorn == 0 and not vunterm,
        "first_difference_at_line": first_diff,
        "duplicate_steps": len(steps) - len(set(steps)),
        "torn_lines": vtorn,
    }
    out["identical"] = (
        out["same_checkpoints_kept"]
        and out["latest_identical"]
        and all(out["files"].values())
        and all(out["meta"].values())
        and out["metrics"]["identical"]
    )
    return out


def timed(cmd, log):
    t0 = time.monotonic()
    with open(log, "w") as err:
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err)
    if r.returncode != 0:
        raise SystemExit(f"reference run failed: {' '.join(cmd)}\n{Path(log).read_text()[-3000:]}")
    return round(time.monotonic() - t0, 2)


def soak(victim: Victim, plan, timeout):
    t0 = time.monotonic()
    for mode, param in plan:
        k = victim.life(mode, param, timeout)
        if victim.errors:
            break
        if k is not None:
            victim.kills.append(k)
        if mode == "resave" and not victim.resave_wrote_nothing:
            victim.errors.append(f"{victim.name}: the resume after the last checkpoint wrote one again")
    # Then a last resume, which must finish by itself.
    if not victim.errors and victim.life("none", "", timeout) is not None:
        victim.errors.append(f"{victim.name}: the last resume was killed by something else")
    return round(time.monotonic() - t0, 2)


def summary(v: Victim, cmp, ref_s, vic_s, settings, min_kills, min_ckpt):
    kills = v.kills
    during = [k for k in kills if k["during_checkpoint_write"]]
    max_lost = max((k["steps_lost"] for k in kills), default=0)
    left = sorted(temps(v.run))
    s = {
        "settings": settings,
        "reference_seconds": ref_s,
        "victim_seconds": vic_s,
        "lives": v.lives,
        "kills": len(kills),
        "kills_during_checkpoint_write": len(during),
        "kills_before_first_checkpoint": sum(1 for k in kills if k["last_checkpoint"] is None),
        "kills_by_mode": {m: sum(1 for k in kills if k["mode"] == m) for m in sorted({k["mode"] for k in kills})},
        "checkpoint_interval": v.interval,
        "max_steps_lost_per_kill": max_lost,
        "mean_steps_lost_per_kill": round(sum(k["steps_lost"] for k in kills) / max(1, len(kills)), 2),
        "lost_within_interval": max_lost <= v.interval,
        "torn_metric_lines_seen_after_kills": sum(k["torn_metric_lines"] for k in kills),
        "resume_after_last_checkpoint_wrote_nothing": v.resave_wrote_nothing,
        "temps_left_at_end": left,
        "errors": v.errors,
        "comparison": cmp,
    }
    s["passed"] = (
        not v.errors
        and cmp is not None
        and cmp["identical"]
        and s["lost_within_interval"]
        and len(kills) >= min_kills
        and len(during) >= min_ckpt
        and not left
    )
    s["kill_log"] = kills
    return s


def readme(r):
    """results/kill-soak/README.md: what was run and what it found, from the report."""
    rows = []
    for name, s in r["runs"].items():
        c = s["comparison"] or {}
        m = c.get("metrics", {})
        files = c.get("files", {})
        rows.append(
            f"| {name} | {s['settings']['max_steps']} | {s['checkpoint_interval']} | {s['kills']} | "
            f"{s['kills_during_checkpoint_write']} | {s['kills_before_first_checkpoint']} | "
            f"{s['max_steps_lost_per_kill']} (mean {s['mean_steps_lost_per_kill']}) | "
            f"{sum(files.values())} / {len(files)} | {m.get('lines_victim')} / {m.get('lines_reference')} "
            f"{'identical' if m.get('identical') else 'DIFFERENT'} | {s['reference_seconds']} / {s['victim_seconds']} |"
        )
    files = sorted({f for s in r["runs"].values() for f in (s["comparison"] or {}).get("files", {})})
    return f"""# kill -9 soak

Produced by `{r['command'].strip()}` at idlm commit `{r['idlm_commit']}`
(seed {r['seed']}, {r['threads']} threads, {r['total_seconds']} s in all); every number is in
[report.json](report.json), with the log of every kill.

A tiny teacher training run and a tiny IDLM distillation of it were each run uninterrupted (the
reference) and as a victim: started, killed with SIGKILL at a seeded random instant or at a chosen
phase of a checkpoint write (the staging folder appearing, each file of it being written,
`latest` being replaced), once before the first checkpoint and once after the last, and resumed
with `--resume` (started again when no checkpoint existed) until it finished. Then every file of
the kept checkpoints was compared byte for byte with the reference's (weights and EMA in
`model.safetensors`, AdamW moments in `optim.safetensors`, the distillation's fake and teacher
networks), `meta.json` field by field and `metrics.jsonl` line by line, without the wall-clock
fields `{", ".join(r['ignored_fields']['metrics.jsonl'])}` (metrics) and
`{", ".join(r['ignored_fields']['meta.json'])}` (meta.json): seconds of this machine's time.

| run | steps | checkpoint every | kills | during a checkpoint write | before the first checkpoint | most steps lost by a kill | files identical | metrics lines | seconds (reference / victim) |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Passed: **{r['passed']}** (every file and line identical, no kill lost more than one checkpoint
interval, no resume failed, no temporary left in the run folders).

Files compared: {", ".join(f"`{f}`" for f in files)}.
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/idlm")
    ap.add_argument("--work", default="runs/kill-soak", help="working folder (replaced)")
    ap.add_argument("--out", default="results/kill-soak", help="report folder")
    ap.add_argument("--seed", type=int, default=23, help="seed of the runs and of the kill plan")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=6000)
    ap.add_argument("--train-ckpt-every", type=int, default=40)
    ap.add_argument("--distill-steps", type=int, default=1200)
    ap.add_argument("--distill-ckpt-every", type=int, default=20)
    ap.add_argument("--time-kills", type=int, default=20, help="kills at random delays, per run")
    ap.add_argument("--latest-kills", type=int, default=2, help="kills once `latest` is staged")
    ap.add_argument("--share", type=float, default=0.8,
                    help="the random delays add up to this share of the reference run's time")
    ap.add_argument("--min-kills", type=int, default=20)
    ap.add_argument("--min-ckpt-kills", type=int, default=3)
    ap.add_argument("--life-timeout", type=float, default=300.0)
    a = ap.parse_args()

    t_start = time.monotonic()
    root = Path.cwd()
    work, out = Path(a.work), Path(a.out)
    if work.exists():
        shutil.rmtree(work)
    logs = work / "logs"
    logs.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["IDLM_HOME"] = str((work / "cache").resolve())
    idlm = [a.bin, "--threads", str(a.threads)]

    # Data: the repository's docs, cut into documents of ~1500 characters.
    corpus = work / "corpus"
    corpus.mkdir()
    n = 0
    for md in sorted((root / "docs").glob("*.md")):
        text = md.read_text()
        for i in range(0, len(text), 1500):
            (corpus / f"{md.stem}-{i:06d}.txt").write_text(text[i : i + 1500])
            n += 1
    data = work / "data"
    sh(idlm + ["prepare", "--corpus", str(corpus), "--vocab", "512", "--seq-len", "32",
               "--valid-fraction", "0.2", "--out", str(data)])

    tr_set = ["--set", f"train.ckpt_every={a.train_ckpt_every}", "--set", "train.eval_every=200",
              "--set", "train.log_every=1", "--set", f"train.seed={a.seed}", "--set", "train.keep_checkpoints=2"]
    train_fresh = lambda run: idlm + ["train", "--data", str(data), "--preset", "tiny", "--out", str(run),
                                      "--max-steps", str(a.train_steps), "--quiet"] + tr_set
    train_resume = lambda run: idlm + ["train", "--data", str(data), "--out", str(run), "--resume", "--quiet"]
    ds_set = ["--set", f"ckpt_every={a.distill_ckpt_every}", "--set", "log_every=1", "--set", "val_every=100",
              "--set", "val_samples=8", "--set", "batch_size=4", "--set", f"seed={a.seed}",
              "--set", "keep_checkpoints=2"]
    teacher = work / "train-ref"
    dist_fresh = lambda run: idlm + ["distill", "--teacher", str(teacher), "--method", "idlm", "--out", str(run),
                                     "--max-steps", str(a.distill_steps), "--no-genppl", "--quiet"] + ds_set
    dist_resume = lambda run: idlm + ["distill", "--out", str(run), "--resume", "--no-genppl", "--quiet"]

    print("reference training run ...", flush=True)
    ref_train_s = timed(train_fresh(teacher), logs / "train-ref.stderr")
    print(f"  {ref_train_s} s; reference distillation ...", flush=True)
    ref_dist_s = timed(dist_fresh(work / "distill-ref"), logs / "distill-ref.stderr")
    print(f"  {ref_dist_s} s", flush=True)

    rng = random.Random(a.seed)
    # One kill per phase of a checkpoint write: the staging folder created, then each file as it
    # is being written (in the order checkpoint::write_files writes them; meta.json last).
    base = ["", "model.safetensors", "optim.safetensors"]
    targets = {
        "train": base + ["tokenizer.json", "meta.json"],
        "distill": base + ["teacher.safetensors", "fake.safetensors", "tokenizer.json", "meta.json"],
    }
    report_runs = {}
    ok = True
    for name, fresh, resume, steps, every, ref_s in [
        ("train", train_fresh, train_resume, a.train_steps, a.train_ckpt_every, ref_train_s),
        ("distill", dist_fresh, dist_resume, a.distill_steps, a.distill_ckpt_every, ref_dist_s),
    ]:
        run = work / f"{name}-victim"
        v = Victim(name, run, fresh(run), resume(run), steps, every, logs)
        plan = plan_kills(rng, a.time_kills, targets[name], a.latest_kills, ref_s, a.share)
        print(f"{name} victim: {len(plan)} planned kills ...", flush=True)
        vic_s = soak(v, plan, a.life_timeout)
        cmp = None if v.errors else compare(work / f"{name}-ref", run)
        settings = {"max_steps": steps, "ckpt_every": every, "fresh": " ".join(map(str, fresh(run))),
                    "resume": " ".join(map(str, resume(run)))}
        s = summary(v, cmp, ref_s, vic_s, settings, a.min_kills, a.min_ckpt_kills)
        ok &= s["passed"]
        report_runs[name] = s
        print(f"  kills {s['kills']} (during a checkpoint write {s['kills_during_checkpoint_write']}), "
              f"max lost {s['max_steps_lost_per_kill']} / {every}, identical "
              f"{cmp['identical'] if cmp else None}, passed {s['passed']}", flush=True)
        for e in v.errors:
            print("  error:", e, flush=True)

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    # Uncommitted changes to what builds the binary or runs the soak (not docs or results).
    code = ["src", "vendor", "configs", "scripts", "Cargo.toml", "Cargo.lock"]
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--"] + code,
                                capture_output=True, text=True).stdout.strip())
    report = {
        "what": "kill -9 soak (issue 23, part 2): victims killed with SIGKILL and resumed, "
                "compared with uninterrupted runs of the same seed",
        "command": "scripts/kill_soak.sh " + " ".join(sys.argv[1:]),
        "idlm_commit": commit,
        "code_uncommitted": dirty,
        "seed": a.seed,
        "threads": a.threads,
        "corpus_documents": n,
        "ignored_fields": {
            "metrics.jsonl": WALL_CLOCK_METRICS,
            "meta.json": [".".join(p) for p in WALL_CLOCK_META],
            "why": "wall-clock seconds and throughput of the machine, different in every run",
        },
        "runs": report_runs,
        "passed": ok,
        "total_seconds": round(time.monotonic() - t_start, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "README.md").write_text(readme(report))
    print(f"passed {ok}; report {out / 'report.json'}; {report['total_seconds']} s", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
