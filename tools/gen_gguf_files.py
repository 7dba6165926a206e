#!/usr/bin/env python3
"""GGUF files written by the gguf package (gguf-py), for loquat's GGUF reader, and a checker
that reads loquat-written GGUF files back with gguf-py.

Writes into the folder given (default tests/fixtures/gguf/):
  all_types.gguf   GGUF v3, alignment 32: one metadata key of every value type (uint8 .. float64,
                   bool, string, and arrays of each, string arrays included, one long array) and
                   tensors of f32, f16, bf16, q8_0, q4_0 and q4_K data; the quantized ones hold
                   blocks gguf.quants.quantize made from random floats (q4_K, which gguf cannot
                   quantize: random code bytes with sane f16 scales).
  align64.gguf     general.alignment = 64 and two small tensors (f32, q8_0), to check the data
                   section and offsets follow the file's alignment.
  expect.lqfx      LQFX v1 (tools/lqfx.py): for every tensor T of
                   both files, "<file>/T/f32" = gguf.quants.dequantize of its bytes, shape as
                   gguf-py reports it reversed (outermost first, loquat order), and
                   "<file>/T/bytes" its raw bytes (u8).

Check mode, for interop the other way:
  gen_gguf_files.py --check OUT.gguf [--against REF.gguf]
reads OUT.gguf with gguf.GGUFReader and prints its keys and tensors; with --against, it also
checks that OUT holds the same metadata (keys, types, values) and tensors (names, ggml types,
shapes, bytes) as REF, and exits 1 on any difference. tests/test_io_gguf --copy IN OUT writes
loquat's copy of a file.

Run: $(tools/pyenv.sh) tools/gen_gguf_files.py tests/fixtures/gguf
     build/tests/test_io_gguf --copy tests/fixtures/gguf/all_types.gguf /tmp/copy.gguf
     $(tools/pyenv.sh) tools/gen_gguf_files.py --check /tmp/copy.gguf --against tests/fixtures/gguf/all_types.gguf
"""
import os
import sys
from importlib.metadata import version

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lqfx  # noqa: E402  (the LQFX container: put, write, records)

FORMAT_VERSION = 1
assert lqfx.FORMAT_VERSION == FORMAT_VERSION

rng = np.random.default_rng(20261126)

SCALARS = [
    ("test.u8", 200, V.UINT8), ("test.i8", -100, V.INT8), ("test.u16", 60000, V.UINT16),
    ("test.i16", -30000, V.INT16), ("test.u32", 4000000000, V.UINT32), ("test.i32", -2000000000, V.INT32),
    ("test.f32", 3.25, V.FLOAT32), ("test.bool", True, V.BOOL), ("test.str", "h\u00e9llo w\u00f6rld", V.STRING),
    ("test.u64", 2**63 + 5, V.UINT64), ("test.i64", -(2**62) - 3, V.INT64), ("test.f64", 2.718281828459045, V.FLOAT64),
    ("test.bool_false", False, V.BOOL),
]
ARRAYS = [
    ("test.arr_u8", [1, 2, 255], V.UINT8), ("test.arr_i8", [-128, 0, 127], V.INT8),
    ("test.arr_u16", [0, 65535], V.UINT16), ("test.arr_i16", [-32768, 5], V.INT16),
    ("test.arr_u32", [7, 4294967295], V.UINT32), ("test.arr_i32", [-1, 0, 7], V.INT32),
    ("test.arr_f32", [0.5 * i - 3 for i in range(20)], V.FLOAT32), ("test.arr_bool", [True, False, True], V.BOOL),
    ("test.arr_str", ["a", "", "\u00fcn\u00ef", "tok en", "\u2581the"], V.STRING),
    ("test.arr_u64", [0, 2**64 - 1], V.UINT64), ("test.arr_i64", [-(2**63), 2**63 - 1], V.INT64),
    ("test.arr_f64", [1e-300, -2.5, 1e300], V.FLOAT64),
]


def f16_scales(n):
    return (10.0 ** rng.uniform(-3, -1, n)).astype(np.float16).view(np.uint8).reshape(n, 2)


def q4k_bytes(rows, cols):
    """Random q4_K blocks whose d and dmin (bytes 0..3) are sane positive f16 values."""
    nb = rows * cols // 256
    b = rng.integers(0, 256, (nb, 144), dtype=np.uint8)
    b[:, 0:2] = f16_scales(nb)
    b[:, 2:4] = f16_scales(nb)
    return b.reshape(rows, cols // 256 * 144)


def quantized(ty, rows, cols):
    if ty == T.Q4_K:
        return q4k_bytes(rows, cols)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    return gguf.quants.quantize(x, ty)


def add_tensor(w, fname, name, data, raw=None):
    if raw is None:
        w.add_tensor(name, data)
        b = np.ascontiguousarray(data).view(np.uint8)
        f32 = data.astype(np.float32)
    elif raw == T.BF16:  # data: uint16 bit patterns of the given shape
        w.add_tensor(name, data.view(np.uint8), raw_dtype=T.BF16)
        b = data.view(np.uint8)
        f32 = (data.astype(np.uint32) << 16).view(np.float32)
    else:
        w.add_tensor(name, data, raw_dtype=raw)
        b = data
        f32 = gguf.quants.dequantize(data, raw)
    shape = f32.shape
    lqfx.records.append((f"{fname}/{name}/f32", 0, tuple(shape), np.ascontiguousarray(f32, np.float32).tobytes()))
    lqfx.records.append((f"{fname}/{name}/bytes", 2, (b.size,), np.ascontiguousarray(b).tobytes()))


def all_types(path):
    w = gguf.GGUFWriter(path, arch="llama")
    for k, v, t in SCALARS:
        w.add_key_value(k, v, t)
    for k, v, t in ARRAYS:
        w.add_key_value(k, v, V.ARRAY, sub_type=t)
    fname = os.path.basename(path)
    add_tensor(w, fname, "tok_embd.weight", rng.standard_normal((3, 5)).astype(np.float32))
    add_tensor(w, fname, "norm.weight", rng.standard_normal((8,)).astype(np.float16))
    add_tensor(w, fname, "attn.bias", rng.standard_normal((2, 3, 4)).astype(np.float32))
    bf = (rng.standard_normal((2, 8)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    add_tensor(w, fname, "bf.weight", bf, raw=T.BF16)
    add_tensor(w, fname, "q8.weight", quantized(T.Q8_0, 2, 64), raw=T.Q8_0)
    add_tensor(w, fname, "q4.weight", quantized(T.Q4_0, 4, 32), raw=T.Q4_0)
    add_tensor(w, fname, "q4k.weight", quantized(T.Q4_K, 2, 256), raw=T.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def align64(path):
    w = gguf.GGUFWriter(path, arch="test")
    w.add_custom_alignment(64)
    fname = os.path.basename(path)
    add_tensor(w, fname, "a", rng.standard_normal((3,)).astype(np.float32))
    add_tensor(w, fname, "b", quantized(T.Q8_0, 1, 32), raw=T.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# --- check mode ---------------------------------------------------------------------------------

def field_value(f):
    t = f.types[0]
    if t == V.ARRAY:
        sub = f.types[1] if len(f.types) > 1 else None
        vals = [f.parts[i] for i in f.data]
        if sub == V.STRING:
            return ("array", "string", [bytes(v) for v in vals])
        return ("array", sub.name if sub is not None else "?", [v.tolist()[0] for v in vals])
    if t == V.STRING:
        return ("string", bytes(f.parts[f.data[0]]))
    return (t.name, f.parts[f.data[0]].tolist()[0])


def describe(path):
    r = gguf.GGUFReader(path)
    kvs = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        kvs[name] = field_value(f)
    tensors = {t.name: (int(t.tensor_type), [int(x) for x in t.shape], bytes(np.asarray(t.data).view(np.uint8).tobytes()))
               for t in r.tensors}
    return r, kvs, tensors


def check(path, against):
    r, kvs, tensors = describe(path)
    print(f"{path}: GGUF read by gguf {version('gguf')}: {len(kvs)} keys, {len(tensors)} tensors, "
          f"alignment {r.alignment}")
    for k, v in kvs.items():
        s = repr(v)
        print(f"  {k}: {s[:100]}{'...' if len(s) > 100 else ''}")
    for n, (ty, shape, b) in tensors.items():
        print(f"  tensor {n}: {T(ty).name} ne={shape} {len(b)} bytes")
    if against is None:
        return 0
    _, kv2, t2 = describe(against)
    bad = 0
    for k in sorted(set(kvs) | set(kv2)):
        if kvs.get(k) != kv2.get(k):
            print(f"DIFF key {k}: {kvs.get(k)!r} vs {kv2.get(k)!r}")
            bad += 1
    for n in sorted(set(tensors) | set(t2)):
        if tensors.get(n) != t2.get(n):
            print(f"DIFF tensor {n}")
            bad += 1
    print(f"compared with {against}: {len(kv2)} keys, {len(t2)} tensors, {bad} differences")
    return 1 if bad else 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--check":
        against = sys.argv[sys.argv.index("--against") + 1] if "--against" in sys.argv else None
        sys.exit(check(sys.argv[2], against))
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/gguf"
    os.makedirs(out, exist_ok=True)
    lqfx.records.append(("meta/gguf_version", 2, (len(version("gguf")),), version("gguf").encode()))
    all_types(os.path.join(out, "all_types.gguf"))
    align64(os.path.join(out, "align64.gguf"))
    lqfx.write(os.path.join(out, "expect.lqfx"))
    for f in sorted(os.listdir(out)):
        print(f"{out}/{f}: {os.path.getsize(os.path.join(out, f))} bytes")
    print(f"{len(lqfx.records)} LQFX records (gguf {version('gguf')}, numpy {np.__version__})")


if __name__ == "__main__":
    main()
