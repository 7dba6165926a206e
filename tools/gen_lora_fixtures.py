#!/usr/bin/env python3
"""Reference fixtures for loquat's LoRA layer and PEFT adapter files, from PyTorch, PEFT and bitsandbytes.

Format version 1. Writes into the folder given (default tests/fixtures/lora/):

  peft_tiny/     a PEFT LoRA adapter saved by PEFT itself (save_pretrained, README.md removed) for the
                 tiny Llama tests/fixtures/llama_tiny/tied: LoraConfig(r=4, lora_alpha=8,
                 target_modules=[q_proj, v_proj, down_proj], lora_dropout=0.05, task_type CAUSAL_LM);
                 A keeps PEFT's kaiming init, B is set to random nonzero values (so the adapter is not
                 the identity), tensors float32.
  peft_rslora_f16/  the same model with LoraConfig(r=2, lora_alpha=4, use_rslora=True,
                 target_modules="all-linear"), random B, the adapter weights saved in float16.
  lora.lqfx      LQFX v1 (tools/lqfx.py), records:
    linear/<case>/x       f32 (N, in)
    linear/<case>/W       f32 (out, in) the float weight (for nf4: before quantization)
    linear/<case>/b       f32 (out), only where the case has a bias
    linear/<case>/A, B    f32 (r, in), (out, r)
    linear/<case>/params  i32 [N, in, out, r, has_bias, rslora, is_nf4]
    linear/<case>/scaling f32 (1): the scaling PEFT's LoraLayer holds (alpha / r or alpha / sqrt(r))
    linear/<case>/alpha   f32 (1)
    linear/<case>/y       f32 (N, out): PEFT's lora.Linear forward (dropout 0) on an nn.Linear
    linear/<case>/gy      f32 (N, out): the upstream gradient given to y.backward
    linear/<case>/dx, dA, dB   f32: the gradients torch's autograd returns
    linear/nf4/packed     bytes: bitsandbytes.functional.quantize_4bit(W, blocksize=64, nf4,
                          compress_statistics=True) codes; the nn.Linear's weight is then
                          dequantize_4bit(codes, state) (what loquat's NF4 path must compute with)
    <adapter>/modules     bytes: the module paths (newline-separated) in loquat's load order
                          (layer index, then q k v o gate up down)
    <adapter>/<module>/A, B   f32: lora_A / lora_B weights read from the PEFT model (f16 ones as the
                          float values of the f16 numbers)
    <adapter>/config      f32 [r, alpha, dropout, rslora]
    <adapter>/ids         i32 (1, T); <adapter>/logits f32 (1, T, V): the PEFT model's logits in
                          eval mode (for an attach / merge check)

Run: $(tools/pyenv.sh) tools/gen_lora_fixtures.py tests/fixtures/lora
"""
import json
import math
import os
import shutil
import sys

import torch
from torch import nn

GENERATOR_VERSION = 1
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lqfx import put, write  # noqa: E402  (the LQFX container)

from peft import LoraConfig, get_peft_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "fixtures", "llama_tiny", "tied")
IDS = [1, 17, 99, 3, 127, 64, 5, 42, 0, 88]
ORDER = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

gen = torch.Generator().manual_seed(20261126)


def randn(*shape, std=1.0):
    return torch.randn(*shape, generator=gen) * std


class One(nn.Module):
    """A single linear layer for PEFT to adapt."""

    def __init__(self, n_in, n_out, bias):
        super().__init__()
        self.proj = nn.Linear(n_in, n_out, bias=bias)

    def forward(self, x):
        return self.proj(x)


def linear_case(name, N, n_in, n_out, r, alpha, bias, rslora, nf4=False):
    W = randn(n_out, n_in, std=1.0 / math.sqrt(n_in))
    m = One(n_in, n_out, bias)
    extra = {}
    Wuse = W
    if nf4:
        import bitsandbytes.functional as F
        q, st = F.quantize_4bit(W.clone(), blocksize=64, quant_type="nf4", compress_statistics=True)
        Wuse = F.dequantize_4bit(q, st).float().reshape(n_out, n_in)
        extra["packed"] = q.numpy().tobytes()
    with torch.no_grad():
        m.proj.weight.copy_(Wuse)
        if bias:
            m.proj.bias.copy_(randn(n_out, std=0.5))
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], lora_dropout=0.0, use_rslora=rslora)
    pm = get_peft_model(m, cfg)
    lin = pm.base_model.model.proj
    A, B = lin.lora_A["default"].weight, lin.lora_B["default"].weight
    with torch.no_grad():
        B.copy_(randn(*B.shape, std=0.3))  # PEFT inits B to zeros; a nonzero B tests the whole path
    x = randn(N, n_in).requires_grad_(True)
    y = pm(x)
    gy = randn(N, n_out)
    y.backward(gy)
    p = f"linear/{name}/"
    put(p + "x", x)
    put(p + "W", W)
    if bias:
        put(p + "b", m.proj.base_layer.bias if hasattr(m.proj, "base_layer") else lin.base_layer.bias)
    put(p + "A", A)
    put(p + "B", B)
    put(p + "params", torch.tensor([N, n_in, n_out, r, int(bias), int(rslora), int(nf4)], dtype=torch.int32))
    put(p + "scaling", torch.tensor([lin.scaling["default"]], dtype=torch.float32))
    put(p + "alpha", torch.tensor([float(alpha)]))
    put(p + "y", y)
    put(p + "gy", gy)
    put(p + "dx", x.grad)
    put(p + "dA", A.grad)
    put(p + "dB", B.grad)
    for k, v in extra.items():
        put(p + k, v)


def load_tiny():
    from transformers import LlamaForCausalLM
    m = LlamaForCausalLM.from_pretrained(TINY, torch_dtype=torch.float32).eval()
    m.config._name_or_path = "tests/fixtures/llama_tiny/tied"  # not this machine's absolute path
    m.name_or_path = m.config._name_or_path
    return m


def module_key(path):
    parts = path.split(".")
    layer = int(parts[parts.index("layers") + 1])
    return (layer, ORDER.index(parts[-1]))


def adapter_case(out_dir, name, cfg, half):
    pm = get_peft_model(load_tiny(), cfg)
    mods = []
    with torch.no_grad():
        for path, mod in pm.base_model.model.named_modules():
            if hasattr(mod, "lora_B") and "default" in mod.lora_B:
                B = mod.lora_B["default"].weight
                B.copy_(randn(*B.shape, std=0.2))
                if half:
                    mod.lora_A["default"].weight.copy_(mod.lora_A["default"].weight.half().float())
                    B.copy_(B.half().float())
                mods.append((path, mod))
    mods.sort(key=lambda pm_: module_key(pm_[0]))
    folder = os.path.join(out_dir, name)
    shutil.rmtree(folder, ignore_errors=True)
    for _, mod in mods:  # only the adapter's weights are stored in f16; the base stays f32
        for lin in (mod.lora_A["default"], mod.lora_B["default"]):
            lin.to(torch.float16 if half else torch.float32)
    pm.save_pretrained(folder)
    for _, mod in mods:
        mod.lora_A["default"].float()
        mod.lora_B["default"].float()
    readme = os.path.join(folder, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    put(f"{name}/modules", "\n".join(p for p, _ in mods))
    for path, mod in mods:
        put(f"{name}/{path}/A", mod.lora_A["default"].weight.float())
        put(f"{name}/{path}/B", mod.lora_B["default"].weight.float())
    put(f"{name}/config", torch.tensor([cfg.r, cfg.lora_alpha, cfg.lora_dropout, float(cfg.use_rslora)]))
    pm.eval()
    ids = torch.tensor([IDS])
    with torch.no_grad():
        logits = pm(input_ids=ids).logits.float()
    put(f"{name}/ids", ids.to(torch.int32))
    put(f"{name}/logits", logits)
    with open(os.path.join(folder, "adapter_config.json")) as f:
        print(name, "target_modules:", json.load(f)["target_modules"])


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures", "lora")
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(20261126)
    linear_case("f32_bias", N=7, n_in=40, n_out=24, r=4, alpha=8, bias=True, rslora=False)
    linear_case("f32_rslora", N=5, n_in=32, n_out=16, r=3, alpha=5, bias=False, rslora=True)
    linear_case("nf4", N=4, n_in=128, n_out=24, r=4, alpha=12, bias=False, rslora=False, nf4=True)
    adapter_case(out_dir, "peft_tiny",
                 LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.05,
                            task_type="CAUSAL_LM"), half=False)
    adapter_case(out_dir, "peft_rslora_f16",
                 LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", use_rslora=True, lora_dropout=0.0,
                            task_type="CAUSAL_LM"), half=True)
    write(os.path.join(out_dir, "lora.lqfx"))
    print("wrote", out_dir)


if __name__ == "__main__":
    main()
