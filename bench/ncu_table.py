#!/usr/bin/env python3
"""bench/ncu_table.py: per-kernel time of a run profiled by ncu (bench/gpu.sh's `ncu` part).

    ncu_table.py CSV STEPS [TOP]

CSV: `ncu --csv --print-units base --metrics gpu__time_duration.sum` output (ns per launch);
STEPS: how many steps the profiled process ran (warm-up included), to give time per step.
Prints the total kernel time per step and the TOP (default 30) kernels by time: ms per step,
launches per step, the kernel name and block size.
"""
import collections
import csv
import sys


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, steps = sys.argv[1], float(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    total = collections.defaultdict(float)
    count = collections.Counter()
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if len(r) >= 15 and r[0] != "ID" and r[12] == "gpu__time_duration.sum"]
    for r in rows:
        key = f"{r[4][:72]} {r[7]}"
        total[key] += float(r[14].replace(",", "")) / 1e6
        count[key] += 1
    if not rows:
        sys.exit(f"ncu_table: no gpu__time_duration.sum rows in {path}")
    print(f"ncu: {len(rows)} launches, {sum(total.values()) / steps:.2f} ms of kernel time per step ({steps:g} steps)")
    print("| ms / step | launches / step | kernel (block) |")
    print("|---|---|---|")
    for key, ms in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        print(f"| {ms / steps:.3f} | {count[key] / steps:g} | {key} |")


if __name__ == "__main__":
    main()
