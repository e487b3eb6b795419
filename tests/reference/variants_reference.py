"""Independent float64 reference of the research variants (issue 7).

Written from first principles, sharing nothing with the C++ library:

* classic multi-head attention with grouped key/value heads -- MHA
  (Hk = H), GQA (1 < Hk < H), MQA (Hk = 1) -- with Llama-style q/k/v/o
  projections and rope on the last Dr lanes of each Dk = Dn + Dr head
  (DeepSeek's rotary convention, reused from dsv2_reference.py);
* a decoder model built from it (dense or MoE MLPs as in DeepSeek-V2);
* expert capacity with token dropping, in two stated orders;
* the auxiliary-loss-free balancing bias update.

Everything is float64; attention expands the key/value heads to every
query head (query head h uses key/value head h // (H / Hk)) and runs plain
causal softmax attention per sequence, with no cache.
"""

import math

import torch

import dsv2_reference as ref

DTYPE = torch.float64


# --------------------------------------------------------------------------
# Attention with grouped key/value heads
# --------------------------------------------------------------------------

def gqa_attention(h, seq_lens, W, prefix, cfg, rope, trace=None, tp=""):
    """h: (N, D) normalized hidden states -> (N, D) o_proj output."""
    inv_freq, m, softmax_scale = rope
    n_tok = h.shape[0]
    H, Hk = cfg.num_attention_heads, cfg.num_key_value_heads
    Dn, Dr, Dv = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    Dk = Dn + Dr
    assert H % Hk == 0
    pos = ref.positions_of(seq_lens)

    def rope_heads(x):  # (N, heads, Dk): rotate the last Dr lanes
        return torch.cat((x[..., :Dn], ref.apply_rope(x[..., Dn:], pos, inv_freq, m)), dim=-1)

    q = rope_heads(ref.linear(h, W[prefix + "q_proj.weight"]).reshape(n_tok, H, Dk))
    k = rope_heads(ref.linear(h, W[prefix + "k_proj.weight"]).reshape(n_tok, Hk, Dk))
    v = ref.linear(h, W[prefix + "v_proj.weight"]).reshape(n_tok, Hk, Dv)
    if trace is not None:
        trace[tp + "attn.q"] = q
        # What a K/V cache holds per token: [k heads | v heads].
        trace[tp + "attn.kv"] = torch.cat((k.reshape(n_tok, Hk * Dk), v.reshape(n_tok, Hk * Dv)), dim=-1)

    group = H // Hk
    k_all = torch.stack([k[:, hh // group] for hh in range(H)], dim=1)   # (N, H, Dk)
    v_all = torch.stack([v[:, hh // group] for hh in range(H)], dim=1)   # (N, H, Dv)
    outs = []
    start = 0
    for n in seq_lens:
        qs, ks, vs = q[start:start + n], k_all[start:start + n], v_all[start:start + n]
        scores = torch.einsum("thd,shd->hts", qs, ks) * softmax_scale
        future = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
        probs = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        outs.append(torch.einsum("hts,shd->thd", probs, vs).reshape(n, H * Dv))
        start += n
    return ref.linear(torch.cat(outs, dim=0), W[prefix + "o_proj.weight"])


def forward(tokens, seq_lens, W, cfg, trace=None, gaps=None):
    """A DeepSeek-V2 decoder whose attention is gqa_attention."""
    rope = ref.rope_parameters(cfg)
    eps = cfg.rms_norm_eps
    h = W["model.embed_tokens.weight"][tokens]
    for i in range(cfg.num_hidden_layers):
        p, tp = "model.layers.%d." % i, "layers.%d." % i
        a_in = ref.rms_norm(h, W[p + "input_layernorm.weight"], eps)
        a_out = gqa_attention(a_in, seq_lens, W, p + "self_attn.", cfg, rope, trace, tp)
        h = h + a_out
        m_in = ref.rms_norm(h, W[p + "post_attention_layernorm.weight"], eps)
        if cfg.is_moe_layer(i):
            m_out = ref.moe_mlp(m_in, W, p + "mlp.", cfg, gaps=gaps)
        else:
            m_out = ref.swiglu_mlp(m_in, W, p + "mlp.")
        h = h + m_out
        if trace is not None:
            trace[tp + "attn_in"] = a_in
            trace[tp + "attn_out"] = a_out
            trace[tp + "out"] = h
    h = ref.rms_norm(h, W["model.norm.weight"], eps)
    logits = ref.linear(h, W["lm_head.weight"])
    if trace is not None:
        trace["logits"] = logits
    return logits


def greedy_decode(prompts, W, cfg, steps):
    """As dsv2_reference.greedy_decode, with the GQA model."""
    seqs = [list(p) for p in prompts]
    ids, step_logits = [], []
    for _ in range(steps):
        lens = [len(s) for s in seqs]
        toks = torch.tensor([t for s in seqs for t in s], dtype=torch.int64)
        logits = forward(toks, lens, W, cfg)
        last = logits[torch.tensor(lens).cumsum(0) - 1]
        nxt = last.argmax(dim=-1)
        step_logits.append(last)
        ids.append(nxt)
        for s, t in zip(seqs, nxt.tolist()):
            s.append(t)
    return torch.stack(ids, dim=1), torch.stack(step_logits, dim=0)


def weight_shapes(cfg):
    """(name, shape, kind) of a GQA model: the MLA tensors swapped for q/k/v/o."""
    D = cfg.hidden_size
    H, Hk = cfg.num_attention_heads, cfg.num_key_value_heads
    Dk, Dv = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim
    out = []
    for name, shape, kind in ref.weight_shapes(cfg):
        if ".self_attn." not in name:
            out.append((name, shape, kind))
        elif name.endswith("self_attn.o_proj.weight"):
            a = name[:-len("o_proj.weight")]
            out.append((a + "q_proj.weight", (H * Dk, D), "linear"))
            out.append((a + "k_proj.weight", (Hk * Dk, D), "linear"))
            out.append((a + "v_proj.weight", (Hk * Dv, D), "linear"))
            out.append((a + "o_proj.weight", (D, H * Dv), "linear"))
    return out


# --------------------------------------------------------------------------
# Expert capacity and token dropping
# --------------------------------------------------------------------------

def capacity(factor, n_tokens, k, n_experts):
    """ceil(factor * N * K / E), computed exactly for rational inputs."""
    from fractions import Fraction
    return math.ceil(Fraction(factor).limit_denominator(10 ** 6) * n_tokens * k / n_experts)


def keep_mask(scores, idx, factor, order):
    """(N, K) 0/1 mask of the entries each expert keeps.

    Per expert, its entries (token t, slot j) are ranked: by router score
    scores[t, expert] descending, ties to the earlier (t, j), for
    order == "lowest_score"; by (t, j) for order == "token_order".  Entries
    ranked at or past the capacity are dropped.
    """
    n_tok, k = idx.shape
    n_exp = scores.shape[1]
    cap = capacity(factor, n_tok, k, n_exp)
    keep = torch.zeros(n_tok, k, dtype=torch.int64)
    for e in range(n_exp):
        entries = [(t, j) for t in range(n_tok) for j in range(k) if int(idx[t, j]) == e]
        if order == "lowest_score":
            entries.sort(key=lambda tj: (-float(scores[tj[0], e]), tj[0], tj[1]))
        elif order != "token_order":
            raise ValueError(order)
        for t, j in entries[:cap]:
            keep[t, j] = 1
    return keep


def moe_with_capacity(x, W, prefix, cfg, factor, order):
    """MoE output where dropped entries contribute nothing; also returns the
    routing and the mask."""
    logits = ref.linear(x, W[prefix + "gate.weight"])
    scores, idx, w = ref.route_softmax(
        logits, cfg.num_experts_per_tok, cfg.topk_method, cfg.n_group,
        cfg.topk_group, cfg.norm_topk_prob, cfg.routed_scaling_factor)
    keep = keep_mask(scores, idx, factor, order)
    y = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            if keep[t, j]:
                e = int(idx[t, j])
                y[t] += w[t, j] * ref.swiglu_mlp(x[t:t + 1], W, prefix + "experts.%d." % e)[0]
    if cfg.n_shared_experts:
        y = y + ref.swiglu_mlp(x, W, prefix + "shared_experts.")
    return y, scores, idx, w, keep


# --------------------------------------------------------------------------
# Auxiliary-loss-free balancing (DeepSeek-V3 section 2.1.2)
# --------------------------------------------------------------------------

def bias_update(bias, topk_idx, gamma):
    """b_i <- b_i + gamma * sign(mean load - load_i), loads = tokens per expert."""
    n_exp = bias.shape[0]
    load = torch.zeros(n_exp, dtype=DTYPE)
    for e in topk_idx.reshape(-1).tolist():
        load[e] += 1
    return bias + gamma * torch.sign(load.mean() - load), load.to(torch.int64)
