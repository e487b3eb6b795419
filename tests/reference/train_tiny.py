#!/usr/bin/python3
"""Trains the embedded default model ``models/tiny-kjv`` of the dsv2 library.

A tiny DeepSeek-V2 (every feature on: q LoRA, YaRN, group-limited greedy
routing, shared experts, a dense first layer followed by MoE layers) trained
on the King James Version with a byte-level tokenizer (ids 0..255 = bytes,
256 = BOS, 257 = EOS).

    apt-get install -y bible-kjv                       # the text (not in git)
    /usr/bin/python3 tests/reference/train_tiny.py     # -> models/tiny-kjv

Options: ``--text FILE`` (instead of extracting with kjv_text.py), ``--out
DIR``, ``--steps N``, ``--check-only`` (only the float64 check against the
reference), ``--bench`` (time a few steps), ``--tokenizer-only`` (only write
tokenizer.json, tokenizer_config.json and generation_config.json).

The math is that of ``dsv2_reference.py`` (the float64 reference the C++ is
tested against), batched as (B, T) and run in float32 with autograd.  Where
possible the reference's own functions are called (RMSNorm, SwiGLU, rotary
parameters, rotate_half, the router's top-k selection); attention and the
expert dispatch are re-written batched.  Before training, this forward is run
in float64 and compared with ``dsv2_reference.forward`` (max |logit diff| must
be < 1e-10); after training the same check runs on the trained weights.

Routing selection is not differentiable; the routing weights (softmax scores
of the chosen experts) are.  An expert-level balance loss (DeepSeek-V2 paper
eqs. 12-14, computed per sequence as the original code does with
``seq_aux``) with alpha = ``aux_loss_alpha`` keeps the experts in use.

Deterministic for a given machine: seeded, single-threaded.
"""

import argparse
import hashlib
import json
import math
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dsv2_reference as ref  # noqa: E402
import make_fixtures as fx  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
DEFAULT_OUT = os.path.join(REPO, "models", "tiny-kjv")

BOS, EOS, VOCAB = 256, 257, 258
CONTEXT = 256

CONFIG = fx.full_config(
    vocab_size=VOCAB,
    hidden_size=128,
    intermediate_size=384,
    moe_intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    n_shared_experts=2,
    n_routed_experts=16,
    routed_scaling_factor=2.0,
    kv_lora_rank=32,
    q_lora_rank=64,
    qk_rope_head_dim=16,
    v_head_dim=32,
    qk_nope_head_dim=32,
    topk_method="group_limited_greedy",
    n_group=4,
    topk_group=2,
    num_experts_per_tok=4,
    moe_layer_freq=1,
    first_k_dense_replace=1,
    norm_topk_prob=False,
    aux_loss_alpha=0.003,
    seq_aux=True,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    bos_token_id=BOS,
    eos_token_id=EOS,
    rope_theta=10000.0,
    rope_scaling={"type": "yarn", "factor": 4,
                  "original_max_position_embeddings": 256,
                  "beta_fast": 32, "beta_slow": 1,
                  "mscale": 0.707, "mscale_all_dim": 0.707},
)

HPARAMS = {
    "seed": 1234,
    "steps": 2000,
    "batch": 8,
    "context": CONTEXT,
    "lr": 3e-3,
    "min_lr_ratio": 0.1,
    "warmup": 100,
    "betas": [0.9, 0.95],
    "weight_decay": 0.1,
    "grad_clip": 1.0,
    "init_std": 0.02,
    "val_fraction": 0.05,
    "eval_every": 250,
    "eval_windows": 48,
}


# --------------------------------------------------------------------------
# Batched forward (same math as dsv2_reference.forward), any float dtype
# --------------------------------------------------------------------------

def rope_tables(cfg, T, dtype):
    """cos/sin tables (T, d) for positions 0..T-1, computed exactly as
    dsv2_reference.apply_rope does (float64), then cast to dtype."""
    inv_freq, m, softmax_scale = ref.rope_parameters(cfg)
    pos = torch.arange(T, dtype=torch.int64).to(ref.DTYPE)
    angles = pos[:, None] * inv_freq[None, :]
    cos = torch.cat((angles.cos(), angles.cos()), dim=-1) * m
    sin = torch.cat((angles.sin(), angles.sin()), dim=-1) * m
    return cos.to(dtype), sin.to(dtype), softmax_scale


def apply_rope_bt(x, cos, sin):
    """x (B, T, ..., d); token (b, t) sits at position t. HF de-interleave."""
    d = x.shape[-1]
    lead = x.shape[:-1]
    x = x.reshape(*lead, d // 2, 2).transpose(-1, -2).reshape(*lead, d)
    shape = (1, x.shape[1]) + (1,) * (x.dim() - 3) + (d,)
    return x * cos.reshape(shape) + ref.rotate_half(x) * sin.reshape(shape)


def mla_bt(h, W, p, cfg, cos, sin, scale, future):
    B, T, _ = h.shape
    H = cfg.num_attention_heads
    Dn, Dr, Dv = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    C = cfg.kv_lora_rank
    if cfg.q_lora_rank is None:
        q = ref.linear(h, W[p + "q_proj.weight"])
    else:
        qa = ref.linear(h, W[p + "q_a_proj.weight"])
        qa = ref.rms_norm(qa, W[p + "q_a_layernorm.weight"], ref.LATENT_NORM_EPS)
        q = ref.linear(qa, W[p + "q_b_proj.weight"])
    q = q.reshape(B, T, H, Dn + Dr)
    q_nope = q[..., :Dn]
    q_pe = apply_rope_bt(q[..., Dn:], cos, sin)
    ckv = ref.linear(h, W[p + "kv_a_proj_with_mqa.weight"])
    c = ref.rms_norm(ckv[..., :C], W[p + "kv_a_layernorm.weight"], ref.LATENT_NORM_EPS)
    k_pe = apply_rope_bt(ckv[..., C:], cos, sin)                  # (B, T, Dr)
    kv = ref.linear(c, W[p + "kv_b_proj.weight"]).reshape(B, T, H, Dn + Dv)
    k_nope = kv[..., :Dn]
    v = kv[..., Dn:]
    q = torch.cat((q_nope, q_pe), dim=-1)
    k = torch.cat((k_nope, k_pe[:, :, None, :].expand(B, T, H, Dr)), dim=-1)
    scores = torch.einsum("bthd,bshd->bhts", q, k) * scale
    scores = scores.masked_fill(future, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    o = torch.einsum("bhts,bshd->bthd", probs, v).reshape(B, T, H * Dv)
    return ref.linear(o, W[p + "o_proj.weight"])


def moe_bt(x, W, p, cfg, stats):
    """Routed (group-limited greedy) + shared experts. Appends the per-sequence
    expert balance loss (unscaled, eqs. 12-14) and expert counts to stats."""
    B, T, D = x.shape
    E, K = cfg.n_routed_experts, cfg.num_experts_per_tok
    xf = x.reshape(B * T, D)
    logits = ref.linear(xf, W[p + "gate.weight"])
    scores = torch.softmax(logits, dim=-1)
    with torch.no_grad():   # the reference's own (non-differentiable) selection
        _, idx, _ = ref.route_softmax(logits.detach(), K, cfg.topk_method, cfg.n_group,
                                      cfg.topk_group, cfg.norm_topk_prob,
                                      cfg.routed_scaling_factor)
    w = scores.gather(1, idx)
    if K > 1 and cfg.norm_topk_prob:
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    else:
        w = w * cfg.routed_scaling_factor
    y = torch.zeros_like(xf)
    for e in range(E):
        tok, slot = (idx == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        ye = ref.swiglu_mlp(xf[tok], W, p + "experts.%d." % e) * w[tok, slot, None]
        y = y.index_add(0, tok, ye)
    if cfg.n_shared_experts:
        y = y + ref.swiglu_mlp(xf, W, p + "shared_experts.")
    if stats is not None:
        counts = torch.zeros(B, E, dtype=x.dtype)
        counts.scatter_add_(1, idx.reshape(B, T * K), torch.ones(B, T * K, dtype=x.dtype))
        f = counts * (E / (K * T))
        P = scores.reshape(B, T, E).mean(dim=1)
        stats["aux"].append((f * P).sum(dim=-1).mean())
        stats["counts"].append(counts.sum(dim=0).detach())
    return y.reshape(B, T, D)


def forward_bt(tokens, W, cfg, tables, stats=None):
    """tokens (B, T) int64 -> logits (B, T, V); positions 0..T-1 per row."""
    cos, sin, scale = tables
    B, T = tokens.shape
    cos, sin = cos[:T], sin[:T]
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    eps = cfg.rms_norm_eps
    h = W["model.embed_tokens.weight"][tokens]
    for i in range(cfg.num_hidden_layers):
        p = "model.layers.%d." % i
        a_in = ref.rms_norm(h, W[p + "input_layernorm.weight"], eps)
        h = h + mla_bt(a_in, W, p + "self_attn.", cfg, cos, sin, scale, future)
        m_in = ref.rms_norm(h, W[p + "post_attention_layernorm.weight"], eps)
        if cfg.is_moe_layer(i):
            h = h + moe_bt(m_in, W, p + "mlp.", cfg, stats)
        else:
            h = h + ref.swiglu_mlp(m_in, W, p + "mlp.")
    h = ref.rms_norm(h, W["model.norm.weight"], eps)
    return ref.linear(h, W["lm_head.weight"])


def check_against_reference(W32, cfg, tokens, label):
    """float64 batched forward vs dsv2_reference.forward on the same weights."""
    W64 = {k: v.detach().to(torch.float64) for k, v in W32.items()}
    tables = rope_tables(cfg, tokens.shape[1], torch.float64)
    with torch.no_grad():
        mine = forward_bt(tokens, W64, cfg, tables)
        theirs = ref.forward(tokens.reshape(-1), [tokens.shape[1]] * tokens.shape[0], W64, cfg)
    diff = (mine.reshape(-1, cfg.vocab_size) - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    print("check vs reference (%s): max |logit diff| %.3g (max |logit| %.3g)"
          % (label, diff, scale), flush=True)
    if not diff < 1e-10:
        raise SystemExit("training forward disagrees with dsv2_reference.py")
    return diff


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------

def init_weights(cfg, seed, std):
    g = torch.Generator().manual_seed(seed)
    W = {}
    out_proj = ("o_proj.weight", "down_proj.weight")
    for name, shape, kind in ref.weight_shapes(cfg):
        if kind == "norm":
            t = torch.ones(shape)
        else:
            s = std / math.sqrt(2 * cfg.num_hidden_layers) if name.endswith(out_proj) else std
            t = torch.randn(shape, generator=g) * s
        W[name] = t.to(torch.float32).requires_grad_(True)
    return W


def fixture_style_weights(cfg, seed):
    """Large-magnitude random weights (as make_fixtures uses) for the check."""
    w = fx.make_weights(cfg, np.random.default_rng(seed))
    return {k: torch.from_numpy(v) for k, v in w.items()}


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def load_text(path):
    if path:
        with open(path, "rb") as f:
            return f.read()
    import kjv_text
    return kjv_text.kjv_text().encode("ascii")


class Data:
    def __init__(self, blob, val_fraction):
        a = np.frombuffer(blob, dtype=np.uint8).astype(np.int64)
        n_val = int(round(len(a) * val_fraction))
        self.train = a[:len(a) - n_val]
        self.val = a[len(a) - n_val:]
        # Training windows start at the beginning of a line (after BOS).
        starts = np.concatenate(([0], np.nonzero(self.train == 10)[0] + 1))
        self.starts = starts[starts + CONTEXT <= len(self.train)]

    def batch(self, rng, B):
        s = rng.choice(self.starts, size=B)
        x = np.empty((B, CONTEXT + 1), dtype=np.int64)
        x[:, 0] = BOS
        for b in range(B):
            x[b, 1:] = self.train[s[b]:s[b] + CONTEXT]
        x = torch.from_numpy(x)
        return x[:, :-1], x[:, 1:]


def eval_windows(arr, max_windows=None, stride=CONTEXT // 2):
    """Windows [BOS] + arr[s : s+CONTEXT-1] predicting arr[s : s+CONTEXT];
    window k>0 scores only its last `stride` targets so every byte is scored
    once with at least CONTEXT - stride bytes of context."""
    wins = []
    s = 0
    while True:
        if s + CONTEXT > len(arr):
            break
        first = 0 if s == 0 else CONTEXT - stride
        wins.append((s, first))
        s += stride
    if max_windows is not None and len(wins) > max_windows:
        pick = np.linspace(0, len(wins) - 1, max_windows).round().astype(int)
        wins = [wins[i] for i in pick]
    return wins


def evaluate(W, cfg, tables, arr, wins, B=32):
    """Mean cross-entropy (nats per byte) over the scored targets."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(wins), B):
            chunk = wins[i:i + B]
            x = np.empty((len(chunk), CONTEXT + 1), dtype=np.int64)
            x[:, 0] = BOS
            for b, (s, _) in enumerate(chunk):
                x[b, 1:] = arr[s:s + CONTEXT]
            x = torch.from_numpy(x)
            logits = forward_bt(x[:, :-1], W, cfg, tables)
            lp = torch.log_softmax(logits.double(), dim=-1)
            nll = -lp.gather(2, x[:, 1:, None])[..., 0]
            for b, (_, first) in enumerate(chunk):
                total += nll[b, first:].sum().item()
                count += CONTEXT - first
    return total / count


def unigram_baseline(train, val):
    """Cross-entropy (nats/byte) of val under add-one train byte frequencies."""
    c = np.bincount(train, minlength=256).astype(np.float64) + 1.0
    p = c / c.sum()
    return float(-np.log(p[val]).mean())


def greedy_text(W, cfg, tables, prompt, n):
    ids = [BOS] + list(prompt.encode("utf-8"))
    with torch.no_grad():
        for _ in range(n):
            x = torch.tensor([ids[-CONTEXT:]], dtype=torch.int64)
            nxt = int(forward_bt(x, W, cfg, tables)[0, -1].argmax())
            ids.append(nxt)
            if nxt == EOS:
                break
    return bytes(i for i in ids if i < 256).decode("utf-8", "replace")


# --------------------------------------------------------------------------
# Tokenizer files (the scheme itself is trivial: id = byte, 256 BOS, 257 EOS)
# --------------------------------------------------------------------------

def bytes_to_unicode():
    """GPT-2's byte -> printable character map (used by HF ByteLevel)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
          + list(range(ord("\xae"), ord("\xff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tokenizer_files(out):
    """tokenizer.json (HF tokenizers: ByteLevel, BPE without merges, so every
    byte is its own token with id = byte value), tokenizer_config.json and
    generation_config.json."""
    b2u = bytes_to_unicode()
    special = [(BOS, "<s>"), (EOS, "</s>")]
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, "content": c, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for i, c in special],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False,
                          "trim_offsets": False, "use_regex": False},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [BOS], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": False,
                    "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False,
                  "vocab": {b2u[b]: b for b in range(256)}, "merges": []},
    }
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, indent=1, ensure_ascii=False)
        f.write("\n")
    fx.write_json(os.path.join(out, "tokenizer_config.json"), {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": None,
        "unk_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": CONFIG["max_position_embeddings"],
        "byte_level": {"scheme": "ids 0..255 are the UTF-8 bytes of the text; "
                                 "256 = BOS (<s>), 257 = EOS (</s>); vocab_size 258",
                       "bos_token_id": BOS, "eos_token_id": EOS, "vocab_size": VOCAB},
    })
    fx.write_json(os.path.join(out, "generation_config.json"), {
        "bos_token_id": BOS, "eos_token_id": EOS, "do_sample": False,
    })


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------

def lr_at(step, hp):
    if step < hp["warmup"]:
        return hp["lr"] * (step + 1) / hp["warmup"]
    t = (step - hp["warmup"]) / max(1, hp["steps"] - hp["warmup"])
    lo = hp["lr"] * hp["min_lr_ratio"]
    return lo + 0.5 * (hp["lr"] - lo) * (1 + math.cos(math.pi * min(1.0, t)))


def param_count(cfg):
    return sum(int(np.prod(s)) for _, s, _ in ref.weight_shapes(cfg))


def active_param_count(cfg):
    n = 0
    for name, s, _ in ref.weight_shapes(cfg):
        if ".mlp.experts." in name:
            continue
        n += int(np.prod(s))
    per_expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    n += len(cfg.moe_layers()) * cfg.num_experts_per_tok * per_expert
    return n


def train(args):
    hp = dict(HPARAMS)
    if args.steps:
        hp["steps"] = args.steps
    cfg = ref.Config(CONFIG)
    torch.manual_seed(hp["seed"])

    # 1. The training forward must be the reference's math.
    rng = np.random.default_rng(hp["seed"])
    chk_tokens = torch.from_numpy(rng.integers(0, VOCAB, size=(2, 24)))
    check_against_reference(fixture_style_weights(cfg, hp["seed"]), cfg, chk_tokens,
                            "fixture-style random weights")
    if args.check_only:
        return
    if args.tokenizer_only:
        os.makedirs(args.out, exist_ok=True)
        write_tokenizer_files(args.out)
        return

    blob = load_text(args.text)
    sha = hashlib.sha256(blob).hexdigest()
    data = Data(blob, hp["val_fraction"])
    print("text: %d bytes (sha256 %s), train %d, val %d; params %d (active/token %d)"
          % (len(blob), sha[:16], len(data.train), len(data.val),
             param_count(cfg), active_param_count(cfg)), flush=True)
    uni = unigram_baseline(data.train, data.val)
    print("unigram baseline on val: %.4f nats/byte = %.4f bits/byte"
          % (uni, uni / math.log(2)), flush=True)

    W = init_weights(cfg, hp["seed"], hp["init_std"])
    decay = [t for k, t in W.items() if t.dim() == 2 and k != "model.embed_tokens.weight"]
    no_decay = [t for k, t in W.items() if not (t.dim() == 2 and k != "model.embed_tokens.weight")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=hp["lr"], betas=tuple(hp["betas"]), foreach=True)
    tables = rope_tables(cfg, CONTEXT, torch.float32)
    val_sub = eval_windows(data.val, hp["eval_windows"])
    batch_rng = np.random.default_rng(hp["seed"] + 1)
    alpha = cfg.aux_loss_alpha
    n_steps = 12 if args.bench else hp["steps"]
    log = []
    t0 = time.time()
    ema = None
    for step in range(n_steps):
        lr = lr_at(step, hp)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = data.batch(batch_rng, hp["batch"])
        stats = {"aux": [], "counts": []}
        logits = forward_bt(x, W, cfg, tables, stats)
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        aux = torch.stack(stats["aux"]).sum()
        loss = ce + alpha * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(list(W.values()), hp["grad_clip"])
        opt.step()
        ema = ce.item() if ema is None else 0.98 * ema + 0.02 * ce.item()
        if args.bench:
            print("step %d  %.2fs" % (step, time.time() - t0), flush=True)
            continue
        if step % 50 == 0 or step == n_steps - 1:
            el = time.time() - t0
            cnt = torch.stack(stats["counts"])            # (moe layers, E)
            frac = cnt / cnt.sum(dim=1, keepdim=True)
            print("step %5d  lr %.2e  ce %.4f (ema %.4f, %.3f bpb)  aux %.3f  |g| %.2f  "
                  "expert share min/max %.3f/%.3f  %.0fs (%.0f tok/s)"
                  % (step, lr, ce.item(), ema, ema / math.log(2),
                     aux.item() / len(stats["aux"]), gn.item(), frac.min().item(),
                     frac.max().item(), el, (step + 1) * hp["batch"] * CONTEXT / el),
                  flush=True)
        if (step + 1) % hp["eval_every"] == 0 or step == n_steps - 1:
            vl = evaluate(W, cfg, tables, data.val, val_sub)
            log.append({"step": step + 1, "time_s": round(time.time() - t0, 1),
                        "train_ce_ema": round(ema, 4), "val_subset_ce": round(vl, 4)})
            print("  eval step %d: val(subset) %.4f nats/byte = %.4f bpb" %
                  (step + 1, vl, vl / math.log(2)), flush=True)
    train_time = time.time() - t0
    if args.bench:
        return

    # 2. Final evaluation on the whole validation text and a train sample.
    t1 = time.time()
    val_ce = evaluate(W, cfg, tables, data.val, eval_windows(data.val))
    train_ce = evaluate(W, cfg, tables, data.train, eval_windows(data.train, 400))
    print("final: train %.4f nats/byte (%.4f bpb), val %.4f nats/byte (%.4f bpb), "
          "unigram %.4f (%.4f bpb); eval %.0fs"
          % (train_ce, train_ce / math.log(2), val_ce, val_ce / math.log(2),
             uni, uni / math.log(2), time.time() - t1), flush=True)
    sample = greedy_text(W, cfg, tables, "In the beginning", 200)
    print("greedy: %r" % sample, flush=True)

    # 3. Save, then re-check the trained weights against the reference.
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    w32 = {k: v.detach().numpy().astype(np.float32) for k, v in W.items()}
    path = os.path.join(out, "model.safetensors")
    fx.write_safetensors(path, w32)
    back = fx.read_safetensors(path)
    assert sorted(back) == sorted(w32)
    assert all(np.array_equal(back[k], w32[k]) for k in w32)
    fx.write_json(os.path.join(out, "config.json"), CONFIG)
    write_tokenizer_files(out)
    loaded = {k: torch.from_numpy(np.array(v)) for k, v in back.items()}
    seg = torch.from_numpy(np.concatenate(([BOS], data.val[:63])))[None, :]
    check_against_reference(loaded, cfg, seg, "trained weights")
    summary = {
        "text": {"source": "Debian package bible-kjv-text (King James Version)",
                 "extract": "tests/reference/kjv_text.py", "bytes": len(blob),
                 "sha256": sha, "train_bytes": int(len(data.train)),
                 "val_bytes": int(len(data.val))},
        "hparams": hp,
        "params": param_count(cfg),
        "active_params_per_token": active_param_count(cfg),
        "tokens_seen": hp["steps"] * hp["batch"] * CONTEXT,
        "train_time_s": round(train_time, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "final": {"train_ce": round(train_ce, 4), "train_bpb": round(train_ce / math.log(2), 4),
                  "val_ce": round(val_ce, 4), "val_bpb": round(val_ce / math.log(2), 4),
                  "unigram_val_ce": round(uni, 4),
                  "unigram_val_bpb": round(uni / math.log(2), 4)},
        "eval_protocol": "windows of BOS + 255 bytes, stride 128; each byte scored "
                         "once with >= 128 bytes of context (the first window scores all)",
        "log": log,
        "greedy_sample": sample,
    }
    fx.write_json(os.path.join(out, "training.json"), summary)
    print("wrote %s (%.1fs training)" % (out, train_time), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", help="plain text file (default: extract the KJV)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--tokenizer-only", action="store_true",
                    help="only (re)write the tokenizer/generation config files")
    args = ap.parse_args()
    torch.set_num_threads(1)
    train(args)


if __name__ == "__main__":
    main()
