#!/usr/bin/env python3
"""Reference fixtures for loquat's quantized matmul (lq_qmatmul), from PyTorch, bitsandbytes and gguf.

For each case: a weight W (N, K) stored in a quantized format exactly as the reference library
stores it, an input x (B, T, K), a random projection R, out = x @ deq(W)^T and grad_x = d sum(out * R)
/ dx, in float32:
  f16, bf16       torch:        out = x @ W.float().T
  nf4, fp4, *_dq  bitsandbytes: quantize_4bit (blocksize 64, with/without compress_statistics), then
                  out = bnb.matmul_4bit(x, W.t(), quant_state) with its autograd for grad_x
  q8_0, q4_0      gguf:         quants.quantize, then out = x @ quants.dequantize(W).T in torch
  q4_k, q6_k      gguf:         random blocks (sane f16 scales), deq by quants.dequantize, torch matmul
  i8              torch:        symmetric per-block (64) int8, W = q * scale
tests/test_qmatmul.c loads the codes (and the bnb / affine state) into loquat tensors and compares.

Records (format "LQFX" version 1, the writer of tools/gen_torch_fixtures.py), names "qmatmul/<case>/<field>":
  w       bytes: the packed codes / blocks, row-major over W (N, K)
  shape   i32 [N, K]
  x, R, out, grad_x   f32
  absmax  f32 per block (bnb, i8 scale), or for *_dq: absmax_q bytes, absmax2 f32, code2 f32 (256),
  state   f32 [block, block2, offset]

Run: $(tools/pyenv.sh) tools/gen_qmatmul_fixtures.py tests/fixtures/qmatmul.lqfx
"""
import os
import sys

import numpy as np
import torch

GENERATOR_VERSION = 1
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lqfx import FORMAT_VERSION, put, records, write  # noqa: E402,F401  (the LQFX container)


gen = torch.Generator().manual_seed(20261127)
rng = np.random.default_rng(20261127)
B, T = 2, 2


def weights(N, K):
    w = torch.randn(N, K, generator=gen) * 0.05
    w.view(-1)[::97] *= 8.0  # a few outliers, as in real weights
    return w


def finish(name, N, K, wbytes, fn, extra=None):
    """fn(x) -> out; records x, R, out, grad_x and the weight."""
    x = torch.randn(B, T, K, generator=gen).requires_grad_(True)
    out = fn(x)
    R = torch.randn(out.shape, generator=gen)
    (out * R).sum().backward()
    p = f"qmatmul/{name}/"
    put(p + "w", wbytes)
    put(p + "shape", torch.tensor([N, K], dtype=torch.int32))
    put(p + "x", x)
    put(p + "R", R)
    put(p + "out", out)
    put(p + "grad_x", x.grad)
    for k, v in (extra or {}).items():
        put(p + k, v)


def float_cases(N, K):
    for name, dt in (("f16", torch.float16), ("bf16", torch.bfloat16)):
        w = weights(N, K).to(dt)
        raw = w.view(torch.int16).numpy().tobytes()
        finish(name, N, K, raw, lambda x, w=w: x @ w.float().T)


def bnb_cases(N, K):
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    for qt in ("nf4", "fp4"):
        for dq in (False, True):
            w = weights(N, K)
            q, st = F.quantize_4bit(w, blocksize=64, quant_type=qt, compress_statistics=dq)
            extra = {}
            if dq:
                extra["absmax_q"] = st.absmax.numpy().tobytes()
                extra["absmax2"] = st.state2.absmax.float()
                extra["code2"] = st.state2.code.float()
                extra["state"] = torch.tensor([64.0, float(st.state2.blocksize), float(st.offset)])
            else:
                extra["absmax"] = st.absmax.float()
                extra["state"] = torch.tensor([64.0, 0.0, 0.0])
            finish(qt + ("_dq" if dq else ""), N, K, q.numpy().tobytes(),
                   lambda x, q=q, st=st: bnb.matmul_4bit(x, q.t(), st), extra)


def gguf_cases(N, K):
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    for name, qt in (("q8_0", Q.Q8_0), ("q4_0", Q.Q4_0)):
        w = weights(N, K).numpy()
        blocks = quants.quantize(w, qt)
        deq = torch.from_numpy(quants.dequantize(blocks, qt).reshape(N, K).astype(np.float32))
        finish(name, N, K, blocks.tobytes(), lambda x, deq=deq: x @ deq.T)
    # k-quants: gguf has no encoder; random blocks with small f16 scales are as real to the decoder
    for name, qt, bsz, d_offsets in (("q4_k", Q.Q4_K, 144, (0, 2)), ("q6_k", Q.Q6_K, 210, (208,))):
        nblk = N * K // 256
        raw = rng.integers(0, 256, size=(nblk, bsz), dtype=np.uint8)
        for off in d_offsets:
            d = (rng.uniform(0.0005, 0.004, size=nblk)).astype(np.float16)
            raw[:, off:off + 2] = d.view(np.uint8).reshape(nblk, 2)
        deq = torch.from_numpy(quants.dequantize(raw.reshape(N, -1), qt).reshape(N, K).astype(np.float32))
        finish(name, N, K, raw.tobytes(), lambda x, deq=deq: x @ deq.T)


def affine_cases(N, K):
    w = weights(N, K).reshape(-1, 64)
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).eps)
    q = torch.clamp(torch.round(w / scale[:, None]), -128, 127).to(torch.int8)
    deq = (q.float() * scale[:, None]).reshape(N, K)
    finish("i8", N, K, q.numpy().tobytes(), lambda x: x @ deq.T,
           {"absmax": scale, "state": torch.tensor([64.0, 0.0, 0.0])})


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    N, K = 33, 256  # odd N; K one k-quant super-block wide
    float_cases(N, K)
    bnb_cases(N, K)
    gguf_cases(N, K)
    affine_cases(N, K)
    put("qmatmul/version", torch.tensor([GENERATOR_VERSION], dtype=torch.int32))
    write(sys.argv[1])
    print(f"wrote {len(records)} records to {sys.argv[1]}")


if __name__ == "__main__":
    main()
