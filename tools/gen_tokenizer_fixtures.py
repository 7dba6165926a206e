#!/usr/bin/env python3
"""Reference fixtures for loquat's byte-level BPE tokenizer, computed by Hugging Face `tokenizers`.

Two small tokenizer.json files are trained offline (on tests/fixtures/tokenizer/text.txt plus a
few modules of Python's standard library) unless they already exist (pass --train to retrain):
  llama3.json  Sequence[Split(Llama-3 regex, Isolated), ByteLevel(use_regex=false)], ignore_merges,
               TemplateProcessing "<|begin_of_text|> $A", vocab 2000
  gpt2.json    ByteLevel(add_prefix_space=true, use_regex=true) (the GPT-2 regex), vocab 1000
both with the special tokens <|endoftext|>, <|im_start|>, <|im_end|>, <|begin_of_text|>.
Then for each tokenizer, ids as tokenizers encodes them (add_special_tokens=False unless named
"bos"): the whole text, every line, a few byte strings that are not valid UTF-8 (the reference
is encode(bytes.decode("utf-8", "replace")), the policy loquat documents), and decodes.

File format (little-endian), version 1 (as tools/gen_torch_fixtures.py):
  "LQFX" u32 version u32 n_records
  record: u16 name_len, name, u8 dtype (0 f32, 1 i32, 2 bytes), u8 ndim, i64 shape[ndim], data
Names: "<tok>/whole/ids", "<tok>/whole_bos/ids", "<tok>/whole/decode[_skip]" (bytes),
"<tok>/line/<i>/text" (bytes), "<tok>/line/<i>/ids", "<tok>/bad/<i>/bytes", "<tok>/bad/<i>/ids",
"n_lines", "n_bad", "n_var" (i32 [1]); "var/<i>/name", "var/<i>/json" (the gpt2 model under other
pre-tokenizers / added-token flags: every Split behavior, invert, Digits, none, lstrip+rstrip, single_word)
and "var/<i>/ids" for the whole text.

Run: $(tools/pyenv.sh) tools/gen_tokenizer_fixtures.py tests/fixtures/tokenizer [--train]

SmolLM2 (optional; its 2 MB tokenizer.json is not committed, only the reference ids are):
  $(tools/pyenv.sh) tools/gen_tokenizer_fixtures.py tests/fixtures/tokenizer --smollm2 \
      ~/.cache/loquat/models/SmolLM2-135M-Instruct.Q4_1.gguf \
      ~/.cache/loquat/models/SmolLM2-135M-Instruct.tokenizer.json
writes that tokenizer.json and tests/fixtures/tokenizer/smollm2_ref.lqfx ("smollm2/whole/ids",
"smollm2/line/<i>/ids", "smollm2/n_lines", "smollm2/n_ids"); tests/test_tokenizer.c compares
against it when the tokenizer.json is there ($LOQUAT_SMOLLM2_TOKENIZER or the path above) and
skips otherwise.
"""
import glob
import json
import os
import struct
import sys
import sysconfig

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

FORMAT_VERSION = 1
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>"]
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BAD = [b"ok \xff\xfe end", b"trunc \xe4\xb8", b"\xc0\xafoverlong", b"surrogate \xed\xa0\x80 x",
       b"\xf4\x90\x80\x80 too big", b"lone cont \x80\x80 and \xf0\x9f\x98 cut", b"nul\x00byte"]
records = []


def put(name, v):
    if isinstance(v, (bytes, str)):
        data = v.encode() if isinstance(v, str) else v
        records.append((name, 2, (len(data),), data))
    else:
        records.append((name, 1, (len(v),), struct.pack("<%di" % len(v), *v)))


def write(path):
    with open(path, "wb") as f:
        f.write(b"LQFX" + struct.pack("<II", FORMAT_VERSION, len(records)))
        for name, dt, shape, data in records:
            nb = name.encode()
            f.write(struct.pack("<H", len(nb)) + nb + struct.pack("<BB", dt, len(shape)))
            f.write(struct.pack("<%dq" % len(shape), *shape))
            f.write(data)


def corpus(text):
    lib = sysconfig.get_paths()["stdlib"]
    files = [os.path.join(lib, m) for m in ("textwrap.py", "argparse.py", "json/decoder.py", "string.py")]
    out = [text] * 4
    for p in files:
        if os.path.exists(p):
            out.append(open(p, encoding="utf-8").read())
    return out


def train(kind, text, path):
    tok = Tokenizer(models.BPE())
    if kind == "llama3":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        vocab = 2000
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
        vocab = 1000
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS, show_progress=False,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(text), trainer=tr)
    if kind == "llama3":
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                          special_tokens=[("<|begin_of_text|>", bos)])])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    j = json.loads(tok.to_str())
    if kind == "llama3":
        j["model"]["ignore_merges"] = True
    with open(path, "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False, separators=(",", ":"))


BYTES = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
VARIANTS = {  # name -> (pre_tokenizer, then ByteLevel without regex; added-token flags for <|im_end|>)
    "removed": ({"type": "Split", "pattern": {"String": " "}, "behavior": "Removed", "invert": False}, None),
    "mprev": ({"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False}, None),
    "mnext": ({"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "MergedWithNext", "invert": False}, None),
    "contig": ({"type": "Split", "pattern": {"Regex": "[aeiou]"}, "behavior": "Contiguous", "invert": False}, None),
    "invert": ({"type": "Split", "pattern": {"Regex": "\\p{L}+"}, "behavior": "Isolated", "invert": True}, None),
    "digits": ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                       {"type": "ByteLevel", "add_prefix_space": False,
                                                        "trim_offsets": True, "use_regex": True}]}, None),
    "digits_run": ({"type": "Digits", "individual_digits": False}, None),
    "none": (None, None),  # no ByteLevel at all: the model sees characters, not bytes
    "single_word": ({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
                    {"single_word": True}),
    "strip": ({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
              {"lstrip": True, "rstrip": True}),
}


def variants(base_path, text):
    """The gpt2 model under other pre-tokenizers and added-token flags: "var/<name>/json" and ids."""
    base = json.load(open(base_path, encoding="utf-8"))
    names = sorted(VARIANTS)
    put("n_var", [len(names)])
    for i, name in enumerate(names):
        pre, flags = VARIANTS[name]
        j = json.loads(json.dumps(base))
        if pre is not None and name not in ("digits", "strip", "digits_run", "single_word"):
            pre = {"type": "Sequence", "pretokenizers": [pre, BYTES]}
        j["pre_tokenizer"] = pre
        j["post_processor"] = None
        if flags:
            for a in j["added_tokens"]:
                if a["content"] == "<|im_end|>":
                    a.update(flags)
        s = json.dumps(j, ensure_ascii=False, separators=(",", ":"))
        tok = Tokenizer.from_str(s)
        put(f"var/{i}/name", name)
        put(f"var/{i}/json", s)
        put(f"var/{i}/ids", tok.encode(text, add_special_tokens=False).ids)


def smollm2(gguf_path, json_path, out):
    """Exports the SmolLM2 GGUF's tokenizer (gpt2 model, pre "smollm": Digits(individual) then the
    GPT-2 ByteLevel regex, control tokens special) to json_path and writes smollm2_ref.lqfx."""
    from gguf import GGUFReader
    from tokenizers import AddedToken
    r = GGUFReader(gguf_path)
    fld = r.fields
    assert fld["tokenizer.ggml.model"].contents() == "gpt2" and fld["tokenizer.ggml.pre"].contents() == "smollm"
    toks = fld["tokenizer.ggml.tokens"].contents()
    types = fld["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ")) for m in fld["tokenizer.ggml.merges"].contents()]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(toks)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(toks, types) if ty == 3])
    tok.save(json_path)
    tok = Tokenizer.from_file(json_path)
    records.clear()
    text = open(os.path.join(out, "text.txt"), encoding="utf-8", newline="").read()
    put("smollm2/n_ids", [tok.get_vocab_size(with_added_tokens=True)])
    put("smollm2/whole/ids", tok.encode(text, add_special_tokens=False).ids)
    lines = [ln for ln in text.split("\n") if ln]
    put("smollm2/n_lines", [len(lines)])
    for i, ln in enumerate(lines):
        put(f"smollm2/line/{i}/ids", tok.encode(ln, add_special_tokens=False).ids)
    write(os.path.join(out, "smollm2_ref.lqfx"))
    print(f"wrote {json_path} and {len(records)} records to {out}/smollm2_ref.lqfx")


def main():
    out = sys.argv[1]
    if len(sys.argv) >= 5 and sys.argv[2] == "--smollm2":
        return smollm2(sys.argv[3], sys.argv[4], out)
    retrain = "--train" in sys.argv[2:]
    text = open(os.path.join(out, "text.txt"), encoding="utf-8", newline="").read()
    lines = [ln for ln in text.split("\n") if ln]
    put("n_lines", [len(lines)])
    put("n_bad", [len(BAD)])
    for kind in ("llama3", "gpt2"):
        path = os.path.join(out, kind + ".json")
        if retrain or not os.path.exists(path):
            train(kind, text, path)
        tok = Tokenizer.from_file(path)
        ids = tok.encode(text, add_special_tokens=False).ids
        put(f"{kind}/whole/ids", ids)
        put(f"{kind}/whole_bos/ids", tok.encode(text, add_special_tokens=True).ids)
        if kind == "llama3":
            assert tok.decode(ids, skip_special_tokens=False) == text, kind
        put(f"{kind}/whole/decode", tok.decode(ids, skip_special_tokens=False))
        put(f"{kind}/whole/decode_skip", tok.decode(ids, skip_special_tokens=True))
        for i, ln in enumerate(lines):
            put(f"{kind}/line/{i}/text", ln)
            put(f"{kind}/line/{i}/ids", tok.encode(ln, add_special_tokens=False).ids)
        for i, b in enumerate(BAD):
            put(f"{kind}/bad/{i}/bytes", b)
            put(f"{kind}/bad/{i}/ids", tok.encode(b.decode("utf-8", "replace"), add_special_tokens=False).ids)
    variants(os.path.join(out, "gpt2.json"), text)
    write(os.path.join(out, "tokenizer_ref.lqfx"))
    print(f"wrote {len(records)} records to {out}/tokenizer_ref.lqfx")


if __name__ == "__main__":
    main()
