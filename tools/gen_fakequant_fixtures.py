#!/usr/bin/env python3
"""Reference fixtures for loquat's fake quantization, computed by PyTorch in float32 on the CPU.

Cases (names "<kind>/<i>/<field>"):
  pt/    torch.fake_quantize_per_tensor_affine: x, params [scale, zero_point, qmin, qmax], R, out,
         grad_x (the gradient of sum(out * R): R times the STE mask)
  pc/    torch.fake_quantize_per_channel_affine: x, scale, zp (i32), params [axis, qmin, qmax], R,
         out, grad_x
  pg/    per group along the last dim (torchao's layout), computed with fake_quantize_per_channel_affine
         on x viewed as (rows * cols / group, group): x, scale (rows, cols / group), zp (i32),
         params [group, qmin, qmax], R, out, grad_x
  lsqt/  torch._fake_quantize_learnable_per_tensor_affine: x, scale (1), zp (1, float), params
         [qmin, qmax, grad_factor], R, out, grad_x, grad_scale, grad_zp
  lsqc/  torch._fake_quantize_learnable_per_channel_affine: x, scale (C), zp (C, float), params
         [axis, qmin, qmax, grad_factor], R, out, grad_x, grad_scale, grad_zp
  pact/  PACT written with torch ops (clamp by a tensor alpha, straight-through rounding): x,
         alpha (1), params [bits], R, out, grad_x, grad_alpha
  dyn/   dynamic per-token fake quantization, torchao's arithmetic re-expressed with torch ops
         (_choose_qparams_per_token_asymmetric for asym, choose_qparams_affine SYMMETRIC for sym,
         then round(x * (1 / scale)) + zp clamped, (q - zp) * scale): x, params [bits, sym],
         scale, zp, out
  bnb4/  bitsandbytes.functional.quantize_4bit + dequantize_4bit (nf4 / fp4, no double quant): x,
         params [type (0 nf4, 1 fp4), block size], out
Values sit exactly on rounding ties (k + 1/2 with power-of-two scales) and beyond the code range.

Format: LQFX version 1, written by tools/lqfx.py.
Run: $(tools/pyenv.sh) tools/gen_fakequant_fixtures.py tests/fixtures/fakequant.lqfx
"""
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lqfx  # noqa: E402  (the LQFX container: put, write, records)

FORMAT_VERSION = lqfx.FORMAT_VERSION
gen = torch.Generator().manual_seed(20261127)
put = lqfx.put


def randn(*shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def rand(*shape, lo=0.0, hi=1.0):
    return lo + (hi - lo) * torch.rand(*shape, generator=gen)


def with_specials(x, scale, zp, qmin, qmax, huge=3e30):
    """Overwrites a few entries with ties (k + 1/2 codes), range edges and far-out values. The
    learnable backward converts zp + x / scale to int64, which overflows (undefined; INT64_MIN on
    x86, so torch files +huge under qmin) beyond 2^63: its cases use huge = 3e9."""
    flat = x.reshape(-1)
    n = flat.numel()
    specials = []
    for k in range(qmin - zp - 2, qmax - zp + 2):
        specials.append((k + 0.5) * scale)
    specials += [(qmax - zp + 0.49) * scale, (qmax - zp + 0.51) * scale, (qmin - zp - 0.49) * scale,
                 (qmin - zp - 0.51) * scale, 1e6, -1e6, huge, -huge, 0.0, -0.0]
    idx = torch.randperm(n, generator=gen)[: min(n // 2, len(specials))]
    for j, i in enumerate(idx.tolist()):
        flat[i] = specials[j]
    return flat.reshape(x.shape)


def per_tensor_cases():
    specs = [  # scale, zp, qmin, qmax, shape
        (0.1, 128, 0, 255, (8, 16)), (0.05, 0, -128, 127, (64,)), (0.25, 7, 0, 15, (4, 16)),
        (0.125, 0, -8, 7, (3, 20)), (0.6, 1, 0, 3, (40,)), (0.3, -1, -4, 3, (2, 3, 8)),
        (1.0 / 3.0, 100, 0, 255, (5, 13)), (0.02, 0, -127, 127, (50,)), (0.125, 16, 0, 31, (4, 4, 4)),
        (0.5, -3, -16, 15, (70,)), (2.0 ** -6, 3, 0, 7, (33,)), (0.0371, 60, 0, 127, (6, 11)),
    ]
    for i, (s, z, qmin, qmax, shape) in enumerate(specs):
        s = float(torch.tensor(s, dtype=torch.float32))
        span = (qmax - qmin) * s
        x = with_specials(randn(*shape, scale=span / 3) + (qmin + qmax - 2 * z) * s / 2, s, z, qmin, qmax)
        x.requires_grad_(True)
        out = torch.fake_quantize_per_tensor_affine(x, s, z, qmin, qmax)
        R = randn(*shape)
        (out * R).sum().backward()
        p = f"pt/{i}/"
        put(p + "x", x)
        put(p + "params", torch.tensor([s, z, qmin, qmax], dtype=torch.float32))
        put(p + "R", R)
        put(p + "out", out)
        put(p + "grad_x", x.grad)


def per_channel_cases():
    specs = [  # shape, axis, qmin, qmax, pow2 scales
        ((4, 8), 0, 0, 255, False), ((3, 5, 4), 1, -128, 127, True), ((2, 3, 4, 5), 3, 0, 15, True),
        ((2, 3, 4, 5), 2, -8, 7, False), ((6, 7), 1, 0, 3, True), ((3, 4, 6), 0, -4, 3, False),
    ]
    for i, (shape, axis, qmin, qmax, pow2) in enumerate(specs):
        C = shape[axis]
        if pow2:
            scale = 2.0 ** (-torch.randint(1, 6, (C,), generator=gen).float())
        else:
            scale = rand(C, lo=0.02, hi=0.4)
        zp = torch.randint(qmin + (qmax - qmin) // 4, qmax - (qmax - qmin) // 4 + 1, (C,), generator=gen,
                           dtype=torch.int32)
        bshape = [1] * len(shape)
        bshape[axis] = C
        span = ((qmax - qmin) * scale).reshape(bshape)
        x = randn(*shape) * span / 3
        # ties and out-of-range values, per channel
        xm = x.movedim(axis, 0).contiguous()
        for c in range(C):
            row = xm[c].reshape(-1)
            s, z = float(scale[c]), int(zp[c])
            vals = [(k + 0.5) * s for k in (qmin - z - 1, qmin - z, 0, 1, -1, qmax - z - 1, qmax - z)]
            vals += [(qmax - z + 3) * s, (qmin - z - 3) * s]
            for j, v in enumerate(vals[: row.numel() // 2]):
                row[(3 * j) % row.numel()] = v
        x = xm.movedim(0, axis).contiguous().requires_grad_(True)
        out = torch.fake_quantize_per_channel_affine(x, scale, zp, axis, qmin, qmax)
        R = randn(*shape)
        (out * R).sum().backward()
        p = f"pc/{i}/"
        put(p + "x", x)
        put(p + "scale", scale)
        put(p + "zp", zp)
        put(p + "params", torch.tensor([axis, qmin, qmax], dtype=torch.float32))
        put(p + "R", R)
        put(p + "out", out)
        put(p + "grad_x", x.grad)


def per_group_cases():
    specs = [((6, 16), 4, -8, 7), ((4, 32), 32, 0, 15), ((3, 24), 8, -128, 127), ((5, 12), 3, 0, 3)]
    for i, (shape, g, qmin, qmax) in enumerate(specs):
        rows, cols = shape
        ng = rows * cols // g
        scale = rand(ng, lo=0.05, hi=0.5)
        scale[::3] = 0.125  # exact ties on some groups
        zp = torch.randint(qmin + (qmax - qmin) // 4, qmax - (qmax - qmin) // 4 + 1, (ng,), generator=gen,
                           dtype=torch.int32)
        x = randn(ng, g) * ((qmax - qmin) * scale / 3).reshape(ng, 1)
        x[::3, 0] = 0.0625 * (2 * torch.randint(-9, 9, (x[::3, 0].numel(),), generator=gen).float() + 1)
        x[1::4, -1] = 1e3
        x = x.reshape(shape).contiguous().requires_grad_(True)
        out = torch.fake_quantize_per_channel_affine(x.reshape(ng, g), scale, zp, 0, qmin, qmax).reshape(shape)
        R = randn(*shape)
        (out * R).sum().backward()
        p = f"pg/{i}/"
        put(p + "x", x)
        put(p + "scale", scale.reshape(rows, cols // g))
        put(p + "zp", zp.reshape(rows, cols // g))
        put(p + "params", torch.tensor([g, qmin, qmax], dtype=torch.float32))
        put(p + "R", R)
        put(p + "out", out)
        put(p + "grad_x", x.grad)


def lsq_tensor_cases():
    specs = [  # scale, zp (float), qmin, qmax, shape, grad_factor ("lsq" = 1/sqrt(N qmax))
        (0.1, 128.3, 0, 255, (8, 16), 1.0), (0.05, 0.0, -128, 127, (64,), "lsq"), (0.25, 2.5, 0, 15, (4, 16), 1.0),
        (0.125, -1.3, -8, 7, (3, 20), 0.5), (0.6, 1.5, 0, 3, (40,), "lsq"), (0.3, 0.7, -4, 3, (2, 3, 8), 2.0),
        (0.0371, 60.49, 0, 127, (6, 11), 0.25), (0.5, -0.5, -16, 15, (70,), 1.0),
    ]
    for i, (s, z, qmin, qmax, shape, gf) in enumerate(specs):
        n = math.prod(shape)
        gfv = 1.0 / math.sqrt(n * qmax) if gf == "lsq" else gf
        zi = int(round(z))
        x = with_specials(randn(*shape, scale=(qmax - qmin) * s / 3) + (qmin + qmax - 2 * zi) * s / 2, s, zi, qmin,
                          qmax, huge=3e9)
        x = x.requires_grad_(True)
        scale = torch.tensor([s], dtype=torch.float32, requires_grad=True)
        zp = torch.tensor([z], dtype=torch.float32, requires_grad=True)
        out = torch._fake_quantize_learnable_per_tensor_affine(x, scale, zp, qmin, qmax, gfv)
        R = randn(*shape)
        (out * R).sum().backward()
        p = f"lsqt/{i}/"
        put(p + "x", x)
        put(p + "scale", scale)
        put(p + "zp", zp)
        put(p + "params", torch.tensor([qmin, qmax, gfv], dtype=torch.float32))
        put(p + "R", R)
        put(p + "out", out)
        put(p + "grad_x", x.grad)
        put(p + "grad_scale", scale.grad)
        put(p + "grad_zp", zp.grad)


def lsq_channel_cases():
    specs = [((4, 8), 0, 0, 255, 1.0), ((3, 5, 4), 1, -8, 7, "lsq"), ((2, 3, 4, 5), 3, 0, 15, 0.5),
             ((6, 7), 1, -128, 127, "lsq"), ((3, 4, 6), 2, 0, 3, 1.0)]
    for i, (shape, axis, qmin, qmax, gf) in enumerate(specs):
        C = shape[axis]
        n = math.prod(shape) // C
        gfv = 1.0 / math.sqrt(n * qmax) if gf == "lsq" else gf
        scale = rand(C, lo=0.05, hi=0.4)
        scale[::2] = 0.125
        mid = (qmin + qmax) / 2
        zp = (mid + rand(C, lo=-0.25, hi=0.25) * (qmax - qmin)).floor() + torch.tensor(
            [0.5, 0.3, -0.5, 0.0, 0.7, 0.49, -0.2][:C] + [0.5] * max(0, C - 7))[:C]
        zp = zp.float()
        bshape = [1] * len(shape)
        bshape[axis] = C
        zr = zp.round().reshape(bshape)
        x = randn(*shape) * ((qmax - qmin) * scale / 3).reshape(bshape) + ((qmin + qmax) / 2 - zr) * scale.reshape(bshape)
        x.reshape(-1)[::5] = 1e3 * torch.sign(randn(x.reshape(-1)[::5].numel()))
        x.reshape(-1)[1::7] = 0.0625 * (2 * torch.randint(-20, 20, (x.reshape(-1)[1::7].numel(),), generator=gen) + 1)
        x = x.contiguous().requires_grad_(True)
        scale.requires_grad_(True)
        zp.requires_grad_(True)
        out = torch._fake_quantize_learnable_per_channel_affine(x, scale, zp, axis, qmin, qmax, gfv)
        R = randn(*shape)
        (out * R).sum().backward()
        p = f"lsqc/{i}/"
        put(p + "x", x)
        put(p + "scale", scale)
        put(p + "zp", zp)
        put(p + "params", torch.tensor([axis, qmin, qmax, gfv], dtype=torch.float32))
        put(p + "R", R)
        put(p + "out", out)
        put(p + "grad_x", x.grad)
        put(p + "grad_scale", scale.grad)
        put(p + "grad_zp", zp.grad)


def pact_cases():
    for i, (bits, a, shape) in enumerate([(4, 1.5, (6, 10)), (2, 0.8, (40,)), (8, 3.0, (3, 4, 5)), (3, 1.0, (50,))]):
        x = randn(*shape, scale=a)
        x.reshape(-1)[::9] = a * (torch.arange(x.reshape(-1)[::9].numel()) % 3 + 1.25)  # beyond alpha
        levels = 2 ** bits - 1
        x.reshape(-1)[2::11] = (a / levels) * (torch.arange(x.reshape(-1)[2::11].numel()) % levels + 0.5)
        x = x.float().requires_grad_(True)
        alpha = torch.tensor([a], dtype=torch.float32, requires_grad=True)
        # forward values: the float32 steps of loquat's PACT (scale, reciprocal, round half even)
        s = alpha / levels
        inv = 1.0 / s
        xc = torch.minimum(torch.clamp(x, min=0.0), alpha)  # clamp at 0, then at alpha (a tensor)
        yq = torch.clamp(torch.round(xc * inv), 0, levels) * s
        # straight-through: forward yq, gradient of xc (x in [0, alpha) to x, x > alpha to alpha)
        y = xc + (yq - xc).detach()
        R = randn(*shape)
        (y * R).sum().backward()
        p = f"pact/{i}/"
        put(p + "x", x)
        put(p + "alpha", alpha)
        put(p + "params", torch.tensor([bits], dtype=torch.float32))
        put(p + "R", R)
        put(p + "out", yq)
        put(p + "grad_x", x.grad)
        put(p + "grad_alpha", alpha.grad)


def per_token_qparams(x, qmin, qmax, sym):
    """torchao's per-token qparams, re-expressed with torch ops (see the module docstring)."""
    mn = torch.amin(x, dim=-1, keepdim=True)
    mx = torch.amax(x, dim=-1, keepdim=True)
    lo = torch.min(mn, torch.zeros_like(mn))
    hi = torch.max(mx, torch.zeros_like(mx))
    eps = torch.finfo(torch.float32).eps
    if sym:
        scale = torch.max(-lo, hi) / (float(qmax - qmin) / 2)
        return torch.clamp(scale, min=eps), torch.zeros_like(scale)
    scale = ((hi - lo) / float(qmax - qmin)).clamp(min=eps)
    dmin, dmax = lo / scale, hi / scale
    zp = torch.where((qmin + dmin) + (qmax + dmax) > 0, qmin - dmin, qmax - dmax)
    return scale, torch.clamp(zp, qmin, qmax).round()


def zp_choice_rows(bits, n_rows, cols):
    """Rows whose min / max sit where the two zero-point candidates of the asymmetric rule round
    differently (about half a code from a tie), so the choice between them is exercised."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    rows = []
    while len(rows) < n_rows:
        m = int(torch.randint(1, qmax - qmin - 1, (1,), generator=gen))
        s0 = float(rand(1, lo=0.001, hi=0.05))
        jitter = 1 + rand(2, lo=-1e-6, hi=1e-6)
        lo = torch.tensor([-(m + 0.5) * s0], dtype=torch.float32) * jitter[0]
        hi = torch.tensor([(qmax - qmin - m - 0.5) * s0], dtype=torch.float32) * jitter[1]
        s = ((hi - lo) / float(qmax - qmin)).clamp(min=torch.finfo(torch.float32).eps)
        a = torch.clamp(qmin - lo / s, qmin, qmax).round()
        b = torch.clamp(qmax - hi / s, qmin, qmax).round()
        if a.item() != b.item():
            row = lo + (hi - lo) * rand(cols)
            row[0], row[1] = lo, hi
            rows.append(row)
    return torch.stack(rows)


def dynamic_cases():
    specs = [((4, 16), 8, 0), ((2, 3, 32), 8, 1), ((5, 9), 4, 0), ((3, 12), 4, 1), ((6, 7), 2, 0), ((2, 2, 10), 6, 0),
             ((8, 16), 8, "zp"), ((8, 12), 4, "zp")]
    for i, (shape, bits, sym) in enumerate(specs):
        if sym == "zp":
            x, sym = zp_choice_rows(bits, shape[0], shape[1]), 0
        else:
            x = randn(*shape, scale=2.0) + randn(*shape[:-1], 1)
            x.reshape(-1, shape[-1])[0] = torch.abs(x.reshape(-1, shape[-1])[0])  # an all-positive row
            x.reshape(-1, shape[-1])[-1] = 0.0  # an all-zero row (scale = eps)
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scale, zp = per_token_qparams(x, qmin, qmax, bool(sym))
        q = torch.clamp(torch.round(x * (1.0 / scale)) + zp, qmin, qmax)
        out = (q - zp) * scale
        p = f"dyn/{i}/"
        put(p + "x", x)
        put(p + "params", torch.tensor([bits, sym], dtype=torch.float32))
        put(p + "scale", scale.reshape(-1))
        put(p + "zp", zp.reshape(-1))
        put(p + "out", out)


def bnb4_cases():
    """bitsandbytes quantize_4bit then dequantize_4bit (no double quantization) on the CPU."""
    try:
        import bitsandbytes.functional as bnbf
    except ImportError:  # the fixture then has no bnb records and the test says so
        print("bitsandbytes not importable: no bnb4 fake-quant records")
        return
    specs = [("nf4", 64, (4, 96)), ("fp4", 64, (3, 70)), ("nf4", 32, (130,)), ("fp4", 128, (2, 3, 50)),
             ("nf4", 4096, (5000,))]
    for i, (qt, block, shape) in enumerate(specs):
        x = randn(*shape)
        x.reshape(-1)[::17] *= 6.0  # heavy tail
        # flattened: bitsandbytes 0.50.2's CPU dequantize_4bit returns other values for a 2-D
        # tensor whose rows are not whole blocks (e.g. (4, 96), block 64), though its packed bytes
        # and absmax are the same; for 1-D input it equals code[q] * absmax, checked below
        q, st = bnbf.quantize_4bit(x.reshape(-1), blocksize=block, quant_type=qt, compress_statistics=False)
        out = bnbf.dequantize_4bit(q, st, quant_type=qt)
        b = q.reshape(-1)
        idx = torch.stack([(b >> 4) & 15, b & 15], 1).reshape(-1).long()[: x.numel()]
        manual = st.code[idx] * st.absmax.repeat_interleave(block)[: x.numel()]
        assert torch.equal(manual, out.reshape(-1)), "bitsandbytes dequantize_4bit disagrees with code[q] * absmax"
        p = f"bnb4/{i}/"
        put(p + "x", x)
        put(p + "params", torch.tensor([0 if qt == "nf4" else 1, block], dtype=torch.float32))
        put(p + "out", out.reshape(shape).float())


def main():
    torch.manual_seed(0)
    put("meta/torch_version", torch.__version__)
    put("meta/format", f"fakequant v{FORMAT_VERSION}")
    per_tensor_cases()
    per_channel_cases()
    per_group_cases()
    lsq_tensor_cases()
    lsq_channel_cases()
    pact_cases()
    dynamic_cases()
    bnb4_cases()
    path = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/fakequant.lqfx"
    lqfx.write(path)
    print(f"wrote {len(lqfx.records)} records to {path} (torch {torch.__version__}, {os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
