#!/usr/bin/env python3
"""Reference fixtures for loquat's ggml block formats, computed by the gguf package (gguf-py).

Dequantization, for every type: blocks of bytes and what gguf.quants.dequantize makes of them.
The types gguf can quantize (q4_0, q4_1, q5_0, q5_1, q8_0) get blocks quantized from random
floats by gguf itself; every type also gets random but valid blocks (random code bits, f16
scales of random sign and reasonable magnitude) and blocks with edge-case scales (zero, -0,
subnormal, the largest f16). The K-quants (q4_K, q5_K, q6_K) have no quantizer in gguf, so
their blocks are random bytes only. f16 and bf16 get random bit patterns plus special values.

Quantization, for q8_0 and q4_0: float32 input and gguf.quants.quantize's bytes, on normal
data, values at rounding ties (of the codes and of the f16 scale), zeros, large magnitudes (up
to a scale that overflows f16) and tiny ones (a scale whose reciprocal overflows).

gguf.quants mirrors ggml's reference C (quantize_row_*_ref, dequantize_row_*). One place where
they differ is left out on purpose: a q4_0 block of zeros whose first element is -0.0 (ggml
stores d = -0, gguf +0); tests/test_quant_ggml.c checks that case against ggml's rule.

File format: LQFX version 1 (tools/lqfx.py). Records:
  deq/<type>/<case>/bytes   bytes (2), shape (n_blocks, block_bytes) (f16/bf16: (n, 2))
  deq/<type>/<case>/f32     f32 (0), shape (n_elements,)
  quant/<type>/<case>/x     f32, shape (n_elements,)
  quant/<type>/<case>/bytes bytes, shape (n_blocks, block_bytes)
  meta/gguf_version, meta/numpy_version   bytes (text)
<type> is loquat's dtype name (q4_0 ... q6_K, f16, bf16).

Run: $(tools/pyenv.sh) tools/gen_gguf_fixtures.py tests/fixtures/ggml_blocks.lqfx
"""
import os
import sys
from importlib.metadata import version

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lqfx  # noqa: E402  (the LQFX container: put, write, records)

FORMAT_VERSION = 1
assert lqfx.FORMAT_VERSION == FORMAT_VERSION

rng = np.random.default_rng(20261127)

# loquat name -> (gguf type, block size, block bytes, byte offsets of the f16 scale fields)
TYPES = {
    "q4_0": (T.Q4_0, 32, 18, [0]),
    "q4_1": (T.Q4_1, 32, 20, [0, 2]),
    "q5_0": (T.Q5_0, 32, 22, [0]),
    "q5_1": (T.Q5_1, 32, 24, [0, 2]),
    "q8_0": (T.Q8_0, 32, 34, [0]),
    "q4_K": (T.Q4_K, 256, 144, [0, 2]),
    "q5_K": (T.Q5_K, 256, 176, [0, 2]),
    "q6_K": (T.Q6_K, 256, 210, [208]),
}
QUANTIZABLE = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")


def put_bytes(name, arr):
    a = np.ascontiguousarray(arr, dtype=np.uint8)
    lqfx.records.append((name, 2, tuple(a.shape), a.tobytes()))


def put_f32(name, arr):
    a = np.ascontiguousarray(arr, dtype=np.float32)
    lqfx.records.append((name, 0, tuple(a.shape), a.tobytes()))


def put_text(name, s):
    b = s.encode()
    lqfx.records.append((name, 2, (len(b),), b))


def f16_bits(values):
    return np.asarray(values, dtype=np.float32).astype(np.float16).view(np.uint16)


def random_scales(n, positive=False):
    """f16 bit patterns of magnitude 10^U(-4, 0), random sign unless positive."""
    mag = 10.0 ** rng.uniform(-4, 0, n)
    sign = np.ones(n) if positive else rng.choice([-1.0, 1.0], n)
    return f16_bits(sign * mag)


def set_scales(blocks, offsets, bits):
    """Writes f16 bits (n_blocks, n_fields) little-endian at the given byte offsets."""
    for k, off in enumerate(offsets):
        blocks[:, off] = bits[:, k] & 0xFF
        blocks[:, off + 1] = bits[:, k] >> 8


def deq_case(name, case, blocks):
    qtype, bs, bb, _ = TYPES[name]
    assert blocks.shape[1] == bb
    out = quants.dequantize(blocks.reshape(-1), qtype)
    assert out.dtype == np.float32 and out.size == blocks.shape[0] * bs
    assert np.all(np.isfinite(out)), (name, case)
    put_bytes(f"deq/{name}/{case}/bytes", blocks)
    put_f32(f"deq/{name}/{case}/f32", out.reshape(-1))


def dequant_cases():
    for name, (qtype, bs, bb, offs) in TYPES.items():
        # random valid blocks: any code bits are valid; the scales are finite f16
        n = 48 if bs == 32 else 12
        blocks = rng.integers(0, 256, (n, bb), dtype=np.uint8)
        n_pos = n // 2  # the first half with positive scales, as real models mostly have
        bits = np.concatenate([random_scales(n_pos * len(offs), True), random_scales((n - n_pos) * len(offs))])
        set_scales(blocks, offs, bits.reshape(n, len(offs)))
        deq_case(name, "random", blocks)

        # edge-case scale values with random codes
        edge = np.array([0x0000, 0x8000, 0x0001, 0x83FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00, 0x3555], dtype=np.uint16)
        n = len(edge)
        blocks = rng.integers(0, 256, (n, bb), dtype=np.uint8)
        bits = np.stack([np.roll(edge, k) for k in range(len(offs))], axis=1)
        set_scales(blocks, offs, bits)
        deq_case(name, "edge", blocks)

        if name in QUANTIZABLE:
            # blocks gguf quantized from normal data with per-block magnitudes over six decades
            mag = (10.0 ** rng.uniform(-3, 3, (32, 1))).astype(np.float32)
            x = rng.standard_normal((32, bs)).astype(np.float32) * mag
            q = quants.quantize(x, qtype)
            deq_case(name, "quantized", q.reshape(32, bb))


def float_cases():
    special = np.array([0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x3C00, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00,
                        0x7E00, 0x7C01, 0xFE00, 0x3555, 0xC000], dtype=np.uint16)
    bits = np.concatenate([special, rng.integers(0, 65536, 2032, dtype=np.uint16)])
    b = bits.view(np.uint8).reshape(-1, 2)
    put_bytes("deq/f16/random/bytes", b)
    put_f32("deq/f16/random/f32", quants.dequantize(bits.view(np.uint8), T.F16).reshape(-1))
    bf = np.concatenate([np.array([0x0000, 0x8000, 0x0001, 0x007F, 0x0080, 0x3F80, 0x7F7F, 0xFF7F, 0x7F80, 0xFF80,
                                   0x7FC0, 0x7F81, 0xFFC1, 0xC000], dtype=np.uint16),
                         rng.integers(0, 65536, 2034, dtype=np.uint16)])
    put_bytes("deq/bf16/random/bytes", bf.view(np.uint8).reshape(-1, 2))
    put_f32("deq/bf16/random/f32", quants.dequantize(bf.view(np.uint8), T.BF16).reshape(-1))


def quant_case(name, case, x):
    qtype, bs, bb, _ = TYPES[name]
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, bs)
    assert np.all(np.isfinite(x))
    with np.errstate(all="ignore"):  # the tiny case overflows 1/d, as ggml does
        q = quants.quantize(x, qtype)
    put_f32(f"quant/{name}/{case}/x", x.reshape(-1))
    put_bytes(f"quant/{name}/{case}/bytes", q.reshape(-1, bb))


def tie_blocks(name):
    """Blocks whose codes land exactly on rounding ties, and blocks whose scale is an f16 tie."""
    out = []
    if name == "q8_0":
        # amax 127 -> d = 1, id = 1: x itself is the code before roundf (half away from zero)
        for amax in (127.0, 63.5):  # 63.5 -> d = 0.5, id = 2
            v = (rng.integers(-127, 127, 32) + 0.5).astype(np.float32) * np.float32(amax / 127.0)
            v[rng.integers(0, 32)] = amax * rng.choice([-1, 1])
            out.append(v)
        v = np.array([k + 0.5 for k in range(-16, 16)], dtype=np.float32)
        v[0] = -127.0  # d = 1; codes -16.5 ... 15.5 all at ties
        out.append(v)
        for mant in (1, 3, 5):  # d = 1 + mant * 2^-11 exactly: halfway between f16 neighbours
            v = rng.uniform(-1, 1, 32).astype(np.float32)
            v[5] = -127.0 * (1 + mant * 2.0 ** -11)
            out.append(v)
    else:
        # max -8 -> d = 1, id = 1; max 8 -> d = -1: code = trunc(x * id + 8.5), ties round up
        for m in (-8.0, 8.0):
            v = (rng.integers(-16, 17, 32) * 0.5).astype(np.float32)
            v[v == -m] = 0.5
            v[rng.integers(0, 32)] = m
            out.append(v)
        v = (rng.integers(-15, 16, 32) * 0.5).astype(np.float32)
        v[2], v[9] = 8.0, -8.0  # the only two of largest magnitude: the first sets the sign of d
        out.append(v)
        v = (rng.integers(-32, 33, 32) * 0.25).astype(np.float32)
        v[v == 8.0] = 0.25
        v[3] = -8.0
        out.append(v)
        for mant in (1, 3, 5):  # d = 1 + mant * 2^-11 exactly: halfway between f16 neighbours
            v = rng.uniform(-1, 1, 32).astype(np.float32)
            v[7] = -8.0 * (1 + mant * 2.0 ** -11)
            out.append(v)
        # d = 3, id = float(1/3) a little above 1/3: x = 3 (k + 0.5) makes x * id a hair past the
        # tie, and rounding the product before adding 8.5 (as ggml does) lands on it; a fused
        # multiply-add would not (e.g. x = -22.5: ggml's code is 1, a fused one 0)
        v = (3.0 * (np.arange(32) % 16 - 8 + 0.5)).astype(np.float32)
        v[0] = -24.0
        out.append(v)
    return np.stack(out).astype(np.float32)


def quantize_cases():
    for name in ("q8_0", "q4_0"):
        mag = (10.0 ** rng.uniform(-3, 3, (24, 1))).astype(np.float32)
        x = rng.standard_normal((24, 32)).astype(np.float32) * mag
        quant_case(name, "normal", x)
        x = rng.standard_t(2, (8, 32)).astype(np.float32)  # heavy tails: one large value per block
        quant_case(name, "heavy", x)
        quant_case(name, "ties", tie_blocks(name))
        z = np.zeros((4, 32), dtype=np.float32)
        z[1, 5:9] = -0.0          # -0 after a +0 first element: ggml and gguf agree
        z[2, 17] = 1.5            # one nonzero value
        z[3, :] = -3.25           # a constant block
        quant_case(name, "zeros", z)
        big = rng.uniform(-1, 1, (3, 32)).astype(np.float32) * np.array([[1e4], [3e5], [1e7]], dtype=np.float32)
        quant_case(name, "large", big)  # the last block's scale overflows f16 (stored as inf, as ggml)
        tiny = rng.uniform(-1, 1, (3, 32)).astype(np.float32) * np.array([[1e-30], [1e-38], [1e-39]], dtype=np.float32)
        quant_case(name, "tiny", tiny)  # f16 scale underflows to 0 / reciprocal of d overflows


def main():
    put_text("meta/gguf_version", version("gguf"))
    put_text("meta/numpy_version", np.__version__)
    dequant_cases()
    float_cases()
    quantize_cases()
    path = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/ggml_blocks.lqfx"
    lqfx.write(path)
    print(f"wrote {len(lqfx.records)} records to {path} ({os.path.getsize(path)} bytes; gguf {version('gguf')})")


if __name__ == "__main__":
    main()
