#!/usr/bin/env python3
"""Cross-checks the golden fixtures against Hugging Face transformers.

NOT part of CI.  Run it from a virtualenv that has PyPI torch, transformers
and safetensors (see README.md):

    /tmp/hfref/bin/python tests/reference/crosscheck_hf.py [DATA_DIR]

For every tiny_* case it builds transformers' native DeepseekV2ForCausalLM in
float64, loads the case's model.safetensors, runs each prompt (and each
prompt extended by its greedy tokens) and compares with logits.npy,
layers.L.out.npy and decode.logits.npy.

Two modes are run per case:

* native: transformers' model as it is.  It deliberately departs from the
  original DeepSeek remote code (modeling_deepseek.py) in places, so some
  cases are expected to differ or fail to build; the reasons are printed.
* remote: the same model with small shims that restore the original remote
  code semantics our reference follows (normalized top-k weights, the
  "gready" spelling, moe_layer_freq, and the YaRN cos/sin magnitude when
  only `mscale` is given).  This mode must match to ~1e-5 (transformers
  computes rope and the router in float32 even in a float64 model).
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
from safetensors.numpy import load_file

from transformers.models.deepseek_v2 import modeling_deepseek_v2 as hfm
from transformers.models.deepseek_v2.configuration_deepseek_v2 import DeepseekV2Config

TOL = 1e-4

# MLA never needs hidden_size % num_attention_heads == 0, but transformers'
# config validation demands it (tiny_lite has 32 and 3 heads on purpose).
DeepseekV2Config.__class_validators__ = [
    v for v in getattr(DeepseekV2Config, "__class_validators__", [])
    if v.__name__ != "validate_architecture"]

_orig_layer_init = hfm.DeepseekV2DecoderLayer.__init__
_orig_router_forward = hfm.DeepseekV2TopkRouter.forward
_MODE = {"remote": False}


def _remote_is_moe(config, i):
    return (config.n_routed_experts is not None
            and i >= config.first_k_dense_replace
            and i % config.moe_layer_freq == 0)


def _layer_init(self, config, layer_idx):
    _orig_layer_init(self, config, layer_idx)
    if _MODE["remote"] and not _remote_is_moe(config, layer_idx):
        # remote code: dense MLP unless i >= first_k_dense_replace and i % moe_layer_freq == 0
        self.mlp = hfm.DeepseekV2MLP(config)


def _router_forward(self, hidden_states):
    logits, w, idx = _orig_router_forward(self, hidden_states)
    if getattr(self, "remote_norm_topk_prob", False) and self.top_k > 1:
        # native always returns score * routed_scaling_factor; the remote code
        # normalizes instead when top_k > 1 and norm_topk_prob.
        w = w / self.routed_scaling_factor
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    return logits, w, idx


hfm.DeepseekV2DecoderLayer.__init__ = _layer_init
hfm.DeepseekV2TopkRouter.forward = _router_forward


def yarn_mscale(s, m):
    return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0


def make_config(cfg_dict, remote):
    d = dict(cfg_dict)
    if remote:
        if d.get("topk_method") == "gready":
            d["topk_method"] = "greedy"
        rs = d.get("rope_scaling")
        if rs is not None:
            rs = dict(rs)
            # remote code: cos/sin magnitude = mscale(s, mscale) / mscale(s, mscale_all_dim),
            # with mscale defaulting to 1 and mscale_all_dim to 0.
            s = float(rs["factor"])
            rs["attention_factor"] = (yarn_mscale(s, float(rs.get("mscale", 1)))
                                      / yarn_mscale(s, float(rs.get("mscale_all_dim", 0))))
            d["rope_scaling"] = rs
    config = DeepseekV2Config(**d)
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"
    return config


def build_model(case_dir, remote):
    cfg_dict = json.load(open(os.path.join(case_dir, "config.json")))
    config = make_config(cfg_dict, remote)
    _MODE["remote"] = remote
    try:
        model = hfm.DeepseekV2ForCausalLM(config)
    finally:
        _MODE["remote"] = False
    for m in model.modules():
        if isinstance(m, hfm.DeepseekV2TopkRouter):
            m.remote_norm_topk_prob = remote and bool(cfg_dict.get("norm_topk_prob", False))
    model = model.to(torch.float64).eval()

    ours = load_file(os.path.join(case_dir, "model.safetensors"))
    used = set()
    state = {}
    for name, param in model.state_dict().items():
        if name in ours:
            state[name] = torch.from_numpy(ours[name].astype(np.float64))
            used.add(name)
            continue
        prefix = name.rsplit("experts.", 1)[0] + "experts."
        if name.endswith("mlp.experts.gate_up_proj") or name.endswith("mlp.experts.down_proj"):
            n_exp = param.shape[0]
            parts = []
            for e in range(n_exp):
                if name.endswith("gate_up_proj"):
                    keys = ["%s%d.gate_proj.weight" % (prefix, e), "%s%d.up_proj.weight" % (prefix, e)]
                else:
                    keys = ["%s%d.down_proj.weight" % (prefix, e)]
                missing = [k for k in keys if k not in ours]
                if missing:
                    raise KeyError("checkpoint lacks %s (needed by %s)" % (missing[0], name))
                used.update(keys)
                parts.append(np.concatenate([ours[k] for k in keys], axis=0))
            state[name] = torch.from_numpy(np.stack(parts).astype(np.float64))
            continue
        raise KeyError("checkpoint lacks %s" % name)
    unused = sorted(set(ours) - used)
    if unused:
        raise KeyError("model has no place for checkpoint tensor %s" % unused[0])
    model.load_state_dict(state, strict=True)
    return model


def err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    abs_err = float(np.abs(a - b).max())
    return abs_err, abs_err / max(float(np.abs(b).max()), 1e-300)


def check_case(case_dir, remote):
    model = build_model(case_dir, remote)
    L = lambda n: np.load(os.path.join(case_dir, n + ".npy"))
    tokens, seq_lens = L("tokens"), L("seq_lens")
    cfg = json.load(open(os.path.join(case_dir, "config.json")))
    n_layers = cfg["num_hidden_layers"]
    ref_logits = L("logits")
    ref_outs = [L("layers.%d.out" % i) for i in range(n_layers)]
    ids, dec = L("greedy.ids"), L("decode.logits")

    got_logits, got_outs = [], [[] for _ in range(n_layers)]
    dec_errs = []
    start = 0
    with torch.no_grad():
        for b, n in enumerate(seq_lens):
            prompt = tokens[start:start + n]
            start += n
            out = model(input_ids=torch.from_numpy(prompt)[None], output_hidden_states=True)
            got_logits.append(out.logits[0].numpy())
            hs = out.hidden_states
            # hidden_states[i + 1] is the output of layer i (the last one may be normed)
            for i in range(n_layers - 1):
                got_outs[i].append(hs[i + 1][0].numpy())
            full = np.concatenate([prompt, ids[b, :-1]])
            lg = model(input_ids=torch.from_numpy(full)[None]).logits[0].numpy()
            dec_errs.append(err(lg[n - 1:n - 1 + ids.shape[1]], dec[:, b]))
    res = {"logits": err(np.concatenate(got_logits), ref_logits)}
    for i in range(n_layers - 1):
        res["layers.%d.out" % i] = err(np.concatenate(got_outs[i]), ref_outs[i])
    res["decode.logits"] = (max(e[0] for e in dec_errs), max(e[1] for e in dec_errs))
    return res


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="?", default=os.path.join(here, "..", "data"))
    args = ap.parse_args()
    torch.manual_seed(0)
    cases = sorted(c for c in os.listdir(args.data) if c.startswith("tiny_"))
    remote_ok = True
    for case in cases:
        for remote in (False, True):
            mode = "remote" if remote else "native"
            try:
                res = check_case(os.path.join(args.data, case), remote)
            except Exception as e:  # report and go on
                print("%-10s %-6s  FAILED TO RUN: %s: %s" % (case, mode, type(e).__name__, e))
                remote_ok &= not remote
                continue
            worst = max(r[0] for r in res.values())
            verdict = "match" if worst < TOL else "DIFFERS"
            if remote and worst >= TOL:
                remote_ok = False
            print("%-10s %-6s  %s (max abs err %.3g)" % (case, mode, verdict, worst))
            for k, (a, r) in res.items():
                print("    %-16s max abs %.3g  max rel %.3g" % (k, a, r))
    print("remote-semantics cross-check:", "PASS" if remote_ok else "FAIL")
    return 0 if remote_ok else 1


if __name__ == "__main__":
    sys.exit(main())
