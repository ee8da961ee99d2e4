#!/usr/bin/env bash
# Regenerates the seed files of fuzz/corpus/<target>/ from real idlm files: a tiny prepared corpus,
# a 3-step run, its samples and eval, a Duo integral cache, the Lightning fixture, synth-math
# programs and GSM8K solutions. Run from the repository root: `bash fuzz/seed.sh` (needs
# ../shared/data/gsm8k for the GSM8K seeds; skipped without it). The fuzzers add to these.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
I=target/release/idlm
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export IDLM_HOME=$W/home
C=fuzz/corpus
mkdir -p "$W/corpus"
for d in 0 1 2 3 4 5; do
    python3 -c "
import random; r=random.Random($d)
w='the whale ship sea captain and of to a in nation people law king queen love night day'.split()
print(' '.join(r.choice(w) for _ in range(300)))" > "$W/corpus/doc$d.txt"
done
$I prepare --corpus "$W/corpus" --vocab 300 --seq-len 16 --valid-fraction 0.2 --out "$W/data" >/dev/null
$I train --data "$W/data" --preset tiny --out "$W/run" --max-steps 3 --quiet
ck=$(cat "$W/run/checkpoints/latest")
$I sample --ckpt "$W/run" -n 2 --steps 4 --out "$W/s.jsonl" >/dev/null
$I eval "$W/s.jsonl" --metrics entropy --out "$W/e.json" >/dev/null

seed() { mkdir -p "$C/$1"; cp "$2" "$C/$1/$3"; }
for f in configs/*.toml; do seed config "$f" "$(basename "$f")"; done
printf '%s\n---\ntrain.lr=0.001\nmodel.hidden_size=64\nsample.steps="x"\ntrain.process=duo\n' \
    "$(cat configs/tiny.toml)" > "$W/over.toml"
seed config "$W/over.toml" overrides.toml
seed ckpt_meta "$W/run/checkpoints/$ck/meta.json" meta.json
python3 - "$W/run/checkpoints/$ck/meta.json" "$W/meta_nofiles.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1])); m.pop("files", None)
m["process"] = "duo" if isinstance(m.get("process"), str) else m.get("process")
json.dump(m, open(sys.argv[2], "w"))
PY
seed ckpt_meta "$W/meta_nofiles.json" meta_unchecked.json
# Small safetensors files (a real checkpoint's are large): f32, f16, bf16, i64, 0-d and empty.
python3 - "$C/safetensors" <<'PY'
import json, struct, sys, os
out = sys.argv[1]; os.makedirs(out, exist_ok=True)
def st(name, tensors, meta=None):
    hdr, data = {}, b""
    for k, (dt, shape, raw) in tensors.items():
        hdr[k] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if meta: hdr["__metadata__"] = meta
    h = json.dumps(hdr).encode()
    open(os.path.join(out, name), "wb").write(struct.pack("<Q", len(h)) + h + data)
st("f32.safetensors", {"backbone.w": ("F32", [2, 3], struct.pack("<6f", *range(6)))}, {"format": "pt"})
st("mixed.safetensors", {"a": ("F16", [2], b"\x00\x3c\x00\x40"), "b": ("BF16", [1, 2], b"\x80\x3f\x00\x40"),
   "c": ("I64", [1], struct.pack("<q", 7)), "s": ("F32", [], struct.pack("<f", 1.5)), "e": ("F32", [0, 4], b"")})
PY
head -c 2000 "$W/data/train.bin" > /dev/null
seed packed "$W/data/valid.bin" valid.bin
seed tokenizer "$W/data/tokenizer.json" tokenizer.json
seed samples "$W/s.jsonl" samples.jsonl
seed eval_json "$W/e.json" eval.json
[ -f results/mini/evals.json ] && seed eval_json results/mini/evals.json evals.json
# A Duo integral cache as idlm writes it (vocabulary 300, 64 grid points).
$I train --data "$W/data" --preset tiny --set train.process=duo --set duo.curriculum_end=10 --set duo.table_points=64 \
    --out "$W/duo" --max-steps 1 --quiet 2>/dev/null || true
t=$(find "$IDLM_HOME" -name '*.bin' -path '*dual*' | head -1)
[ -n "$t" ] && seed duality "$t" table.bin
mkdir -p "$C/serve_body"
i=0
for b in '{"prompt":"The cat","max_tokens":8,"steps":4}' \
    '{"model":"ar","prompt":"Natalia sold","max_tokens":5,"temperature":0.7,"top_p":0.9}' \
    '{"model":"mdlm","prompt":"The","suffix":" mat.","max_tokens":6,"stream":true,"seed":3,"n":2}' \
    '{"model":"bare","steps":16,"noise_removal":"greedy","sampler":"ddpm","n":1}' \
    '{"max_tokens":64,"n":8,"steps":1024,"stream":false,"user":"x"}'; do
    printf '%s' "$b" > "$C/serve_body/body$i.json"; i=$((i + 1))
done
python3 - tests/fixtures/lightning_idlm/idlm.ckpt "$C" <<'PY'
import os, pickle, sys, zipfile
ck, out = sys.argv[1], sys.argv[2]
os.makedirs(f"{out}/pickle", exist_ok=True); os.makedirs(f"{out}/ckpt_import", exist_ok=True)
z = zipfile.ZipFile(ck)
open(f"{out}/pickle/data.pkl", "wb").write(z.read("idlm/data.pkl"))
for p in (2, 4, 5):
    obj = {"model": {"length": 1024, "hidden_size": 768}, "lr": 3e-4, "names": ["a", b"b"], "t": (1, None, True)}
    open(f"{out}/pickle/conf_p{p}.pkl", "wb").write(pickle.dumps(obj, protocol=p))
PY
mkdir -p "$C/hf_config"
cp tests/fixtures/dit_reference/config.json "$C/hf_config/dit_reference.json"
# ckpt_import is also seeded with tests/fixtures/lightning_idlm/idlm.ckpt in place (fuzz/run.sh);
# here, the same archive without its tensor storages (small: the fuzzer mutates it faster).
python3 - tests/fixtures/lightning_idlm/idlm.ckpt "$C/ckpt_import/no-storages.ckpt" <<'PY'
import sys, zipfile
src = zipfile.ZipFile(sys.argv[1])
with zipfile.ZipFile(sys.argv[2], "w", zipfile.ZIP_STORED) as out:
    for i in src.infolist():
        if "/data/" not in i.filename:
            out.writestr(i.filename, src.read(i.filename))
PY
$I data synth-math --out "$W/synth" --train 40 --test 20 --seed 1 >/dev/null
mkdir -p "$C/program" "$C/template" "$C/gsm8k"
python3 - "$W/synth" "$C" <<'PY'
import glob, json, sys
src, out = sys.argv[1], sys.argv[2]
lines = [json.loads(l) for f in sorted(glob.glob(f"{src}/*.jsonl")) for l in open(f) if l.strip()]
seen = set()
for i, r in enumerate(lines):
    if len(seen) >= 12: break
    key = r["answer"].split("\n")[1] if "\n" in r["answer"] else r["answer"]
    if key in seen: continue
    seen.add(key)
    open(f"{out}/program/synth{i}.py", "w").write(r["answer"])
open(f"{out}/template/pairs.jsonl", "w").write("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n" for r in lines[:3]))
PY
printf 'def simple_math_problem() -> int:\n    a = (3 + 4) * 2 ** 3 // 5 %% 7\n    b = round(abs(-2.5) / 3, 2)\n    c = int(float(min(a, 9)) + max(1, 2, 3))\n    result = a - b * c\n    return result\n' > "$C/program/ops.py"
printf 'The [MASK:5] sat on the [MASK:3].' > "$C/template/infill.txt"
printf '[MASK] is [MASK:2] and [MASK:10]' > "$C/template/holes.txt"
G=${IDLM_SHARED_DATA:-../shared/data}/gsm8k/train.jsonl
if [ -f "$G" ]; then
    python3 - "$G" "$C/gsm8k" <<'PY'
import json, sys
for i, l in enumerate(open(sys.argv[1])):
    if i >= 12: break
    open(f"{sys.argv[2]}/train{i}.txt", "w").write(json.loads(l)["answer"])
PY
fi
du -sh "$C"/*
