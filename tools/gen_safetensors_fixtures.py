#!/usr/bin/env python3
"""Reference safetensors files written by the real `safetensors` package (PyPI), for
tests/test_io_safetensors.c to read back.

Fixture format version 1 (the version is stored as __metadata__["fixture_version"]):
  st_ref.safetensors        one tensor per dtype safetensors has, each holding
                            v[i] = (i % 13) * 0.5 - 3 (exactly representable in every float
                            type; integer dtypes hold the same formula's integer part:
                            (i % 13) - 6, U8 and BOOL hold i % 13 and i % 2), with shapes
                            as listed in SHAPES below; metadata {"fixture_version": "1",
                            "source": "safetensors <version>", "note": "h\u00e9llo \"quoted\""}
  st_shard/                 a two-shard checkpoint as transformers writes it:
                            model-00001-of-00002.safetensors, model-00002-of-00002.safetensors
                            and model.safetensors.index.json ({"metadata": {"total_size": N},
                            "weight_map": {...}}); tensors "a.weight" (F32 [4, 3]) and
                            "b.bias" (F32 [5]) in shard 1, "c.weight" (F32 [2, 2]) in shard 2,
                            all with v[i] = (i % 13) * 0.5 - 3.
  quant_tiny/float.safetensors   a tiny random "model" for tests/test_cli_quant.sh:
                            model.embed_tokens.weight F32 [16, 64], lm_head.weight F32 [16, 64],
                            model.norm.weight F32 [64] (ones), model.layers.0.self_attn.q_proj.weight
                            F32 [64, 64], ...mlp.up_proj.weight BF16 [48, 64], ...mlp.down_proj.weight
                            F16 [64, 48] (N(0, 1) values, torch.Generator seed 20261126),
                            ...self_attn.q_proj.bias F32 [64]; metadata {"format": "pt"}
  quant_tiny/<fmt>_bnb.safetensors   the same model with its three linear weights quantized by
                            bitsandbytes' quantize_4bit and saved the way transformers saves a
                            Linear4bit (W + QuantState.as_dict(packed=True) entries under "W."):
                            nf4 (block 64), nf4dq (block 64, compress_statistics), fp4dq128
                            (block 128, compress_statistics); other tensors unchanged.
  quant_tiny/<fmt>_bnb_deq.safetensors   the three weights of <fmt>_bnb dequantized by
                            bitsandbytes (its reference pure-torch path, in the dtype each state
                            records): what `loquat dequantize <fmt>_bnb.safetensors` must give.
  quant_tiny/<int>_ref.safetensors   the three linear weights of float.safetensors as F32 after
                            torch's per-channel fake quantization with torch.ao's
                            PerChannelMinMaxObserver (one scale per row, or per group of G
                            consecutive elements of a row: the rows of W.reshape(-1, G)):
                            int8 (symmetric, qint8 [-128, 127]), int8asym (quint8 [0, 255]),
                            int4g16 (symmetric [-8, 7], G = 16), int4g8asym ([0, 15], G = 8):
                            what `loquat dequantize --dtype f32` of `loquat quantize --format
                            int8|int4 [--asymmetric] [--group-size G]` must give, bit for bit.

Run: $(tools/pyenv.sh) tools/gen_safetensors_fixtures.py tests/fixtures
"""
import json
import os
import sys

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")  # bitsandbytes' reference path, run eagerly

import numpy as np
import safetensors
import torch
from safetensors.torch import save_file

FORMAT_VERSION = 1

SHAPES = {
    "f64": ("F64", torch.float64, (3, 2)),
    "f32": ("F32", torch.float32, (2, 3, 4)),
    "f16": ("F16", torch.float16, (7,)),
    "bf16": ("BF16", torch.bfloat16, (5, 3)),
    "i64": ("I64", torch.int64, (4,)),
    "i32": ("I32", torch.int32, (2, 2)),
    "i16": ("I16", torch.int16, (3,)),
    "i8": ("I8", torch.int8, (6,)),
    "u8": ("U8", torch.uint8, (9,)),
    "bool": ("BOOL", torch.bool, (5,)),
    "f8_e4m3": ("F8_E4M3", torch.float8_e4m3fn, (4,)),
    "f8_e5m2": ("F8_E5M2", torch.float8_e5m2, (4,)),
    "scalar": ("F32", torch.float32, ()),
    "empty": ("F32", torch.float32, (0, 3)),
}


def values(n):
    return (torch.arange(n, dtype=torch.float64) % 13) * 0.5 - 3


def make(dtype, shape):
    n = int(np.prod(shape)) if shape else 1
    i = torch.arange(n)
    if dtype == torch.uint8:
        t = (i % 13).to(dtype)
    elif dtype == torch.bool:
        t = (i % 2).to(dtype)
    elif dtype in (torch.int64, torch.int32, torch.int16, torch.int8):
        t = ((i % 13) - 6).to(dtype)
    else:
        t = values(n).to(dtype)
    return t.reshape(shape)


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    tensors = {name: make(dt, shape) for name, (_, dt, shape) in SHAPES.items()}
    meta = {"fixture_version": str(FORMAT_VERSION), "source": "safetensors " + safetensors.__version__,
            "note": 'h\u00e9llo "quoted"'}
    save_file(tensors, os.path.join(out_dir, "st_ref.safetensors"), metadata=meta)

    shard_dir = os.path.join(out_dir, "st_shard")
    os.makedirs(shard_dir, exist_ok=True)
    shards = {
        "model-00001-of-00002.safetensors": {"a.weight": values(12).float().reshape(4, 3),
                                             "b.bias": values(5).float()},
        "model-00002-of-00002.safetensors": {"c.weight": values(4).float().reshape(2, 2)},
    }
    weight_map, total = {}, 0
    for fname, ts in shards.items():
        save_file(ts, os.path.join(shard_dir, fname), metadata={"format": "pt"})
        for k, v in ts.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
    with open(os.path.join(shard_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
        f.write("\n")
    for root, _, files in os.walk(out_dir):
        for name in files:
            if name.startswith("st_") or root.endswith("st_shard"):
                os.chmod(os.path.join(root, name), 0o644)
    make_quant_tiny(out_dir)


def bnb_reference_dequant(q, st):
    """bitsandbytes' dequantize_4bit through its pure-torch (default backend) path. (The AVX-512
    CPU kernel of bitsandbytes 0.50.2 gives other values when a row is not whole blocks.)"""
    import bitsandbytes.functional as bnbF
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code

    absmax = st.absmax
    if st.nested:
        absmax = bnbF.dequantize_blockwise(st.absmax, st.state2) + st.offset
    code = _get_4bit_code(st.quant_type, q.device)
    return _dequantize_4bit_compute(q.reshape(-1), absmax.float(), code, st.blocksize, st.shape, st.dtype)


def make_quant_tiny(out_dir):
    import bitsandbytes.functional as bnbF

    d = os.path.join(out_dir, "quant_tiny")
    os.makedirs(d, exist_ok=True)
    g = torch.Generator().manual_seed(20261126)
    model = {
        "model.embed_tokens.weight": torch.randn(16, 64, generator=g),
        "lm_head.weight": torch.randn(16, 64, generator=g),
        "model.norm.weight": torch.ones(64),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(64, 64, generator=g),
        "model.layers.0.self_attn.q_proj.bias": torch.randn(64, generator=g),
        "model.layers.0.mlp.up_proj.weight": torch.randn(48, 64, generator=g).to(torch.bfloat16),
        "model.layers.0.mlp.down_proj.weight": torch.randn(64, 48, generator=g).to(torch.float16),
    }
    save_file(model, os.path.join(d, "float.safetensors"), metadata={"format": "pt"})
    linear = [k for k in model if k.endswith("_proj.weight")]
    for tag, qt, bs, dq in (("nf4", "nf4", 64, False), ("nf4dq", "nf4", 64, True), ("fp4dq128", "fp4", 128, True)):
        sd, deq = {}, {}
        for k, v in model.items():
            if k in linear:
                q, st = bnbF.quantize_4bit(v, blocksize=bs, compress_statistics=dq, quant_type=qt)
                sd[k] = q
                for sk, sv in st.as_dict(packed=True).items():
                    sd[f"{k}.{sk}"] = sv
                deq[k] = bnb_reference_dequant(q, st)
            else:
                sd[k] = v
        save_file(sd, os.path.join(d, f"{tag}_bnb.safetensors"), metadata={"format": "pt"})
        save_file(deq, os.path.join(d, f"{tag}_bnb_deq.safetensors"), metadata={"format": "pt"})
    for tag, b, asym, group in (("int8", 8, False, 0), ("int8asym", 8, True, 0), ("int4g16", 4, False, 16),
                                ("int4g8asym", 4, True, 8)):
        ref = {}
        for k in linear:
            x = model[k].float()
            rows = x.reshape(-1, group) if group else x
            qmin, qmax = (0, 2 ** b - 1) if asym else (-(2 ** (b - 1)), 2 ** (b - 1) - 1)
            obs = torch.ao.quantization.PerChannelMinMaxObserver(
                ch_axis=0, dtype=torch.quint8 if asym else torch.qint8, quant_min=qmin, quant_max=qmax,
                qscheme=torch.per_channel_affine if asym else torch.per_channel_symmetric)
            obs(rows)
            scale, zp = obs.calculate_qparams()
            ref[k] = torch.fake_quantize_per_channel_affine(rows, scale.float(), zp.int(), 0, qmin, qmax).reshape(x.shape)
        save_file(ref, os.path.join(d, f"{tag}_ref.safetensors"), metadata={"format": "pt"})
    for f in os.listdir(d):
        os.chmod(os.path.join(d, f), 0o644)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
