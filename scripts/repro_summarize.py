"""Summarise a reproduce output folder: stages, log messages, file list, JSON key paths, preset and configs.
Usage: python3 scripts/repro_summarize.py OUTDIR  (OUTDIR is replaced by $OUT so runs in different folders compare)."""
import json, os, re, sys

out = sys.argv[1].rstrip('/')
norm = lambda s: s.replace(out, '$OUT')

def keypaths(v, prefix=''):
    if isinstance(v, dict):
        ps = set()
        for k, x in v.items():
            p = f'{prefix}.{k}' if prefix else k
            ps.add(p)
            ps |= keypaths(x, p)
        return ps
    if isinstance(v, list):
        ps = set()
        for x in v:
            ps |= keypaths(x, prefix + '[]')
        return ps
    return set()

print('## stages (name | reused | command)')
st = json.load(open(f'{out}/report/stages.json'))
print('command:', norm(st['command']))
for s in st['stages']:
    print(f"{s['name']} | {s['reused']} | {norm(s['command'])}")
print('\n## preset (stages.json)')
print(json.dumps(st['preset'], indent=1, sort_keys=True))
print('\n## rows (summary.json: method, process, steps, noise_removal, samples, checkpoint)')
for r in json.load(open(f'{out}/report/summary.json')):
    print(r['method'], r['process'], r['steps'], r['noise_removal'], r['samples'], norm(r['checkpoint']))
print('\n## log messages (times and metric values stripped)')
for line in open(f'{out}.log'):
    line = norm(line.rstrip('\n'))
    line = re.sub(r'^\[\s*[\d.]+ s\] ', '', line)
    line = re.sub(r': GenPPL .*', ': GenPPL ...', line)
    print(line)
files = []
for root, _, fs in os.walk(out):
    for f in fs:
        files.append(os.path.join(root, f))
files.sort()
print('\n## files')
for f in files:
    print(norm(f))
print('\n## JSON / JSONL key paths')
for f in files:
    if f.endswith('.json') and not f.endswith('tokenizer.json'):
        print(norm(f) + ':', ' '.join(sorted(keypaths(json.load(open(f))))))
    elif f.endswith('.jsonl'):
        ks = set()
        for l in open(f):
            if l.strip():
                ks |= keypaths(json.loads(l))
        print(norm(f) + ':', ' '.join(sorted(ks)))
print('\n## run configs (config.toml, distill.toml)')
for f in files:
    if f.endswith('config.toml') or f.endswith('distill.toml'):
        print('--', norm(f))
        print(norm(open(f).read()))
