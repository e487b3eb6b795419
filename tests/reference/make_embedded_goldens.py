#!/usr/bin/python3
"""Golden outputs of the embedded model (models/tiny-kjv) for the C++ tests.

    /usr/bin/python3 tests/reference/make_embedded_goldens.py [MODEL_DIR [OUT_DIR]]

MODEL_DIR defaults to models/tiny-kjv, OUT_DIR to tests/data/embedded.
Everything is computed by dsv2_reference.py in float64 from the float32
weights in model.safetensors:

  prompt.tokens.npy  (T,) int64     BOS (256) + the UTF-8 bytes of PROMPT
  prompt.logits.npy  (T, V) float64 logits at every prompt position
  greedy.ids.npy     (STEPS,) int64 greedy continuation: argmax of the
                                    last-position logits, full recompute per step
  meta.json                         prompt, decoded continuation, argmax and
                                    router margins, sha256 of the weights
"""

import hashlib
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dsv2_reference as ref  # noqa: E402
import make_fixtures as fx  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
PROMPT = "In the beginning"
STEPS = 24


def top2_gap(logits):
    top = torch.topk(logits, 2, dim=-1).values
    return top[..., 0] - top[..., 1]


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "models", "tiny-kjv")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(REPO, "tests", "data", "embedded")
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)

    with open(os.path.join(model, "config.json")) as f:
        cfg = ref.Config(json.load(f))
    st_path = os.path.join(model, "model.safetensors")
    with open(st_path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    W = {k: torch.from_numpy(v.astype(np.float64))
         for k, v in fx.read_safetensors(st_path).items()}

    bos = cfg.bos_token_id
    prompt = [bos] + list(PROMPT.encode("utf-8"))
    tokens = torch.tensor(prompt, dtype=torch.int64)
    gaps_prompt = []
    logits = ref.forward(tokens, [len(prompt)], W, cfg, gaps=gaps_prompt)

    gaps = []
    ids, dec = ref.greedy_decode([prompt], W, cfg, STEPS, gaps=gaps)
    ids = ids[0]
    dec = dec[:, 0]                                     # (STEPS, V)
    assert torch.equal(dec[0], logits[-1])
    assert torch.equal(ids, dec.argmax(dim=-1))

    fx.save_i64(os.path.join(out, "prompt.tokens.npy"), tokens)
    fx.save_f64(os.path.join(out, "prompt.logits.npy"), logits)
    fx.save_i64(os.path.join(out, "greedy.ids.npy"), ids)

    step_gaps = top2_gap(dec)
    prompt_gaps = top2_gap(logits)
    text = bytes(i for i in ids.tolist() if i < 256).decode("utf-8", "replace")
    meta = {
        "model": os.path.relpath(os.path.abspath(model), REPO),
        "model_sha256": sha,
        "prompt": PROMPT,
        "bos_token_id": bos,
        "prompt_len": len(prompt),
        "decode_steps": STEPS,
        "greedy_text": text,
        "argmax_min_gap": step_gaps.min().item(),
        "argmax_gaps": [round(g, 6) for g in step_gaps.tolist()],
        "prompt_argmax": logits.argmax(dim=-1).tolist(),
        "prompt_argmax_gaps": [round(g, 6) for g in prompt_gaps.tolist()],
        "router_min_gap": min(g.min().item() for g in gaps + gaps_prompt),
        "notes": (
            "Golden values from tests/reference/dsv2_reference.py (float64, naive "
            "MLA, full recompute per decode step) with the float32 weights of "
            "model_sha256. Tokens: BOS then the UTF-8 bytes of the prompt, "
            "positions 0..T-1. greedy.ids[k] = argmax of the last-position "
            "logits after appending greedy.ids[:k]. argmax_gaps: best minus "
            "second-best logit at each decode step (step 0 = last prompt "
            "position); prompt_argmax_gaps: the same at every prompt position; "
            "router_min_gap: smallest k-th vs (k+1)-th selection margin "
            "(experts and groups) over the prompt and all decode steps."),
    }
    fx.write_json(os.path.join(out, "meta.json"), meta)
    print("greedy: %r" % text)
    print("argmax min gap %.4g, router min gap %.3g -> %s"
          % (meta["argmax_min_gap"], meta["router_min_gap"], out))


if __name__ == "__main__":
    main()
