#!/usr/bin/env python3
"""Compares loquat's Llama logits on a GGUF file with transformers' (format version 1).

transformers' AutoModelForCausalLM.from_pretrained(folder, gguf_file=name) dequantizes every
GGUF tensor to float32 (and undoes llama.cpp's q / k permutation); loquat keeps the quantized
blocks and dequantizes them tile by tile in lq_qmatmul, so the two should agree to float rounding.
Prints the max abs difference of the (T, V) logits and exits 1 when it is above --tol (1e-3).

Run (after `make BUILD=build/lm`):
  $(tools/pyenv.sh) tools/check_llama_logits.py \
      [--gguf ~/.cache/loquat/models/SmolLM2-135M-Instruct.Q4_1.gguf] [--bin build/lm/tests/test_llama]
The ids default to "The capital of France is" in SmolLM2's tokenizer.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

FORMAT_VERSION = 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.expanduser("~/.cache/loquat/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--bin", default="build/lm/tests/test_llama")
    ap.add_argument("--ids", default="504,3575,282,4649,314")
    ap.add_argument("--tol", type=float, default=1e-3)
    a = ap.parse_args()
    ids = [int(x) for x in a.ids.split(",")]

    from transformers import AutoModelForCausalLM
    folder, name = os.path.split(os.path.abspath(a.gguf))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].float().numpy()

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "logits.f32")
        subprocess.run([a.bin, "--logits", a.gguf, out] + [str(i) for i in ids], check=True)
        got = np.fromfile(out, dtype="<f4").reshape(ref.shape)

    d = np.abs(got - ref)
    print("model %s, %d tokens, vocab %d" % (a.gguf, len(ids), ref.shape[-1]))
    print("max abs diff %.3g (at %s), mean abs %.3g, logits range [%.2f, %.2f]"
          % (d.max(), np.unravel_index(d.argmax(), d.shape), d.mean(), ref.min(), ref.max()))
    print("argmax next token: loquat %d, transformers %d" % (got[-1].argmax(), ref[-1].argmax()))
    if d.max() > a.tol:
        print("FAIL: above tolerance %g" % a.tol)
        return 1
    print("OK (tolerance %g)" % a.tol)
    return 0


if __name__ == "__main__":
    sys.exit(main())
