"""Check an `idlm export --hf` folder the way the reference PyTorch code reads it: config.json has
MDLMConfig's keys, and model.safetensors loads with `load_state_dict(strict=True)` into a module
tree registered exactly as the reference `models/dit.py` DIT (same names, shapes and the persistent
rotary buffer); then the reference forward (scripts/make_fixtures.py's transcription, checked
against the reference DiT's logits) runs on it. With `--io` (tests/fixtures/dit_reference/
io.safetensors) the logits are compared with the reference vectors.

    /tmp/tv/bin/python scripts/check_export.py OUT [--io tests/fixtures/dit_reference/io.safetensors]
"""
import argparse
import json
import os
import sys

import torch
from torch import nn
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures  # noqa: E402

KEYS = ["architectures", "auto_map", "cond_dim", "dropout", "hidden_dim", "model_length", "model_type",
        "n_blocks", "n_heads", "return_dict", "time_conditioning", "torch_dtype", "vocab_size"]


def tree(v, d, heads, blocks, cond):
    class LN(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = LN()
            self.attn_qkv = nn.Linear(d, 3 * d, bias=False)
            self.attn_out = nn.Linear(d, d, bias=False)
            self.norm2 = LN()
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))
            self.adaLN_modulation = nn.Linear(cond, 6 * d)

    class Emb(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Parameter(torch.empty(v, d))

    class Sig(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(256, cond), nn.SiLU(), nn.Linear(cond, cond))

    class Rot(nn.Module):
        def __init__(self):
            super().__init__()
            hd = d // heads
            self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd)))

    class Final(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm_final = LN()
            self.linear = nn.Linear(d, v)
            self.adaLN_modulation = nn.Linear(cond, 2 * d)

    class DIT(nn.Module):
        def __init__(self):
            super().__init__()
            self.vocab_embed = Emb()
            self.sigma_map = Sig()
            self.rotary_emb = Rot()
            self.blocks = nn.ModuleList([Block() for _ in range(blocks)])
            self.output_layer = Final()

    class MDLM(nn.Module):  # the HF wrapper: `self.backbone = DITBackbone(config)`
        def __init__(self):
            super().__init__()
            self.backbone = DIT()

    return MDLM()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--io")
    a = ap.parse_args()
    cfg = json.load(open(os.path.join(a.dir, "config.json")))
    missing = [k for k in KEYS if k not in cfg]
    assert not missing, f"config.json lacks {missing}"
    m = tree(cfg["vocab_size"], cfg["hidden_dim"], cfg["n_heads"], cfg["n_blocks"], cfg["cond_dim"])
    sd = load_file(os.path.join(a.dir, "model.safetensors"))
    m.load_state_dict(sd, strict=True)
    assert all(t.dtype == torch.float32 for t in sd.values())
    rot = m.backbone.rotary_emb.inv_freq
    print(f"strict load OK: {len(sd)} tensors, {sum(p.numel() for p in m.parameters())} parameters")
    if a.io:
        io = load_file(a.io)
        w = {k[len("backbone."):]: t for k, t in sd.items()}
        out = make_fixtures.dit(w, io["ids"], io["sigma"], cfg["n_heads"], cfg["time_conditioning"])
        d = (out - io["logits"]).abs().max().item()
        print(f"reference forward on the export: max abs diff from the reference logits {d:.2e}")
        assert d < 1e-3
    del rot


if __name__ == "__main__":
    main()
