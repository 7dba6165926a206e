#!/usr/bin/env python3
"""Reference fixtures for loquat's NF4 / FP4 formats, computed by bitsandbytes on the CPU.

For every case: a float32 input, and what bitsandbytes.functional.quantize_4bit(x, blocksize=B,
quant_type=nf4|fp4, compress_statistics=dq) returns for it (packed bytes; absmax, or with double
quantization the 8-bit absmax codes, the nested absmax, the offset and the nested code map), plus
what dequantize_4bit returns for that state. Beside them: bnb's 4-bit and dynamic code tables,
quantize_blockwise (the nested quantizer) on its own, and torch's float32 mean (the offset) of
prefixes of one vector. tests/test_quant_bnb.c runs loquat on the same inputs and compares bytes.

File format (little-endian), version 1 (the writer of tools/gen_torch_fixtures.py):
  "LQFX" u32 version u32 n_records
  record: u16 name_len, name, u8 dtype (0 f32, 1 i32, 2 bytes), u8 ndim, i64 shape[ndim], data
Names:
  meta/versions                      bytes "bitsandbytes X torch Y"
  code/nf4 code/fp4 code/dynamic     f32[16], f32[16], f32[256]
  in/<set>                           f32[n] input vectors
  q4/<i>/params                      i32 [type (0 nf4, 1 fp4), blocksize, double_quant, n]
  q4/<i>/input                       bytes: name of the input set (in/<set>)
  q4/<i>/packed                      bytes[(n + 1) / 2]
  q4/<i>/absmax                      f32[blocks]              (double_quant = 0)
  q4/<i>/absmax_q absmax2 offset     u8[blocks], f32[ceil(blocks / 256)], f32[1]  (double_quant = 1)
  q4/<i>/absmax_deq                  f32[blocks]: dequantize_blockwise(absmax_q) + offset (dq = 1)
  q4/<i>/deq                         f32[n]: dequantize_4bit(packed, state) (absent for a few big cases)
  bw8/<i>/input codes absmax         quantize_blockwise(x, blocksize=256) with the dynamic map
  mean/x mean/len mean/mean          f32[N], i32[k], f32[k]: x[:len].mean() in float32

Run: $(tools/pyenv.sh) tools/gen_bnb_fixtures.py tests/fixtures/bnb4.lqfx
"""
import os
import sys

import numpy as np
import torch

import bitsandbytes
import bitsandbytes.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lqfx import FORMAT_VERSION, put, records, write  # noqa: E402,F401  (the LQFX container)


f32 = np.float32
rng = np.random.default_rng(20261127)
inputs = {}


def add_input(name, x):
    x = np.ascontiguousarray(x, dtype=f32)
    assert np.isfinite(x).all()
    inputs[name] = x
    put("in/" + name, x)


def code_of(qt):
    return F.get_4bit_type(qt, device="cpu").numpy()


def sorted_bounds(qt):
    """Midpoints between consecutive codes in value order, as bnb's quantize_4bit builds them."""
    c = code_of(qt)
    order = np.argsort(c, kind="stable")
    cs = c[order]
    return ((cs[:-1] + cs[1:]) / f32(2)).astype(f32)


def near(v, k):
    """The float32 values k ulps around v (k >= 0)."""
    out = [f32(v)]
    up = dn = f32(v)
    for _ in range(k):
        up = np.nextafter(up, f32(np.inf))
        dn = np.nextafter(dn, f32(-np.inf))
        out += [up, dn]
    return out


def split_values(bounds):
    """An absmax and, for as many midpoints as possible, an x next to one that lands on different
    sides of it when scaled by division (x / absmax) and by the reciprocal (x * (1 / absmax))."""
    best = (-1, None)
    for am in np.linspace(0.6, 3.0, 400).astype(f32):
        inv = f32(1) / am
        xs = []
        for b in bounds:
            for x in near(f32(b) * am, 4):
                if (x / am <= b) != (x * inv <= b):
                    xs.append(x)
                    break
        if len(xs) > best[0]:
            best = (len(xs), [am] + xs)
    return best[1]


def ties_input(qt, B):
    """Values on and next to the decision midpoints. Block 0: values that land exactly on a midpoint
    after scaling, and their neighbours; block 1 and the last, partial block: values that division
    and the reciprocal's multiply put on different sides of a midpoint (bnb multiplies in full
    blocks and divides in the partial one)."""
    bounds = sorted_bounds(qt)
    am = f32(1.37)
    inv = f32(1) / am
    blk0 = [am]
    for b in bounds:
        for x in near(f32(b) * am, 3):
            if x * inv == b:  # lands exactly on the midpoint after scaling
                blk0 += [x, np.nextafter(x, f32(np.inf)), np.nextafter(x, f32(-np.inf))]
                break
    blk0 += [f32(0.0), f32(-0.0), f32(1e-30), f32(-1e-30), -am, f32(2.6e-3) * am, f32(-2.6e-3) * am]
    assert len(blk0) <= B
    blk0 += [f32(0.5)] * (B - len(blk0))
    sv = split_values(bounds)
    print(f"  {qt}: {len(sv) - 1} of {len(bounds)} midpoints split division from the reciprocal")
    blk1 = sv + [f32(0.25)] * (B - len(sv))
    part = sv + [f32(0.0), f32(1e-30), f32(-1e-30)]
    assert len(blk1) == B and len(part) < B
    return np.array(blk0 + blk1 + part, dtype=f32)


cases = []


def q4_case(set_name, qt, B, dq, store_deq=True):
    x = inputs[set_name]
    n = x.size
    i = len(cases)
    cases.append(i)
    p = f"q4/{i}/"
    packed, st = F.quantize_4bit(torch.from_numpy(x.copy()), blocksize=B, quant_type=qt, compress_statistics=dq)
    packed = packed.reshape(-1)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 1) // 2
    put(p + "params", torch.tensor([0 if qt == "nf4" else 1, B, int(dq), n], dtype=torch.int32))
    put(p + "input", "in/" + set_name)
    put(p + "packed", packed)
    if dq:
        assert st.state2.blocksize == 256
        assert torch.equal(st.state2.code, F.create_dynamic_map())
        put(p + "absmax_q", st.absmax.reshape(-1))
        put(p + "absmax2", st.state2.absmax.reshape(-1))
        put(p + "offset", st.offset.reshape(1).float())
        put(p + "absmax_deq", F.dequantize_blockwise(st.absmax, st.state2) + st.offset)
    else:
        put(p + "absmax", st.absmax.reshape(-1))
    if store_deq:
        y = F.dequantize_4bit(packed.reshape(-1, 1), st)
        put(p + "deq", y.reshape(-1))


# --- quantize_blockwise with the dynamic map (the nested quantizer) ---------------------------

def dynamic_lut_transitions():
    """Indices i of bnb's 65536-entry quantize LUT where the code changes (lut[i] != lut[i-1])."""
    c = F.create_dynamic_map().numpy()
    mids = ((c[:-1] + c[1:]) * f32(0.5)).astype(f32)
    i = np.arange(65536)
    val = ((f32(2) * i.astype(f32)) / f32(65535) - f32(1)).astype(f32)
    lut = np.searchsorted(mids, val, side="left")
    return [int(k) for k in np.nonzero(lut[1:] != lut[:-1])[0] + 1]


def lut_index(s):
    # bnb fuses the last multiply-add; for these magnitudes (< 2^16, adding 0.5) the fused and
    # unfused results truncate alike, so plain float32 arithmetic finds the same edges.
    return int(f32(f32(f32(f32(s) + f32(1)) * f32(0.5)) * f32(65535)) + f32(0.5))


def f32_from_key(k):
    bits = k if k >= 0 else (-k) | 0x80000000
    return np.array([bits], dtype=np.uint32).view(f32)[0]


def lut_edge_values():
    """For every code change of the LUT, the first scaled value that reaches it and the one below."""
    out = []
    for t in dynamic_lut_transitions():
        lo, hi = -0x3F800000, 0x3F800000  # keys of -1.0 and 1.0
        while lo < hi:  # smallest key with lut_index >= t
            mid = (lo + hi) // 2
            if lut_index(f32_from_key(mid)) >= t:
                hi = mid
            else:
                lo = mid + 1
        out += [f32_from_key(lo), f32_from_key(lo - 1)]
    return out


def bw8_cases():
    sets = []
    x = (rng.standard_normal(3000) * rng.choice([0.01, 1.0, 30.0], 3000)).astype(f32)
    x[512:768] = 0  # an all-zero block
    sets.append(x)  # 3000 = 11 full blocks + a partial one
    edges = lut_edge_values()
    y = []
    for j in range(0, len(edges), 255):  # each block of 256 holds 1.0: its scale is exactly 1
        y += [f32(1.0)] + edges[j:j + 255]
    sets.append(np.array(y, dtype=f32))
    print(f"  LUT edge values: {len(edges)}")
    for i, v in enumerate(sets):
        out, st = F.quantize_blockwise(torch.from_numpy(v.copy()), blocksize=256)
        put(f"bw8/{i}/input", v)
        put(f"bw8/{i}/codes", out.reshape(-1))
        put(f"bw8/{i}/absmax", st.absmax.reshape(-1))


def mean_cases():
    x = (np.abs(rng.standard_normal(2000)) * 0.2 + 0.01).astype(f32)
    lens = list(range(1, 41)) + [63, 64, 65, 100, 127, 128, 129, 255, 256, 257, 500, 511, 512, 513, 1000,
                                 1023, 1024, 1025, 1500, 2000]
    t = torch.from_numpy(x)
    means = [t[:k].mean() for k in lens]
    put("mean/x", x)
    put("mean/len", torch.tensor(lens, dtype=torch.int32))
    put("mean/mean", torch.stack(means))


def main():
    put("meta/versions", f"bitsandbytes {bitsandbytes.__version__} torch {torch.__version__} "
        f"(cpu capability {torch.backends.cpu.get_cpu_capability()})")
    put("code/nf4", torch.from_numpy(code_of("nf4")))
    put("code/fp4", torch.from_numpy(code_of("fp4")))
    put("code/dynamic", F.create_dynamic_map())

    add_input("normal", rng.standard_normal(1024) * 0.7)
    heavy = np.concatenate([rng.standard_t(2.5, 500) * 0.05, rng.standard_normal(500) ** 3])
    add_input("heavy", heavy)
    z = rng.standard_normal(600)
    z[128:192] = 0  # block 2 of 64 (blocks 4, 5 of 32)
    z[320:384] = -0.0  # block 5 of 64
    z[400:448] = 0
    z[400 + 17] = 3e-3  # a block with one non-zero
    z[576:] = 0  # the last, partial block (24 elements) all zero
    add_input("zeros", z)
    add_input("odd", rng.standard_normal(777) * rng.choice([0.5, 2.0], 777))
    add_input("big", rng.standard_normal(4999) * 0.02)
    add_input("many", rng.standard_normal(257 * 32) * rng.choice([0.1, 1.0, 5.0], 257 * 32))
    tiny = np.concatenate([rng.uniform(-9e-39, 9e-39, 32),  # subnormal block: absmax < 1e-38
                           rng.standard_normal(32), rng.uniform(-5e-39, 5e-39, 5)])
    add_input("tiny", tiny)  # 69 elements: odd; a subnormal full block and a subnormal partial one
    add_input("five", rng.standard_normal(5))  # one partial block
    add_input("ties_nf4", ties_input("nf4", 64))
    add_input("ties_fp4", ties_input("fp4", 64))

    for qt in ("nf4", "fp4"):
        for dq in (False, True):
            q4_case("normal", qt, 64, dq)
            q4_case("heavy", qt, 32, dq)
            q4_case("zeros", qt, 64, dq)
            q4_case("zeros", qt, 32, dq)
            q4_case("odd", qt, 128, dq)
            q4_case("big", qt, 4096, dq, store_deq=(qt == "nf4") == dq)
            q4_case("tiny", qt, 32, dq)
            q4_case("five", qt, 64, dq)
        q4_case("many", qt, 32, True, store_deq=False)
        q4_case("ties_" + qt, qt, 64, False)
    bw8_cases()
    mean_cases()
    path = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/bnb4.lqfx"
    write(path)
    print(f"wrote {len(records)} records, {len(cases)} quantize_4bit cases (bitsandbytes {bitsandbytes.__version__})")


if __name__ == "__main__":
    main()
