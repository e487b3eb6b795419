"""Independent float64 PyTorch reference of the DeepSeek-V2 model.

Written from the DeepSeek-V2 paper (arXiv 2405.04434) and the semantics of
the DeepSeek-V2 checkpoints on the Hugging Face hub (their remote code
``modeling_deepseek.py``).  It shares nothing with the C++ library under
``include/``: it exists to produce golden values the C++ is tested against.

Everything is deliberately plain: tensors are float64, attention is computed
the "naive" way (the compressed latent is decompressed into per-head keys and
values), and there is no KV cache -- a decode step recomputes the whole
sequence.  Tokens of a batch are concatenated into one (N, ...) stream;
``seq_lens`` says where each sequence ends, and positions restart at 0 for
every sequence.

Only torch and the Python standard library are used.
"""

import math

import torch

DTYPE = torch.float64

# Defaults of the Hugging Face DeepseekV2Config, used for keys a config omits.
CONFIG_DEFAULTS = {
    "vocab_size": 102400,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "moe_intermediate_size": 1407,
    "num_hidden_layers": 30,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "n_shared_experts": None,
    "n_routed_experts": None,
    "ep_size": 1,
    "routed_scaling_factor": 1.0,
    "kv_lora_rank": 512,
    "q_lora_rank": 1536,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "qk_nope_head_dim": 128,
    "topk_method": "gready",
    "n_group": None,
    "topk_group": None,
    "num_experts_per_tok": None,
    "moe_layer_freq": 1,
    "first_k_dense_replace": 0,
    "norm_topk_prob": False,
    "scoring_func": "softmax",
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "rope_scaling": None,
}

# q_a_layernorm and kv_a_layernorm are built without an eps argument in the
# original code, so they always use the RMSNorm default.
LATENT_NORM_EPS = 1e-6


class Config:
    """Attribute view of a config.json dict, with HF defaults filled in."""

    def __init__(self, d):
        merged = dict(CONFIG_DEFAULTS)
        merged.update(d)
        self.raw = merged
        for k, v in merged.items():
            setattr(self, k, v)
        if self.hidden_act != "silu":
            raise ValueError("only hidden_act 'silu' is supported")
        if self.scoring_func != "softmax":
            raise ValueError("DeepSeek-V2 models score experts with softmax")

    def is_moe_layer(self, i):
        return (self.n_routed_experts is not None
                and i >= self.first_k_dense_replace
                and i % self.moe_layer_freq == 0)

    def moe_layers(self):
        return [i for i in range(self.num_hidden_layers) if self.is_moe_layer(i)]


# --------------------------------------------------------------------------
# Basic blocks
# --------------------------------------------------------------------------

def rms_norm(x, w, eps):
    """x * rsqrt(mean(x^2) + eps) * w over the last dimension."""
    ms = (x * x).mean(dim=-1, keepdim=True)
    return x * torch.rsqrt(ms + eps) * w


def linear(x, w):
    """y = x W^T (no bias anywhere in DeepSeek-V2)."""
    return x @ w.t()


def silu(x):
    return x * torch.sigmoid(x)


def swiglu_mlp(x, W, prefix):
    """down(silu(gate(x)) * up(x)) with weights '<prefix>{gate,up,down}_proj.weight'."""
    g = linear(x, W[prefix + "gate_proj.weight"])
    u = linear(x, W[prefix + "up_proj.weight"])
    return linear(silu(g) * u, W[prefix + "down_proj.weight"])


# --------------------------------------------------------------------------
# Rotary embedding (plain RoPE and YaRN)
# --------------------------------------------------------------------------

def yarn_mscale(scale, m):
    if scale <= 1:
        return 1.0
    return 0.1 * m * math.log(scale) + 1.0


def rope_kind(rope_scaling):
    if rope_scaling is None:
        return None
    kind = rope_scaling.get("type", rope_scaling.get("rope_type"))
    if kind != "yarn":
        raise ValueError("unsupported rope_scaling kind: %r" % (kind,))
    return kind


def rope_parameters(cfg):
    """Returns (inv_freq (d/2,), rotary magnitude m, softmax scale)."""
    d = cfg.qk_rope_head_dim
    base = float(cfg.rope_theta)
    half = d // 2
    exponent = torch.arange(half, dtype=DTYPE) * 2.0 / d   # 2i/d
    plain = 1.0 / (base ** exponent)
    softmax_scale = (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5

    rs = cfg.rope_scaling
    if rope_kind(rs) is None:
        return plain, 1.0, softmax_scale

    s = float(rs["factor"])
    l0 = float(rs["original_max_position_embeddings"])
    beta_fast = float(rs.get("beta_fast", 32))
    beta_slow = float(rs.get("beta_slow", 1))
    mscale = float(rs.get("mscale", 1))
    mscale_all_dim = float(rs.get("mscale_all_dim", 0))

    def correction_dim(rotations):
        # The dimension whose wavelength fits `rotations` times into l0.
        return d * math.log(l0 / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), d - 1)
    low = float(low)
    high = float(high)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(half, dtype=DTYPE) - low) / (high - low)).clamp(0.0, 1.0)
    extra_mask = 1.0 - ramp          # 1 -> keep the original frequency
    freq_extra = plain
    freq_inter = 1.0 / (s * base ** exponent)
    inv_freq = freq_inter * (1.0 - extra_mask) + freq_extra * extra_mask

    m = yarn_mscale(s, mscale) / yarn_mscale(s, mscale_all_dim)
    if mscale_all_dim:
        softmax_scale = softmax_scale * yarn_mscale(s, mscale_all_dim) ** 2
    return inv_freq, m, softmax_scale


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def apply_rope(x, positions, inv_freq, m):
    """Rotates x of shape (N, ..., d) where token n sits at positions[n].

    HF layout: the pairs (x0,x1),(x2,x3),... are first de-interleaved into
    [x0,x2,x4,...,x1,x3,x5,...] and then rotated half-against-half.  The
    result stays in the de-interleaved layout.
    """
    d = x.shape[-1]
    lead = x.shape[:-1]
    x = x.reshape(*lead, d // 2, 2).transpose(-1, -2).reshape(*lead, d)
    angles = positions.to(DTYPE)[:, None] * inv_freq[None, :]     # (N, d/2)
    cos = torch.cat((angles.cos(), angles.cos()), dim=-1) * m       # (N, d)
    sin = torch.cat((angles.sin(), angles.sin()), dim=-1) * m
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (d,)
    cos = cos.reshape(shape)
    sin = sin.reshape(shape)
    return x * cos + rotate_half(x) * sin


# --------------------------------------------------------------------------
# Multi-head latent attention (naive: decompress K/V for every head)
# --------------------------------------------------------------------------

def positions_of(seq_lens):
    return torch.cat([torch.arange(n, dtype=torch.int64) for n in seq_lens])


def mla_attention(h, seq_lens, W, prefix, cfg, rope, trace=None, tp=""):
    """h: (N, D) normalized hidden states -> (N, D) o_proj output."""
    inv_freq, m, softmax_scale = rope
    n_tok = h.shape[0]
    H = cfg.num_attention_heads
    Dn, Dr, Dv = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    C = cfg.kv_lora_rank
    pos = positions_of(seq_lens)

    # Queries.
    if cfg.q_lora_rank is None:
        q = linear(h, W[prefix + "q_proj.weight"])
    else:
        qa = linear(h, W[prefix + "q_a_proj.weight"])
        qa = rms_norm(qa, W[prefix + "q_a_layernorm.weight"], LATENT_NORM_EPS)
        q = linear(qa, W[prefix + "q_b_proj.weight"])
    q = q.reshape(n_tok, H, Dn + Dr)
    q_nope = q[..., :Dn]
    q_pe = apply_rope(q[..., Dn:], pos, inv_freq, m)
    q = torch.cat((q_nope, q_pe), dim=-1)

    # Compressed KV latent and the shared rotary key.
    ckv = linear(h, W[prefix + "kv_a_proj_with_mqa.weight"])   # (N, C+Dr)
    c = rms_norm(ckv[:, :C], W[prefix + "kv_a_layernorm.weight"], LATENT_NORM_EPS)
    k_pe = apply_rope(ckv[:, C:], pos, inv_freq, m)             # (N, Dr)

    # Decompress into per-head keys and values.
    kv = linear(c, W[prefix + "kv_b_proj.weight"]).reshape(n_tok, H, Dn + Dv)
    k_nope = kv[..., :Dn]
    v = kv[..., Dn:]
    k = torch.cat((k_nope, k_pe[:, None, :].expand(n_tok, H, Dr)), dim=-1)

    if trace is not None:
        trace[tp + "attn.q"] = q
        trace[tp + "attn.latent"] = torch.cat((c, k_pe), dim=-1)

    # Causal attention inside each sequence.
    outs = []
    start = 0
    for n in seq_lens:
        qs, ks, vs = q[start:start + n], k[start:start + n], v[start:start + n]
        scores = torch.einsum("thd,shd->hts", qs, ks) * softmax_scale
        future = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
        scores = scores.masked_fill(future, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        outs.append(torch.einsum("hts,shd->thd", probs, vs).reshape(n, H * Dv))
        start += n
    o = torch.cat(outs, dim=0)
    return linear(o, W[prefix + "o_proj.weight"])


# --------------------------------------------------------------------------
# Routing
# --------------------------------------------------------------------------

def _kth_gap(values, k):
    """Per-row gap between the k-th and (k+1)-th largest values (inf if none)."""
    if k >= values.shape[-1]:
        return torch.full(values.shape[:-1], float("inf"), dtype=DTYPE)
    top = torch.topk(values, k + 1, dim=-1, sorted=True).values
    return top[..., k - 1] - top[..., k]


def route_softmax(logits, top_k, topk_method, n_group=None, topk_group=None,
                  norm_topk_prob=False, routed_scaling_factor=1.0, gaps=None):
    """DeepSeek-V2 router. logits (N, E) -> scores, topk_idx, topk_weight.

    The chosen experts come out sorted by score, largest first.
    If `gaps` is a list, the selection margins (k-th minus (k+1)-th value, per
    token) are appended to it so callers can detect near-ties.
    """
    scores = torch.softmax(logits, dim=-1)
    n_tok, n_exp = scores.shape
    if topk_method in ("greedy", "gready"):
        chosen_from = scores
    elif topk_method == "group_limited_greedy":
        group_scores = scores.reshape(n_tok, n_group, n_exp // n_group).max(dim=-1).values
        keep = torch.topk(group_scores, topk_group, dim=-1).indices
        group_mask = torch.zeros(n_tok, n_group, dtype=torch.bool)
        group_mask.scatter_(1, keep, True)
        expert_mask = group_mask[:, :, None].expand(n_tok, n_group, n_exp // n_group)
        chosen_from = scores.masked_fill(~expert_mask.reshape(n_tok, n_exp), 0.0)
        if gaps is not None:
            gaps.append(_kth_gap(group_scores, topk_group))
    else:
        raise ValueError("unsupported topk_method: %r" % (topk_method,))
    if gaps is not None:
        gaps.append(_kth_gap(chosen_from, top_k))
    w, idx = torch.topk(chosen_from, top_k, dim=-1, sorted=True)
    if top_k > 1 and norm_topk_prob:
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    else:
        w = w * routed_scaling_factor
    return scores, idx, w


def route_sigmoid_v3(logits, bias, top_k, n_group, topk_group,
                     norm_topk_prob=True, routed_scaling_factor=1.0, gaps=None):
    """DeepSeek-V3-style router: sigmoid scores, bias only steers the choice."""
    scores = torch.sigmoid(logits)
    n_tok, n_exp = scores.shape
    choice = scores + bias[None, :]
    per_group = choice.reshape(n_tok, n_group, n_exp // n_group)
    group_scores = torch.topk(per_group, 2, dim=-1).values.sum(dim=-1)
    keep = torch.topk(group_scores, topk_group, dim=-1).indices
    group_mask = torch.zeros(n_tok, n_group, dtype=torch.bool)
    group_mask.scatter_(1, keep, True)
    expert_mask = group_mask[:, :, None].expand(n_tok, n_group, n_exp // n_group)
    masked = choice.masked_fill(~expert_mask.reshape(n_tok, n_exp), float("-inf"))
    if gaps is not None:
        gaps.append(_kth_gap(group_scores, topk_group))
        gaps.append(_kth_gap(masked, top_k))
    idx = torch.topk(masked, top_k, dim=-1, sorted=True).indices
    w = scores.gather(1, idx)
    if norm_topk_prob:
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    w = w * routed_scaling_factor
    return scores, idx, w


# --------------------------------------------------------------------------
# MoE layer and balance statistics
# --------------------------------------------------------------------------

def moe_mlp(x, W, prefix, cfg, trace=None, tp="", gaps=None):
    logits = linear(x, W[prefix + "gate.weight"])
    scores, idx, w = route_softmax(
        logits, cfg.num_experts_per_tok, cfg.topk_method, cfg.n_group,
        cfg.topk_group, cfg.norm_topk_prob, cfg.routed_scaling_factor, gaps)
    y = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(idx.shape[1]):
            e = int(idx[t, k])
            y[t] += w[t, k] * swiglu_mlp(x[t:t + 1], W, prefix + "experts.%d." % e)[0]
    shared = None
    if cfg.n_shared_experts:
        shared = swiglu_mlp(x, W, prefix + "shared_experts.")
        y = y + shared
    if trace is not None:
        trace[tp + "router.logits"] = logits
        trace[tp + "router.scores"] = scores
        trace[tp + "router.topk_idx"] = idx
        trace[tp + "router.topk_weight"] = w
        if shared is not None:
            trace[tp + "shared_out"] = shared
    return y


def balance_stats(scores, topk_idx, n_devices, max_devices):
    """Expert-, device- and communication-level balance losses (alpha = 1).

    scores: (T, E) full router probabilities; topk_idx: (T, K) chosen experts.
    Devices are n_devices contiguous equal groups of experts.
    Returns (counts (E,) int64, tensor [L_exp, L_dev, L_comm]).
    """
    T, E = scores.shape
    K = topk_idx.shape[1]
    D, M = n_devices, max_devices
    chosen = torch.zeros(T, E, dtype=DTYPE)
    chosen.scatter_(1, topk_idx, 1.0)
    counts = chosen.sum(dim=0).to(torch.int64)

    f = E / (K * T) * chosen.sum(dim=0)
    P = scores.mean(dim=0)
    l_exp = (f * P).sum()

    per_dev = E // D
    f_dev = f.reshape(D, per_dev).mean(dim=-1)
    P_dev = P.reshape(D, per_dev).sum(dim=-1)
    l_dev = (f_dev * P_dev).sum()

    sends = (chosen.reshape(T, D, per_dev).sum(dim=-1) > 0).to(DTYPE)   # (T, D)
    f_comm = D / (M * T) * sends.sum(dim=0)
    l_comm = (f_comm * P_dev).sum()
    return counts, torch.stack((l_exp, l_dev, l_comm))


# --------------------------------------------------------------------------
# Whole model
# --------------------------------------------------------------------------

def forward(tokens, seq_lens, W, cfg, trace=None, gaps=None):
    """tokens (N,) int64, seq_lens list of ints summing to N -> logits (N, V).

    If `trace` is a dict it receives every intermediate named like the golden
    files ("layers.L.attn_in", ...).  If `gaps` is a list it receives router
    selection margins.
    """
    assert sum(seq_lens) == tokens.shape[0]
    rope = rope_parameters(cfg)
    eps = cfg.rms_norm_eps
    h = W["model.embed_tokens.weight"][tokens]
    if trace is not None:
        trace["embed.out"] = h
    for i in range(cfg.num_hidden_layers):
        p = "model.layers.%d." % i
        tp = "layers.%d." % i
        if trace is not None:
            trace[tp + "in"] = h
        a_in = rms_norm(h, W[p + "input_layernorm.weight"], eps)
        a_out = mla_attention(a_in, seq_lens, W, p + "self_attn.", cfg, rope, trace, tp)
        h = h + a_out
        m_in = rms_norm(h, W[p + "post_attention_layernorm.weight"], eps)
        if cfg.is_moe_layer(i):
            m_out = moe_mlp(m_in, W, p + "mlp.", cfg, trace, tp, gaps)
        else:
            m_out = swiglu_mlp(m_in, W, p + "mlp.")
        h = h + m_out
        if trace is not None:
            trace[tp + "attn_in"] = a_in
            trace[tp + "attn_out"] = a_out
            trace[tp + "mlp_in"] = m_in
            trace[tp + "mlp_out"] = m_out
            trace[tp + "out"] = h
    h = rms_norm(h, W["model.norm.weight"], eps)
    logits = linear(h, W["lm_head.weight"])
    if trace is not None:
        trace["norm.out"] = h
        trace["logits"] = logits
    return logits


def greedy_decode(prompts, W, cfg, steps, gaps=None):
    """Greedy continuation of every prompt, recomputing the full batch each step.

    Returns (ids (B, steps) int64, last-position logits (steps, B, V)).
    Step 0's logits are those of each prompt's last token; step k's are
    those after appending k greedy tokens.
    """
    seqs = [list(p) for p in prompts]
    ids, step_logits = [], []
    for _ in range(steps):
        lens = [len(s) for s in seqs]
        toks = torch.tensor([t for s in seqs for t in s], dtype=torch.int64)
        logits = forward(toks, lens, W, cfg, gaps=gaps)
        ends = torch.tensor(lens).cumsum(0) - 1
        last = logits[ends]                        # (B, V)
        nxt = last.argmax(dim=-1)
        step_logits.append(last)
        ids.append(nxt)
        for s, t in zip(seqs, nxt.tolist()):
            s.append(t)
    return torch.stack(ids, dim=1), torch.stack(step_logits, dim=0)


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------

def weight_shapes(cfg):
    """Ordered list of (HF tensor name, shape, kind) for a config.

    kind is 'embed', 'norm', 'router' or 'linear' (fan_in = shape[1]).
    """
    D, V = cfg.hidden_size, cfg.vocab_size
    H = cfg.num_attention_heads
    Dn, Dr, Dv = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    C, Q = cfg.kv_lora_rank, cfg.q_lora_rank
    out = [("model.embed_tokens.weight", (V, D), "embed")]

    def mlp(prefix, width):
        out.append((prefix + "gate_proj.weight", (width, D), "linear"))
        out.append((prefix + "up_proj.weight", (width, D), "linear"))
        out.append((prefix + "down_proj.weight", (D, width), "linear"))

    for i in range(cfg.num_hidden_layers):
        p = "model.layers.%d." % i
        out.append((p + "input_layernorm.weight", (D,), "norm"))
        a = p + "self_attn."
        if Q is None:
            out.append((a + "q_proj.weight", (H * (Dn + Dr), D), "linear"))
        else:
            out.append((a + "q_a_proj.weight", (Q, D), "linear"))
            out.append((a + "q_a_layernorm.weight", (Q,), "norm"))
            out.append((a + "q_b_proj.weight", (H * (Dn + Dr), Q), "linear"))
        out.append((a + "kv_a_proj_with_mqa.weight", (C + Dr, D), "linear"))
        out.append((a + "kv_a_layernorm.weight", (C,), "norm"))
        out.append((a + "kv_b_proj.weight", (H * (Dn + Dv), C), "linear"))
        out.append((a + "o_proj.weight", (D, H * Dv), "linear"))
        out.append((p + "post_attention_layernorm.weight", (D,), "norm"))
        if cfg.is_moe_layer(i):
            out.append((p + "mlp.gate.weight", (cfg.n_routed_experts, D), "router"))
            for e in range(cfg.n_routed_experts):
                mlp(p + "mlp.experts.%d." % e, cfg.moe_intermediate_size)
            if cfg.n_shared_experts:
                mlp(p + "mlp.shared_experts.",
                    cfg.moe_intermediate_size * cfg.n_shared_experts)
        else:
            mlp(p + "mlp.", cfg.intermediate_size)
    out.append(("model.norm.weight", (D,), "norm"))
    out.append(("lm_head.weight", (V, D), "linear"))
    return out
