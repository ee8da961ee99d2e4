"""Write tests/fixtures/lightning_idlm/idlm.ckpt: a Lightning checkpoint shaped like the reference
IDLM code's (docs/checkpoints.md, "Released checkpoints"), on the small DiT of
tests/fixtures/dit_reference, so the importer is tested on the real pickle format.

- state_dict: `backbone.*` (the student: the reference weights x 0.5, float32), `teacher.*` (the
  reference weights, float32), `fake_model.*` (x 0.25, bfloat16), each with `rotary_emb.inv_freq`;
- ema.shadow_params: the reference weights in `parameters()` order of a module tree registered as
  the reference `models/dit.py` DIT (so the student's EMA gives the reference logits); ema_fake too;
- hyper_parameters: an OmegaConf DictConfig and a pickled transformers tokenizer (60 tokens), as
  `save_hyperparameters()` stores them; plus optimizer, scheduler, loop and callback state.

Run once with torch, omegaconf and transformers installed:
    /tmp/tv/bin/pip install torch safetensors omegaconf transformers
    /tmp/tv/bin/python scripts/make_ckpt_fixture.py
"""
import collections
import os
import sys

import torch
from safetensors.torch import load_file
from omegaconf import OmegaConf
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import check_export  # noqa: E402
FIX = os.path.join(HERE, "..", "tests", "fixtures")
V, D, HEADS, BLOCKS, COND = 61, 64, 4, 2, 32


def main():
    ref = load_file(os.path.join(FIX, "dit_reference", "model.safetensors"))
    ref = {k[len("backbone."):]: v for k, v in ref.items()}
    # A module tree registered as the reference models/dit.py DIT (scripts/check_export.py).
    net = check_export.tree(V, D, HEADS, BLOCKS, COND).backbone
    net.load_state_dict(ref, strict=True)
    teacher = {k: v.clone() for k, v in net.state_dict().items()}
    student = {k: (v * 0.5 if k != "rotary_emb.inv_freq" else v.clone()) for k, v in teacher.items()}
    fake = {k: (v * 0.25).to(torch.bfloat16) if k != "rotary_emb.inv_freq" else v.clone() for k, v in teacher.items()}
    state = collections.OrderedDict()
    for prefix, w in [("backbone.", student), ("teacher.", teacher), ("fake_model.", fake)]:
        for k, v in w.items():
            state[prefix + k] = v
    # The EMAs share storage with the teacher / fake tensors: torch.save writes each storage once.
    names = [n for n, _ in net.named_parameters()]
    shadow = [state["teacher." + n] for n in names]
    shadow_fake = [state["fake_model." + n] for n in names]

    words = ["w%d" % i for i in range(59)]
    vocab = {w: i for i, w in enumerate(words)}
    vocab["<|endoftext|>"] = 59
    tk = Tokenizer(WordLevel(vocab, unk_token="w0"))
    tk.pre_tokenizer = Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    config = OmegaConf.create({
        "mode": "train",
        "algo": {"name": "idlm", "backbone": "dit", "parameterization": "subs", "time_conditioning": True, "T": 0},
        "model": {"name": "tiny", "type": "ddit", "hidden_size": D, "cond_dim": COND, "length": 24,
                  "n_blocks": BLOCKS, "n_heads": HEADS, "scale_by_sigma": True, "dropout": 0.1},
        "data": {"tokenizer_name_or_path": "fixture-wordlevel", "wrap": True},
        "noise": {"type": "log-linear", "eps": 1e-3},
        "loader": {"global_batch_size": 512, "eval_batch_size": "${loader.global_batch_size}"},
    })
    opt_state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4), "exp_avg_sq": torch.zeros(4)}},
                 "param_groups": [{"lr": 1e-6, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                                   "amsgrad": False, "params": [0]}]}
    ckpt = {
        "epoch": 0,
        "global_step": 1234,
        "pytorch-lightning_version": "2.2.1",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 1, "completed": 0}},
                               "epoch_loop.batch_progress": {"total": {"ready": 1234}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": torch.tensor(2.5),
                                                           "dirpath": "/checkpoints", "best_k_models": {}}},
        "optimizer_states": [opt_state, opt_state],
        "lr_schedulers": [{"base_lrs": [1e-6], "last_epoch": 1234, "_last_lr": [1e-6], "lr_lambdas": [{}]}],
        "hparams_name": "kwargs",
        "hyper_parameters": {"config": config, "tokenizer": tok, "vocab_size": None},
        "ema": {"decay": 0.9999, "num_updates": 1234, "shadow_params": shadow},
        "ema_fake": {"decay": 0.9999, "num_updates": 1234, "shadow_params": shadow_fake},
        "sampler": {"random_state": torch.get_rng_state()},
    }
    out = os.path.join(FIX, "lightning_idlm")
    os.makedirs(out, exist_ok=True)
    torch.save(ckpt, os.path.join(out, "idlm.ckpt"))
    # Read back as the reference does, to be sure the file is what it claims.
    back = torch.load(os.path.join(out, "idlm.ckpt"), weights_only=False)
    assert torch.equal(back["ema"]["shadow_params"][0], ref["vocab_embed.embedding"])
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("Made by `scripts/make_ckpt_fixture.py` (torch %s); see its docstring.\n" % torch.__version__)
    print("wrote", os.path.join(out, "idlm.ckpt"), os.path.getsize(os.path.join(out, "idlm.ckpt")), "bytes")


if __name__ == "__main__":
    main()
