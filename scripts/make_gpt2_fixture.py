#!/usr/bin/env python3
"""Make tests/fixtures/gpt2_tiny/: a tiny random GPT-2 in the Hugging Face layout and reference
values from HF transformers' GPT2LMHeadModel, checked by tests/eval_gpt2.rs.

The vocabulary is a tiny byte-level BPE (256 bytes, a few merges, <|endoftext|> last as in GPT-2)
trained here on a fixed text: GPT-2's real 50257-token vocabulary would make the embedding and the
tokenizer files several MB. Every parameter is drawn at random (LayerNorm gains and biases too, so
a wrong gain, bias or transposition shows), at a scale that makes the logits far from uniform.

Run:  python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch safetensors numpy transformers
      /tmp/tv/bin/python scripts/make_gpt2_fixture.py
"""

import json
import math
import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "gpt2_tiny")
EOS = "<|endoftext|>"
N_EMBD, N_LAYER, N_HEAD, N_POSITIONS = 32, 2, 2, 64
SEED = 20260101

# The BPE's training text (merges come from it; every byte is in the alphabet regardless).
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "In the beginning the Universe was created. This has made a lot of people very angry.",
    "the the the and and of of to to in in that that is is was was he he for for it it",
    "Numbers like 1234 and 56.78 appear in the text, with café and naïve words.",
]

# Texts whose per-token log-probabilities are checked (each fits in one window).
LOGPROB_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "It was the age of wisdom<|endoftext|>and the worst of times 1234!",
    " leading space, café, naïve, ünïcödé — and emoji 🙂.",
]

# GenPPL texts: the §6.1 mask rule (first EOS counts, later ones not; a leading EOS), a text
# longer than the context (windows), a one-token text (nothing scored).
GENPPL_TEXTS = [
    "The quick brown fox jumps over the lazy dog.<|endoftext|><|endoftext|><|endoftext|>",
    "<|endoftext|>It was the best of times<|endoftext|>it was the worst<|endoftext|> of times",
    " ".join(CORPUS),
    "the",
    "In the beginning the Universe was created.<|endoftext|>",
]
CONTEXTS = [N_POSITIONS, 16]


def train_tokenizer():
    """A byte-level BPE with GPT-2's pre-tokenizer; <|endoftext|> gets the last id."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=352,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    assert sorted(vocab.values()) == list(range(len(vocab)))
    vocab[EOS] = len(vocab)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return vocab, merges


def token_weights(ids, eos):
    """§6.1: position i >= 1 counts if it is not EOS or is the first EOS of the sequence."""
    out, seen = [], 0
    for i, t in enumerate(ids):
        seen += t == eos
        out.append(i >= 1 and (t != eos or seen == 1))
    return out


def genppl(model, seqs, ctx, eos):
    """Windows of ctx tokens overlapping by one token; each window is one unpadded forward pass."""
    per_sample = []
    for ids in seqs:
        w = token_weights(ids, eos)
        nll, count, start = 0.0, 0, 0
        while len(ids) >= 2:
            end = min(start + ctx, len(ids))
            with torch.no_grad():
                logits = model(torch.tensor([ids[start:end]])).logits[0]
            lp = torch.log_softmax(logits.double(), -1)
            for p in range(start + 1, end):
                if w[p]:
                    nll -= lp[p - start - 1, ids[p]].item()
                    count += 1
            if end == len(ids):
                break
            start = end - 1
        per_sample.append([nll, count])
    nll = sum(p[0] for p in per_sample)
    count = sum(p[1] for p in per_sample)
    return {"context": ctx, "genppl": math.exp(nll / count), "nll_sum": nll, "tokens": count,
            "per_sample": per_sample}


def main():
    os.makedirs(OUT, exist_ok=True)
    vocab, merges = train_tokenizer()
    with open(os.path.join(OUT, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(OUT, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    # HF's GPT-2 tokenizer on this vocabulary, saved as tokenizer.json.
    hf_tok = GPT2TokenizerFast(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
    hf_tok.backend_tokenizer.save(os.path.join(OUT, "tokenizer.json"))
    eos = vocab[EOS]
    assert hf_tok.convert_tokens_to_ids(EOS) == eos
    assert hf_tok(EOS)["input_ids"] == [eos]
    # The same ids from a directory with only vocab.json + merges.txt, loaded as a user would.
    with tempfile.TemporaryDirectory() as d:
        for f in ["vocab.json", "merges.txt"]:
            shutil.copy(os.path.join(OUT, f), d)
        files_tok = GPT2TokenizerFast.from_pretrained(d)
        for t in LOGPROB_TEXTS + GENPPL_TEXTS:
            assert files_tok(t)["input_ids"] == hf_tok(t)["input_ids"], t
    vocab_size = len(vocab)

    cfg = GPT2Config(
        vocab_size=vocab_size, n_positions=N_POSITIONS, n_embd=N_EMBD, n_layer=N_LAYER,
        n_head=N_HEAD, layer_norm_epsilon=1e-5, activation_function="gelu_new",
        bos_token_id=eos, eos_token_id=eos, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("wte.weight"):
                p.copy_(0.5 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    cfg.save_pretrained(OUT)
    # The hub's naming (GPT2Model, no prefix, no lm_head: it is tied), with the old mask buffers
    # a loader must ignore.
    sd = {k[len("transformer."):]: v.contiguous() for k, v in model.state_dict().items()
          if k.startswith("transformer.") and not k.endswith(".attn.bias") and not k.endswith("masked_bias")}
    for i in range(N_LAYER):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(N_POSITIONS, N_POSITIONS, dtype=torch.bool)).view(
            1, 1, N_POSITIONS, N_POSITIONS)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(sd, os.path.join(OUT, "model.safetensors"), metadata={"format": "pt"})

    # Reload as a user would, to be sure the files alone give the reference model.
    model = GPT2LMHeadModel.from_pretrained(OUT).eval()
    with torch.no_grad():
        assert torch.equal(model.lm_head.weight, sd["wte.weight"])

    logprob_cases = []
    for case, text in enumerate(LOGPROB_TEXTS):
        ids = hf_tok(text)["input_ids"]
        assert len(ids) <= N_POSITIONS
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        lp = torch.log_softmax(logits.double(), -1)
        logprob_cases.append({
            "text": text,
            "ids": ids,
            # Every logit of the first text only (the others would make the file large).
            "logits": logits.tolist() if case == 0 else None,
            "log_probs": [lp[i - 1, ids[i]].item() for i in range(1, len(ids))],
        })
    seqs = [hf_tok(t)["input_ids"] for t in GENPPL_TEXTS]
    assert len(seqs[2]) > 2 * N_POSITIONS, len(seqs[2])
    ref = {
        "made_by": "scripts/make_gpt2_fixture.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "eos_id": eos,
        "logprob_cases": logprob_cases,
        "genppl_texts": GENPPL_TEXTS,
        "genppl_ids": seqs,
        "genppl": [genppl(model, seqs, c, eos) for c in CONTEXTS],
    }
    with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(ref, f, ensure_ascii=False)
    print(f"vocab {vocab_size}; GenPPL {[g['genppl'] for g in ref['genppl']]}", file=sys.stderr)


if __name__ == "__main__":
    main()
