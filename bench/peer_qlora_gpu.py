#!/usr/bin/env python3
"""bench/peer_qlora_gpu.py: the PyTorch + PEFT peer of `bench_gpu step`: the same LoRA training step
on a random-init Llama of the same shape, on the same GPU; prints one JSON line.

    python3 bench/peer_qlora_gpu.py --config bench/smollm2-135m.json [--batch 8] [--seq 512]
        [--steps 10] [--warmup 3] [--r 16] [--alpha 32] [--dtype bf16|fp32] [--checkpoint 0|1]
        [--device cuda|cpu] [--seed 1] [--label text]

Model: transformers' LlamaForCausalLM from a LlamaConfig made of the config.json bench_gpu reads
(random init, made directly on the device), base weights in bf16 (bitsandbytes is not on the GPU
machine, so the peer's base is bf16, not NF4), sdpa attention, no KV cache. PEFT LoRA r / alpha,
dropout 0, on q k v o gate up down (PEFT keeps the adapters in float32 beside a bf16 base); AdamW on
the adapters (torch defaults, lr 2e-4, weight_decay 0.01, as bench_gpu). Ids: the splitmix64 stream of
bench_gpu (the same batch), labels = ids (HF shifts them: the mean over B (T - 1) tokens, as
bench_gpu's loss). A step: zero_grad, forward with labels, backward, AdamW, synchronize; median of
--steps after --warmup. Memory: torch.cuda.max_memory_allocated over the whole run (weights, adapters,
optimizer state, activations), beside the device's used memory (mem_get_info). --device cpu is a dry
run of the same code for a machine without a GPU (tiny shapes only).
"""
import argparse
import json
import statistics
import sys
import time

MASK = (1 << 64) - 1
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def splitmix_ids(seed, n, vocab):
    """n token ids from bench_gpu.c's splitmix64 stream (seeded with seed)."""
    state, out = seed, []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        out.append((z ^ (z >> 31)) % vocab)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="bench/smollm2-135m.json")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--checkpoint", type=int, default=0)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    if a.batch < 1 or a.seq < 2 or a.steps < 1 or a.warmup < 0:
        ap.error("batch >= 1, seq >= 2, steps >= 1, warmup >= 0")

    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print("peer_qlora_gpu: SKIPPED: torch sees no CUDA device", file=sys.stderr)
        return 77
    import peft
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    with open(a.config) as f:
        raw = json.load(f)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    cfg = LlamaConfig(**raw)
    cfg.use_cache = False
    dev = torch.device(a.device)
    t0 = time.monotonic()
    torch.manual_seed(a.seed)
    with dev:
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    model.to(dev)  # a no-op where the device context already placed it
    if a.checkpoint:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    params_base = sum(p.numel() for p in model.parameters())
    lcfg = LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=2e-4, weight_decay=0.01)
    if a.device == "cuda":
        torch.cuda.synchronize()
    init_s = time.monotonic() - t0

    BT = a.batch * a.seq
    ids = torch.tensor(splitmix_ids(a.seed, BT, cfg.vocab_size), dtype=torch.long, device=dev).view(a.batch, a.seq)

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    times, losses = [], []
    for s in range(a.warmup + a.steps):
        sync()
        t_a = time.monotonic()
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        sync()
        t_c = time.monotonic()
        loss = float(out.loss.detach())
        del out
        losses.append(loss)
        tag = " (warm-up)" if s < a.warmup else ""
        print(f"peer_qlora_gpu: step {s}{tag}: loss {loss:.4f}, {1e3 * (t_c - t_a):.2f} ms, "
              f"{BT / (t_c - t_a):.0f} tokens/s", file=sys.stderr)
        if loss != loss:
            print("peer_qlora_gpu: the loss is NaN", file=sys.stderr)
            return 1
        if s >= a.warmup:
            times.append(t_c - t_a)
    med = statistics.median(times)
    if a.device == "cuda":
        name = torch.cuda.get_device_name()
        peak = torch.cuda.max_memory_allocated() / 1e6
        reserved = torch.cuda.max_memory_reserved() / 1e6
        free, total = torch.cuda.mem_get_info()
        used, total = (total - free) / 1e6, total / 1e6
    else:
        name, peak, reserved, used, total = "cpu", -1.0, -1.0, -1.0, -1.0
    print(json.dumps({
        "bench": "step", "impl": "pytorch+peft", "label": a.label, "device": name, "config": a.config,
        "params": params_base, "base": a.dtype, "attn": "sdpa", "checkpoint": bool(a.checkpoint),
        "batch": a.batch, "seq": a.seq, "r": a.r, "alpha": a.alpha, "trainable": sum(p.numel() for p in trainable),
        "warmup": a.warmup, "steps": a.steps, "ms_per_step": round(1e3 * med, 2), "tokens_per_s": round(BT / med, 1),
        "peak_mem_mb": round(peak, 1), "reserved_mb": round(reserved, 1), "device_used_mb": round(used, 1),
        "device_total_mb": round(total, 1), "init_s": round(init_s, 2),
        "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
