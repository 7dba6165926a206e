"""Writes the small IDX fixtures for tests/test_idx.c (format version 1).

Run from the repository root with any Python 3 (no packages needed):
    python3 tools/gen_idx_fixtures.py
Outputs tests/fixtures/idx/: images.idx (3 images 4x5, u8, pixel = (31*n + 7*y + x) mod 256),
images.idx.gz (the same, gzip), labels.idx (3 labels 7 2 9), labels.idx.gz (the same, gzip).
"""
import gzip
import os
import struct

FORMAT_VERSION = 1
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "idx")


def main():
    os.makedirs(OUT, exist_ok=True)
    n, h, w = 3, 4, 5
    px = bytes((31 * i + 7 * y + x) % 256 for i in range(n) for y in range(h) for x in range(w))
    images = struct.pack(">IIII", 0x00000803, n, h, w) + px
    labels = struct.pack(">II", 0x00000801, n) + bytes([7, 2, 9])
    for name, data in (("images.idx", images), ("labels.idx", labels)):
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        with open(os.path.join(OUT, name + ".gz"), "wb") as f:
            f.write(gzip.compress(data, mtime=0))


if __name__ == "__main__":
    main()
