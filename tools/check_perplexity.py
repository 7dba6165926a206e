#!/usr/bin/env python3
"""Perplexity of a GGUF model scored by transformers, with the windows `loquat perplexity` uses
(llama.cpp's rules), to compare the two figures.

Tokens: the GGUF's tokenizer as transformers reads it (tokenizer.json from the GGUF metadata),
encode(text, add_special_tokens=False), with BOS in front when the GGUF says
tokenizer.ggml.add_bos_token = true. Windows: n_tokens // ctx non-overlapping windows of ctx
tokens (at least 2 * ctx tokens needed); with add_bos the first token of each window is replaced
by BOS; the logits at positions ctx/2 .. ctx-2 score the tokens at ctx/2 + 1 .. ctx-1. NLL in
float64 from float32 logits; PPL = exp(mean NLL). The weights are transformers' dequantization of
the GGUF (float32), i.e. the same quantized values loquat computes with.

Format version 1. Run:
  $(tools/pyenv.sh) tools/check_perplexity.py --model ~/.cache/loquat/models/SmolLM2-135M-Instruct.Q4_1.gguf \
      --data ~/.cache/loquat/data/austen/persuasion_heldout.txt --ctx 512
Prints per-window progress on stderr, then one JSON object on stdout (perplexity, mean_nll,
tokens, scored, windows, ctx, bos).
"""
import argparse
import json
import math
import os
import sys
import time

FORMAT_VERSION = 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if a.threads:
        torch.set_num_threads(a.threads)
    r = gguf.GGUFReader(a.model)
    f = r.fields.get("tokenizer.ggml.add_bos_token")
    add_bos = bool(f.contents()) if f is not None else False
    f = r.fields.get("tokenizer.ggml.bos_token_id")
    bos = int(f.contents()) if f is not None else None
    d, name = os.path.split(os.path.abspath(a.model))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    model.eval()
    text = open(a.data, encoding="utf-8", errors="replace").read()
    ids = tok.encode(text, add_special_tokens=False)
    if add_bos and bos is not None:
        ids = [bos] + ids
    n_ctx = a.ctx
    if len(ids) < 2 * n_ctx:
        sys.exit("need at least %d tokens, have %d" % (2 * n_ctx, len(ids)))
    n_win, first = len(ids) // n_ctx, n_ctx // 2
    nll, count, t0 = 0.0, 0, time.time()
    with torch.no_grad():
        for w in range(n_win):
            win = list(ids[w * n_ctx:(w + 1) * n_ctx])
            if add_bos and bos is not None:
                win[0] = bos
            logits = model(torch.tensor([win])).logits[0].double()
            lp = torch.log_softmax(logits[first:n_ctx - 1], dim=-1)
            tgt = torch.tensor(ids[w * n_ctx + first + 1:(w + 1) * n_ctx])
            nll += float(-lp[torch.arange(len(tgt)), tgt].sum())
            count += len(tgt)
            print("[%d/%d] ppl %.4f (%.1f s)" % (w + 1, n_win, math.exp(nll / count), time.time() - t0), file=sys.stderr)
    print(json.dumps({"perplexity": math.exp(nll / count), "mean_nll": nll / count, "tokens": len(ids), "scored": count,
                      "windows": n_win, "ctx": n_ctx, "bos": add_bos}))


if __name__ == "__main__":
    main()
