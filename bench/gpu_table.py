#!/usr/bin/env python3
"""bench/gpu_table.py: the summary table bench/gpu.sh prints last, from its files:

    gpu_table.py results.jsonl parity.txt parts.txt "commit ..."

results.jsonl: the JSON lines of bench_gpu and peer_qlora_gpu.py (each tagged with its part);
parity.txt: per suite "name exit passed failed skipped seed failed-tests" ("-" for none);
parts.txt: per part "name exit seconds" (exit "budget" = skipped for time, "dry" = dry run).
Step figures are medians over the rounds of each (model, implementation, math) group.
"""
import json, statistics, sys, time
res, par, st, manifest = sys.argv[1:5]
rows = [json.loads(l) for l in open(res) if l.strip()]
parts = [l.split() for l in open(st) if l.strip()]
dev = next((r["device"] for r in rows if r.get("device") not in (None, "cpu", "?")), "?")
print(f"device: {dev}; date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {manifest}")
pl = [l.split() for l in open(par) if l.strip()]
if pl:
    tp = sum(int(x[2]) for x in pl); tf = sum(int(x[3]) for x in pl); tk = sum(int(x[4]) for x in pl)
    bad = [f"{x[0]} (exit {x[1]}{'; failed: ' + x[6] if x[6] != '-' else ''}; seed {x[5]})" for x in pl if x[1] != "0" or x[3] != "0"]
    print(f"parity: {len(pl)} suite(s), {tp} passed, {tf} failed, {tk} skipped" + ("; FAILING: " + "; ".join(bad) if bad else "; all passed"))
else:
    print("parity: not run")
for r in rows:
    if r.get("bench") == "dequant_ceiling":  # a memset of the same output bytes: the write-only limit
        s = (f"{r.get('part', 'dequant')} nf4-dq64 {r['rows']}x{r['cols']} write-only ceiling: memset {r['memset_gbps']:.0f} GB/s"
             f" (f32 out; copy {r['copy_gbps']:.0f}): a dequant that fast = {r['ceiling_ratio']:.2f} of copy")
        if "bf16_ceiling_ratio" in r:
            s += f"; bf16 out {r['bf16_memset_gbps']:.0f} GB/s (copy {r['bf16_copy_gbps']:.0f}) = {r['bf16_ceiling_ratio']:.2f}"
        print(s)
        continue
    if r.get("bench") != "dequant":
        continue
    s = (f"{r.get('part', 'dequant')} nf4-dq64 {r['rows']}x{r['cols']}: f32 {r['dequant_gbps']:.0f} GB/s vs copy {r['copy_gbps']:.0f} GB/s"
         f" = {r['ratio']:.2f} of copy (goal 0.85: {'met' if r['ratio'] >= 0.85 else 'NOT met'}; {r['dequant_ms']:.3f} vs"
         f" {r['copy_ms']:.3f} ms; lead {r.get('lead_us', 0)} us), mismatches {r['mismatches']}"
         f"{' WRONG' if r['mismatches'] > 0 else ''}")
    if "bf16_ratio" in r:
        s += (f"; bf16 out {r['bf16_dequant_gbps']:.0f} GB/s vs copy {r['bf16_copy_gbps']:.0f} = {r['bf16_ratio']:.2f}"
              f", mismatches {r['bf16_mismatches']}{' WRONG' if r['bf16_mismatches'] > 0 else ''}")
    if "bf16_rows_ratio" in r:  # into rows of cols + 16 (the QLoRA forward's [W | B] tile)
        s += (f"; bf16 rows {r['bf16_rows_gbps']:.0f} GB/s = {r['bf16_rows_ratio']:.2f} of copy"
              f", mismatches {r['bf16_rows_mismatches']}{' WRONG' if r['bf16_rows_mismatches'] > 0 else ''}")
    print(s)
# bench_gpu_linear (part linear): the QLoRA linear's parts per shape, one row per shape and a column per
# variant: "ms rate" (TFLOPS for products and the op, GB/s for dequant and the cast; BAD = failed check),
# and per model a row summing a layer's projections (q/o counts twice, ...): ms only.
lin = [r for r in rows if r.get("bench") == "linear"]
def lin_cell(r):
    if r is None:
        return "-"
    if r.get("ms") is None:
        return "n/a (" + str(r.get("skipped", "?"))[:40] + ")"
    rate = r.get("tflops", r.get("gbps", 0.0))
    unit = "TF" if "tflops" in r else "GB/s"
    bad = ("nmse" in r and (r["nmse"] is None or r["nmse"] > 1e-3)) or (r.get("mismatches") or 0) != 0
    return f"{r['ms']:.{3 if r['ms'] >= 0.1 else 4}f} {rate:.{0 if rate >= 100 else 1}f} {unit}" + (" BAD" if bad else "")
lin_tables = [("fwd: y (M, N) = x W^T", ("fwd",)), ("bwd: dX (M, K) += dY W", ("bwd",)),
              ("dequant of W, f32 -> bf16 cast of x, the whole op (lq_lora_linear r 16)", ("dequant", "conv", "op"))]
for title, stages in lin_tables if lin else []:
    cols = list(dict.fromkeys((r["stage"], r["variant"]) for r in lin if r["stage"] in stages))
    shapes = list(dict.fromkeys((r["proj"], r["M"], r["N"], r["K"]) for r in lin))
    by = {(r["proj"], r["M"], r["N"], r["K"], r["stage"], r["variant"]): r for r in lin}
    many = len(stages) > 1
    print(f"linear {title} (ms and rate per variant)")
    print("| proj | M x N x K | " + " | ".join((f"{s} " if many else "") + v for s, v in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for sh in shapes:
        print(f"| {sh[0]} | {sh[1]}x{sh[2]}x{sh[3]} | " + " | ".join(lin_cell(by.get(sh + c)) for c in cols) + " |")
    for model in dict.fromkeys(sh[0].split()[0] for sh in shapes if " " in sh[0]):
        mine = [sh for sh in shapes if sh[0].startswith(model + " ")]
        weight = [len(sh[0].split()[-1].split("/")) for sh in mine]
        tot = []
        for c in cols:  # a sum only where every projection of the model has the variant
            ms = [(by.get(sh + c) or {}).get("ms") for sh in mine]
            tot.append(f"{sum(m * w for m, w in zip(ms, weight)):.3f}" if None not in ms else "-")
        n = sum(weight)
        print(f"| {model} layer ({n} proj) | sum ms | " + " | ".join(tot) + " |")
# bench/gpu.sh's --math names that are bf16 math with a switch (loquat_step): the table's label
MATH_LABEL = {
    "bf16fused": "bf16+fused",  # LOQUAT_FUSED_QLINEAR=1: the fused NF4 kernel
    "bf16flash": "bf16+flash",  # LOQUAT_FLASH_ATTN=1: the fused attention
    "bf16flash1s": "bf16+flash 1 stream",  # and LOQUAT_CUDA_SIDE_STREAM=0: no side stream
    "bf16flashnf": "bf16+flash unfused",  # and LOQUAT_CUDA_LORA_FUSE=0: no one-product forward, no dY / du kernel
    "bf161s": "bf16 1 stream",  # the default bf16 path, LOQUAT_CUDA_SIDE_STREAM=0
    "bf16nf": "bf16 unfused",  # the default bf16 path, LOQUAT_CUDA_LORA_FUSE=0
}
steps = [r for r in rows if r.get("bench") == "step" and not r.get("part", "").startswith(("profile", "ncu"))]
groups = {}
for r in steps:
    math = r.get("cuda_math", r.get("base"))
    if r["impl"] == "loquat":  # the part is "<model>-loquat-<math>[-ckpt]-r<round>" (bench/gpu.sh)
        fields = r.get("part", "").split("-")
        math = MATH_LABEL.get(fields[2] if len(fields) > 2 else "", math)
    if r.get("checkpoint"):
        math += " ckpt"
    key = (r["config"].split("/")[-1].replace(".json", ""), r["impl"], math)
    groups.setdefault(key, []).append(r)
if steps:
    print("| model | impl | math/base | runs | B x T | ms/step | tokens/s | peak MB | device used MB | loss first -> last |")
    print("|---|---|---|---|---|---|---|---|---|---|")
med = {}
for (model, impl, math), v in groups.items():
    ms = statistics.median(x["ms_per_step"] for x in v)
    pk = statistics.median(x["peak_mem_mb"] for x in v)
    tps = v[0]["batch"] * v[0]["seq"] / (ms / 1e3)
    med[(model, impl, math)] = (tps, pk)
    print(f"| {model} | {impl} | {math} | {len(v)} | {v[0]['batch']}x{v[0]['seq']} | {ms:.1f} | {tps:.0f} | {pk:.0f} | "
          f"{statistics.median(x['device_used_mb'] for x in v):.0f} | {v[0]['loss_first']:.3f} -> {v[-1]['loss_last']:.3f} |")
for (model, impl, math), (tps, pk) in med.items():
    if impl != "loquat":
        continue
    ck = math.endswith(" ckpt")  # compare like with like: checkpointing on both sides or on neither
    peer = next((val for (m2, i2, m3), val in med.items() if m2 == model and i2 != "loquat" and m3.endswith(" ckpt") == ck),
                None)
    if peer:
        # per round too (parts named ...-rN): the peer's step time moves from round to round
        rounds = []
        for r in groups[(model, impl, math)]:
            rn = r.get("part", "").rsplit("-r", 1)[-1]
            pr = [x for (m2, i2, m3), xs in groups.items() if m2 == model and i2 != "loquat" and m3.endswith(" ckpt") == ck
                  for x in xs if x.get("part", "").rsplit("-r", 1)[-1] == rn]
            if pr and rn.isdigit():
                rounds.append(f"{pr[0]['ms_per_step'] / r['ms_per_step']:.2f}x")
        per = f" (per round: {', '.join(rounds)})" if len(rounds) > 1 else ""
        print(f"ratio {model} loquat({math}) / pytorch+peft(bf16{' ckpt' if ck else ''}): tokens/s {tps / peer[0]:.2f}x{per}, peak memory {pk / peer[1]:.2f}x")
bad = [p for p in parts if p[1] not in ("0", "dry")]
print("parts not ok: " + (", ".join(f"{p[0]} ({'budget' if p[1] == 'budget' else 'timeout' if p[1] in ('124', '137') else 'skipped' if p[1] == '77' else 'exit ' + p[1]})" for p in bad) if bad else "none"))
