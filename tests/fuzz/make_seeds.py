#!/usr/bin/env python3
"""Writes the seed corpora under tests/fuzz/corpus/<target>/: small valid
files plus a few hand-mutated ones, each a defect the parsers must name.
Standard library only. Run from anywhere:  python3 tests/fuzz/make_seeds.py
"""
import json
import pathlib
import shutil
import struct

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CORPUS = HERE / "corpus"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


# ---- safetensors ----------------------------------------------------------
def st(entries, metadata=None, header_override=None, claimed_len=None, pad=True):
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    text = header_override if header_override is not None else json.dumps(header, separators=(",", ":"))
    if pad:
        text += " " * ((8 - len(text) % 8) % 8)
    text = text.encode()
    n = claimed_len if claimed_len is not None else len(text)
    return struct.pack("<Q", n) + text + b"".join(blobs)


f32 = lambda *v: struct.pack(f"<{len(v)}f", *v)
f64 = lambda *v: struct.pack(f"<{len(v)}d", *v)
f16 = lambda *v: struct.pack(f"<{len(v)}e", *v)
bf16 = lambda *v: b"".join(struct.pack("<f", x)[2:] for x in v)
i64 = lambda *v: struct.pack(f"<{len(v)}q", *v)

valid = [("a.f32", "F32", [2, 3], f32(1, -2, 3.5, 0, 1e-3, -7)),
         ("b.f16", "F16", [4], f16(1, -0.5, 65504, 6e-8)),
         ("c.bf16", "BF16", [2], bf16(1.5, -3e38)),
         ("d.f64", "F64", [3], f64(1e300, -1e-300, 2.5)),
         ("e.i64", "I64", [2], i64(7, -1)),
         ("f.empty", "F32", [0, 5], b""),
         ("g.scalar", "F32", [], f32(42))]
put("safetensors", "valid_all_dtypes", st(valid, {"format": "pt"}))
put("safetensors", "valid_one", st([("w", "F32", [1], f32(1))]))
put("safetensors", "valid_empty_header", st([]))
put("safetensors", "bad_header_len", st(valid[:1], claimed_len=1 << 40))
put("safetensors", "bad_offsets_overlap", st([], header_override=json.dumps(
    {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})) + bytes(12))
put("safetensors", "bad_dtype", st([], header_override=json.dumps(
    {"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}})) + bytes(8))
put("safetensors", "bad_shape_huge", st([], header_override=json.dumps(
    {"a": {"dtype": "F32", "shape": [9223372036854775807, 9223372036854775807], "data_offsets": [0, 8]}})) + bytes(8))
put("safetensors", "bad_shape_u64", st([], header_override=json.dumps(
    {"a": {"dtype": "F32", "shape": [18446744073709551615, 2], "data_offsets": [0, 8]}})) + bytes(8))
put("safetensors", "bad_json", st([], header_override='{"a": {"dtype": "F32", "shape": [2], "data_'))
put("safetensors", "nan_inf_values", st([("x", "F32", [3], f32(float("nan"), float("inf"), 3e38)),
                                         ("y", "F64", [2], f64(1e308, float("-inf")))]))

# ---- model.safetensors.index.json -------------------------------------------
wm = {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors", "model.norm.weight": "s2.safetensors"}
put("index", "valid", json.dumps({"metadata": {"total_size": 28}, "weight_map": wm}, indent=2))
put("index", "valid_subset", json.dumps({"weight_map": {"c": "s2.safetensors"}}))
put("index", "bad_missing_map", json.dumps({"metadata": {}}))
put("index", "bad_shard_path", json.dumps({"weight_map": {"a": "../s1.safetensors"}}))
put("index", "bad_not_in_shard", json.dumps({"weight_map": {"a": "s2.safetensors"}}))
put("index", "bad_shard_missing", json.dumps({"weight_map": {"a": "s3.safetensors"}}))
put("index", "bad_shard_is_json", json.dumps({"weight_map": {"a": "model.safetensors.index.json"}}))
put("index", "bad_value_type", json.dumps({"weight_map": {"a": 1}}))

# ---- config.json -------------------------------------------------------------
for case in ("tiny_v2", "tiny_lite", "tiny_plain"):
    src = ROOT / "tests" / "data" / case / "config.json"
    if src.exists():
        put("config", f"valid_{case}", src.read_bytes())
base = json.loads((ROOT / "tests" / "data" / "tiny_v2" / "config.json").read_text())
v2 = dict(base, vocab_size=102400, hidden_size=5120, intermediate_size=12288, moe_intermediate_size=1536,
          num_hidden_layers=60, num_attention_heads=128, num_key_value_heads=128, n_shared_experts=2,
          n_routed_experts=160, routed_scaling_factor=16.0, kv_lora_rank=512, q_lora_rank=1536,
          qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128, topk_method="group_limited_greedy",
          n_group=8, topk_group=3, num_experts_per_tok=6, first_k_dense_replace=1, max_position_embeddings=163840,
          rope_scaling={"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                        "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707})
put("config", "valid_deepseek_v2", json.dumps(v2, indent=1))
put("config", "bad_hidden_1e12", json.dumps(dict(base, hidden_size=10**12)))
put("config", "bad_layers_huge", json.dumps(dict(base, num_hidden_layers=2**62)))
put("config", "bad_float_int", json.dumps(dict(base, vocab_size=1e300)))
put("config", "bad_eps_huge", '{"rms_norm_eps": 1e999, ' + json.dumps(base)[1:])
put("config", "bad_groups", json.dumps(dict(base, n_group=7)))
put("config", "bad_rope", json.dumps(dict(base, rope_scaling={"type": "dynamic", "factor": 2})))
put("config", "bad_not_object", "[1, 2, 3]")

# ---- .npy ----------------------------------------------------------------------
def npy(descr, shape, raw, version=1, fortran=False):
    dims = "".join(f"{d}, " for d in shape) if len(shape) == 1 else ", ".join(str(d) for d in shape)
    header = "{'descr': '%s', 'fortran_order': %s, 'shape': (%s), }" % (descr, "True" if fortran else "False", dims)
    pre = 10 if version == 1 else 12
    header += " " * ((64 - (pre + len(header) + 1) % 64) % 64) + "\n"
    size = struct.pack("<H", len(header)) if version == 1 else struct.pack("<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + size + header.encode() + raw


put("npy", "valid_f8", npy("<f8", [2, 2], f64(1, 2, 3, 4)))
put("npy", "valid_f4", npy("<f4", [3], f32(1, float("nan"), -3e38)))
put("npy", "valid_i8", npy("<i8", [2], i64(1, -2)))
put("npy", "valid_i4", npy("<i4", [1, 1], struct.pack("<i", 7)))
put("npy", "valid_v2_scalar", npy("<f8", [], f64(3.25), version=2))
put("npy", "valid_empty", npy("<f4", [0, 3], b""))
put("npy", "f8_huge_values", npy("<f8", [3], f64(1e300, float("nan"), -9.3e18)))
put("npy", "bad_fortran", npy("<f8", [1], f64(1), fortran=True))
put("npy", "bad_descr", npy(">f8", [1], f64(1)))
put("npy", "bad_shape_huge", npy("<f8", [999999999999999, 999999999999999], b""))
put("npy", "bad_truncated", npy("<f8", [4], f64(1)))

# ---- token ids and bytes ---------------------------------------------------------
for i, text in enumerate(["1, 2, 3", "100000,100001", " -5 ,+7,, 0 ", "2147483647,-2147483648",
                          "2147483648", "12abc", "", "héllo wörld\x00\xff"]):
    put("tokens", f"seed_{i}", text.encode("utf-8", "surrogateescape"))

if __name__ == "__main__":
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    print(f"wrote {sum(1 for p in CORPUS.rglob('*') if p.is_file())} seeds, {total} bytes, under {CORPUS}")
