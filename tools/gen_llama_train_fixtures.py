#!/usr/bin/env python3
"""QLoRA reference for tests/test_llama_train.c: an NF4 base, a PEFT LoRA adapter, a packed batch,
and what transformers + PEFT compute for it. Format version 1.

Input: the tiny tied Llama of tools/gen_llama_fixtures.py (tests/fixtures/llama_tiny/tied, a HF
folder, float32). Writes into the folder given (default tests/fixtures/llama_train/):

  adapter/      PEFT's save_pretrained of LoraConfig(r=4, lora_alpha=8, lora_dropout=0, all seven
                projections) on the NF4-dequantized base: lora_A from PEFT's own init
                (torch.manual_seed(11)), every lora_B set to 0.2 * randn (torch.manual_seed(12)),
                so the adapter changes the output.
  train.lqfx    LQFX v1 (tools/lqfx.py):
    nf4/<hf weight name>/codes  bytes: bitsandbytes.functional.quantize_4bit(w float32 CPU,
                                blocksize=64, compress_statistics=True, quant_type="nf4")'s
                                packed codes (element 2j in the high nibble) of each decoder-layer
                                linear weight
    nf4/<hf weight name>/deq    f32 (out, in): dequantize_4bit of that: what the base holds (through
                                the flattened weight: bnb 0.50's CPU dequantize_4bit mis-handles a
                                2-D state whose rows are shorter than the block; same codes)
    ids, positions, doc, labels i32 (2, 12): a packed batch. Row 0 holds two documents (5 and 7
                                tokens: positions restart at 0, doc ids 0 / 1), row 1 one of 12.
                                labels[t] = ids[t + 1] when t + 1 is in the same document, else
                                -100 (the packing rule of datasets/pack.c), and label (0, 2) is
                                -100 as a masked prompt token would be.
    logits                      f32 (2, 12, 128): each document run ALONE through the PEFT model
                                (its own positions 0.., causal) and the runs concatenated: what a
                                document mask with restarted positions means.
    loss                        f32 (1): the summed cross-entropy of logits vs labels (ignore -100)
    grad/<module>.lora_A.weight f32 (r, in)  d loss / d A, from loss.backward()
    grad/<module>.lora_B.weight f32 (out, r) d loss / d B
  <module> is the HF module path, e.g. model.layers.0.self_attn.q_proj.
  smollm2.lqfx  (only when SmolLM2-135M-Instruct.Q4_1.gguf is in loquat's cache, tools/fetch_model.sh)
    ids                         i32 (1, 45): the opening of Pride and Prejudice, SmolLM2's tokens
                                (transformers' tokenizer read from the GGUF file)
    q4_1_loss                   f32 (1): mean next-token cross-entropy of ids under the GGUF model as
                                transformers loads it (weights dequantized to float32)
    nf4_loss                    f32 (1): the same with every decoder-layer projection replaced by its
                                bnb NF4 round trip (blocksize 64, double quantization)

Run: $(tools/pyenv.sh) tools/gen_llama_train_fixtures.py tests/fixtures/llama_train
"""
import os
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lqfx  # noqa: E402

import bitsandbytes.functional as F  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

FORMAT_VERSION = 1
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# documents of the packed batch: row 0 = DOCS[0] + DOCS[1], row 1 = DOCS[2]
DOCS = [[1, 17, 99, 3, 127], [1, 64, 5, 42, 0, 88, 2], [1, 7, 33, 120, 9, 65, 12, 101, 44, 3, 76, 2]]
ROWS = [[0, 1], [2]]


def nf4_base(m):
    """Replaces every decoder-layer linear weight by its bnb NF4 round trip; records codes + deq."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if ".layers." not in name or not any(t in name for t in TARGETS):
                continue
            w = p.detach().float().contiguous()
            packed, st = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
            # bitsandbytes 0.50's CPU dequantize_4bit is wrong for a 2-D state whose rows are
            # shorter than the block (these layers have 32 columns; the codes are right): it is
            # dequantized through the flattened tensor, whose codes are the same bytes.
            pf, sf = F.quantize_4bit(w.reshape(-1), blocksize=64, compress_statistics=True, quant_type="nf4")
            assert torch.equal(pf.reshape(-1), packed.reshape(-1))
            deq = F.dequantize_4bit(pf, sf).reshape(w.shape).float()
            # sanity: every element within NF4's widest half-gap (0.152) of its block's absmax
            err = (deq - w).reshape(-1, 64).abs().amax(1)
            assert bool((err <= 0.16 * w.reshape(-1, 64).abs().amax(1) + 1e-6).all()), name
            lqfx.put("nf4/%s/codes" % name, packed.reshape(-1).numpy().astype(np.uint8))
            lqfx.put("nf4/%s/deq" % name, deq)
            p.copy_(deq)


def batch():
    T = 12
    ids = np.zeros((2, T), np.int32)
    pos = np.zeros((2, T), np.int32)
    doc = np.zeros((2, T), np.int32)
    lab = np.full((2, T), -100, np.int32)
    for r, docs in enumerate(ROWS):
        t = 0
        for j, d in enumerate(docs):
            toks = DOCS[d]
            for i, tok in enumerate(toks):
                ids[r, t] = tok
                pos[r, t] = i
                doc[r, t] = j
                if i + 1 < len(toks):
                    lab[r, t] = toks[i + 1]
                t += 1
        assert t == T
    lab[0, 2] = -100  # a masked (prompt) token inside a document
    return ids, pos, doc, lab


SMOLLM2_TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
                "must be in want of a wife. However little known the feelings or views of such a man may be on "
                "his first entering a neighbourhood")


def nf4_roundtrip(w):
    """bnb NF4 (blocksize 64, double quant) and back, through the flattened weight (see nf4_base)."""
    pf, sf = F.quantize_4bit(w.reshape(-1).contiguous(), blocksize=64, compress_statistics=True, quant_type="nf4")
    return F.dequantize_4bit(pf, sf).reshape(w.shape)


def smollm2_reference(out):
    cache = os.environ.get("LOQUAT_CACHE", os.path.expanduser("~/.cache/loquat"))
    path = os.path.join(cache, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        print("skipping smollm2.lqfx: %s is absent" % path)
        return
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, f = os.path.dirname(path), os.path.basename(path)
    ids = torch.tensor([AutoTokenizer.from_pretrained(d, gguf_file=f)(SMOLLM2_TEXT)["input_ids"]])
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()

    def loss():
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(m(ids).logits[0, :-1], ids[0, 1:]).reshape(1)

    lqfx.records.clear()
    lqfx.put("ids", ids.int())
    lqfx.put("q4_1_loss", loss())
    with torch.no_grad():
        for name, p in m.named_parameters():
            if ".layers." in name and name.endswith("proj.weight"):
                p.copy_(nf4_roundtrip(p.detach().float()))
    lqfx.put("nf4_loss", loss())
    lqfx.write(os.path.join(out, "smollm2.lqfx"))
    print("smollm2: %d tokens" % ids.shape[1])


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/llama_train"
    here = os.path.dirname(os.path.abspath(__file__))
    base_dir = os.path.join(here, "..", "tests", "fixtures", "llama_tiny", "tied")
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)

    m = LlamaForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32, attn_implementation="eager")
    m = m.float().eval()
    nf4_base(m)
    m.name_or_path = "llama_tiny/tied"  # what adapter_config.json names as the base

    torch.manual_seed(11)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, bias="none",
                     task_type="CAUSAL_LM")
    pm = get_peft_model(m, cfg)
    torch.manual_seed(12)
    lora = {}
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn_like(p))
            if "lora_" in name:
                lora[name] = p
    pm.eval()

    ids, pos, doc, lab = batch()
    for k, v in (("ids", ids), ("positions", pos), ("doc", doc), ("labels", lab)):
        lqfx.put(k, v)

    rows = []
    for docs in ROWS:
        parts = [pm(input_ids=torch.tensor([DOCS[d]])).logits for d in docs]
        rows.append(torch.cat(parts, dim=1))
    logits = torch.cat(rows, dim=0).float()  # (2, 12, V)
    V = logits.shape[-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(lab).long().reshape(-1),
                                             ignore_index=-100, reduction="sum")
    loss.backward()
    lqfx.put("logits", logits)
    lqfx.put("loss", loss.detach().reshape(1))
    prefix = "base_model.model."
    for name, p in lora.items():
        # "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
        mod = name[len(prefix):].replace(".default.weight", ".weight")
        lqfx.put("grad/" + mod, p.grad)

    ad = os.path.join(out, "adapter")
    if os.path.isdir(ad):
        shutil.rmtree(ad)
    pm.save_pretrained(ad)
    os.remove(os.path.join(ad, "README.md"))  # PEFT's model card: not part of the adapter
    lqfx.write(os.path.join(out, "train.lqfx"))
    print("loss %.6f, %d lora tensors, %d records" % (loss.item(), len(lora), len(lqfx.records)))
    smollm2_reference(out)


if __name__ == "__main__":
    main()
