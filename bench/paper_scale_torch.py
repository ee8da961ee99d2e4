#!/usr/bin/env python3
"""PyTorch side of `idlm bench --paper-scale` (comparison only; never a runtime dependency).

Seconds per 1024-token sample and peak resident memory, random weights, at mdlm-owt's size:
  teacher1024  the reference MDLM DiT (models/dit.py: rotary attention, adaLN, no time input) under
               the reference ancestral-cache sampler (`_ddpm_caching_update`: log-linear schedule,
               p_x0 reused while the batch did not change), 1024 steps
  student16/8/4  the same network and sampler at 16 / 8 / 4 steps (the few-step sampler of the
               IDLM students)
  ar           GPT-2 small (hand-written: learned positions, tied head, vocab 50257) decoding
               1023 tokens after BOS with a KV cache

Usage: paper_scale_torch.py --only CONFIG --batch B [--calls K] [--smoke] [--threads T]
         one configuration in this process; prints one JSON record (the keys of idlm's)
       paper_scale_torch.py [--batches 1,8] [--calls K] [--smoke] [--threads T]
         every configuration, each in its own child process (so each peak is its own)

Sampler as the reference, two deliberate differences, both stated in the record's "notes":
  * the reference draws x_s from q(x_s) over V+1 outcomes at every position with one Gumbel table
    (B x L x V) per step; here the stay/reveal event of each masked position is drawn first (a
    uniform per position, from its own generator) and the token only where revealing, from p_x0.
    Same distribution; the reveal pattern, hence the calls made, no longer depends on the
    network's outputs, so `--calls K` can compute K calls and count the rest for real, and the
    per-step full-table draw (a CPU cost the reference pays even on cached steps) is not paid.
  * noise removal is the project's ancestral final step (t = 1e-5 -> 0, a call only if a MASK
    is left), not the reference's extra unconditional argmax call.
Calls are made as the reference makes them: a batch in lockstep, logits at every position, one
call whenever the batch changed in the previous step.
"""
import argparse, ctypes, gc, json, math, os, subprocess, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as Fn

CONFIGS = ["teacher1024", "student16", "student8", "student4", "ar"]
STEPS = {"teacher1024": 1024, "student16": 16, "student8": 8, "student4": 4}
PAPER = dict(vocab=50258, hidden=768, blocks=12, heads=12, cond_dim=128, len=1024)
SMOKE = dict(vocab=1024, hidden=64, blocks=2, heads=2, cond_dim=32, len=128)
FREQ = 256  # the reference TimestepEmbedder's frequency_embedding_size
EPS = 1e-3  # log-linear schedule: alpha_t = 1 - (1 - EPS) t
T_FINAL = 1e-5


# --- memory: the same /proc reading and reset as idlm's bench/memory.rs ---

def rss_mib():
    try:
        fields = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
        return float(fields["VmRSS"].split()[0]) / 1024, float(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        return None, None


def reset_peak():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --- the reference DiT (models/dit.py shapes) ---

def rope(x, cos, sin):  # x (B, H, L, hd), rotate-half (flash-attn's non-interleaved rotary)
    hd = x.shape[-1]
    cos, sin = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class DDiTBlock(nn.Module):
    def __init__(self, d, h, c):
        super().__init__()
        self.h = h
        self.norm1 = nn.LayerNorm(d, eps=1e-5, bias=False)
        self.attn_qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.norm2 = nn.LayerNorm(d, eps=1e-5, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))
        self.adaLN_modulation = nn.Linear(c, 6 * d)

    def forward(self, x, c, cos, sin):
        b, l, d = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(c)[:, None].chunk(6, dim=2)
        h = self.norm1(x) * (1 + scale_msa) + shift_msa
        q, k, v = self.attn_qkv(h).view(b, l, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        o = Fn.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, l, d)
        x = x + gate_msa * self.attn_out(o)
        h = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        return x + gate_mlp * self.mlp(h)


class DIT(nn.Module):
    def __init__(self, s):
        super().__init__()
        v, d, c, h, l = s["vocab"], s["hidden"], s["cond_dim"], s["heads"], s["len"]
        self.vocab_embed = nn.Embedding(v, d)
        self.sigma_map = nn.Sequential(nn.Linear(FREQ, c), nn.SiLU(), nn.Linear(c, c))
        self.blocks = nn.ModuleList([DDiTBlock(d, h, c) for _ in range(s["blocks"])])
        self.norm_final = nn.LayerNorm(d, eps=1e-5, bias=False)
        self.adaLN_final = nn.Linear(c, 2 * d)
        self.linear = nn.Linear(d, v)
        hd = d // h
        inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        a = torch.arange(l, dtype=torch.float32)[:, None] * inv[None]
        self.register_buffer("cos", a.cos())
        self.register_buffer("sin", a.sin())

    def forward(self, x, sigma):
        half = FREQ // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        a = sigma[:, None] * freqs[None]
        c = Fn.silu(self.sigma_map(torch.cat([a.cos(), a.sin()], -1)))
        h = self.vocab_embed(x)
        for blk in self.blocks:
            h = blk(h, c, self.cos, self.sin)
        shift, scale = self.adaLN_final(c)[:, None].chunk(2, dim=2)
        return self.linear(self.norm_final(h) * (1 + scale) + shift)


# --- GPT-2 small with a KV cache ---

class Gpt2Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))

    def step(self, x, kc, vc, p):  # x (B, 1, d); caches (B, H, Lmax, hd); p: this position
        b, _, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).view(b, 1, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        kc[:, :, p:p + 1], vc[:, :, p:p + 1] = k, v
        o = Fn.scaled_dot_product_attention(q, kc[:, :, :p + 1], vc[:, :, :p + 1])
        x = x + self.c_proj(o.transpose(1, 2).reshape(b, 1, d))
        return x + self.mlp(self.ln_2(x))


class Gpt2(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s
        self.wte = nn.Embedding(s["vocab"] - 1, s["hidden"])  # GPT-2's 50257: no MASK id
        self.wpe = nn.Embedding(s["len"], s["hidden"])
        self.h = nn.ModuleList([Gpt2Block(s["hidden"], s["heads"]) for _ in range(s["blocks"])])
        self.ln_f = nn.LayerNorm(s["hidden"])

    def decode(self, b, n, gen):
        """BOS then n - 1 tokens drawn at temperature 1 for b sequences in lockstep."""
        s = self.s
        hd = s["hidden"] // s["heads"]
        caches = [(torch.zeros(b, s["heads"], n, hd), torch.zeros(b, s["heads"], n, hd)) for _ in self.h]
        tok = torch.full((b,), s["vocab"] - 2, dtype=torch.long)  # <|endoftext|> as BOS
        for p in range(n - 1):
            x = (self.wte(tok) + self.wpe.weight[p])[:, None]
            for blk, (kc, vc) in zip(self.h, caches):
                x = blk.step(x, kc, vc, p)
            logits = self.ln_f(x[:, 0]) @ self.wte.weight.T
            tok = torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]
        return n - 1


# --- the sampler and its call budget ---

class Budget:
    """The network for the first `limit` calls, then a uniform p_x0 (MASK excluded); a log of calls."""

    def __init__(self, model, s, limit):
        self.model, self.s, self.limit, self.calls = model, s, limit, []
        self.uniform = torch.full((1, 1, s["vocab"]), 1.0 / (s["vocab"] - 1))
        self.uniform[..., s["vocab"] - 1] = 0.0

    def p_x0(self, x):
        b, l = x.shape
        real = self.limit is None or len(self.calls) < self.limit
        t0 = time.perf_counter()
        if real:
            logits = self.model(x, torch.zeros(b))  # no time input: sigma is replaced by zeros
            logits[..., self.s["vocab"] - 1] = -math.inf  # SUBS: MASK is never predicted
            p = logits.softmax(-1)
        else:
            p = self.uniform.expand(b, l, -1)
        self.calls.append(dict(rows=b, positions=b * l, seconds=time.perf_counter() - t0, real=real))
        return p


def sample(budget, b, steps, s, seed):
    mask = s["vocab"] - 1
    g_plan, g_tok = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    x = torch.full((b, s["len"]), mask, dtype=torch.long)
    grid = torch.linspace(1.0, T_FINAL, steps + 1, dtype=torch.float64).tolist()
    dt = (1.0 - T_FINAL) / steps
    nfe = torch.zeros(b, dtype=torch.long)
    p = None
    for i in range(steps + 1):
        masked = x == mask
        if not masked.any():
            break
        t, s_ = (grid[i], grid[i] - dt) if i < steps else (T_FINAL, 0.0)
        if p is None:
            p = budget.p_x0(x)
            nfe += 1
        stay = (1 - EPS) * max(s_, 0.0) / ((1 - EPS) * t)
        reveal = masked & (torch.rand(x.shape, generator=g_plan, dtype=torch.float64) >= stay)
        if reveal.any():
            r, c = reveal.nonzero(as_tuple=True)
            x[r, c] = torch.multinomial(p[r, c], 1, generator=g_tok)[:, 0]
            p = None  # the batch changed: the cached p_x0 is stale
    return x, nfe.double().mean().item()


def extrapolate(wall, calls):
    """The wall time with each uncomputed call replaced by the mean measured call of its size
    (or the measured seconds per row times its rows); as idlm's bench/budget.rs."""
    real = [c for c in calls if c["real"]]
    rows = sum(c["rows"] for c in real)
    per_row = sum(c["seconds"] for c in real) / rows if rows else 0.0
    est, any_ = wall, False
    for c in calls:
        if c["real"]:
            continue
        same = [r["seconds"] for r in real if r["rows"] == c["rows"]]
        est += (sum(same) / len(same) if same else per_row * c["rows"]) - c["seconds"]
        any_ = True
    return est, any_


NOTES = ("reveal events drawn before the call (same distribution as the reference's full-table draw, "
         "which is not paid); ancestral final noise removal, no extra argmax call")


def run_config(config, b, calls, s, threads):
    torch.manual_seed(0)
    rec = dict(config=config, batch=b, threads=threads, shape=s)
    with torch.inference_mode():
        if config == "ar":
            model = Gpt2(s).eval()
            model.decode(b, min(s["len"], 4), torch.Generator().manual_seed(0))  # warm-up
            weights, _ = rss_mib()
            reset = reset_peak()
            t0 = time.perf_counter()
            n = model.decode(b, s["len"], torch.Generator().manual_seed(1))
            wall = time.perf_counter() - t0
            rec.update(steps=s["len"], calls=n, nfe_per_seq=float(n), measured_calls=n, extrapolated=False,
                       measured_seconds=wall, seconds_per_sample=wall / b)
        else:
            model = DIT(s).eval()
            model(torch.full((b, s["len"]), s["vocab"] - 1), torch.zeros(b))  # warm-up
            weights, _ = rss_mib()
            reset = reset_peak()
            budget = Budget(model, s, calls)
            t0 = time.perf_counter()
            _, nfe = sample(budget, b, STEPS[config], s, 1)
            wall = time.perf_counter() - t0
            est, extra = extrapolate(wall, budget.calls)
            rec.update(steps=STEPS[config], calls=len(budget.calls), nfe_per_seq=nfe,
                       measured_calls=sum(c["real"] for c in budget.calls), extrapolated=extra,
                       measured_seconds=wall, seconds_per_sample=est / b, notes=NOTES)
    _, peak = rss_mib()
    rec.update(weights_rss_mib=weights, peak_rss_mib=peak, peak_reset=reset,
               n_params=sum(p.numel() for p in model.parameters()))
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=CONFIGS)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--calls", type=int)
    ap.add_argument("--smoke", action="store_true", help="a tiny shape that checks the code paths")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if a.batch < 1 or (a.calls is not None and a.calls < 1):
        ap.error("--batch and --calls must be at least 1")
    torch.set_num_threads(a.threads)
    s = SMOKE if a.smoke else PAPER
    if a.only:
        print(json.dumps(run_config(a.only, a.batch, a.calls, s, a.threads)), flush=True)
        return
    for config in CONFIGS:
        for b in (int(x) for x in a.batches.split(",")):
            cmd = [sys.executable, __file__, "--only", config, "--batch", str(b), "--threads", str(a.threads)]
            cmd += (["--calls", str(a.calls)] if a.calls else []) + (["--smoke"] if a.smoke else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
