#!/usr/bin/python3
"""Writes the golden fixtures of the variant tests into tests/data/variants.

Usage (Debian's python, which has torch and numpy):

    /usr/bin/python3 tests/reference/make_variant_fixtures.py [OUTPUT_DIR]

OUTPUT_DIR defaults to tests/data/variants.  Deterministic (fixed seeds).
See README.md next to this script for what every file holds.
"""

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dsv2_reference as ref  # noqa: E402
import make_fixtures as mf  # noqa: E402
import variants_reference as var  # noqa: E402

DECODE_STEPS = 3

# One small dense model shape, three key/value head counts; layer 1 is MoE
# so the seam is exercised with both MLP kinds.
GQA_BASE = dict(
    vocab_size=29, hidden_size=24, intermediate_size=32, moe_intermediate_size=8,
    num_hidden_layers=2, num_attention_heads=4, n_shared_experts=1,
    n_routed_experts=4, routed_scaling_factor=1.0, kv_lora_rank=8, q_lora_rank=None,
    qk_rope_head_dim=4, v_head_dim=6, qk_nope_head_dim=4, topk_method="greedy",
    n_group=1, topk_group=1, num_experts_per_tok=2, first_k_dense_replace=1,
    norm_topk_prob=True, max_position_embeddings=32,
    rope_scaling={"type": "yarn", "factor": 2, "original_max_position_embeddings": 8,
                  "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
)

GQA_CASES = {
    "mha": dict(seed=7100, kv_heads=4),
    "gqa": dict(seed=7200, kv_heads=2),
    "mqa": dict(seed=7300, kv_heads=1),
}
PROMPT_LENS = [7, 1, 10]


def write_gqa_case(root, name, case):
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    config = mf.full_config(**GQA_BASE)
    config["num_key_value_heads"] = case["kv_heads"]
    config["attention_type"] = name  # not a DeepSeek-V2 field; dsv2's config parser ignores it
    cfg = ref.Config(config)
    for seed in range(case["seed"], case["seed"] + mf.MAX_SEED_TRIES):
        rng = np.random.default_rng(seed)
        w32 = {}
        for wname, shape, kind in var.weight_shapes(cfg):
            z = rng.standard_normal(shape)
            w32[wname] = (z if kind == "embed" else 1.0 + 0.1 * z if kind == "norm"
                          else z * (2.0 / np.sqrt(shape[1])) if kind == "router"
                          else z / np.sqrt(shape[1])).astype(np.float32)
        prompts = mf.make_prompts(PROMPT_LENS, cfg.vocab_size, rng)
        W = {k: torch.from_numpy(v.astype(np.float64)) for k, v in w32.items()}
        gaps = []
        seq_lens = [len(p) for p in prompts]
        tokens = torch.tensor([t for p in prompts for t in p], dtype=torch.int64)
        var.forward(tokens, seq_lens, W, cfg, gaps=gaps)
        ids, dec = var.greedy_decode(prompts, W, cfg, DECODE_STEPS)
        router_gap = min(g.min().item() for g in gaps)
        if router_gap > mf.ROUTER_MIN_GAP and mf.argmax_gap(dec) > mf.ARGMAX_MIN_GAP:
            break
    else:
        raise RuntimeError(name + ": no seed with clear margins")

    mf.write_json(os.path.join(out, "config.json"), config)
    mf.write_safetensors(os.path.join(out, "model.safetensors"), w32)
    trace = {}
    var.forward(tokens, seq_lens, W, cfg, trace=trace)
    mf.save_i64(os.path.join(out, "tokens.npy"), tokens)
    mf.save_i64(os.path.join(out, "seq_lens.npy"), seq_lens)
    # Kept small (the repo's fixtures stay < 300 KB): attention in/out of
    # both layers, the cached rows of layer 0, logits and decode logits.
    for key in ("layers.0.attn_in", "layers.0.attn.kv", "layers.0.attn_out",
                "layers.1.attn_in", "layers.1.attn_out", "logits"):
        mf.save_f64(os.path.join(out, key + ".npy"), trace[key])
    mf.save_i64(os.path.join(out, "greedy.ids.npy"), ids)
    mf.save_f64(os.path.join(out, "decode.logits.npy"), dec)
    mf.write_json(os.path.join(out, "meta.json"), {
        "seq_lens": seq_lens, "seed": seed, "num_key_value_heads": case["kv_heads"],
        "decode_steps": DECODE_STEPS, "router_min_gap": router_gap,
        "argmax_min_gap": mf.argmax_gap(dec),
        "notes": "GQA-family attention from variants_reference.py: q/k/v/o projections, "
                 "rope on the last qk_rope_head_dim lanes of each head (HF de-interleaved "
                 "layout), query head h uses kv head h // (H/Hk). attn.kv rows are "
                 "[k heads | v heads] after rope, what the K/V cache holds."})
    return seed


def write_capacity(root):
    """A 1-layer MoE (layer 0 of a small config) and its output under
    capacity dropping, in both orders, plus the routing it saw."""
    out = os.path.join(root, "moe_capacity")
    os.makedirs(out, exist_ok=True)
    config = mf.full_config(
        vocab_size=11, hidden_size=16, intermediate_size=24, moe_intermediate_size=12,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        n_shared_experts=1, n_routed_experts=8, routed_scaling_factor=1.0,
        kv_lora_rank=8, q_lora_rank=None, qk_rope_head_dim=4, v_head_dim=4,
        qk_nope_head_dim=4, topk_method="greedy", n_group=1, topk_group=1,
        num_experts_per_tok=2, first_k_dense_replace=0, norm_topk_prob=True,
        max_position_embeddings=32)
    cfg = ref.Config(config)
    n_tok, factor = 24, 0.75   # capacity = ceil(0.75 * 24 * 2 / 8) = 5
    for seed in range(8000, 8000 + mf.MAX_SEED_TRIES):
        rng = np.random.default_rng(seed)
        w32 = {}
        for wname, shape, kind in ref.weight_shapes(cfg):
            if ".mlp." not in wname:
                continue
            z = rng.standard_normal(shape)
            w32[wname] = (z * (2.0 / np.sqrt(shape[1])) if kind == "router" else z / np.sqrt(shape[1])).astype(np.float32)
        x = torch.from_numpy(rng.standard_normal((n_tok, cfg.hidden_size)))
        W = {k: torch.from_numpy(v.astype(np.float64)) for k, v in w32.items()}
        gaps = []
        logits = ref.linear(x, W["model.layers.0.mlp.gate.weight"])
        ref.route_softmax(logits, 2, "greedy", gaps=gaps)
        # Affinity ties within an expert would make lowest_score ambiguous in float32.
        scores = torch.softmax(logits, dim=-1)
        s_sorted = scores.sort(dim=0).values
        tie_gap = (s_sorted[1:] - s_sorted[:-1]).min().item()
        if min(g.min().item() for g in gaps) > mf.ROUTER_MIN_GAP and tie_gap > 1e-5:
            break
    else:
        raise RuntimeError("moe_capacity: no seed with clear margins")
    mf.write_json(os.path.join(out, "config.json"), config)
    mf.write_safetensors(os.path.join(out, "model.safetensors"), w32)
    mf.save_f64(os.path.join(out, "x.npy"), x)
    for order in ("lowest_score", "token_order"):
        y, scores, idx, w, keep = var.moe_with_capacity(x, W, "model.layers.0.mlp.", cfg, factor, order)
        mf.save_f64(os.path.join(out, order + ".y.npy"), y)
        mf.save_i64(os.path.join(out, order + ".keep.npy"), keep)
    mf.save_f64(os.path.join(out, "scores.npy"), scores)
    mf.save_i64(os.path.join(out, "topk_idx.npy"), idx)
    mf.save_f64(os.path.join(out, "topk_weight.npy"), w)
    y_all = ref.moe_mlp(x, W, "model.layers.0.mlp.", cfg)
    mf.save_f64(os.path.join(out, "no_capacity.y.npy"), y_all)
    mf.write_json(os.path.join(out, "meta.json"), {
        "capacity_factor": factor, "n_tokens": n_tok,
        "capacity": var.capacity(factor, n_tok, 2, cfg.n_routed_experts), "seed": seed,
        "notes": "MoE = model.layers.0.mlp of config.json applied to x. capacity = "
                 "ceil(factor*N*K/E) per expert. lowest_score: each expert keeps its "
                 "entries with the highest router score (softmax probability), ties to "
                 "the earlier token; token_order: keeps its first entries by (token, slot). "
                 "Dropped entries contribute zero; shared experts always run."})


def write_bias_update(root):
    """The aux-loss-free bias update on router_v3's routing."""
    out = os.path.join(root, "bias_update")
    os.makedirs(out, exist_ok=True)
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "router_v3")
    bias = torch.from_numpy(np.load(os.path.join(src, "bias.npy")))
    idx = torch.from_numpy(np.load(os.path.join(src, "topk_idx.npy")))
    gamma = 0.001
    new_bias, load = var.bias_update(bias, idx, gamma)
    mf.save_f64(os.path.join(out, "bias_in.npy"), bias)
    mf.save_i64(os.path.join(out, "topk_idx.npy"), idx)
    mf.save_i64(os.path.join(out, "load.npy"), load)
    mf.save_f64(os.path.join(out, "bias_out.npy"), new_bias)
    mf.write_json(os.path.join(out, "meta.json"), {
        "gamma": gamma,
        "notes": "b_i + gamma * sign(mean load - load_i); loads are the tokens routed to "
                 "each expert in topk_idx (router_v3's routing)."})


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "data", "variants")
    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    torch.set_default_dtype(torch.float64)
    for name, case in GQA_CASES.items():
        print("%-4s seed %d" % (name, write_gqa_case(root, name, case)))
    write_capacity(root)
    write_bias_update(root)
    print("wrote", root)


if __name__ == "__main__":
    main()
