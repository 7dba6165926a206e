#!/usr/bin/env python3
"""The tiny QLoRA fine-tuning fixture and its PyTorch + PEFT reference run, for
tests/test_qlora_parity.c (and the trainer / merge / mem tests). Format version 1.

Writes into the folder given (default tests/fixtures/qlora_tiny/):
  tokenizer.json          byte-level BPE trained with `tokenizers` (ByteLevel pre-tokenizer without
                          prefix space, ByteLevel post-processor and decoder, no normalizer), vocab
                          400 = "<|endoftext|>" (id 0) + the 256 byte symbols + merges, trained on
                          synthetic sentences this script makes from its own word list. Kept if it
                          exists (pass --retrain to train it again).
  tokenizer_config.json   eos_token = bos_token = "<|endoftext|>", add_bos_token false.
  config.json, model.safetensors, generation_config.json
                          LlamaForCausalLM, save_pretrained in float32: hidden 64, 2 layers, 4 heads,
                          2 kv heads, head_dim 16, intermediate 128, vocab 400, tie_word_embeddings,
                          rope_theta 10000, rms_norm_eps 1e-5, bos = eos = 0. Seeded init: norms
                          1 + 0.2 N(0,1), embedding 0.2 N(0,1), projections 0.12 N(0,1).
  train.jsonl, eval.jsonl 48 / 8 documents {"text": ...} of random sentences, 5..60 tokens each.
  adapter_init/           a PEFT LoRA adapter (r 4, alpha 8, dropout 0, target_modules all-linear:
                          the seven projections of both layers) saved by PEFT's save_pretrained:
                          lora_A from PEFT's init (torch seed 1), every lora_B = 0.1 N(0,1) (seed 2)
                          so that A gets a gradient at step 1.
  config.yaml             the loquat trainer config of the run below (output_dir comes from
                          --set output_dir=...). Its max_grad_norm is picked from a first run
                          without clipping: the middle of the step norms (2 significant digits),
                          so that some steps clip and others do not.
  expected.lqfx           LQFX v1 (tools/lqfx.py), the reference run (see below):
    "loss"        f32 (S,)   reported loss of optimizer steps 1..S (sum CE / counted labels)
    "grad_norm"   f32 (S,)   global L2 norm of the LoRA grads before clipping
    "lr"          f32 (S,)   learning rate each step used
    "tokens"      i32 (S,)   counted labels per step
    "eval_step"   i32 (E,)   the steps the eval losses belong to (0 = before training)
    "eval_loss"   f32 (E,)   validation loss (sum CE / counted labels over every eval row)
    "eval_tokens" i32 (1,)   counted labels of the validation set
    "max_grad_norm" f32 (1,) the clipping threshold of config.yaml
    "grad1/<peft name>" f32  the grad of every lora_A / lora_B after step 1's backward, before
                             clipping (<peft name> = "base_model.model.model.layers.<i>.
                             <self_attn|mlp>.<proj>.lora_A.weight", as adapter_model.safetensors)
    "final/<peft name>" f32  every LoRA weight after the last step
    "train/rows"  i32 (R, T) epoch 0's packed rows (input ids), in the order the run uses them
    "eval/rows"   i32 (R', T) the packed validation rows
    "<v>/sets"    bytes       for each variant v of VARIANTS ("long", "nopack"): the space-separated
                              --set overrides of config.yaml it runs with (e.g. "max_steps=12 eval_steps=0")
    "<v>/loss", "<v>/grad_norm", "<v>/lr", "<v>/tokens", "<v>/eval_step", "<v>/eval_loss",
    "<v>/eval_tokens"         as above, for that run
  (adapter_init/README.md, PEFT's model card, is removed; adapter_config.json's target_modules,
  which PEFT writes in set order, is sorted.)

The reference replicates loquat's trainer (its pipeline as train/trainer.h documents it: data order, packing, step
semantics) with transformers + PEFT + bitsandbytes:
  - each document = tokenizers' ids of its text + EOS (no BOS: the tokenizer's post-processor adds
    nothing); the train documents are train.jsonl's in file order, the validation documents
    eval.jsonl's (test_datasets, no split);
  - epoch e's order = loquat's lq_data_shuffle(n_train, seed + 1 + e) (splitmix64 Fisher-Yates,
    replicated below), packed as datasets/pack.c's lq_pack (seq_len rows, labels = next token
    inside the same document piece and row, -100 elsewhere, positions restart per piece, pad EOS);
  - micro_batch_size rows per micro-batch, gradient_accumulation_steps micro-batches per step; a
    packed row with several document pieces is computed as each piece run alone through the model
    with positions from 0 (= the doc mask + restarted positions), the sum of its CE;
    backward of sum / N_step; clip_grad_norm_(max_grad_norm); torch.optim.AdamW(foreach=False)
    with get_cosine_schedule_with_warmup (so update 0, inside the warmup, has lr 0: m and v move,
    the weights do not);
  - the base's projections hold bitsandbytes' dequantize_4bit(quantize_4bit(W, blocksize 64,
    compress_statistics=True, quant_type nf4)) (CPU, float32): exactly the values loquat's NF4
    base holds; embedding, norms and the tied lm_head stay float32;
  - PeftModel.from_pretrained(adapter_init, is_trainable=True);
  - sample_packing false (variant "nopack"): each document is its own row, its first seq_len
    tokens (lq_pack of that document alone, first row), padded; the same for the eval rows.
The reference is computed in float64 (the float32 base / adapter values widened exactly), so that
what a test measures is loquat's float32 error alone; the script also runs it in float32 and prints
how far that run is from the float64 one (the noise floor of a float32 implementation).

Run: $(tools/pyenv.sh) tools/gen_qlora_fixtures.py tests/fixtures/qlora_tiny [--retrain]
(from the repository root: config.yaml names its files relative to it).
"""
import json
import os
import random
import shutil
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lqfx  # noqa: E402

FORMAT_VERSION = 1
EOS = "<|endoftext|>"
VOCAB = 400
SEQ_LEN = 32
MICRO_BATCH = 2
GAS = 2
MAX_STEPS = 6
LR = 5e-3
WARMUP = 2
WEIGHT_DECAY = 0.01
BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
SEED = 7
EVAL_STEPS = 3
LORA_R, LORA_ALPHA = 4, 8
# Other runs of the same config: (record prefix, the --set overrides, reference() arguments). "long"
# runs past the end of the first epoch (11 steps of 4 packed rows) into the second shuffle, with
# evaluation only before and after (eval_steps 0).
VARIANTS = [("long/", "max_steps=12 eval_steps=0", dict(max_steps=12, eval_steps=0)),
            ("nopack/", "sample_packing=false max_steps=4", dict(packing=False, max_steps=4))]
PROJ = [("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
        ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj")]

WORDS = """the a one every this that some no old young small large quiet bright dark early late happy tired
cat dog bird fox horse river garden house window letter book lamp road hill village teacher baker sailor
farmer child friend sister brother morning evening winter summer rain snow wind bread tea apple stone door
walks runs sleeps reads writes sings waits finds keeps opens closes carries paints watches remembers
slowly quickly softly often never always again together alone near beside under over through behind
and but while because after before when if so then green red blue golden silver gentle brave careful""".split()


# ---- synthetic text -------------------------------------------------------------------------

def sentence(rng):
    n = rng.randint(3, 11)
    words = [rng.choice(WORDS) for _ in range(n)]
    s = " ".join(words)
    s = s[0].upper() + s[1:]
    if rng.random() < 0.2:
        k = rng.randint(1, len(words) - 1)
        words.insert(k, str(rng.randint(2, 1999)))
        s = " ".join(words)
        s = s[0].upper() + s[1:]
    return s + rng.choice([".", ".", ".", "!", "?", ";", ","])


def make_tokenizer(path, retrain):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    if os.path.exists(path) and not retrain:
        return Tokenizer.from_file(path)
    rng = random.Random(1001)
    corpus = [" ".join(sentence(rng) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOS], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.save(path)
    return Tokenizer.from_file(path)


def make_docs(tok, rng, n, lo, hi):
    """n texts whose token counts (without EOS) lie in [lo, hi], lengths spread over the range."""
    texts = []
    while len(texts) < n:
        target = rng.randint(lo, hi)
        s = sentence(rng)
        while len(tok.encode(s).ids) < target:
            nxt = s + " " + sentence(rng)
            if len(tok.encode(nxt).ids) > hi:
                break
            s = nxt
        while len(tok.encode(s).ids) > target and " " in s:  # short documents: cut words off
            s = s.rsplit(" ", 1)[0]
        if lo <= len(tok.encode(s).ids) <= hi:
            texts.append(s)
    return texts


def write_jsonl(path, texts):
    with open(path, "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")


# ---- model and adapter ----------------------------------------------------------------------

def make_model(out, vocab, eos_id):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                      max_position_embeddings=128, tie_word_embeddings=True,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                      bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=None)
    m = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(0.2 * torch.randn_like(p))
            else:
                p.copy_(0.12 * torch.randn_like(p))
    m.save_pretrained(out, safe_serialization=True)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "bos_token": EOS,
                   "add_bos_token": False, "add_eos_token": False, "model_max_length": 128,
                   "clean_up_tokenization_spaces": False}, f, indent=2)
        f.write("\n")


def make_adapter(out):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM
    base = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32)
    torch.manual_seed(1)
    lcfg = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear",
                      bias="none", task_type="CAUSAL_LM")
    pm = get_peft_model(base, lcfg)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters()):
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    d = os.path.join(out, "adapter_init")
    pm.save_pretrained(d)
    # PEFT writes the expanded all-linear target list from a set, in hash order: sort it so that
    # the file is the same on every run (the list's order means nothing to PEFT)
    cpath = os.path.join(d, "adapter_config.json")
    with open(cpath) as f:
        acfg = json.load(f)
    acfg["target_modules"] = sorted(acfg["target_modules"])
    with open(cpath, "w") as f:
        json.dump(acfg, f, indent=2, sort_keys=True)
        f.write("\n")
    readme = os.path.join(d, "README.md")
    if os.path.exists(readme):
        os.remove(readme)


def write_config(out, max_grad_norm):
    text = f"""# tests/fixtures/qlora_tiny/config.yaml: the tiny QLoRA run tests/test_qlora_parity.c checks
# against PyTorch + PEFT (written by tools/gen_qlora_fixtures.py; output_dir comes from --set).
base_model: {out}
load_in_4bit: true
bnb_4bit_quant_type: nf4
bnb_4bit_use_double_quant: true
quant_block_size: 64
adapter: lora
lora_r: {LORA_R}
lora_alpha: {LORA_ALPHA}
lora_dropout: 0.0
lora_target_modules: all-linear
lora_model_dir: {out}/adapter_init
datasets:
  - path: {out}/train.jsonl
    type: completion
test_datasets:
  - path: {out}/eval.jsonl
    type: completion
sequence_len: {SEQ_LEN}
sample_packing: true
micro_batch_size: {MICRO_BATCH}
gradient_accumulation_steps: {GAS}
max_steps: {MAX_STEPS}
learning_rate: {LR}
lr_scheduler: cosine
warmup_steps: {WARMUP}
optimizer: adamw
adam_beta1: {BETAS[0]}
adam_beta2: {BETAS[1]}
adam_epsilon: {ADAM_EPS}
weight_decay: {WEIGHT_DECAY}
max_grad_norm: {max_grad_norm}
gradient_checkpointing: false
seed: {SEED}
eval_steps: {EVAL_STEPS}
logging_steps: 1
"""
    with open(os.path.join(out, "config.yaml"), "w") as f:
        f.write(text)


# ---- loquat's data pipeline, replicated -----------------------------------------------------

M64 = (1 << 64) - 1


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return state, z ^ (z >> 31)


def lq_data_shuffle(n, seed):
    """datasets/pack.c lq_data_shuffle: Fisher-Yates from the top, rejection-sampled splitmix64."""
    order = list(range(n))
    s = seed & M64
    for i in range(n, 1, -1):
        lim = M64 - (M64 % i)
        while True:
            s, r = splitmix64(s)
            if r < lim:
                break
        j = r % i
        order[i - 1], order[j] = order[j], order[i - 1]
    return order


def lq_pack(docs, order, seq_len, pad_id):
    """datasets/pack.c lq_pack: (ids, labels, doc_ids, positions), each (rows, seq_len)."""
    ids, labels, doc_ids, pos = [], [], [], []
    t, piece = 0, -1
    for k in order:
        d = docs[k]
        p = 0
        for j in range(len(d)):
            col = t % seq_len
            if col == 0:
                piece = -1
            if col == 0 or j == 0:
                piece += 1
                p = 0
            next_here = j + 1 < len(d) and col + 1 < seq_len
            ids.append(d[j])
            labels.append(d[j + 1] if next_here else -100)
            doc_ids.append(piece)
            pos.append(p)
            p += 1
            t += 1
    while t % seq_len:
        ids.append(pad_id)
        labels.append(-100)
        doc_ids.append(-1)
        pos.append(0)
        t += 1
    r = t // seq_len
    return [np.array(a, dtype=np.int64).reshape(r, seq_len) for a in (ids, labels, doc_ids, pos)]


# ---- the reference run ----------------------------------------------------------------------

def peft_model(out, dtype):
    import bitsandbytes.functional as bnbF
    from peft import PeftModel
    from transformers import LlamaForCausalLM
    base = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        for layer in base.model.layers:
            for parent, proj in PROJ:
                lin = getattr(getattr(layer, parent), proj)
                q, st = bnbF.quantize_4bit(lin.weight.data.contiguous(), blocksize=64, compress_statistics=True,
                                           quant_type="nf4")
                lin.weight.data = bnbF.dequantize_4bit(q, st).to(torch.float32).contiguous()
    base = base.to(dtype)
    pm = PeftModel.from_pretrained(base, os.path.join(out, "adapter_init"), is_trainable=True)
    pm = pm.to(dtype)
    pm.train()  # dropout is 0: train mode changes nothing but keeps PEFT's training path
    return pm


def row_loss(pm, ids, labels, docs, pos):
    """SUM of CE over the row's labels; each document piece run alone with positions from 0."""
    total, n = None, 0
    for piece in range(int(docs.max()) + 1 if (docs >= 0).any() else 0):
        sel = np.nonzero(docs == piece)[0]
        pid = torch.tensor(ids[sel])[None]
        ppos = torch.tensor(pos[sel])[None]
        assert (pos[sel] == np.arange(len(sel))).all()
        lab = torch.tensor(labels[sel])
        logits = pm(input_ids=pid, position_ids=ppos).logits[0]
        ce = F.cross_entropy(logits, lab, reduction="sum", ignore_index=-100)
        total = ce if total is None else total + ce
        n += int((lab != -100).sum())
    return total, n


def eval_loss(pm, ev):
    ids, labels, docs, pos = ev
    with torch.no_grad():
        s, n = 0.0, 0
        for r in range(ids.shape[0]):
            l, c = row_loss(pm, ids[r], labels[r], docs[r], pos[r])
            if l is not None:
                s += float(l)
            n += c
    return s / n, n


def rows_of(docs, order, eos_id, packing):
    """pipeline.md item 3: packed rows, or (no packing) each document's first row alone."""
    if packing:
        return lq_pack(docs, order, SEQ_LEN, eos_id)
    one = [lq_pack(docs, [k], SEQ_LEN, eos_id) for k in order]
    return [np.stack([o[i][0] for o in one]) for i in range(4)]


def reference(out, dtype, train_docs, eval_docs, eos_id, max_grad_norm, max_steps=MAX_STEPS, packing=True,
              eval_steps=EVAL_STEPS):
    from transformers import get_cosine_schedule_with_warmup
    pm = peft_model(out, dtype)
    named = [(n, p) for n, p in pm.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    assert len(params) == 2 * 7 * 2, [n for n, _ in named]
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=ADAM_EPS, weight_decay=WEIGHT_DECAY, foreach=False)
    sched = get_cosine_schedule_with_warmup(opt, WARMUP, max_steps)
    ev = rows_of(eval_docs, list(range(len(eval_docs))), eos_id, packing)

    res = {"loss": [], "grad_norm": [], "lr": [], "tokens": [], "eval_step": [], "eval_loss": [], "grad1": {},
           "epochs": 1}
    el, res["eval_tokens"] = eval_loss(pm, ev)
    res["eval_step"].append(0)
    res["eval_loss"].append(el)

    def epoch_rows(e):
        return rows_of(train_docs, lq_data_shuffle(len(train_docs), SEED + 1 + e), eos_id, packing)

    epoch, row = 0, 0
    rows = epoch_rows(epoch)
    res["train_rows"] = rows[0]
    steps_per_epoch = rows[0].shape[0] // (MICRO_BATCH * GAS)  # the remainder rows are dropped
    assert steps_per_epoch >= 1
    for step in range(1, max_steps + 1):
        if row + MICRO_BATCH * GAS > steps_per_epoch * MICRO_BATCH * GAS:  # next epoch, next shuffle
            epoch, row = epoch + 1, 0
            rows = epoch_rows(epoch)
            res["epochs"] = epoch + 1
        ids, labels, docs, pos = rows
        mbs = []
        n_step = 0
        for mb in range(GAS):
            rr = list(range(row + mb * MICRO_BATCH, row + (mb + 1) * MICRO_BATCH))
            mbs.append(rr)
            n_step += int((labels[rr] != -100).sum())
        assert n_step > 0
        lr = opt.param_groups[0]["lr"]
        loss_rep = 0.0
        for rr in mbs:
            lsum = None
            for r in rr:
                l, _ = row_loss(pm, ids[r], labels[r], docs[r], pos[r])
                if l is not None:
                    lsum = l if lsum is None else lsum + l
            (lsum / n_step).backward()
            loss_rep += float(lsum.detach()) / n_step
        row += MICRO_BATCH * GAS
        if step == 1:
            for n, p in named:
                res["grad1"][n] = p.grad.detach().clone()
        gn = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=False)
        res["loss"].append(loss_rep)
        res["grad_norm"].append(float(gn))
        res["lr"].append(lr)
        res["tokens"].append(n_step)
        if (eval_steps > 0 and step % eval_steps == 0) or step == max_steps:
            el, _ = eval_loss(pm, ev)
            res["eval_step"].append(step)
            res["eval_loss"].append(el)
    res["final"] = {n: p.detach().clone() for n, p in named}
    res["eval_rows"] = ev[0]
    return res


def put_run(prefix, res):
    lqfx.put(prefix + "loss", np.array(res["loss"]))
    lqfx.put(prefix + "grad_norm", np.array(res["grad_norm"]))
    lqfx.put(prefix + "lr", np.array(res["lr"]))
    lqfx.put(prefix + "tokens", np.array(res["tokens"], dtype=np.int32))
    lqfx.put(prefix + "eval_step", np.array(res["eval_step"], dtype=np.int32))
    lqfx.put(prefix + "eval_loss", np.array(res["eval_loss"]))
    lqfx.put(prefix + "eval_tokens", np.array([res["eval_tokens"]], dtype=np.int32))


def peft_name(n):
    """PEFT's in-memory name (…lora_A.default.weight) -> the saved one (…lora_A.weight)."""
    return n.replace(".default.weight", ".weight")


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    out = args[0] if args else "tests/fixtures/qlora_tiny"
    retrain = "--retrain" in sys.argv
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)

    tok = make_tokenizer(os.path.join(out, "tokenizer.json"), retrain)
    eos_id = tok.token_to_id(EOS)
    assert eos_id is not None and tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    rng = random.Random(2024)
    train_texts = make_docs(tok, rng, 48, 5, 60)
    eval_texts = make_docs(tok, rng, 8, 5, 60)
    write_jsonl(os.path.join(out, "train.jsonl"), train_texts)
    write_jsonl(os.path.join(out, "eval.jsonl"), eval_texts)
    train_docs = [tok.encode(t).ids + [eos_id] for t in train_texts]
    eval_docs = [tok.encode(t).ids + [eos_id] for t in eval_texts]

    make_model(out, VOCAB, eos_id)
    shutil.rmtree(os.path.join(out, "adapter_init"), ignore_errors=True)
    make_adapter(out)

    # A first run without clipping finds the norms; the threshold is then set between the smallest
    # and the largest so that some steps clip and some do not (both paths get checked).
    probe = reference(out, torch.float64, train_docs, eval_docs, eos_id, 1e30)
    norms = sorted(probe["grad_norm"])
    max_grad_norm = float("%.2g" % (0.5 * (norms[len(norms) // 2 - 1] + norms[len(norms) // 2])))
    clipped = [g > max_grad_norm for g in probe["grad_norm"]]
    assert any(clipped) and not all(clipped), (probe["grad_norm"], max_grad_norm)
    write_config(out, max_grad_norm)

    res = reference(out, torch.float64, train_docs, eval_docs, eos_id, max_grad_norm)
    r32 = reference(out, torch.float32, train_docs, eval_docs, eos_id, max_grad_norm)

    lqfx.records.clear()
    put_run("", res)
    lqfx.put("max_grad_norm", np.array([max_grad_norm]))
    for n, g in res["grad1"].items():
        lqfx.put("grad1/" + peft_name(n), g.float())
    for n, w in res["final"].items():
        lqfx.put("final/" + peft_name(n), w.float())
    lqfx.put("train/rows", res["train_rows"].astype(np.int32))
    lqfx.put("eval/rows", res["eval_rows"].astype(np.int32))
    for prefix, sets, kw in VARIANTS:
        v = reference(out, torch.float64, train_docs, eval_docs, eos_id, max_grad_norm, **kw)
        put_run(prefix, v)
        lqfx.put(prefix + "sets", sets)
        print("%s (%s): %d epochs, loss %s" % (prefix, sets, v["epochs"], ["%.5f" % x for x in v["loss"]]))
    lqfx.write(os.path.join(out, "expected.lqfx"))

    print("train docs %d (tokens with EOS %d..%d, total %d), rows/epoch %d; eval docs %d, rows %d" % (
        len(train_docs), min(map(len, train_docs)), max(map(len, train_docs)), sum(map(len, train_docs)),
        res["train_rows"].shape[0], len(eval_docs), res["eval_rows"].shape[0]))
    print("max_grad_norm %g; norms %s; clipped %s" % (max_grad_norm, ["%.4g" % g for g in res["grad_norm"]],
                                                     [g > max_grad_norm for g in res["grad_norm"]]))
    print("loss", ["%.6f" % x for x in res["loss"]])
    print("eval", list(zip(res["eval_step"], ["%.6f" % x for x in res["eval_loss"]])))
    print("float32 run vs float64: loss %.2e, grad_norm %.2e, eval %.2e, step-1 grads %.2e, final weights %.2e"
          % (rel_err(r32["loss"], res["loss"]), rel_err(r32["grad_norm"], res["grad_norm"]),
             rel_err(r32["eval_loss"], res["eval_loss"]),
             max(rel_err(r32["grad1"][n].double(), res["grad1"][n]) for n in res["grad1"]),
             max(rel_err(r32["final"][n].double(), res["final"][n]) for n in res["final"])))
    # the same per element, the largest |a-b| / |b| (elementwise, guarded), as the C test measures
    worst = 0.0
    for n in res["final"]:
        a, b = r32["final"][n].double().numpy(), res["final"][n].numpy()
        worst = max(worst, float(np.max(np.abs(a - b) / (np.abs(b) + 1e-3))))
    print("float32 run vs float64: final weights max |diff| / (|ref| + 1e-3) %.2e" % worst)


if __name__ == "__main__":
    main()
