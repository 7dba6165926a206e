#!/usr/bin/env python3
"""bench/peer_lora.py: the peer of bench/bench_train.c: PyTorch + PEFT LoRA training steps on the same
model, batch and settings, printing the same JSON line (tokens/s of the median step, peak RSS).

    python bench/peer_lora.py [--model GGUF] [--base fp32|nf4] [--batch 4] [--seq 256] [--r 16]
                              [--steps 4] [--warmup 1] [--threads 2] [--checkpoint 0|1]

--base fp32: the base as transformers loads the GGUF (gguf_file=..., dequantized to float32).
--base nf4:  bitsandbytes 4-bit (BitsAndBytesConfig load_in_4bit, nf4, double quant, compute dtype
             float32) on the CPU; transformers cannot quantize while reading a GGUF, so the float32
             model is first saved once as a safetensors folder next to the cache (in a child
             process, so its memory is not counted) and loaded from there.
A step: zero_grad, forward with labels (HF's shifted mean cross-entropy), backward, AdamW
(torch defaults, lr 2e-4, weight_decay 0.01, as bench_train). Ids: the same splitmix64 stream as
bench_train.c, so both train on the same batch. Peak RSS: the process peak (ru_maxrss) and the peak
of the training part alone (VmHWM reset through /proc/self/clear_refs after loading).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MASK = (1 << 64) - 1


def splitmix(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def rss_now_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def hwm_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024 / 1e6
    return -1.0


def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def default_model():
    cache = os.environ.get("LOQUAT_CACHE") or os.path.expanduser("~/.cache/loquat")
    return os.path.join(cache, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def hf_folder(gguf):
    """A float32 safetensors copy of the GGUF model (made once, in a child process; transformers
    refuses save_pretrained on a model read from a GGUF, so config and tensors are written directly)."""
    out = os.path.splitext(gguf)[0] + ".hf-f32"
    if not os.path.exists(os.path.join(out, "config.json")):
        code = (
            "import sys, torch\n"
            "from transformers import AutoModelForCausalLM\n"
            "d, f = sys.argv[1], sys.argv[2]\n"
            "from safetensors.torch import save_file\n"
            "m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)\n"
            "c = m.config\n"
            "if hasattr(c, 'quantization_config'): del c.quantization_config\n"
            "c.save_pretrained(sys.argv[3])\n"
            "sd = {k: v.contiguous() for k, v in m.state_dict().items()}\n"
            "if c.tie_word_embeddings: sd.pop('lm_head.weight', None)\n"
            "save_file(sd, sys.argv[3] + '/model.safetensors', metadata={'format': 'pt'})\n"
        )
        tmp = out + ".tmp"
        subprocess.run([sys.executable, "-c", code, os.path.dirname(gguf), os.path.basename(gguf), tmp], check=True)
        os.replace(tmp, out)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--base", choices=["fp32", "nf4"], default="fp32")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if not os.path.exists(a.model):
        print(f"peer_lora: SKIPPED: no model at {a.model} (tools/fetch_model.sh fetches it)", file=sys.stderr)
        return 77

    import torch

    torch.set_num_threads(a.threads)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    rss0 = rss_now_mb()
    t0 = time.monotonic()
    if a.base == "fp32":
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(a.model), gguf_file=os.path.basename(a.model), dtype=torch.float32
        )
    else:
        from transformers import BitsAndBytesConfig

        folder = hf_folder(a.model)
        t0 = time.monotonic()
        q = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
        model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=q, dtype=torch.float32, device_map="cpu")
    load_s = time.monotonic() - t0
    if a.checkpoint:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    cfg = LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    torch.manual_seed(a.seed)
    model = get_peft_model(model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.01)
    weight_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
    trainable = sum(p.numel() for p in params)
    V = model.config.vocab_size
    BT = a.batch * a.seq
    st, ids = a.seed, []
    for _ in range(BT):
        st, z = splitmix(st)
        ids.append(z % V)
    ids = torch.tensor(ids, dtype=torch.long).view(a.batch, a.seq)
    import gc

    gc.collect()
    rss_load = rss_now_mb()
    reset_hwm()

    times, fwd, losses = [], [], []
    for s in range(a.warmup + a.steps):
        t_a = time.monotonic()
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=ids)
        t_b = time.monotonic()
        out.loss.backward()
        opt.step()
        t_c = time.monotonic()
        loss = float(out.loss.detach())
        del out
        losses.append(loss)
        tag = " (warm-up)" if s < a.warmup else ""
        print(f"peer_lora: step {s}{tag}: loss {loss:.4f}, forward {t_b - t_a:.2f} s, backward + update "
              f"{t_c - t_b:.2f} s, {BT / (t_c - t_a):.1f} tokens/s", file=sys.stderr)
        if s >= a.warmup:
            times.append(t_c - t_a)
            fwd.append(t_b - t_a)
    med = statistics.median(times)
    print(json.dumps({
        "impl": "pytorch+peft", "base": a.base if a.base == "fp32" else "nf4-dq64 (bitsandbytes)",
        "checkpoint": bool(a.checkpoint), "threads": a.threads, "batch": a.batch, "seq": a.seq, "r": a.r,
        "steps": a.steps, "step_s_median": round(med, 4), "fwd_s_median": round(statistics.median(fwd), 4),
        "tokens_per_s": round(BT / med, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6, 1),
        "train_peak_rss_mb": round(hwm_mb(), 1), "rss_start_mb": round(rss0, 1), "rss_after_load_mb": round(rss_load, 1),
        "weight_mb": round(weight_mb, 2), "trainable": trainable, "load_s": round(load_s, 2),
        "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
