#!/usr/bin/env python3
"""tools/gen_badinput.py: writes tests/badinput/, the hostile-input corpus that
tests/test_cli_badinput.sh runs through the loquat CLI (cases in tests/badinput/cases.tsv).

Every file is built here byte by byte with the standard library only (struct, json, gzip), so the
corpus is the same on every run (gzip's mtime is pinned to 0). Model and adapter folders are the
tiny QLoRA fixture (tests/fixtures/qlora_tiny) with ONE thing broken: the unchanged files are
symlinks into the fixture, so the corpus stays a few KB. The files that must be large (a 10 MB
YAML line) or come from a real run (HDF5 checkpoints) are made by the test script itself.

Usage: python3 tools/gen_badinput.py [OUT_DIR]   (default tests/badinput; the folder's generated
subfolders are replaced, cases.tsv is left alone)
"""
import gzip
import io
import json
import os
import shutil
import struct
import sys

FX = "tests/fixtures/qlora_tiny"
FORMAT_VERSION = 1


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def link(path, target):
    """Symlink path -> target (a path relative to the repository root)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rel = os.path.relpath(target, os.path.dirname(path))
    if os.path.lexists(path):
        os.remove(path)
    os.symlink(rel, path)


# --- safetensors ---------------------------------------------------------------------------------

def st_bytes(header, data=b"", raw_header=None, hlen=None):
    """A safetensors file: u64 header length, the JSON header, the data."""
    h = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h) if hlen is None else hlen) + h + data


def patched(base, kv):
    """A copy of the dict base with kv applied: a value None removes the key."""
    c = dict(base)
    for k, v in kv.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def f32(n, v=0.5):
    return struct.pack("<%df" % n, *([v] * n))


def gen_safetensors(out):
    d = os.path.join(out, "st")
    ok = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    cases = {
        "empty": b"",
        "short_len": b"\x10\x00\x00",                                    # < 8 bytes
        "hdrlen_past_eof": st_bytes(ok, f32(4), hlen=4096),              # header length > file
        "hdrlen_huge": st_bytes(ok, f32(4), hlen=(1 << 63) + 5),         # absurd u64
        "not_json": st_bytes(None, f32(4), raw_header=b"{this is not json!!}"),
        "header_array": st_bytes(None, b"", raw_header=b"[1,2,3]"),
        "overlap": st_bytes({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                             "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, f32(6)),
        "past_data": st_bytes({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                               "b": {"dtype": "F32", "shape": [1024], "data_offsets": [16, 4112]}}, f32(4)),
        "offsets_reversed": st_bytes({"a": {"dtype": "F32", "shape": [0], "data_offsets": [16, 0]}}, f32(4)),
        "bad_dtype": st_bytes({"a": {"dtype": "F33", "shape": [4], "data_offsets": [0, 16]}}, f32(4)),
        "dtype_number": st_bytes({"a": {"dtype": 7, "shape": [4], "data_offsets": [0, 16]}}, f32(4)),
        "shape_bytes": st_bytes({"a": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 16]}}, f32(4)),
        "shape_negative": st_bytes({"a": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, f32(4)),
        "shape_overflow": st_bytes({"a": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 16]}},
                                   f32(4)),
        "shape_string": st_bytes({"a": {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}}, f32(4)),
        "offsets_string": st_bytes({"a": {"dtype": "F32", "shape": [4], "data_offsets": ["0", "16"]}}, f32(4)),
        "missing_offsets": st_bytes({"a": {"dtype": "F32", "shape": [4]}}, f32(4)),
        # json.dumps cannot repeat a key: the duplicate is spliced in by hand
        "duplicate": st_bytes(None, f32(8), raw_header=(
            b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},'
            b'"a":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}}')),
        "metadata_number": st_bytes({"__metadata__": {"format": 5}, **ok}, f32(4)),
        "header_nul": st_bytes(None, f32(4), raw_header=b'{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}\x00\x00'),
        "gap": st_bytes({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, f32(4)),
    }
    for name, data in cases.items():
        write(os.path.join(d, name + ".safetensors"), data)


# --- GGUF ----------------------------------------------------------------------------------------

GGUF_U32, GGUF_F32, GGUF_STRING, GGUF_ARRAY = 4, 6, 8, 9


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gkv(key, vtype, payload):
    return gstr(key) + struct.pack("<I", vtype) + payload


def gtensor(name, dims, ttype, offset):
    return gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", x) for x in dims) + \
        struct.pack("<I", ttype) + struct.pack("<Q", offset)


def gguf(kvs=(), tensors=(), data=b"", version=3, n_tensors=None, n_kv=None, magic=b"GGUF", align=32):
    head = magic + struct.pack("<I", version)
    head += struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    pad = (-len(body)) % align
    return body + b"\x00" * pad + data


def gen_gguf(out):
    d = os.path.join(out, "gguf")
    arch = gkv("general.architecture", GGUF_STRING, gstr("llama"))
    t1 = gtensor("a", [4], 0, 0)  # f32, 16 bytes at offset 0
    cases = {
        "bad_magic": gguf([arch], [t1], f32(8), magic=b"GGUX"),
        "version_1": gguf([arch], [t1], f32(8), version=1),
        "version_99": gguf([arch], [t1], f32(8), version=99),
        "truncated_header": b"GGUF" + struct.pack("<I", 3) + b"\x01\x00",
        "n_tensors_huge": gguf([arch], [t1], f32(8), n_tensors=1 << 62),
        "n_kv_huge": gguf([arch], [t1], f32(8), n_kv=(1 << 64) - 1),
        "key_len_past_eof": (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 40) + b"general"),
        "value_len_past_eof": gguf([gkv("general.name", GGUF_STRING, struct.pack("<Q", 99999) + b"x")]),
        "array_len_huge": gguf([gkv("tokenizer.ggml.scores", GGUF_ARRAY, struct.pack("<IQ", GGUF_F32, 1 << 60))]),
        "unknown_kv_type": gguf([gkv("general.name", 77, b"\x00" * 8)]),
        "offset_past_eof": gguf([arch], [gtensor("a", [4], 0, 1 << 20)], f32(8)),
        "unknown_tensor_type": gguf([arch], [gtensor("a", [32], 99, 0)], f32(32)),
        "overlap": gguf([arch], [gtensor("a", [8], 0, 0), gtensor("b", [8], 0, 0)], f32(16)),
        "misaligned": gguf([arch], [gtensor("a", [4], 0, 0), gtensor("b", [4], 0, 20)], f32(16)),
        "n_dims_9": gguf([arch], [gtensor("a", [1] * 9, 0, 0)], f32(8)),
        "dims_overflow": gguf([arch], [gtensor("a", [1 << 32, 1 << 32, 1 << 8], 0, 0)], f32(8)),
        "dim_zero": gguf([arch], [gtensor("a", [4, 0], 0, 0)], f32(8)),
        "duplicate_tensor": gguf([arch], [gtensor("a", [4], 0, 0), gtensor("a", [4], 0, 32)], f32(16)),
        "alignment_zero": gguf([arch, gkv("general.alignment", GGUF_U32, struct.pack("<I", 0))], [t1], f32(8)),
        "alignment_odd": gguf([arch, gkv("general.alignment", GGUF_U32, struct.pack("<I", 48))], [t1], f32(8)),
        "q8_0_partial_block": gguf([arch], [gtensor("a", [40], 8, 0)], b"\x00" * 96),
        # a well-formed GGUF that is no Llama: the model loader must say which key is missing
        "no_llama_keys": gguf([arch], [t1], f32(8)),
    }
    for name, data in cases.items():
        write(os.path.join(d, name + ".gguf"), data)


# --- Hugging Face model folders and PEFT adapters ------------------------------------------------

def gen_hf(out):
    d = os.path.join(out, "hf")
    cfg = json.load(open(os.path.join(FX, "config.json")))

    def folder(name, config=None, raw_config=None, tokenizer=None, weights="link", drop=()):
        p = os.path.join(d, name)
        if os.path.isdir(p):
            shutil.rmtree(p)
        os.makedirs(p)
        if raw_config is not None:
            write(os.path.join(p, "config.json"), raw_config)
        elif config is not None:
            write(os.path.join(p, "config.json"), json.dumps(config, indent=2) + "\n")
        if tokenizer is not None:
            write(os.path.join(p, "tokenizer.json"), tokenizer)
        for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
                  "model.safetensors"):
            if f in drop or os.path.lexists(os.path.join(p, f)):
                continue
            if f == "model.safetensors" and weights != "link":
                write(os.path.join(p, f), weights)
                continue
            link(os.path.join(p, f), os.path.join(FX, f))

    def with_(**kv):
        return patched(cfg, kv)

    folder("config_not_json", raw_config="{\"hidden_size\": 64,, }\n")
    folder("config_empty", raw_config="")
    folder("config_array", raw_config="[1, 2, 3]\n")
    folder("hidden_size_string", with_(hidden_size="64"))
    folder("layers_float", with_(num_hidden_layers=2.5))
    folder("missing_vocab_size", with_(vocab_size=None))
    folder("missing_hidden_size", with_(hidden_size=None))
    folder("hidden_size_huge", with_(hidden_size=1 << 40))
    folder("heads_zero", with_(num_attention_heads=0))
    folder("kv_heads_not_divisor", with_(num_key_value_heads=3))
    folder("vocab_negative", with_(vocab_size=-400))
    folder("rms_eps_string", with_(rms_norm_eps="tiny"))
    folder("model_type_bert", with_(model_type="bert"))
    folder("no_config", drop=("config.json",))
    # the weights do not fit the config: the loader meets a missing or a wrong-shaped tensor
    folder("layer_missing", with_(num_hidden_layers=3))
    folder("lm_head_missing", with_(tie_word_embeddings=False))
    folder("mlp_wrong_shape", with_(intermediate_size=96))
    folder("embed_wrong_shape", with_(vocab_size=512))
    folder("no_weights", drop=("model.safetensors",))
    # the real header, no data: every tensor's offsets point past the end
    real = open(os.path.join(FX, "model.safetensors"), "rb").read()
    hlen = struct.unpack("<Q", real[:8])[0]
    folder("weights_truncated", weights=real[:8 + hlen + 1000])
    # tokenizer.json broken
    tok = json.load(open(os.path.join(FX, "tokenizer.json")))
    folder("tokenizer_not_json", tokenizer="{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0,}")
    t3 = json.loads(json.dumps(tok))
    t3["model"]["vocab"] = [1, 2, 3]
    folder("tokenizer_vocab_array", tokenizer=json.dumps(t3))
    t4 = json.loads(json.dumps(tok))
    t4["model"]["merges"] = [["no_such_token", "zzz"]] + list(t4["model"]["merges"])
    folder("tokenizer_bad_merge", tokenizer=json.dumps(t4))
    t5 = json.loads(json.dumps(tok))
    k0 = next(iter(t5["model"]["vocab"]))
    t5["model"]["vocab"][k0] = 1 << 40
    folder("tokenizer_id_huge", tokenizer=json.dumps(t5))


def gen_peft(out):
    d = os.path.join(out, "peft")
    acfg = json.load(open(os.path.join(FX, "adapter_init", "adapter_config.json")))
    ad = os.path.join(FX, "adapter_init", "adapter_model.safetensors")

    def folder(name, config=None, raw_config=None, weights="link"):
        p = os.path.join(d, name)
        if os.path.isdir(p):
            shutil.rmtree(p)
        os.makedirs(p)
        if raw_config is not None:
            write(os.path.join(p, "adapter_config.json"), raw_config)
        elif config is not None:
            write(os.path.join(p, "adapter_config.json"), json.dumps(config, indent=2) + "\n")
        if weights == "link":
            link(os.path.join(p, "adapter_model.safetensors"), ad)
        elif weights is not None:
            write(os.path.join(p, "adapter_model.safetensors"), weights)

    def with_(**kv):
        return patched(acfg, kv)

    folder("config_not_json", raw_config="{\"r\": 4, \"lora_alpha\": }")
    folder("r_string", with_(r="4"))
    folder("r_zero", with_(r=0))
    folder("r_negative", with_(r=-4))
    folder("alpha_string", with_(lora_alpha="eight"))
    folder("targets_number", with_(target_modules=5))
    folder("target_unknown", with_(target_modules=["model.layers.0.self_attn.qq_proj"]))
    folder("target_layer_9", with_(target_modules=["model.layers.9.self_attn.q_proj"]))
    folder("missing_r", with_(r=None))
    folder("no_config", weights="link")
    folder("no_weights", acfg, weights=None)
    # one target (layer 0 q_proj, (64, 64)): A must be (r, 64) = (4, 64); here it is (4, 32)
    one = with_(target_modules=["model.layers.0.self_attn.q_proj"])
    pre = "base_model.model.model.layers.0.self_attn.q_proj."
    folder("a_wrong_shape", one, weights=st_bytes({
        pre + "lora_A.weight": {"dtype": "F32", "shape": [4, 32], "data_offsets": [0, 512]},
        pre + "lora_B.weight": {"dtype": "F32", "shape": [64, 4], "data_offsets": [512, 1536]}}, f32(384)))
    folder("b_missing", one, weights=st_bytes({
        pre + "lora_A.weight": {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 1024]}}, f32(256)))
    folder("a_nan", one, weights=st_bytes({
        pre + "lora_A.weight": {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 1024]},
        pre + "lora_B.weight": {"dtype": "F32", "shape": [64, 4], "data_offsets": [1024, 2048]}}, f32(256, float("nan")) + f32(256)))
    folder("weights_truncated", acfg, weights=open(ad, "rb").read()[:3000])


# --- YAML configs --------------------------------------------------------------------------------

BASE_YAML = """\
# tests/badinput: a valid tiny config (tests/fixtures/qlora_tiny) with one thing broken below
base_model: tests/fixtures/qlora_tiny
lora_r: 4
lora_alpha: 8
lora_target_modules: [q_proj, v_proj]
datasets:
  - path: tests/fixtures/qlora_tiny/train.jsonl
    type: completion
test_datasets:
  - path: tests/fixtures/qlora_tiny/eval.jsonl
    type: completion
sequence_len: 32
micro_batch_size: 2
max_steps: 2
threads: 1
"""


def gen_yaml(out):
    d = os.path.join(out, "yaml")
    write(os.path.join(d, "good.yaml"), BASE_YAML.replace("one thing broken below", "nothing broken (the control)"))
    y = lambda extra: BASE_YAML + extra
    swap = lambda old, new: BASE_YAML.replace(old, new)
    cases = {
        "syntax_error": y("learning_rate: [1e-4\nseed: 3\n"),
        "bad_indent": swap("    type: completion\ntest", "  type: completion\n   test"),
        "tab_indent": y("lora_dropout:\n\t0.1\n"),
        "unknown_key": y("learning_rat: 1.0e-4\n"),
        "wrong_type_int": swap("lora_r: 4", "lora_r: four"),
        "wrong_type_list": swap("sequence_len: 32", "sequence_len: [32, 64]"),
        "wrong_type_map": swap("micro_batch_size: 2", "micro_batch_size: {a: 1}"),
        "lr_negative": y("learning_rate: -1.0e-3\n"),
        "lora_r_zero": swap("lora_r: 4", "lora_r: 0"),
        "dropout_range": y("lora_dropout: 1.5\n"),
        "seq_len_huge": swap("sequence_len: 32", "sequence_len: 99999999999999999999"),
        "bad_scheduler": y("lr_scheduler: sawtooth\n"),
        "bad_dataset_type": swap("    type: completion\ntest", "    type: sharegpt\ntest"),
        "datasets_not_list": swap("datasets:\n  - path: tests/fixtures/qlora_tiny/train.jsonl\n    type: completion\n",
                                  "datasets: tests/fixtures/qlora_tiny/train.jsonl\n"),
        "datasets_empty": swap("datasets:\n  - path: tests/fixtures/qlora_tiny/train.jsonl\n    type: completion\n",
                               "datasets: []\n"),
        "dataset_no_path": swap("  - path: tests/fixtures/qlora_tiny/train.jsonl\n    type: completion\ntest",
                                "  - type: completion\ntest"),
        "missing_dataset_file": swap("qlora_tiny/train.jsonl", "qlora_tiny/no_such_train.jsonl"),
        "missing_base_model": swap("base_model: tests/fixtures/qlora_tiny\n", ""),
        "base_model_absent": swap("base_model: tests/fixtures/qlora_tiny", "base_model: tests/badinput/no_such_model"),
        "duplicate_key": y("lora_r: 8\n"),
        "bad_target": swap("[q_proj, v_proj]", "[q_proj, w_proj]"),
        "bad_quant_type": y("bnb_4bit_quant_type: nf3\n"),
        "block_size_odd": y("quant_block_size: 100\n"),
        "nested_deep": "a: " + "[" * 5000 + "]" * 5000 + "\n",
        "alias_bomb": "".join(
            ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"] +
            ["a%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]\n" % ((i, i) + (i - 1,) * 10)
             for i in range(1, 10)]),
        "top_level_list": "- base_model: tests/fixtures/qlora_tiny\n",
        "empty": "",
        "comments_only": "# nothing here\n\n",
        "binary": bytes((i * 37 + 11) % 256 for i in range(2048)),
        "invalid_utf8": y("wandb_project: caf\xe9\n").encode("latin-1"),
        "nul_byte": BASE_YAML.encode() + b"seed: 1\x002\n",
        "env_unset": swap("base_model: tests/fixtures/qlora_tiny", "base_model: ${LOQUAT_BADINPUT_UNSET_VAR}/m"),
    }
    for name, data in cases.items():
        write(os.path.join(d, name + ".yaml"), data)


# --- JSONL datasets ------------------------------------------------------------------------------

def gen_jsonl(out):
    d = os.path.join(out, "jsonl")
    good = open(os.path.join(FX, "train.jsonl"), "rb").read().splitlines(keepends=True)
    head = b"".join(good[:5])
    cases = {
        "bad_json_line": head + b'{"text": "unterminated\n' + b"".join(good[5:8]),
        "text_number": head + b'{"text": 42}\n',
        "text_missing": head + b'{"body": "no text field here"}\n',
        "line_array": head + b'["text", "x"]\n',
        "empty": b"",
        "blank_lines": b"\n\n\n",
        "invalid_utf8": head + b'{"text": "caf\xe9 au lait"}\n',
        "nul_byte": head + b'{"text": "a\x00b"}\n',
        "trailing_garbage": head + b'{"text": "ok"} extra\n',
        "text_null": head + b'{"text": null}\n',
        "alpaca_no_instruction": b'{"input": "x", "output": "y"}\n',
        "chat_bad_role": b'{"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]}\n' * 6
                         + b'{"messages": [{"role": "wizard", "content": "hi"}]}\n',
        "too_small": b'{"text": "hi"}\n',
        "chat_messages_string": b'{"messages": "hello"}\n',
    }
    for name, data in cases.items():
        write(os.path.join(d, name + ".jsonl"), data)


# --- IDX (MNIST format) --------------------------------------------------------------------------

def gz(data):
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as f:
        f.write(data)
    return buf.getvalue()


def gen_idx(out):
    d = os.path.join(out, "idx")
    img_hdr = lambda n, r, c: struct.pack(">IIII", 0x803, n, r, c)
    cases = {
        "bad_magic-idx3-ubyte": struct.pack(">IIII", 0x12345678, 1, 2, 2) + b"\x00" * 4,
        "float_type-idx3-ubyte": struct.pack(">IIII", 0x0D03, 1, 2, 2) + b"\x00" * 16,
        "dims_past_eof-idx3-ubyte": img_hdr(1000, 28, 28) + b"\x07" * 100,
        "header_truncated-idx3-ubyte": img_hdr(1, 2, 2)[:9],
        "dims_huge-idx3-ubyte": img_hdr(0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF) + b"\x00" * 8,
        "labels_past_eof-idx1-ubyte": struct.pack(">II", 0x801, 5000) + b"\x01" * 10,
        "truncated-idx3-ubyte.gz": gz(img_hdr(4, 8, 8) + bytes(range(256)))[:40],
        "bad_magic.idx": struct.pack(">IIII", 0x0803FFFF, 1, 2, 2) + b"\x00" * 4,
        "labels_not_gzip-idx1-ubyte.gz": b"\x1f\x8b\x08\x00" + b"garbage that is not deflate" * 4,
    }
    for name, data in cases.items():
        write(os.path.join(d, name), data)


# --- QAT configs and Fashion-MNIST folders (`loquat qat`) ------------------------------------------

QAT_YAML = """# a QAT config with one thing broken below
model: mlp
train: {epochs: 1}
qat: {epochs: 1}
batch_size: 16
threads: 1
"""


def idx_images(n, r, c, fill=0):
    return struct.pack(">IIII", 0x803, n, r, c) + bytes([fill]) * (n * r * c)


def idx_labels(labels):
    return struct.pack(">II", 0x801, len(labels)) + bytes(labels)


def gen_qat(out):
    d = os.path.join(out, "qat")
    y = lambda extra: QAT_YAML + extra
    cases = {
        "good": y(""),
        "unknown_key": y("quantization: {wieghts: int4:channel}\n"),
        "bad_bits": y("quantization: {weights: int9:channel}\n"),
        "bad_token": y("quantization: {activations: int8:asym:perrow}\n"),
        "unknown_scheme": y("compare: [W8A8, W3A3]\n"),
        "weights_per_token": y("quantization: {weights: int4:token}\n"),
        "lsq_per_group": y("quantization: {weights: int4:g32:lsq}\n"),
        "pact_dynamic": y("quantization: {activations: int8:asym:token, pact: true}\n"),
        "bad_stage": y("qat: {epochs: 1, learning_rate: 0}\n").replace("qat: {epochs: 1}\n", "", 1),
        "lm_no_text": QAT_YAML.replace("model: mlp", "model: tests/fixtures/qlora_tiny"),
    }
    for name, text in cases.items():
        write(os.path.join(d, name + ".yaml"), text)
    # Fashion-MNIST folders with one file broken (the others valid and small: 32 images, gzip)
    good = {"train-images-idx3-ubyte.gz": gz(idx_images(32, 28, 28, 7)),
            "train-labels-idx1-ubyte.gz": gz(idx_labels([i % 10 for i in range(32)])),
            "t10k-images-idx3-ubyte.gz": gz(idx_images(16, 28, 28, 9)),
            "t10k-labels-idx1-ubyte.gz": gz(idx_labels([i % 10 for i in range(16)]))}
    broken = {
        "data_good": {},
        "data_label_range": {"train-labels-idx1-ubyte.gz": gz(idx_labels([12] * 32))},
        "data_27x27": {"t10k-images-idx3-ubyte.gz": gz(idx_images(16, 27, 27))},
        "data_count": {"t10k-labels-idx1-ubyte.gz": gz(idx_labels([1] * 15))},
        "data_truncated": {"train-images-idx3-ubyte.gz": gz(idx_images(32, 28, 28))[:60]},
        "data_missing": {"t10k-images-idx3-ubyte.gz": None},
    }
    for folder, changes in broken.items():
        for name, data in good.items():
            data = changes.get(name, data)
            if data is not None:
                write(os.path.join(d, folder, name), data)
    write(os.path.join(d, "float_text.safetensors"), "not a safetensors file\n")


# --- checkpoints (the ones from real runs are made by the test script) --------------------------

def gen_ckpt(out):
    d = os.path.join(out, "ckpt")
    # a text file named like a checkpoint, seeded into an output folder before `train --resume`
    write(os.path.join(d, "not_hdf5", "checkpoint-2.h5"), "this is not an HDF5 file\n" * 4)
    # HDF5 signature, then nothing that makes sense
    write(os.path.join(d, "signature_only.h5"), b"\x89HDF\r\n\x1a\n" + b"\x00" * 56)
    write(os.path.join(d, "text.h5"), "plain text with an .h5 name\n")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/badinput"
    for sub in ("st", "gguf", "hf", "peft", "yaml", "jsonl", "idx", "ckpt", "qat"):
        p = os.path.join(out, sub)
        if os.path.isdir(p):
            shutil.rmtree(p)
    gen_safetensors(out)
    gen_gguf(out)
    gen_hf(out)
    gen_peft(out)
    gen_yaml(out)
    gen_jsonl(out)
    gen_idx(out)
    gen_ckpt(out)
    gen_qat(out)
    write(os.path.join(out, "VERSION"), "gen_badinput.py format %d\n" % FORMAT_VERSION)


if __name__ == "__main__":
    main()
