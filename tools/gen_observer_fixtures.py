#!/usr/bin/env python3
"""Reference fixtures for loquat's observers (quant/observer.c, quant/qparams.c), computed by torch.ao.

Records (LQFX version 1, written by tools/lqfx.py):

  meta/torch_version                 bytes
  qp/<j>/params   f32 [symmetric, quant_min, quant_max, symmetric zero point]
  qp/<j>/minmax   f32 (n, 2)         observer min_val / max_val pairs fed to calculate_qparams
  qp/<j>/scale    f32 (n)            torch's scale for each pair
  qp/<j>/zero     i32 (n)            torch's zero point for each pair
  obs/<i>/params  f32 [kind (0 min-max, 1 moving average), per_channel, ch_axis, symmetric,
                       quant_min, quant_max, 1e4 * averaging_constant (an integer: the test divides by 1e4
                       in double to get torch's python float back), group_size (0 = none)]
  obs/<i>/shape   i32 (ndim)         one batch's shape (1..4 dims, PyTorch order)
  obs/<i>/x       f32 (n_batches, numel)    the batches, flattened, fed in order
  obs/<i>/min     f32 (n_batches, C)  torch's min_val after each batch (C = 1 per tensor)
  obs/<i>/max     f32 (n_batches, C)
  obs/<i>/scale   f32 (C)             calculate_qparams after the last batch
  obs/<i>/zero    i32 (C)

Symmetric cases use torch.qint8 (zero point 0) and asymmetric ones torch.quint8, with quant_min /
quant_max set for 2..8 bits, i.e. loquat's lq_affine_range. Per-group cases (group_size > 0) are
torch's PerChannel observers on x.reshape(-1, group_size) along axis 0 (torch has no group observer).
The qp/ sets also hold torch's symmetric quint8 (zero point 128, or the floor midpoint of a custom
range) for lq_affine_qparams_q.

Run: $(tools/pyenv.sh) tools/gen_observer_fixtures.py tests/fixtures/observers.lqfx
"""
import os
import sys

import torch
from torch.ao.quantization.observer import (MinMaxObserver, MovingAverageMinMaxObserver,
                                            MovingAveragePerChannelMinMaxObserver, PerChannelMinMaxObserver)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lqfx as fx  # noqa: E402  (the LQFX container: put, write, records)

FORMAT_VERSION = 1
assert fx.FORMAT_VERSION == FORMAT_VERSION
gen = torch.Generator().manual_seed(20261127)


def qrange(bits, symmetric):
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if symmetric else (0, (1 << bits) - 1)


def near_ties(R, count):
    """(min, max) pairs whose affine zero point differs between dividing by the float32 scale and
    multiplying by its float32 reciprocal: they pin the exact arithmetic (torch still gives the answer).
    Found by stepping min a few hundred ulps around an exact tie -(k + 0.5) scale."""
    import numpy as np
    rng = np.random.default_rng(R)
    out = []
    steps = np.arange(-300, 301, dtype=np.int32)
    for _ in range(10000):
        if len(out) >= count:
            break
        k = int(rng.integers(0, R))
        mx = np.float32(rng.uniform(0.1, 10.0))
        mn0 = np.float32(-(k + 0.5) * mx / (R - k - 0.5))
        mn = (np.array([mn0], dtype=np.float32).view(np.int32) + steps).view(np.float32)
        s = (mx - mn) / np.float32(R)
        a = np.rint(mn / s)
        b = np.rint(mn * (np.float32(1.0) / s))
        hit = np.nonzero(a != b)[0]
        if len(hit):
            out.append((float(mn[hit[0]]), float(mx)))
    assert len(out) == count, f"no near ties found for range {R}"
    return out


def qparams_sets():
    """Many (min, max) pairs straight into calculate_qparams: magnitudes 1e-9..1e4, signs mixed."""
    j = 0
    n = 48
    mags = torch.tensor([1e-9, 1e-7, 1e-5, 1e-3, 0.1, 1.0, 3.0, 77.0, 1e4])
    for sym, dtype in ((True, torch.qint8), (False, torch.quint8), (True, torch.quint8)):
        for bits in range(2, 9):
            qmin, qmax = qrange(bits, sym and dtype == torch.qint8)
            scheme = torch.per_tensor_symmetric if sym else torch.per_tensor_affine
            custom = not (dtype == torch.quint8 and sym and bits == 8)  # bits 8 quint8 sym: torch's default range
            kw = dict(quant_min=qmin, quant_max=qmax) if custom else {}
            obs = MinMaxObserver(dtype=dtype, qscheme=scheme, **kw)
            lo = torch.randn(n, generator=gen) * mags[torch.randint(0, len(mags), (n,), generator=gen)]
            hi = torch.randn(n, generator=gen) * mags[torch.randint(0, len(mags), (n,), generator=gen)]
            mn, mx = torch.minimum(lo, hi), torch.maximum(lo, hi)
            mn[0], mx[0] = 0.0, 0.0            # all zeros
            mn[1], mx[1] = 2.5, 2.5            # constant positive
            mn[2], mx[2] = -1.25, -1.25        # constant negative
            mn[3], mx[3] = 1.0, 1.0 + 1e-6     # tiny range away from zero
            mn[4], mx[4] = -3e-9, 2e-9         # tiny range around zero: eps floor
            mn[5], mx[5] = -1.0, 1.0
            R = qmax - qmin
            for t in range(4):  # exact ties: scale 2^-t, min / scale = -(k + 0.5): half to even decides
                k = (t * 5) % R
                mn[6 + t], mx[6 + t] = -(k + 0.5) * 2.0 ** -t, (R - k - 0.5) * 2.0 ** -t
            if not sym:  # near ties: pairs where min / scale and min * (1 / scale) round apart in float32
                for t, (a, b) in enumerate(near_ties(R, 4)):
                    mn[10 + t], mx[10 + t] = a, b
            scales, zeros = [], []
            for k in range(n):
                obs.min_val.copy_(mn[k])
                obs.max_val.copy_(mx[k])
                s, z = obs.calculate_qparams()
                scales.append(s.reshape(-1)[0])
                zeros.append(z.reshape(-1)[0])
            symzero = 0 if dtype == torch.qint8 or not sym else ((qmin + qmax) // 2 if custom else 128)
            p = f"qp/{j}/"
            fx.put(p + "params", torch.tensor([float(sym), qmin, qmax, symzero], dtype=torch.float32))
            fx.put(p + "minmax", torch.stack((mn, mx), dim=1))
            fx.put(p + "scale", torch.stack(scales))
            fx.put(p + "zero", torch.stack(zeros).to(torch.int32))
            j += 1


def data(kind, shape):
    if kind == "normal":
        return torch.randn(*shape, generator=gen)
    if kind == "heavy":  # student-t like: normal / sqrt(chi2 / 2)
        z = torch.randn(*shape, generator=gen)
        c = torch.randn(*shape, generator=gen) ** 2 + torch.randn(*shape, generator=gen) ** 2
        return z / torch.sqrt(c / 2 + 1e-3)
    if kind == "positive":
        return torch.rand(*shape, generator=gen) * 5 + 0.5
    if kind == "negative":
        return -torch.rand(*shape, generator=gen) * 0.3 - 0.01
    if kind == "zeros":
        return torch.zeros(*shape)
    if kind == "const":
        return torch.full(shape, 0.7)
    if kind == "tiny":
        return torch.randn(*shape, generator=gen) * 1e-9
    if kind == "narrow":
        return 1.0 + torch.rand(*shape, generator=gen) * 1e-6
    raise ValueError(kind)


case_idx = 0


def obs_case(kind, per_channel, axis, sym, bits, batches, avg=0.01, group=0):
    """batches: list of tensors of one shape."""
    global case_idx
    dtype = torch.qint8 if sym else torch.quint8
    qmin, qmax = qrange(bits, sym)
    if per_channel or group:
        scheme = torch.per_channel_symmetric if sym else torch.per_channel_affine
        cls = MovingAveragePerChannelMinMaxObserver if kind == 1 else PerChannelMinMaxObserver
        kw = dict(ch_axis=0 if group else axis)
    else:
        scheme = torch.per_tensor_symmetric if sym else torch.per_tensor_affine
        cls = MovingAverageMinMaxObserver if kind == 1 else MinMaxObserver
        kw = {}
    if kind == 1:
        kw["averaging_constant"] = avg
    obs = cls(dtype=dtype, qscheme=scheme, quant_min=qmin, quant_max=qmax, **kw)
    mins, maxs = [], []
    for b in batches:
        obs(b.reshape(-1, group) if group else b)
        mins.append(obs.min_val.clone().reshape(-1))
        maxs.append(obs.max_val.clone().reshape(-1))
    s, z = obs.calculate_qparams()
    p = f"obs/{case_idx}/"
    fx.put(p + "params", torch.tensor([kind, int(per_channel), axis, float(sym), qmin, qmax, round(avg * 1e4), group],
                                      dtype=torch.float32))
    fx.put(p + "shape", torch.tensor(batches[0].shape, dtype=torch.int32))
    fx.put(p + "x", torch.stack([b.reshape(-1) for b in batches]))
    fx.put(p + "min", torch.stack(mins))
    fx.put(p + "max", torch.stack(maxs))
    fx.put(p + "scale", s.reshape(-1))
    fx.put(p + "zero", z.reshape(-1).to(torch.int32))
    case_idx += 1


def observer_cases():
    # per tensor min-max: every bit width, both schemes, several data kinds, 3 batches
    kinds = ["normal", "heavy", "positive", "negative"]
    for bits in range(2, 9):
        for sym in (True, False):
            d = kinds[(bits + sym) % len(kinds)]
            obs_case(0, False, 0, sym, bits, [data(d, (5, 7)) * (1 + k) for k in range(3)])
    # degenerate data
    for d in ("zeros", "const", "tiny", "narrow"):
        for sym in (True, False):
            obs_case(0, False, 0, sym, 8, [data(d, (16,))])
            obs_case(0, False, 0, sym, 4, [data(d, (4, 4))])
    # per channel min-max, axis 0 and 1 (and the last axis of a 3-D input)
    for axis, shape in ((0, (6, 10)), (1, (6, 10)), (2, (3, 4, 5)), (1, (2, 3, 4, 2))):
        for sym in (True, False):
            for bits in (4, 8):
                batches = [data("heavy" if k % 2 else "normal", shape) for k in range(3)]
                batches[0][0] = 0.0  # a channel (or part of one) of zeros
                obs_case(0, True, axis, sym, bits, batches)
    # moving average, per tensor and per channel
    for avg in (0.01, 0.25):
        for sym in (True, False):
            for bits in (3, 8):
                batches = [data(["normal", "positive", "heavy", "negative", "normal"][k], (4, 9)) for k in range(5)]
                obs_case(1, False, 0, sym, bits, batches, avg=avg)
                obs_case(1, True, 0, sym, bits, batches, avg=avg)
                obs_case(1, True, 1, sym, bits, batches, avg=avg)
    # moving average with constants inexact in float32 and batches of very different scales, so that
    # c * (cur - min) in float32 vs double shows
    for avg in (0.3, 0.7, 0.9):
        for sym in (True, False):
            batches = [data("normal", (3, 5)) * float(10.0 ** ((k * 7) % 5 - 2)) + (k % 3 - 1) * 0.01
                       for k in range(12)]
            obs_case(1, False, 0, sym, 8, batches, avg=avg)
            obs_case(1, True, 1, sym, 4, batches, avg=avg)
    # per group (torch per channel on x.reshape(-1, G)), min-max and moving average
    for G, shape in ((4, (3, 8)), (8, (2, 16)), (16, (4, 16))):
        for sym in (True, False):
            batches = [data("heavy", shape) for _ in range(3)]
            obs_case(0, False, 0, sym, 4, batches, group=G)
            obs_case(1, False, 0, sym, 4, batches, avg=0.1, group=G)


def main():
    fx.put("meta/torch_version", torch.__version__)
    qparams_sets()
    observer_cases()
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/observers.lqfx"
    fx.write(out)
    print(f"wrote {len(fx.records)} records, {case_idx} observer cases (torch {torch.__version__}) to {out}")


if __name__ == "__main__":
    main()
