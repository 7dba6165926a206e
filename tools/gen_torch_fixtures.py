#!/usr/bin/env python3
"""Reference fixtures for loquat's ops and optimizers, computed by PyTorch.

For every case: the inputs, the op's parameters, a random projection R, the output, and the
gradient of sum(out * R) with respect to each differentiable input, all as PyTorch computes
them in float32. tests/test_torch_parity.c runs loquat on the same inputs and compares.

File format (little-endian), version 1:
  "LQFX" u32 version u32 n_records
  record: u16 name_len, name, u8 dtype (0 f32, 1 i32, 2 bytes), u8 ndim, i64 shape[ndim], data
Names are "<op>/<case>/<field>".

Run: $(tools/pyenv.sh) tools/gen_torch_fixtures.py tests/fixtures/torch_ops.lqfx
"""
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lqfx import put, records, write  # noqa: E402  (the LQFX container)


gen = torch.Generator().manual_seed(20261126)


def randn(*shape, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).requires_grad_(True)


def case(op, idx, inputs, params, fn, int_inputs=None):
    """inputs: dict name -> leaf tensor (float, requires grad); params: list of numbers."""
    out = fn()
    R = torch.randn(out.shape, generator=gen)
    (out * R).sum().backward()
    p = f"{op}/{idx}/"
    for k, v in inputs.items():
        put(p + k, v)
        put(p + "grad_" + k, v.grad if v.grad is not None else torch.zeros_like(v))
    for k, v in (int_inputs or {}).items():
        put(p + k, v)
    put(p + "params", torch.tensor([float(x) for x in params], dtype=torch.float32))
    put(p + "R", R)
    put(p + "out", out)


def matmul_cases():
    specs = [  # B (0 = 2D), M, K, N, ta, tb, shared_b
        (0, 5, 7, 3, 0, 0, 1), (3, 4, 6, 5, 0, 1, 1), (2, 3, 4, 5, 1, 0, 0), (2, 6, 3, 4, 1, 1, 0),
        (4, 8, 16, 8, 0, 0, 0),
    ]
    for i, (B, M, K, N, ta, tb, shared) in enumerate(specs):
        ash = (K, M) if ta else (M, K)
        bsh = (N, K) if tb else (K, N)
        a = randn(*((B,) if B else ()), *ash)
        b = randn(*bsh) if (shared or not B) else randn(B, *bsh)
        case("matmul", i, {"a": a, "b": b}, [ta, tb],
             lambda a=a, b=b, ta=ta, tb=tb: (a.mT if ta else a) @ (b.mT if tb else b))


def binary_cases():
    shapes = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((5,), (2, 3, 1))]
    for name, f in (("add", torch.add), ("sub", torch.sub), ("mul", torch.mul)):
        for i, (sa, sb) in enumerate(shapes):
            a, b = randn(*sa), randn(*sb)
            case(name, i, {"a": a, "b": b}, [], lambda a=a, b=b, f=f: f(a, b))


def reduce_cases():
    for name in ("sum", "mean"):
        for i, (axis, keep) in enumerate([(0, 0), (1, 1), (-1, 0), (127, 0)]):
            x = randn(3, 4, 5)
            f = (lambda x, axis=axis, keep=keep, name=name: (x.sum() if name == "sum" else x.mean()) if axis == 127
                 else (x.sum(axis, keepdim=bool(keep)) if name == "sum" else x.mean(axis, keepdim=bool(keep))))
            case(name, i, {"x": x}, [axis, keep], lambda x=x, f=f: f(x))


def softmax_cases():
    for name, f in (("softmax", F.softmax), ("log_softmax", F.log_softmax)):
        for i, axis in enumerate([-1, 0, 1]):
            x = randn(3, 4, 6, scale=3.0)
            case(name, i, {"x": x}, [axis], lambda x=x, axis=axis, f=f: f(x, dim=axis))


def norm_cases():
    for i, (shape, eps, has_w) in enumerate([((2, 3, 16), 1e-5, 1), ((4, 7), 1e-6, 1), ((3, 8), 1e-5, 0)]):
        x = randn(*shape)
        w = randn(shape[-1]) if has_w else None
        ins = {"x": x, **({"w": w} if has_w else {})}

        def rms(x=x, w=w, eps=eps):  # as transformers' LlamaRMSNorm
            var = x.pow(2).mean(-1, keepdim=True)
            y = x * torch.rsqrt(var + eps)
            return y * w if w is not None else y
        case("rmsnorm", i, ins, [eps, has_w], rms)
    for i, (shape, eps, has_w, has_b) in enumerate([((2, 3, 16), 1e-5, 1, 1), ((4, 7), 1e-5, 1, 0), ((3, 8), 1e-6, 0, 0)]):
        x = randn(*shape)
        w = randn(shape[-1]) if has_w else None
        b = randn(shape[-1]) if has_b else None
        ins = {"x": x, **({"w": w} if has_w else {}), **({"b": b} if has_b else {})}
        case("layernorm", i, ins, [eps, has_w, has_b],
             lambda x=x, w=w, b=b, eps=eps: F.layer_norm(x, (x.shape[-1],), w, b, eps))


def activation_cases():
    for i, shape in enumerate([(3, 7), (2, 3, 5)]):
        x = randn(*shape, scale=2.5)
        case("silu", i, {"x": x}, [], lambda x=x: F.silu(x))
        x = randn(*shape, scale=2.5)
        case("relu", i, {"x": x}, [], lambda x=x: F.relu(x))
        for j, approx in enumerate(("none", "tanh")):
            x = randn(*shape, scale=2.5)
            case("gelu", 2 * i + j, {"x": x}, [j], lambda x=x, approx=approx: F.gelu(x, approximate=approx))
        g, u = randn(*shape, scale=2.0), randn(*shape)
        case("swiglu", i, {"gate": g, "up": u}, [], lambda g=g, u=u: F.silu(g) * u)


def embedding_cases():
    for i, (V, C, ids_shape) in enumerate([(11, 6, (2, 5)), (7, 3, (9,))]):
        table = randn(V, C)
        ids = torch.randint(0, V, ids_shape, generator=gen)
        case("embedding", i, {"table": table}, [], lambda table=table, ids=ids: F.embedding(ids, table),
             int_inputs={"ids": ids.to(torch.int32)})


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_ref(x, pos, theta, layout, rot):
    """x (B, T, H, D); pos (B, T); HF (layout 0) or interleaved (layout 1) on the first rot dims."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rot, 2, dtype=torch.int64).float() / rot))
    freqs = pos.float()[..., None] * inv_freq  # (B, T, rot/2)
    xr, xp = x[..., :rot], x[..., rot:]
    if layout == 0:
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]  # (B, T, 1, rot)
        out = xr * emb.cos() + rotate_half(xr) * emb.sin()
    else:
        c, s = freqs.cos()[:, :, None, :], freqs.sin()[:, :, None, :]
        x0, x1 = xr[..., 0::2], xr[..., 1::2]
        out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)
    return torch.cat((out, xp), dim=-1)


def rope_cases():
    specs = [  # B, T, H, D, rot, layout, theta, pos_2d
        (2, 5, 3, 8, 8, 0, 10000.0, 1), (1, 6, 2, 8, 8, 1, 10000.0, 0), (2, 4, 2, 12, 8, 0, 500000.0, 1),
        (1, 3, 4, 6, 4, 1, 100.0, 0),
    ]
    for i, (B, T, H, D, rot, layout, theta, pos2d) in enumerate(specs):
        x = randn(B, T, H, D)
        pos = torch.randint(0, 2048, (B, T), generator=gen) if pos2d else torch.arange(T).repeat(B, 1) * 37
        pos_saved = pos if pos2d else pos[0]
        case("rope", i, {"x": x}, [theta, layout, rot, pos2d],
             lambda x=x, pos=pos, theta=theta, layout=layout, rot=rot: rope_ref(x, pos, theta, layout, rot),
             int_inputs={"pos": pos_saved.to(torch.int32)})


def attention_cases():
    specs = [  # B, T, Hq, Hkv, D, causal, scale, docs
        (2, 5, 4, 2, 8, 1, 0.0, 0), (1, 7, 3, 3, 4, 0, 0.0, 0), (2, 6, 4, 1, 8, 1, 0.3, 0), (1, 8, 2, 1, 4, 1, 0.0, 1),
    ]
    for i, (B, T, Hq, Hkv, D, causal, scale, docs) in enumerate(specs):
        q, k, v = randn(B, T, Hq, D), randn(B, T, Hkv, D), randn(B, T, Hkv, D)
        doc = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2]] * B, dtype=torch.int32)[:, :T] if docs else None
        sc = scale if scale > 0 else 1.0 / math.sqrt(D)

        def attn(q=q, k=k, v=v, causal=causal, sc=sc, doc=doc, g=Hq // Hkv, T=T):
            kk = k.repeat_interleave(g, dim=2).transpose(1, 2)
            vv = v.repeat_interleave(g, dim=2).transpose(1, 2)
            mask = None
            if doc is not None:
                same = doc[:, :, None] == doc[:, None, :]
                tri = torch.ones(T, T, dtype=torch.bool).tril()
                mask = (same & tri)[:, None]
            o = F.scaled_dot_product_attention(q.transpose(1, 2), kk, vv, attn_mask=mask,
                                               is_causal=bool(causal) and mask is None, scale=sc)
            return o.transpose(1, 2)
        case("attention", i, {"q": q, "k": k, "v": v}, [causal, scale, docs], attn,
             int_inputs={"doc": doc} if docs else None)


def cross_entropy_cases():
    for i, (shape, red) in enumerate([((6, 10), 0), ((2, 5, 7), 0), ((2, 5, 7), 1)]):
        logits = randn(*shape, scale=2.0)
        t = torch.randint(0, shape[-1], shape[:-1], generator=gen)
        t.view(-1)[::3] = -100
        case("cross_entropy", i, {"logits": logits}, [red],
             lambda logits=logits, t=t, red=red: F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1),
                                                                ignore_index=-100,
                                                                reduction="mean" if red == 0 else "sum"),
             int_inputs={"targets": t.to(torch.int32)})


def conv_pool_cases():
    specs = [  # N, C, H, W, O, KH, KW, sh, sw, ph, pw, bias
        (2, 3, 7, 6, 4, 3, 3, 2, 2, 1, 1, 1), (1, 2, 5, 5, 3, 2, 3, 1, 2, 0, 1, 0), (2, 1, 8, 8, 2, 5, 5, 1, 1, 2, 2, 1),
    ]
    for i, (N, C, H, W, O, KH, KW, sh, sw, ph, pw, bias) in enumerate(specs):
        x, w = randn(N, C, H, W), randn(O, C, KH, KW, scale=0.5)
        b = randn(O) if bias else None
        ins = {"x": x, "w": w, **({"b": b} if bias else {})}
        case("conv2d", i, ins, [sh, sw, ph, pw, bias],
             lambda x=x, w=w, b=b, s=(sh, sw), p=(ph, pw): F.conv2d(x, w, b, stride=s, padding=p))
    pspecs = [(2, 3, 7, 6, 3, 3, 2, 2, 1, 1), (1, 2, 6, 6, 2, 2, 2, 2, 0, 0), (1, 2, 5, 7, 3, 2, 1, 1, 1, 1)]
    for i, (N, C, H, W, kh, kw, sh, sw, ph, pw) in enumerate(pspecs):
        x = randn(N, C, H, W)
        case("max_pool2d", i, {"x": x}, [kh, kw, sh, sw, ph, pw],
             lambda x=x, k=(kh, kw), s=(sh, sw), p=(ph, pw): F.max_pool2d(x, k, s, p))
        x = randn(N, C, H, W)
        case("avg_pool2d", i, {"x": x}, [kh, kw, sh, sw, ph, pw],
             lambda x=x, k=(kh, kw), s=(sh, sw), p=(ph, pw): F.avg_pool2d(x, k, s, p, count_include_pad=False))


def optimizer_cases():
    """Parameter trajectories of torch.optim over fixed gradient sequences."""
    steps = 6
    p0 = torch.randn(2, 37, generator=gen)  # row 0 decayed, row 1 not (loquat's no-decay region)
    grads = torch.randn(steps, 2, 37, generator=gen)
    cfgs = [("adamw", dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)),
            ("adamw", dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.0)),
            ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=False)),
            ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=True)),
            ("sgd", dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False))]
    for i, (kind, cfg) in enumerate(cfgs):
        a = p0[0].clone().requires_grad_(True)
        b = p0[1].clone().requires_grad_(True)
        if kind == "adamw":
            opt = torch.optim.AdamW([{"params": [a]}, {"params": [b], "weight_decay": 0.0}], foreach=False, **cfg)
            params = [cfg["lr"], cfg["betas"][0], cfg["betas"][1], cfg["eps"], cfg["weight_decay"]]
        else:
            opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "weight_decay": 0.0}], foreach=False, **cfg)
            params = [cfg["lr"], cfg["momentum"], cfg["dampening"], cfg["weight_decay"], float(cfg["nesterov"])]
        traj = []
        for s in range(steps):
            a.grad, b.grad = grads[s, 0].clone(), grads[s, 1].clone()
            opt.step()
            traj.append(torch.stack((a.detach().clone(), b.detach().clone())))
        p = f"{kind}/{i}/"
        put(p + "p0", p0)
        put(p + "grads", grads)
        put(p + "params", torch.tensor(params, dtype=torch.float32))
        put(p + "traj", torch.stack(traj))


def main():
    torch.manual_seed(0)
    put("meta/torch_version", torch.__version__)
    matmul_cases()
    binary_cases()
    reduce_cases()
    softmax_cases()
    norm_cases()
    activation_cases()
    embedding_cases()
    rope_cases()
    attention_cases()
    cross_entropy_cases()
    conv_pool_cases()
    optimizer_cases()
    write(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/torch_ops.lqfx")
    print(f"wrote {len(records)} records (torch {torch.__version__})")


if __name__ == "__main__":
    main()
