#!/usr/bin/env python3
"""tests/fuzz/make_seeds.py: writes the seed corpora tests/fuzz/corpus/<target>/ (small valid files
taken from tests/fixtures or built here by hand, plus a few hostile ones). Standard library only.
Run from the repository root; it rewrites the seed folders it owns (files named by this script)."""
import gzip
import json
import os
import shutil
import struct

FX = "tests/fixtures"
OUT = "tests/fuzz/corpus"


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


# --- safetensors ------------------------------------------------------------------------------
def st(header, data=b"", pad=True):
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def seeds_safetensors():
    put("safetensors", "st_ref", read(f"{FX}/st_ref.safetensors"))
    put("safetensors", "shard1", read(f"{FX}/st_shard/model-00001-of-00002.safetensors"))
    put("safetensors", "shard2", read(f"{FX}/st_shard/model-00002-of-00002.safetensors"))
    put("safetensors", "empty", st({}))
    put("safetensors", "meta_only", st({"__metadata__": {"format": "pt", "k": "v"}}))
    put("safetensors", "all_dtypes", st({
        "a": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
        "c": {"dtype": "F16", "shape": [2], "data_offsets": [16, 20]},
        "d": {"dtype": "BF16", "shape": [2], "data_offsets": [20, 24]},
        "e": {"dtype": "I64", "shape": [1], "data_offsets": [24, 32]},
        "f": {"dtype": "I32", "shape": [1], "data_offsets": [32, 36]},
        "g": {"dtype": "I16", "shape": [1], "data_offsets": [36, 38]},
        "h": {"dtype": "I8", "shape": [1], "data_offsets": [38, 39]},
        "i": {"dtype": "U8", "shape": [1], "data_offsets": [39, 40]},
        "j": {"dtype": "BOOL", "shape": [1], "data_offsets": [40, 41]},
        "k": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [41, 42]},
        "l": {"dtype": "F8_E5M2", "shape": [1, 1], "data_offsets": [42, 43]},
        "z": {"dtype": "F32", "shape": [0, 3], "data_offsets": [43, 43]},
    }, bytes(range(43))))
    # hostile: header length past the end, overlapping tensors, a gap, a huge shape
    put("safetensors", "bad_hlen", struct.pack("<Q", 1 << 40) + b"{}")
    put("safetensors", "bad_overlap", st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                          "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)))
    put("safetensors", "bad_shape", st({"a": {"dtype": "F32", "shape": [4294967296, 4294967296],
                                              "data_offsets": [0, 4]}}, bytes(4)))


def seeds_st_index():
    put("st_index", "fixture", read(f"{FX}/st_shard/model.safetensors.index.json"))
    s1, s2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    put("st_index", "partial", json.dumps({"weight_map": {"c.weight": s2}}))
    put("st_index", "bad_twice", json.dumps({"weight_map": {"a.weight": s1, "c.weight": s1}}))
    put("st_index", "bad_path", json.dumps({"metadata": None, "weight_map": {"a.weight": "../" + s1}}))
    put("st_index", "bad_self", json.dumps({"weight_map": {"x": "model.safetensors.index.json"}}))


# --- gguf ---------------------------------------------------------------------------------------
def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gkv(key, typ, val):
    """typ: 'u32', 'i32', 'f32', 'bool', 'str', or ('arr', elem, list)."""
    out = gstr(key)
    scal = {"u8": (0, "<B"), "i8": (1, "<b"), "u16": (2, "<H"), "i16": (3, "<h"), "u32": (4, "<I"),
            "i32": (5, "<i"), "f32": (6, "<f"), "bool": (7, "<?"), "u64": (10, "<Q"), "i64": (11, "<q"),
            "f64": (12, "<d")}
    if typ == "str":
        return out + struct.pack("<I", 8) + gstr(val)
    if isinstance(typ, str):
        t, f = scal[typ]
        return out + struct.pack("<I", t) + struct.pack(f, val)
    _, elem, items = typ
    out += struct.pack("<I", 9)
    if elem == "str":
        return out + struct.pack("<IQ", 8, len(items)) + b"".join(gstr(x) for x in items)
    t, f = scal[elem]
    return out + struct.pack("<IQ", t, len(items)) + b"".join(struct.pack(f, x) for x in items)


def gguf(kvs, tensors=(), align=32):
    """tensors: (name, ne list, ggml type, bytes)."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    infos, data, off = b"", b"", 0
    for name, ne, typ, raw in tensors:
        infos += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        infos += struct.pack("<IQ", typ, off)
        data += raw + bytes((-len(raw)) % align)
        off = len(data)
    body = head + infos
    body += bytes((-len(body)) % align)
    return body + data


def byte_chars():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def seeds_gguf():
    put("gguf", "align64", read(f"{FX}/gguf/align64.gguf"))
    put("gguf", "all_types", read(f"{FX}/gguf/all_types.gguf"))
    bc = byte_chars()
    toks = [bc[b] for b in range(256)] + ["th", "the", "\u0120the", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [1] * 259 + [3, 3, 4]
    for pre in ("gpt-2", "llama-bpe", "smollm", "qwen2"):
        kvs = [gkv("general.architecture", "str", "llama"),
               gkv("general.alignment", "u32", 32),
               gkv("llama.embedding_length", "u32", 8),
               gkv("tokenizer.ggml.model", "str", "gpt2"),
               gkv("tokenizer.ggml.pre", "str", pre),
               gkv("tokenizer.ggml.tokens", ("arr", "str", toks), None),
               gkv("tokenizer.ggml.token_type", ("arr", "i32", types), None),
               gkv("tokenizer.ggml.merges", ("arr", "str", ["t h", "th e", "\u0120 the"]), None),
               gkv("tokenizer.ggml.bos_token_id", "u32", 259),
               gkv("tokenizer.ggml.eos_token_id", "u32", 261),
               gkv("tokenizer.ggml.add_bos_token", "bool", True),
               gkv("tokenizer.chat_template", "str", "{{'<|im_start|>' + m['role']}}")]
        w = struct.pack("<8f", *[0.5 * i for i in range(8)])
        q8 = struct.pack("<e", 0.25) + bytes(range(32))  # one Q8_0 block
        put("gguf", f"tok_{pre}", gguf(kvs, [("token_embd.weight", [8, 1], 0, w), ("blk.0.q8", [32], 8, q8),
                                            ("f16", [2, 2], 1, struct.pack("<4e", 1, 2, 3, 4))]))
    put("gguf", "bad_counts", b"GGUF" + struct.pack("<IQQ", 3, 1 << 60, 1 << 60))
    put("gguf", "bad_str", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 62) + b"k")
    put("gguf", "v2_empty", b"GGUF" + struct.pack("<IQQ", 2, 0, 0))


# --- hf_config ----------------------------------------------------------------------------------
def seeds_hf_config():
    d = f"{FX}/hf_configs"
    for n in sorted(os.listdir(d)):
        if n.endswith(".json") and n != "expected.json":
            put("hf_config", n[:-5], read(os.path.join(d, n)))
    put("hf_config", "qlora_tiny", read(f"{FX}/qlora_tiny/config.json"))
    put("hf_config", "bad_null_sizes", '{"model_type": "llama", "hidden_size": null, "vocab_size": 1e300}')
    put("hf_config", "bad_rope", '{"model_type": "llama", "hidden_size": 8, "intermediate_size": 8, '
        '"num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 4, "rope_theta": 1e308, '
        '"rope_scaling": {"rope_type": "llama3", "factor": 1e-300, "low_freq_factor": 0, "high_freq_factor": 1e308}}')


# --- tokenizer_json -----------------------------------------------------------------------------
def small_tokenizer(pre=None, post=None, extra=None):
    bc = byte_chars()
    vocab = {bc[b]: b for b in range(256)}
    vocab.update({"th": 256, "the": 257, "\u0120the": 258})
    t = {"added_tokens": [{"id": 260 + i, "content": c, "special": True, "lstrip": i == 1, "rstrip": i == 2,
                           "single_word": False, "normalized": False}
                          for i, c in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])],
         "normalizer": None,
         "pre_tokenizer": pre or {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
         "post_processor": post,
         "model": {"type": "BPE", "vocab": vocab, "merges": ["t h", "th e", "\u0120 the"], "unk_token": None}}
    if extra:
        t.update(extra)
    return json.dumps(t, ensure_ascii=False)


def seeds_tokenizer_json():
    put("tokenizer_json", "tiny_gguf_tok", read(f"{FX}/tokenizer_gguf/tiny_tokenizer.json"))
    put("tokenizer_json", "qlora_tiny", read(f"{FX}/qlora_tiny/tokenizer.json"))  # 14 KB: the largest seed
    tmpl = {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "<|im_end|>", "type_id": 0}}],
            "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [260], "tokens": ["<|endoftext|>"]},
                               "<|im_end|>": {"id": "<|im_end|>", "ids": [262], "tokens": ["<|im_end|>"]}}}
    put("tokenizer_json", "small_template", small_tokenizer(post=tmpl) + "\0the theme <|im_start|> x\u00e9\n")
    seq = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated", "invert": False},
        {"type": "Digits", "individual_digits": True},
        {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": True, "use_regex": False}]}
    put("tokenizer_json", "small_sequence", small_tokenizer(pre=seq, post={"type": "Sequence", "processors": [
        {"type": "ByteLevel"}, tmpl]}) + "\0 1234 the  \tthe\xff")
    put("tokenizer_json", "small_ignore_merges", small_tokenizer(extra={"model": {
        "type": "BPE", "ignore_merges": True, "vocab": {"a": 0, "b": 1, "ab": 2, "<unk>": 3},
        "merges": [["a", "b"]], "unk_token": "<unk>"}, "pre_tokenizer": None}) + "\0abba c")
    put("tokenizer_json", "bad_ids", '{"model": {"type": "BPE", "vocab": {"a": 16777215, "b": -1}, "merges": []}}')
    put("tokenizer_json", "bad_regex", small_tokenizer(pre={"type": "Split", "pattern": {"Regex": "(("},
                                                            "behavior": "Isolated"}))


# --- adapter_config -----------------------------------------------------------------------------
def seeds_adapter_config():
    for n in ("peft_tiny", "peft_rslora_f16"):
        d = f"{FX}/lora/{n}"
        cfg = read(f"{d}/adapter_config.json")
        put("adapter_config", f"{n}_config", cfg)
        put("adapter_config", f"{n}_full", cfg + b"\0" + read(f"{d}/adapter_model.safetensors"))
    put("adapter_config", "minimal", '{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": "all-linear"}')
    put("adapter_config", "bad_rank", b'{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}'
        + b"\0" + st({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
                     {"dtype": "F32", "shape": [3, 1], "data_offsets": [0, 12]},
                     "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight":
                     {"dtype": "F32", "shape": [1, 3], "data_offsets": [12, 24]}}, bytes(24)))


# --- yaml_config --------------------------------------------------------------------------------
def seeds_yaml_config():
    put("yaml_config", "qlora_tiny", read(f"{FX}/qlora_tiny/config.yaml") + b"output_dir: out/x\n")
    put("yaml_config", "tiny_qlora", read("configs/tiny-qlora.yaml"))
    put("yaml_config", "austen", read("configs/smollm2-austen-qlora.yaml"))
    put("yaml_config", "minimal_sets", "base_model: m.gguf\ndatasets:\n  - path: d.jsonl\n    type: alpaca\n"
        "output_dir: ${LOQUAT_OUT:-~/out}\n\0lora_target_modules=[q_proj, v_proj]\0datasets.1.path=e.txt\0"
        "val_set_size=0.25")
    put("yaml_config", "flow", "{base_model: \"a b\", datasets: [{path: x, type: chat}], output_dir: o, "
        "lr_scheduler: linear, on_nan: skip, seed: 18446744073709551615, threads: 0}")
    put("yaml_config", "bad_dup", "base_model: a\nbase_model: b\nanchors: &x [1]\nref: *x\n")
    put("yaml_config", "bad_tab", "base_model:\n\t- x\n")


# --- jsonl --------------------------------------------------------------------------------------
def seeds_jsonl():
    d = f"{FX}/datasets"
    fm = {"plain": 1, "bad_json": 1, "not_object": 1, "missing_field": 2, "alpaca": 2, "chat": 3, "chat_bad": 3,
          "chat_empty": 3, "chat_notobj": 3}
    for n, f in fm.items():
        put("jsonl", n, bytes([f | 0x34]) + read(f"{d}/{n}.jsonl"))
    put("jsonl", "chat_template", bytes([3 | 4 | 8 | 0x10]) + read(f"{d}/chat.jsonl"))
    put("jsonl", "text", bytes([0]) + read(f"{d}/text_dir/a.txt"))
    put("jsonl", "qlora_train", bytes([1 | 0x20]) + read(f"{FX}/qlora_tiny/train.jsonl")[:1500])
    put("jsonl", "single_line", b'\x01{"text": "the <|im_end|>\xff\xc3 x \\ud800 y \\u00e9t\\u00e9"}')
    put("jsonl", "unicode", bytes([1]) + '{"text": "\\ud83d\\ude00 the \\u0000 <|im_end|>"}\n\n{"text": ""}\n'.encode())


# --- idx ----------------------------------------------------------------------------------------
def seeds_idx():
    d = f"{FX}/idx"
    put("idx", "images", b"\0" + read(f"{d}/images.idx"))
    put("idx", "labels", b"\1" + read(f"{d}/labels.idx"))
    put("idx", "images_gz", b"\0" + read(f"{d}/images.idx.gz"))
    put("idx", "labels_gz", b"\1" + read(f"{d}/labels.idx.gz"))
    put("idx", "images_zip", b"\2" + read(f"{d}/images.idx"))  # the harness gzips it
    put("idx", "bad_dims", b"\0" + struct.pack(">IIII", 0x803, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF))
    put("idx", "bad_long", b"\3" + struct.pack(">II", 0x801, 2) + b"\1\2\3")
    put("idx", "bad_gz", b"\1" + gzip.compress(struct.pack(">II", 0x801, 3) + b"\1\2\3")[:-6])


# --- ckpt (structure, see tests/fuzz/fuzz_ckpt.c) -------------------------------------------------
def seeds_ckpt():
    base = bytes([0]) + bytes([3, 0, 5, 6, 2, 1]) + struct.pack("<Qd", 42, 1.5) + bytes([16, 3, 5]) + b"a: b\n"
    put("ckpt", "valid", base)
    put("ckpt", "valid_empty", bytes([0, 0, 0, 0, 0, 0, 0]) + struct.pack("<Qd", 0, float("nan")) + bytes([0, 0, 1]) + b"x")
    put("ckpt", "bad_range", bytes([1]) + struct.pack("<q", -5) + bytes([0, 0, 0, 9, 0]) + struct.pack("<Qd", 1, 0)
        + bytes([4, 1, 1]) + b"c")
    # edits: numel as a huge i64, config deleted, params as f64, modules as a long extent
    edits = (bytes([1, 7, 0, 0]) + struct.pack("<q", 1 << 40) + bytes([0, 10, 0, 0]) + bytes(8)
             + bytes([8, 0, 16, 0, 0, 1, 0, 1, 1, 0, 0, 0]) + bytes([9, 3, 0, 0]) + struct.pack("<Q", 70000))
    put("ckpt", "edits", base + edits)
    put("ckpt", "edits_str", base + bytes([5, 10, 0, 16]) + b"abcdefgh" + bytes([6, 1, 0, 0]) + b"12345678"
        + bytes([4, 7, 0, 0]) + struct.pack("<q", 2) + bytes([3, 9, 1, 0]) + struct.pack("<d", 1.0))


if __name__ == "__main__":
    for t in ("safetensors", "st_index", "gguf", "hf_config", "tokenizer_json", "adapter_config", "yaml_config", "jsonl", "idx",
              "ckpt"):
        shutil.rmtree(os.path.join(OUT, t), ignore_errors=True)
        globals()["seeds_" + t]()
