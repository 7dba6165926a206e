#!/usr/bin/env python3
"""Reference learning rates for loquat's lq_lr_at (train/schedule.c), from transformers' schedules.

Records (LQFX version 1, written by tools/lqfx.py):

  meta/transformers_version   bytes
  sched/<i>/params  i32 [kind (0 constant, 1 linear, 2 cosine), warmup, total]
  sched/<i>/lr      bytes: float64 little-endian, the rate of update k = 0 .. total + 1 (two past the
                    end), base rate 3e-4, read off torch.optim.lr_scheduler.LambdaLR after k steps
                    (get_last_lr), i.e. what the optimizer uses for its (k+1)-th update.

The schedules are transformers' get_constant_schedule_with_warmup,
get_linear_schedule_with_warmup and get_cosine_schedule_with_warmup on an SGD optimizer.

Run: $(tools/pyenv.sh) tools/gen_schedule_fixtures.py tests/fixtures/trainer/schedule.lqfx
"""
import os
import struct
import sys
import warnings

import torch
import transformers
from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lqfx as fx  # noqa: E402

LR = 3e-4
CASES = [  # (kind, warmup, total)
    (0, 0, 5), (0, 3, 10),
    (1, 0, 7), (1, 2, 10), (1, 10, 10), (1, 4, 37),
    (2, 0, 9), (2, 3, 30), (2, 1, 2), (2, 17, 100), (2, 5, 5),
]


def make(kind, opt, warmup, total):
    if kind == 0:
        return get_constant_schedule_with_warmup(opt, warmup)
    if kind == 1:
        return get_linear_schedule_with_warmup(opt, warmup, total)
    return get_cosine_schedule_with_warmup(opt, warmup, total)


def main(out):
    warnings.filterwarnings("ignore")
    fx.put("meta/transformers_version", transformers.__version__)
    for i, (kind, warmup, total) in enumerate(CASES):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=LR)
        sch = make(kind, opt, warmup, total)
        rates = []
        for _ in range(total + 2):
            rates.append(sch.get_last_lr()[0])
            opt.step()
            sch.step()
        fx.put(f"sched/{i}/params", torch.tensor([kind, warmup, total], dtype=torch.int32))
        fx.put(f"sched/{i}/lr", struct.pack("<%dd" % len(rates), *rates))
    fx.write(out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/trainer/schedule.lqfx")
