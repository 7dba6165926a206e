#!/usr/bin/env python3
"""tools/check_peft_interop.py: loquat's QLoRA exports against Hugging Face PEFT / transformers / gguf.

Usage: $(tools/pyenv.sh) tools/check_peft_interop.py build/loquat WORKDIR [--adapter DIR]

On the tiny fixture tests/fixtures/qlora_tiny (HF Llama folder + tokenizer + config.yaml):
 1. `loquat train` a few steps -> WORKDIR/train (the PEFT adapter is exported there);
    --adapter DIR skips training and checks DIR instead.
 2. The adapter through PEFT: PeftModel.from_pretrained(base, adapter) logits on loquat's first
    perplexity window vs `loquat perplexity --adapter --dump-logits` on
    a) the f32 base, b) the base whose linears are bitsandbytes NF4 quantize -> dequantize'd
    (blocksize 64, compress_statistics=True: what loquat trains on; loquat side: `loquat quantize
    --format nf4 --double-quant` then `loquat dequantize`). Tolerance 1e-3 absolute on logits.
 3. `loquat merge --format safetensors --dtype f32` -> transformers AutoModelForCausalLM logits vs
    loquat's logits of the merged folder and vs PEFT merge_and_unload() on the f32 base (1e-3).
 4. `loquat merge --format gguf` (f32, q8_0) -> gguf.GGUFReader: names, ggml types and shapes as
    llama.cpp's convert_hf_to_gguf.py writes them, q / k rows in its permuted order, values equal
    to the merged weights (f32: exactly; q8_0: the same bytes as gguf.quants.quantize).
Prints PASS / FAIL lines; exits 1 on any FAIL.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join("tests", "fixtures", "qlora_tiny")
TOL = 1e-3
CTX = 32
failures = 0


def report(ok, what, detail=""):
    global failures
    if not ok:
        failures += 1
    print(f"{'PASS' if ok else 'FAIL'}: {what}{(' (' + detail + ')') if detail else ''}", flush=True)
    return ok


def loquat(bin_, *args, check_name=None):
    p = subprocess.run([bin_, *args], cwd=REPO, capture_output=True, text=True)
    if p.returncode != 0:
        report(False, check_name or f"loquat {args[0]}", f"exit {p.returncode}: {p.stderr.strip()[-800:]}")
        return None
    return p


def load_st(path):
    from safetensors.numpy import load_file
    return load_file(path)


def dump_logits(bin_, model, adapter, text, out):
    args = ["perplexity", "--model", model, "--data", text, "--ctx", str(CTX), "--dump-logits", out]
    if adapter:
        args += ["--adapter", adapter]
    if loquat(bin_, *args, check_name=f"loquat perplexity --dump-logits on {model}") is None:
        return None, None
    d = load_st(out)
    return d["ids"].astype(np.int64), d["logits"].astype(np.float32)


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.float().numpy()


def compare(what, got, want, tol=TOL):
    if got is None or want is None:
        return report(False, what, "no logits")
    if got.shape != want.shape:
        return report(False, what, f"shapes {got.shape} vs {want.shape}")
    err = float(np.max(np.abs(got - want)))
    return report(err <= tol, what, f"max |diff| {err:.3e}, tolerance {tol:g}")


def base_model(path):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    m.eval()
    return m


def nf4_roundtrip_(model):
    """Every decoder Linear weight -> bitsandbytes NF4 (blocksize 64, double quant) -> f32."""
    import bitsandbytes.functional as F
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and ".layers." in name:
                w = mod.weight.data.float().contiguous()
                q, st = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
                mod.weight.data.copy_(F.dequantize_4bit(q, st))
    return model


def peft_logits(base, adapter, ids, merge=False):
    from peft import PeftModel
    pm = PeftModel.from_pretrained(base, adapter)
    pm.eval()
    if merge:
        return hf_logits(pm.merge_and_unload(), ids)
    return hf_logits(pm, ids)


def check_nf4(folder, merged):
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    from transformers import AutoModelForCausalLM
    try:
        m = AutoModelForCausalLM.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - any failure is the finding
        return report(False, "transformers loads the nf4 folder", repr(e)[:300])
    mods = {n + ".weight": mod for n, mod in m.named_modules() if isinstance(mod, bnb.nn.Linear4bit)}
    n_lin = sum(1 for k, v in merged.items() if v.ndim == 2 and ".layers." in k)
    report(len(mods) == n_lin, "transformers loads the nf4 folder with every decoder linear as Linear4bit",
           f"{len(mods)} of {n_lin}")
    bad = []
    for name, mod in mods.items():
        w = mod.weight
        got = F.dequantize_4bit(w.data, w.quant_state).float()
        ref = torch.from_numpy(merged[name])
        q, st = F.quantize_4bit(ref, blocksize=64, compress_statistics=True, quant_type="nf4")
        if not torch.equal(got, F.dequantize_4bit(q, st).float()):
            bad.append(f"{name}: max |diff| {float((got - F.dequantize_4bit(q, st)).abs().max()):.3e}")
    report(not bad and len(mods) > 0,
           "nf4 weights as transformers loads them equal bitsandbytes NF4 (double quant, block 64) of the merged "
           "f32 weights, bit for bit", "; ".join(bad[:4]))


def permute_llamacpp(w, n_head, n_head_kv=None):
    """convert_hf_to_gguf.py's LlamaModel.permute (q with n_head, k with n_head_kv)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_gguf(path, merged, cfg, qtype):
    import gguf
    from gguf import GGMLQuantizationType as T
    r = gguf.GGUFReader(path)
    f = r.fields
    arch = bytes(f["general.architecture"].parts[-1]).decode() if "general.architecture" in f else None
    report(arch == "llama", f"gguf {qtype}: general.architecture", f"got {arch!r}")
    keys = {"llama.block_count": cfg["num_hidden_layers"], "llama.embedding_length": cfg["hidden_size"],
            "llama.feed_forward_length": cfg["intermediate_size"],
            "llama.attention.head_count": cfg["num_attention_heads"],
            "llama.attention.head_count_kv": cfg["num_key_value_heads"], "llama.context_length":
            cfg["max_position_embeddings"]}
    bad = [f"{k}={f[k].parts[-1][0] if k in f else None} (want {v})" for k, v in keys.items()
           if k not in f or int(f[k].parts[-1][0]) != v]
    report(not bad, f"gguf {qtype}: llama.* metadata", "; ".join(bad))
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hf2gg = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    want = {}
    for name, w in merged.items():
        if name in hf2gg:
            gname = hf2gg[name]
        else:
            _, _, i, rest = name.split(".", 3)
            mod = rest[: -len(".weight")]
            gname = f"blk.{i}.{parts[mod]}.weight"
            if mod == "self_attn.q_proj":
                w = permute_llamacpp(w, nh, nh)
            elif mod == "self_attn.k_proj":
                w = permute_llamacpp(w, nh, nkv)
        want[gname] = w
    got = {t.name: t for t in r.tensors}
    report(set(got) == set(want), f"gguf {qtype}: tensor names as llama.cpp's converter writes them",
           f"extra {sorted(set(got) - set(want))[:4]}, missing {sorted(set(want) - set(got))[:4]}")
    qt = {"f32": T.F32, "q8_0": T.Q8_0}[qtype]
    type_bad, shape_bad, val_bad = [], [], []
    for name, w in want.items():
        t = got.get(name)
        if t is None:
            continue
        wt = qt if w.ndim == 2 else T.F32  # norms stay f32, every 2-D weight in the export type
        if t.tensor_type != wt:
            type_bad.append(f"{name}: {t.tensor_type.name} (want {wt.name})")
        if [int(x) for x in t.shape] != list(reversed(w.shape)):  # GGUF ne: innermost first
            shape_bad.append(f"{name}: {list(t.shape)} (want {list(reversed(w.shape))})")
        if wt == T.F32:
            if not np.array_equal(np.asarray(t.data).reshape(w.shape), w.astype(np.float32)):
                val_bad.append(f"{name}: max |diff| {np.max(np.abs(np.asarray(t.data).reshape(w.shape) - w)):.3e}")
        else:
            ref = gguf.quants.quantize(w.astype(np.float32), wt)
            if not np.array_equal(np.asarray(t.data).reshape(-1).view(np.uint8), ref.reshape(-1).view(np.uint8)):
                val_bad.append(f"{name}: blocks differ from gguf.quants.quantize")
    report(not type_bad, f"gguf {qtype}: tensor types", "; ".join(type_bad[:4]))
    report(not shape_bad, f"gguf {qtype}: tensor shapes", "; ".join(shape_bad[:4]))
    report(not val_bad, f"gguf {qtype}: tensor values ({'exact' if qtype == 'f32' else 'gguf.quants bytes'})",
           "; ".join(val_bad[:4]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("loquat")
    ap.add_argument("work")
    ap.add_argument("--adapter", help="check this adapter folder instead of training one")
    ap.add_argument("--steps", type=int, default=4, help="training steps (default 4)")
    a = ap.parse_args()
    bin_ = os.path.abspath(a.loquat)
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    torch.manual_seed(0)
    fix = os.path.join(REPO, FIX)
    cfg = json.load(open(os.path.join(fix, "config.json")))

    # text for the perplexity windows: the fixture's training sentences
    text = os.path.join(work, "text.txt")
    with open(text, "w") as f:
        for line in open(os.path.join(fix, "train.jsonl")):
            f.write(json.loads(line)["text"] + "\n")

    # 1. train
    if a.adapter:
        adapter = os.path.abspath(a.adapter)
    else:
        adapter = os.path.join(work, "train")
        shutil.rmtree(adapter, ignore_errors=True)
        p = loquat(bin_, "train", os.path.join(FIX, "config.yaml"), "--set", f"output_dir={adapter}", "--set",
                   f"max_steps={a.steps}", "--set", "eval_steps=0", "--set", "save_steps=0",
                   check_name="loquat train (tiny fixture)")
        ok = p is not None and os.path.isfile(os.path.join(adapter, "adapter_model.safetensors"))
        report(ok, "loquat train exported a PEFT adapter", adapter)
        if not ok:
            return 1
    lora = load_st(os.path.join(adapter, "adapter_model.safetensors"))
    nz = max(float(np.max(np.abs(v))) for k, v in lora.items() if "lora_B" in k)
    report(nz > 0, "the adapter's B matrices are not all zero (the checks below can fail)", f"max |B| {nz:.3e}")

    # 2a. adapter on the f32 base
    ids, lq = dump_logits(bin_, FIX, adapter, text, os.path.join(work, "lg_adapter.safetensors"))
    if ids is None:
        return 1
    pe = peft_logits(base_model(fix), adapter, ids)
    compare("PEFT adapter on the f32 base vs loquat perplexity --adapter", lq, pe)
    _, lq0 = dump_logits(bin_, FIX, None, text, os.path.join(work, "lg_base.safetensors"))
    if lq0 is not None:
        d = float(np.max(np.abs(lq0 - lq)))
        report(d > 10 * TOL, "the adapter changes the logits by more than the tolerance", f"max |diff| {d:.3e}")

    # 2b. adapter on the NF4 round-tripped base
    nf4 = os.path.join(work, "base_nf4")
    shutil.rmtree(nf4, ignore_errors=True)
    os.makedirs(nf4)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(fix, f), nf4)
    q = os.path.join(work, "base_nf4.q.safetensors")
    if (loquat(bin_, "quantize", os.path.join(FIX, "model.safetensors"), q, "--format", "nf4", "--double-quant",
               "--block-size", "64", check_name="loquat quantize nf4") is not None and
            loquat(bin_, "dequantize", q, os.path.join(nf4, "model.safetensors"), "--dtype", "f32",
                   check_name="loquat dequantize") is not None):
        _, lqn = dump_logits(bin_, nf4, adapter, text, os.path.join(work, "lg_nf4.safetensors"))
        pen = peft_logits(nf4_roundtrip_(base_model(fix)), adapter, ids)
        compare("PEFT adapter on the bitsandbytes NF4 base vs loquat on its NF4 base", lqn, pen)

    # 3. merged safetensors
    out = os.path.join(work, "merged_f32")
    shutil.rmtree(out, ignore_errors=True)
    if loquat(bin_, "merge", "--model", FIX, "--adapter", adapter, "--out", out, "--format", "safetensors",
              "--dtype", "f32", check_name="loquat merge safetensors f32") is not None:
        from transformers import AutoTokenizer
        tf = hf_logits(base_model(out), ids)
        _, lqm = dump_logits(bin_, out, None, text, os.path.join(work, "lg_merged.safetensors"))
        compare("transformers on the merged folder vs loquat on the merged folder", tf, lqm)
        compare("transformers on the merged folder vs loquat perplexity --adapter", tf, lq)
        compare("transformers on the merged folder vs PEFT merge_and_unload", tf,
                peft_logits(base_model(fix), adapter, ids, merge=True))
        try:
            tok = AutoTokenizer.from_pretrained(out)
            report(len(tok("hello world")["input_ids"]) > 0, "transformers loads the merged folder's tokenizer")
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            report(False, "transformers loads the merged folder's tokenizer", repr(e)[:300])
        merged = load_st(os.path.join(out, "model.safetensors"))
        ref = {k: v.detach().float().numpy() for k, v in
               PeftModelMerged(fix, adapter).state_dict().items()}
        bad = [k for k in merged if k in ref and float(np.max(np.abs(merged[k] - ref[k]))) > 1e-5]
        report(not bad and set(ref) >= set(merged), "merged weights equal PEFT merge_and_unload's within 1e-5",
               ", ".join(bad[:4]))

        # 3b. NF4 safetensors: transformers loads it 4-bit (bitsandbytes Linear4bit), and every
        # weight dequantizes to exactly bitsandbytes' quantize_4bit -> dequantize_4bit of the
        # merged f32 weight (logits are not compared: bitsandbytes' CPU 4-bit matmul differs from
        # x @ deq(W).T by ~1e-2 on its own)
        out4 = os.path.join(work, "merged_nf4")
        shutil.rmtree(out4, ignore_errors=True)
        if loquat(bin_, "merge", "--model", FIX, "--adapter", adapter, "--out", out4, "--dtype", "nf4",
                  check_name="loquat merge safetensors nf4") is not None:
            check_nf4(out4, merged)

        # 4. GGUF
        for qt in ("f32", "q8_0"):
            g = os.path.join(work, f"merged_{qt}.gguf")
            if loquat(bin_, "merge", "--model", FIX, "--adapter", adapter, "--out", g, "--format", "gguf", "--dtype",
                      qt, check_name=f"loquat merge gguf {qt}") is not None:
                check_gguf(g, merged, cfg, qt)

    print(f"check_peft_interop: {'all checks passed' if failures == 0 else f'{failures} check(s) FAILED'}")
    return 1 if failures else 0


def PeftModelMerged(base, adapter):
    from peft import PeftModel
    return PeftModel.from_pretrained(base_model(base), adapter).merge_and_unload()


if __name__ == "__main__":
    sys.exit(main())
