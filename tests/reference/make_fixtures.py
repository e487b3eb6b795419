#!/usr/bin/python3
"""Writes the golden fixtures of the dsv2 C++ tests.

Usage (Debian's python, which has torch and numpy):

    /usr/bin/python3 tests/reference/make_fixtures.py [OUTPUT_DIR]

OUTPUT_DIR defaults to tests/data of the repository holding this script.
The output is deterministic: weights, prompts and router inputs come from
fixed seeds.  See README.md next to this script for what every file holds.
"""

import json
import math
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dsv2_reference as ref  # noqa: E402

DECODE_STEPS = 4
# Margins demanded of every discrete choice, so that implementations that
# compute in float32 (or with a different summation order) choose the same.
ROUTER_MIN_GAP = 1e-4      # router scores: k-th vs (k+1)-th expert / group
ARGMAX_MIN_GAP = 1e-3      # logits: best vs second-best token in greedy decode
MAX_SEED_TRIES = 200


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

def full_config(**over):
    """A complete HF-style DeepSeek-V2 config.json dict."""
    cfg = {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "vocab_size": 97,
        "hidden_size": 40,
        "intermediate_size": 72,
        "moe_intermediate_size": 24,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "n_shared_experts": 2,
        "n_routed_experts": 8,
        "ep_size": 1,
        "routed_scaling_factor": 2.5,
        "kv_lora_rank": 20,
        "q_lora_rank": 24,
        "qk_rope_head_dim": 8,
        "v_head_dim": 10,
        "qk_nope_head_dim": 12,
        "topk_method": "group_limited_greedy",
        "n_group": 4,
        "topk_group": 2,
        "num_experts_per_tok": 3,
        "moe_layer_freq": 1,
        "first_k_dense_replace": 1,
        "norm_topk_prob": False,
        "scoring_func": "softmax",
        "aux_loss_alpha": 0.001,
        "seq_aux": True,
        "hidden_act": "silu",
        "max_position_embeddings": 64,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "use_cache": True,
        "pad_token_id": None,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pretraining_tp": 1,
        "tie_word_embeddings": False,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "torch_dtype": "float32",
        "transformers_version": "4.39.3",
    }
    cfg.update(over)
    return cfg


CASES = {
    # Every feature on: q LoRA, YaRN with mscale_all_dim, group-limited
    # routing, shared experts, un-normalized scaled weights, dense layer 0.
    "tiny_v2": dict(
        seed=1000,
        prompt_lens=[19, 1, 37],
        config=full_config(
            rope_scaling={"type": "yarn", "factor": 4,
                          "original_max_position_embeddings": 16,
                          "beta_fast": 32, "beta_slow": 1,
                          "mscale": 0.707, "mscale_all_dim": 0.707},
        ),
    ),
    # DeepSeek-V2-Lite-like: no q LoRA, the "gready" spelling, normalized
    # top-2 weights, one group, YaRN given under "rope_type" with default
    # betas and no mscale_all_dim, odd sizes (rope dim 6 -> 3 frequencies).
    "tiny_lite": dict(
        seed=2000,
        prompt_lens=[5, 12],
        config=full_config(
            vocab_size=61, hidden_size=32, intermediate_size=56,
            moe_intermediate_size=20, num_hidden_layers=2,
            num_attention_heads=3, num_key_value_heads=3,
            n_shared_experts=1, n_routed_experts=6, routed_scaling_factor=1.0,
            kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=6,
            v_head_dim=14, qk_nope_head_dim=10, topk_method="gready",
            n_group=1, topk_group=1, num_experts_per_tok=2,
            first_k_dense_replace=1, norm_topk_prob=True,
            max_position_embeddings=32,
            rope_scaling={"rope_type": "yarn", "factor": 8,
                          "original_max_position_embeddings": 8,
                          "mscale": 0.707},
        ),
    ),
    # No rope scaling, top-1 routing (weights scaled, never normalized),
    # MoE on every other layer starting at layer 0, a large rms_norm_eps
    # (q_a/kv_a layernorms must still use 1e-6).
    "tiny_plain": dict(
        seed=3000,
        prompt_lens=[7, 3, 11, 1],
        config=full_config(
            vocab_size=53, hidden_size=24, intermediate_size=40,
            moe_intermediate_size=16, num_hidden_layers=3,
            num_attention_heads=2, num_key_value_heads=2,
            n_shared_experts=1, n_routed_experts=6, routed_scaling_factor=1.5,
            kv_lora_rank=12, q_lora_rank=16, qk_rope_head_dim=4,
            v_head_dim=8, qk_nope_head_dim=8, topk_method="greedy",
            n_group=2, topk_group=1, num_experts_per_tok=1,
            moe_layer_freq=2, first_k_dense_replace=0, norm_topk_prob=True,
            rms_norm_eps=1e-3, max_position_embeddings=16,
            rope_scaling=None,
        ),
    ),
}

# Rotary-only fixture with DeepSeek-V2's real rope settings (rope dim 64,
# factor 40, original length 4096): exercises a fractional YaRN ramp, which
# the tiny configs (rope dims 4..8) are too small to produce.
ROTARY_DSV2_CONFIG = {
    "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128,
    "v_head_dim": 128,
    "rope_theta": 10000.0,
    "max_position_embeddings": 163840,
    "rope_scaling": {"type": "yarn", "factor": 40,
                     "original_max_position_embeddings": 4096,
                     "beta_fast": 32, "beta_slow": 1,
                     "mscale": 0.707, "mscale_all_dim": 0.707},
}

ROTARY_POSITIONS = [0, 1, 2, 7, 15, 16, 17, 31, 63, 64, 100, 1000, 4095, 4096, 40000, 163839]


# --------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------

def save_f64(path, t):
    a = t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    np.save(path, np.ascontiguousarray(a, dtype="<f8"))


def save_i64(path, t):
    a = t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    np.save(path, np.ascontiguousarray(a, dtype="<i8"))


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def read_safetensors(path):
    """Minimal reader, used to verify what write_safetensors produced."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(data[b:e], dtype="<f4").reshape(info["shape"])
    return out


def write_safetensors(path, tensors):
    """tensors: dict name -> float32 numpy array, stored as F32."""
    write_safetensors_raw(path, {k: np.ascontiguousarray(v, dtype="<f4") for k, v in tensors.items()}, "F32")


# --------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------

def make_weights(cfg, rng):
    """float32 numpy weights, generated in the model's natural order."""
    out = {}
    for name, shape, kind in ref.weight_shapes(cfg):
        z = rng.standard_normal(shape)
        if kind == "embed":
            w = z
        elif kind == "norm":
            w = 1.0 + 0.1 * z
        elif kind == "router":
            w = z * (2.0 / math.sqrt(shape[1]))
        else:
            w = z / math.sqrt(shape[1])
        out[name] = w.astype(np.float32)
    return out


def make_prompts(lens, vocab, rng):
    prompts = [rng.integers(0, vocab, size=n).tolist() for n in lens]
    # Make sure the first and the last vocabulary rows are used.
    longest = max(range(len(lens)), key=lambda b: lens[b])
    prompts[longest][0] = vocab - 1
    if lens[longest] > 2:
        prompts[longest][-2] = 0
    return prompts


def argmax_gap(logits):
    top = torch.topk(logits, 2, dim=-1).values
    return (top[..., 0] - top[..., 1]).min().item()


def try_seed(case, seed):
    """Builds weights and prompts for one seed and checks all margins.

    Returns (ok, weights32, W64, prompts, margins)."""
    cfg = ref.Config(case["config"])
    rng = np.random.default_rng(seed)
    w32 = make_weights(cfg, rng)
    prompts = make_prompts(case["prompt_lens"], cfg.vocab_size, rng)
    W = {k: torch.from_numpy(v.astype(np.float64)) for k, v in w32.items()}
    gaps = []
    ids, dec = ref.greedy_decode(prompts, W, cfg, DECODE_STEPS, gaps=gaps)
    router_gap = min(g.min().item() for g in gaps) if gaps else float("inf")
    am_gap = argmax_gap(dec)
    ok = router_gap > ROUTER_MIN_GAP and am_gap > ARGMAX_MIN_GAP
    return ok, w32, W, prompts, {"router_min_gap": router_gap, "argmax_min_gap": am_gap}


def rotary_fixture(out, cfg, rng):
    inv_freq, m, _ = ref.rope_parameters(cfg)
    pos = torch.tensor(ROTARY_POSITIONS, dtype=torch.int64)
    x = torch.from_numpy(rng.standard_normal((len(ROTARY_POSITIONS), cfg.qk_rope_head_dim)))
    y = ref.apply_rope(x, pos, inv_freq, m)
    save_i64(os.path.join(out, "rotary.positions.npy"), pos)
    save_f64(os.path.join(out, "rotary.inv_freq.npy"), inv_freq)
    save_f64(os.path.join(out, "rotary.x.npy"), x)
    save_f64(os.path.join(out, "rotary.out.npy"), y)


def rmsnorm_fixture(out, cfg, rng):
    D = cfg.hidden_size
    mags = np.array([1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3])
    x = torch.from_numpy(rng.standard_normal((7, D)) * mags[:, None])
    w = torch.from_numpy(1.0 + 0.1 * rng.standard_normal(D))
    y = ref.rms_norm(x, w, cfg.rms_norm_eps)
    save_f64(os.path.join(out, "rmsnorm.x.npy"), x)
    save_f64(os.path.join(out, "rmsnorm.w.npy"), w)
    save_f64(os.path.join(out, "rmsnorm.out.npy"), y)


def write_case(root, name, case):
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    cfg = ref.Config(case["config"])

    for seed in range(case["seed"], case["seed"] + MAX_SEED_TRIES):
        ok, w32, W, prompts, margins = try_seed(case, seed)
        if ok:
            break
    else:
        raise RuntimeError("%s: no seed with clear routing/argmax margins" % name)

    write_json(os.path.join(out, "config.json"), case["config"])
    write_safetensors(os.path.join(out, "model.safetensors"), w32)
    back = read_safetensors(os.path.join(out, "model.safetensors"))
    assert sorted(back) == sorted(w32)
    assert all(np.array_equal(back[k], w32[k]) for k in w32)

    seq_lens = [len(p) for p in prompts]
    tokens = torch.tensor([t for p in prompts for t in p], dtype=torch.int64)
    trace = {}
    ref.forward(tokens, seq_lens, W, cfg, trace=trace)
    save_i64(os.path.join(out, "tokens.npy"), tokens)
    save_i64(os.path.join(out, "seq_lens.npy"), seq_lens)
    for key, val in trace.items():
        if key.endswith("topk_idx"):
            save_i64(os.path.join(out, key + ".npy"), val)
        else:
            save_f64(os.path.join(out, key + ".npy"), val)

    D_bal = cfg.n_group if cfg.n_group else 1
    M_bal = cfg.topk_group if cfg.topk_group else 1
    for i in cfg.moe_layers():
        tp = "layers.%d." % i
        counts, losses = ref.balance_stats(trace[tp + "router.scores"],
                                           trace[tp + "router.topk_idx"], D_bal, M_bal)
        save_i64(os.path.join(out, tp + "balance.counts.npy"), counts)
        save_f64(os.path.join(out, tp + "balance.losses.npy"), losses)

    ids, dec = ref.greedy_decode(prompts, W, cfg, DECODE_STEPS)
    ends = torch.tensor(seq_lens).cumsum(0) - 1
    assert torch.equal(dec[0], trace["logits"][ends])
    save_i64(os.path.join(out, "greedy.ids.npy"), ids)
    save_f64(os.path.join(out, "decode.logits.npy"), dec)

    aux_rng = np.random.default_rng(case["seed"] + 777)
    rotary_fixture(out, cfg, aux_rng)
    rmsnorm_fixture(out, cfg, aux_rng)

    inv_freq, m, scale = ref.rope_parameters(cfg)
    meta = {
        "softmax_scale": scale,
        "rotary_mscale": m,
        "seq_lens": seq_lens,
        "moe_layers": cfg.moe_layers(),
        "balance_devices": D_bal,
        "balance_max_devices": M_bal,
        "decode_steps": DECODE_STEPS,
        "seed": seed,
        "router_min_gap": margins["router_min_gap"],
        "argmax_min_gap": margins["argmax_min_gap"],
        "notes": (
            "Golden values from tests/reference/dsv2_reference.py (float64 "
            "torch, naive MLA, full recompute per decode step). Weights in "
            "model.safetensors are float32; all computation is float64 from "
            "those exact values. Tokens of the batch are concatenated; "
            "positions restart at 0 for each sequence. q_pe/k_pe are stored "
            "after rope in the HF de-interleaved layout. Router top-k is "
            "sorted by score, largest first. router_min_gap / argmax_min_gap "
            "are the smallest selection margins over the prompt forward and "
            "all decode steps. Balance losses use alpha=1, devices = "
            "balance_devices contiguous groups of experts, M = "
            "balance_max_devices."),
    }
    write_json(os.path.join(out, "meta.json"), meta)
    return seed, margins


def write_rotary_dsv2(root):
    out = os.path.join(root, "rotary_dsv2")
    os.makedirs(out, exist_ok=True)
    cfg = ref.Config(ROTARY_DSV2_CONFIG)
    rotary_fixture(out, cfg, np.random.default_rng(4242))
    inv_freq, m, scale = ref.rope_parameters(cfg)
    write_json(os.path.join(out, "config.json"), ROTARY_DSV2_CONFIG)
    write_json(os.path.join(out, "meta.json"), {
        "softmax_scale": scale,
        "rotary_mscale": m,
        "notes": "Rotary-only fixture with DeepSeek-V2's rope settings "
                 "(fractional YaRN ramp). Output in HF de-interleaved layout.",
    })


def write_routers(root):
    E, T, K, G, TG = 16, 13, 4, 4, 2
    scale = 2.5
    for seed in range(5000, 5000 + MAX_SEED_TRIES):
        rng = np.random.default_rng(seed)
        logits = torch.from_numpy(rng.standard_normal((T, E)) * 2.0)
        bias = torch.from_numpy(rng.standard_normal(E) * 0.1)
        gaps = []
        v3 = ref.route_sigmoid_v3(logits, bias, K, G, TG, True, scale, gaps)
        grp = ref.route_softmax(logits, K, "group_limited_greedy", G, TG, False, scale, gaps)
        gre = ref.route_softmax(logits, K, "greedy", None, None, True, scale, gaps)
        if min(g.min().item() for g in gaps) > ROUTER_MIN_GAP:
            break
    else:
        raise RuntimeError("router fixtures: no seed with clear margins")
    min_gap = min(g.min().item() for g in gaps)

    out = os.path.join(root, "router_v3")
    os.makedirs(out, exist_ok=True)
    save_f64(os.path.join(out, "logits.npy"), logits)
    save_f64(os.path.join(out, "bias.npy"), bias)
    save_f64(os.path.join(out, "scores.npy"), v3[0])
    save_i64(os.path.join(out, "topk_idx.npy"), v3[1])
    save_f64(os.path.join(out, "topk_weight.npy"), v3[2])
    write_json(os.path.join(out, "meta.json"), {
        "scoring_func": "sigmoid", "topk_method": "noaux_tc",
        "n_routed_experts": E, "n_group": G, "topk_group": TG, "top_k": K,
        "norm_topk_prob": True, "routed_scaling_factor": scale,
        "seed": seed, "min_gap": min_gap,
        "notes": "DeepSeek-V3-style routing: choice = sigmoid(logits) + bias; "
                 "group score = sum of top-2 choice values; other groups "
                 "masked to -inf; top_k by choice (sorted descending); "
                 "weights = sigmoid scores without bias, normalized (+1e-20), "
                 "then multiplied by routed_scaling_factor.",
    })

    out = os.path.join(root, "router_v2")
    os.makedirs(out, exist_ok=True)
    save_f64(os.path.join(out, "logits.npy"), logits)
    save_f64(os.path.join(out, "scores.npy"), grp[0])
    save_i64(os.path.join(out, "group.topk_idx.npy"), grp[1])
    save_f64(os.path.join(out, "group.topk_weight.npy"), grp[2])
    save_i64(os.path.join(out, "greedy.topk_idx.npy"), gre[1])
    save_f64(os.path.join(out, "greedy.topk_weight.npy"), gre[2])
    write_json(os.path.join(out, "meta.json"), {
        "scoring_func": "softmax", "n_routed_experts": E, "top_k": K,
        "routed_scaling_factor": scale,
        "group": {"topk_method": "group_limited_greedy", "n_group": G,
                  "topk_group": TG, "norm_topk_prob": False},
        "greedy": {"topk_method": "greedy", "norm_topk_prob": True},
        "seed": seed, "min_gap": min_gap,
        "notes": "Same logits as router_v3. scores = softmax(logits). "
                 "group.*: group score = max score in the group, other "
                 "groups' scores masked to 0, weights * 2.5 (not normalized). "
                 "greedy.*: top-4 normalized to sum 1 (+1e-20), no scaling. "
                 "Chosen experts sorted by score, largest first.",
    })


def write_storage_variants(root, name="tiny_v2"):
    """The same model stored as BF16 and as F16 on disk (weights rounded to
    nearest-even by torch/numpy), with golden logits and greedy ids computed
    in float64 from the rounded values: what a checkpoint in the wild looks
    like, and an exact target for any dtype that holds those values."""
    src = os.path.join(root, name)
    w32 = read_safetensors(os.path.join(src, "model.safetensors"))
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    cfg = ref.Config(config)
    seq_lens = np.load(os.path.join(src, "seq_lens.npy")).tolist()
    tokens = torch.from_numpy(np.load(os.path.join(src, "tokens.npy")))
    for dtype, tag in (("BF16", "bf16"), ("F16", "f16")):
        out = os.path.join(root, "%s_%s" % (name, tag))
        os.makedirs(out, exist_ok=True)
        raw, W = {}, {}
        for k, v in w32.items():
            t = torch.from_numpy(np.array(v))
            if dtype == "BF16":
                r = t.to(torch.bfloat16)
                raw[k] = r.view(torch.int16).numpy().astype("<i2")
            else:
                r = t.to(torch.float16)
                raw[k] = r.numpy().astype("<f2")
            W[k] = r.to(torch.float64)
        write_safetensors_raw(os.path.join(out, "model.safetensors"), raw, dtype)
        write_json(os.path.join(out, "config.json"), config)
        trace = {}
        logits = ref.forward(tokens, seq_lens, W, cfg, trace=trace)
        save_i64(os.path.join(out, "tokens.npy"), tokens)
        save_i64(os.path.join(out, "seq_lens.npy"), seq_lens)
        save_f64(os.path.join(out, "logits.npy"), trace["logits"])
        offsets = np.concatenate([[0], np.cumsum(seq_lens)])
        prompts = [tokens[offsets[b]:offsets[b + 1]].tolist() for b in range(len(seq_lens))]
        ids, _ = ref.greedy_decode(prompts, W, cfg, DECODE_STEPS)
        save_i64(os.path.join(out, "greedy.ids.npy"), ids)
        write_json(os.path.join(out, "meta.json"), {
            "source": name, "dtype": dtype, "seq_lens": seq_lens,
            "argmax_min_gap": argmax_gap(trace["logits"]),
            "notes": "Weights of %s rounded to %s (round to nearest even) and "
                     "stored as %s; logits and greedy ids computed in float64 "
                     "from the rounded values." % (name, tag, dtype)})


def write_safetensors_raw(path, arrays, dtype):
    """arrays: dict name -> numpy array already holding the on-disk bits of
    `dtype`. Hand-written format: u64 LE header length, JSON header (space
    padded to 8), packed data in sorted name order."""
    header, blobs, offset = {}, [], 0
    for name in sorted(arrays):
        b = np.ascontiguousarray(arrays[name]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arrays[name].shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    header["__metadata__"] = {"format": "pt"}
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((-len(hj)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "data")
    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    torch.set_default_dtype(torch.float64)
    for name, case in CASES.items():
        seed, margins = write_case(root, name, case)
        print("%-10s seed %d  router gap %.3g  argmax gap %.3g"
              % (name, seed, margins["router_min_gap"], margins["argmax_min_gap"]))
    write_rotary_dsv2(root)
    write_routers(root)
    write_storage_variants(root)
    print("wrote", root)


if __name__ == "__main__":
    main()
