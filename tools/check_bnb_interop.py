#!/usr/bin/env python3
"""Interop check: loquat's quantize / dequantize against bitsandbytes and transformers (CPU).

  (a) `loquat quantize` a small random model (f32, f16 and bf16 weights, odd shapes; nf4 / fp4,
      block sizes 32 / 64 / 4096, with and without --double-quant); every quantized tensor must be
      byte-identical to bitsandbytes' quantize_4bit + QuantState.as_dict(packed=True) of the same
      weight (codes, absmax, quant_map, nested state, quant-state JSON), and bitsandbytes'
      QuantState.from_dict + dequantize_4bit of loquat's tensors must equal `loquat dequantize`
      bit for bit.
  (b) the reverse: tensors quantized by bitsandbytes, saved in transformers' layout with the
      safetensors package, expanded by `loquat dequantize`: bit for bit equal to dequantize_4bit.
  (c) transformers (if importable): a tiny random LlamaForCausalLM (hidden 64) saved as float;
      `loquat quantize` of it must equal transformers' own 4-bit save of the same model
      (BitsAndBytesConfig, tensor for tensor), load with from_pretrained as a pre-quantized
      checkpoint, and give the logits of the float model built from `loquat dequantize`.
  (d) int8 / int4 (loquat's own layout): scales and values against torch.ao's per-channel
      MinMaxObserver and torch.fake_quantize_per_channel_affine.

Prints one PASS / FAIL line per check and exits non-zero if any failed. Not part of `make test`.
Run: $(tools/pyenv.sh) tools/check_bnb_interop.py [--loquat build/loquat]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")  # bitsandbytes' reference path, run eagerly
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import bitsandbytes.functional as bnbF  # noqa: E402

failures = 0
checks = 0


def report(ok, what, detail=""):
    global failures, checks
    checks += 1
    if not ok:
        failures += 1
    print(f"{'PASS' if ok else 'FAIL'}: {what}{(' (' + detail + ')') if detail else ''}", flush=True)
    return ok


def run(loquat, *args):
    p = subprocess.run([loquat, *args], capture_output=True, text=True)
    if p.returncode != 0:
        print(p.stdout[-2000:], p.stderr[-2000:], sep="\n")
        raise RuntimeError(f"loquat {' '.join(args)} exited {p.returncode}")
    return p.stdout


def load(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def bits(t):
    """The tensor's raw bytes, for bit-for-bit comparison (-0.0 != 0.0, NaN == same NaN)."""
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def same(a, b):
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and bits(a) == bits(b)


def max_abs_diff(a, b):
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


def quant_entries(sd, name):
    """The packed quant-state dict of weight `name` as QuantState.from_dict takes it."""
    p = name + "."
    return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}


def bnb_reference_dequant(q, st):
    """dequantize_4bit's arithmetic through bitsandbytes' pure-torch (default backend) path."""
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code

    absmax = st.absmax
    if st.nested:
        absmax = bnbF.dequantize_blockwise(st.absmax, st.state2) + st.offset
    code = _get_4bit_code(st.quant_type, q.device)
    return _dequantize_4bit_compute(q.reshape(-1), absmax.float(), code, st.blocksize, st.shape, st.dtype)


def bnb_matches(q, st, ours):
    """(ok, note): bitsandbytes' dequantize_4bit equals ours bit for bit. bitsandbytes 0.50.2's
    AVX-512 CPU kernel gives other values than its own reference path (and its own quantize's
    meaning) when the row length is not a multiple of the block size; there the reference path
    decides, and the note says so."""
    y = bnbF.dequantize_4bit(q, st)
    if same(y, ours):
        return True, ""
    ref = bnb_reference_dequant(q, st)
    if same(ref, ours) and st.shape[-1] % st.blocksize != 0:
        return True, (f"dequantize_4bit's CPU kernel differs from bitsandbytes' reference path by up to "
                      f"{max_abs_diff(y, ref):.3g} on shape {list(st.shape)}; equal to the reference")
    return False, f"max |diff| {max_abs_diff(y, ours):.3g} (reference path: {max_abs_diff(ref, ours):.3g})"


def random_model(gen):
    def w(*shape, dtype=torch.float32, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    heavy = torch.distributions.StudentT(2.0).sample((48, 80))  # heavy tails
    return {
        "model.embed_tokens.weight": w(40, 64),
        "model.layers.0.self_attn.q_proj.weight": w(64, 64, scale=0.02),
        "model.layers.0.self_attn.k_proj.weight": w(31, 63),            # odd element count
        "model.layers.0.mlp.up_proj.weight": w(96, 64, dtype=torch.bfloat16),
        "model.layers.0.mlp.down_proj.weight": w(64, 96, dtype=torch.float16),
        "model.layers.0.mlp.gate_proj.weight": heavy.float(),
        "model.layers.0.mlp.zero_proj.weight": torch.zeros(16, 64),       # all-zero blocks
        "model.norm.weight": torch.ones(64),
        "model.layers.0.self_attn.q_proj.bias": w(64),
        "lm_head.weight": w(40, 64),
    }


def check_a(loquat, tmp, gen):
    src = os.path.join(tmp, "a_float.safetensors")
    model = random_model(gen)
    save_file(model, src, metadata={"format": "pt"})
    for qt in ("nf4", "fp4"):
        for bs in (32, 64, 4096):
            for dq in (False, True):
                tag = f"{qt} block {bs}{' double-quant' if dq else ''}"
                out = os.path.join(tmp, f"a_{qt}_{bs}_{int(dq)}.safetensors")
                deq = out.replace(".safetensors", "_deq.safetensors")
                run(loquat, "quantize", src, out, "--format", qt, "--block-size", str(bs),
                    *(["--double-quant"] if dq else []))
                run(loquat, "dequantize", out, deq)
                q, d = load(out), load(deq)
                n_ok_bytes = n_ok_deq = n = 0
                bad, bad_deq, notes = [], [], []
                for name, wt in model.items():
                    if name.endswith(".weight") and wt.dim() == 2 and "embed" not in name and "lm_head" not in name:
                        n += 1
                        # byte identity with bitsandbytes' own quantization of the same weight
                        ref_q, ref_st = bnbF.quantize_4bit(wt.float().to(wt.dtype), blocksize=bs,
                                                           compress_statistics=dq, quant_type=qt)
                        ref = {"": ref_q, **{"." + k: v for k, v in ref_st.as_dict(packed=True).items()}}
                        ours = {k[len(name):]: v for k, v in q.items() if k == name or k.startswith(name + ".")}
                        if set(ref) == set(ours) and all(same(ref[k], ours[k]) for k in ref):
                            n_ok_bytes += 1
                        else:
                            diff = [k for k in ref if k not in ours or not same(ref[k], ours[k])]
                            bad.append(f"{name}: bytes differ in {diff or sorted(set(ours) ^ set(ref))}")
                        # bitsandbytes reads loquat's tensors
                        st = bnbF.QuantState.from_dict(quant_entries(q, name), device=torch.device("cpu"))
                        ok, note = bnb_matches(q[name], st, d[name])
                        n_ok_deq += ok
                        if note:
                            notes.append(f"{name}: {note}")
                        if not ok:
                            bad_deq.append(f"{name}: dequant differs, {note}")
                    elif not same(wt, q[name]) or not same(wt, d[name]):
                        bad_deq.append(f"{name}: not copied unchanged")
                report(n_ok_bytes == n, f"(a) {tag}: loquat quantize == bitsandbytes quantize_4bit, byte for byte",
                       f"{n_ok_bytes}/{n} tensors" + ("; " + "; ".join(bad[:3]) if bad else ""))
                report(n_ok_deq == n and not bad_deq,
                       f"(a) {tag}: bitsandbytes dequantize_4bit of loquat's file == loquat dequantize, bit for bit",
                       f"{n_ok_deq}/{n} tensors" + ("; " + "; ".join(bad_deq[:3]) if bad_deq else ""))
                for note in notes:
                    print(f"  note: {note}")


def check_b(loquat, tmp, gen):
    for qt in ("nf4", "fp4"):
        for dq in (False, True):
            sd, ref = {}, {}
            cases = [("l0.weight", torch.randn(64, 64, generator=gen), 64),
                     ("l1.weight", torch.randn(33, 47, generator=gen).to(torch.bfloat16), 128),
                     ("l2.weight", torch.randn(40, 96, generator=gen).to(torch.float16), 32),
                     ("l3.weight", torch.randn(16, 4096, generator=gen), 4096),
                     ("l4.weight", torch.randn(24, 80, generator=gen) * 3, 64)]  # rows not whole blocks
            states = {}
            for name, w, bs in cases:
                qw, st = bnbF.quantize_4bit(w, blocksize=bs, compress_statistics=dq, quant_type=qt)
                sd[name] = qw
                for k, v in st.as_dict(packed=True).items():
                    sd[f"{name}.{k}"] = v
                ref[name] = bnbF.dequantize_4bit(qw, st)
                states[name] = (qw, st)
            sd["other.bias"] = torch.arange(5, dtype=torch.float32)
            path = os.path.join(tmp, f"b_{qt}_{int(dq)}.safetensors")
            out = path.replace(".safetensors", "_deq.safetensors")
            save_file(sd, path, metadata={"format": "pt"})
            run(loquat, "dequantize", path, out)
            d = load(out)
            ok, notes = [], []
            for n in ref:
                good, note = bnb_matches(*states[n], d[n])
                if good:
                    ok.append(n)
                if note:
                    notes.append(f"{n}: {note}")
            detail = f"{len(ok)}/{len(ref)} tensors" + ("; " + "; ".join(notes) if notes else "")
            report(len(ok) == len(ref) and same(d["other.bias"], sd["other.bias"]) and set(d) == set(ref) | {"other.bias"},
                   f"(b) {qt}{' double-quant' if dq else ''}: loquat dequantize of a bitsandbytes-written file == "
                   "dequantize_4bit, bit for bit", detail)
            # f32 output of a bf16 / f16 state: the same values before rounding to the recorded dtype
            out32 = path.replace(".safetensors", "_deq32.safetensors")
            run(loquat, "dequantize", path, out32, "--dtype", "f32")
            d32 = load(out32)
            refs = {n: bnb_reference_dequant(*states[n]) for n in ref}
            report(all(d32[n].dtype == torch.float32 and same(d32[n].to(ref[n].dtype), refs[n]) for n in ref),
                   f"(b) {qt}{' double-quant' if dq else ''}: --dtype f32 rounds to bitsandbytes' values")


def check_c(loquat, tmp):
    try:
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM
        import transformers
    except Exception as e:  # noqa: BLE001
        report(True, f"(c) transformers not importable, skipped: {e!r}")
        return
    torch.manual_seed(1234)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, tie_word_embeddings=False)
    fdir, qdir, ddir, tdir = (os.path.join(tmp, d) for d in ("c_float", "c_q", "c_deq", "c_tf"))
    LlamaForCausalLM(cfg).save_pretrained(fdir)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(7))
    for dq in (False, True):
        tag = f"nf4{' double-quant' if dq else ''}"
        bnb_cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=dq,
                                     bnb_4bit_compute_dtype=torch.float32)
        try:
            tf_q = AutoModelForCausalLM.from_pretrained(fdir, quantization_config=bnb_cfg, device_map="cpu")
            tf_q.save_pretrained(tdir)
        except Exception as e:  # noqa: BLE001
            report(False, f"(c) {tag}: transformers cannot quantize with bitsandbytes on CPU: {e!r}")
            return
        os.makedirs(qdir, exist_ok=True)
        os.makedirs(ddir, exist_ok=True)
        run(loquat, "quantize", os.path.join(fdir, "model.safetensors"), os.path.join(qdir, "model.safetensors"),
            "--format", "nf4", *(["--double-quant"] if dq else []))
        ours, theirs = load(os.path.join(qdir, "model.safetensors")), load(os.path.join(tdir, "model.safetensors"))
        diff = sorted(k for k in set(ours) | set(theirs) if k not in ours or k not in theirs or not same(ours[k], theirs[k]))
        report(not diff, f"(c) {tag}: loquat quantize == transformers' own 4-bit save of the same model, tensor for tensor",
               f"{len(theirs)} tensors" + (f"; differ: {diff[:4]}" if diff else ""))
        # load loquat's file as a pre-quantized checkpoint: transformers' config with our weights
        with open(os.path.join(tdir, "config.json")) as f:
            qcfg = json.load(f)
        with open(os.path.join(qdir, "config.json"), "w") as f:
            json.dump(qcfg, f)
        def logits(path, fp32_path, ref_model=None):
            """Forward pass of the model at path (or ref_model). fp32_path: keep bitsandbytes' Linear4bit
            on dequantize + float32 linear, instead of its AVX-512 bf16 CPU kernel (which it takes for
            inference on CPUs that have AVX512-BF16)."""
            m = ref_model if ref_model is not None else AutoModelForCausalLM.from_pretrained(path, device_map="cpu")
            n4 = 0
            for mod in m.modules():
                if type(mod).__name__ == "Linear4bit":
                    n4 += 1
                    if fp32_path:
                        mod.support_avx512bf16_for_cpu = False
            with torch.no_grad():
                return m(ids).logits, n4

        try:
            lq32, n4 = logits(qdir, True)
            lq_def, _ = logits(qdir, False)
        except Exception as e:  # noqa: BLE001
            report(False, f"(c) {tag}: transformers {transformers.__version__} cannot load loquat's file: {e!r}")
            continue
        # the float model from loquat's dequantized weights
        run(loquat, "dequantize", os.path.join(qdir, "model.safetensors"), os.path.join(ddir, "model.safetensors"))
        with open(os.path.join(fdir, "config.json")) as f:
            fcfg = json.load(f)
        with open(os.path.join(ddir, "config.json"), "w") as f:
            json.dump(fcfg, f)
        ld, _ = logits(ddir, True)
        scale = ld.abs().max().item()
        err32, err_def = max_abs_diff(lq32, ld), max_abs_diff(lq_def, ld)
        report(n4 == 14 and err32 <= 1e-5 * max(1.0, scale),
               f"(c) {tag}: transformers loads loquat's file as a pre-quantized checkpoint ({n4} Linear4bit) and its "
               "logits (float32 dequant path) match the float model from loquat dequantize",
               f"max |logit diff| {err32:.3g}, logits up to {scale:.3g}")
        report(err_def <= 2e-2 * max(1.0, scale),
               f"(c) {tag}: the same with bitsandbytes' default CPU path (AVX-512 bf16 kernel where the CPU has it)",
               f"max |logit diff| {err_def:.3g} (bf16 arithmetic)")
        lt32, _ = logits(None, True, tf_q)
        report(same(lq32, lt32), f"(c) {tag}: logits from loquat's file == transformers' in-memory 4-bit model's",
               f"max |diff| {max_abs_diff(lq32, lt32):.3g}")


def check_d(loquat, tmp, gen):
    w = {"lin.weight": torch.randn(24, 64, generator=gen) * 0.1, "skip.bias": torch.randn(24, generator=gen)}
    src = os.path.join(tmp, "d_float.safetensors")
    save_file(w, src, metadata={"format": "pt"})
    x = w["lin.weight"]
    for fmt, b in (("int8", 8), ("int4", 4)):
        for asym in (False, True):
            for group in (0, 16):
                tag = f"{fmt} {'asymmetric' if asym else 'symmetric'} {'g' + str(group) if group else 'per-row'}"
                out = os.path.join(tmp, f"d_{fmt}_{int(asym)}_{group}.safetensors")
                deq = out.replace(".safetensors", "_deq.safetensors")
                run(loquat, "quantize", src, out, "--format", fmt, *(["--asymmetric"] if asym else []),
                    *(["--group-size", str(group)] if group else []), "--skip", "")
                run(loquat, "dequantize", out, deq)
                q, d = load(out), load(deq)
                rows = x.reshape(-1, group) if group else x  # a group is a row of its own
                qmin, qmax = (0, 2 ** b - 1) if asym else (-(2 ** (b - 1)), 2 ** (b - 1) - 1)
                obs = torch.ao.quantization.PerChannelMinMaxObserver(
                    ch_axis=0, dtype=torch.quint8 if asym else torch.qint8, quant_min=qmin, quant_max=qmax,
                    qscheme=torch.per_channel_affine if asym else torch.per_channel_symmetric)
                obs(rows)
                scale, zp = obs.calculate_qparams()
                ref = torch.fake_quantize_per_channel_affine(rows, scale.float(), zp.int(), 0, qmin, qmax).reshape(x.shape)
                ok_scale = same(q["lin.weight.scale"].reshape(-1), scale.float())
                if asym:
                    ok_scale = ok_scale and torch.equal(q["lin.weight.zero_point"].reshape(-1).int() + 2 ** (b - 1), zp.int())
                report(ok_scale, f"(d) {tag}: scales (and zero points) == torch PerChannelMinMaxObserver")
                report(same(d["lin.weight"], ref), f"(d) {tag}: loquat dequantize == torch.fake_quantize_per_channel_affine",
                       f"max |diff| {max_abs_diff(d['lin.weight'], ref):.3g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loquat", default="build/loquat")
    args = ap.parse_args()
    loquat = os.path.abspath(args.loquat)
    if not os.access(loquat, os.X_OK):
        print(f"FAIL: {loquat} is not an executable (build it with make)")
        return 1
    gen = torch.Generator().manual_seed(20261126)
    torch.manual_seed(20261126)
    with tempfile.TemporaryDirectory(prefix="lq_bnb_interop.") as tmp:
        for name, fn in (("a", lambda: check_a(loquat, tmp, gen)), ("b", lambda: check_b(loquat, tmp, gen)),
                         ("c", lambda: check_c(loquat, tmp)), ("d", lambda: check_d(loquat, tmp, gen))):
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                report(False, f"({name}) raised {e!r}")
    print(f"{checks - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
