"""The LQFX fixture container every tools/gen_*_fixtures.py script writes and tests/testutil.c reads.

Format (little-endian), version 1:
  "LQFX" u32 version u32 n_records
  record: u16 name_len, name, u8 dtype (0 f32, 1 i32, 2 bytes), u8 ndim, i64 shape[ndim], data
Names are "<group>/<case>/<field>" by convention.

Use: `import lqfx` (with tools/ on sys.path), lqfx.put(name, value) for each record, then
lqfx.write(path).
"""
import struct

import numpy as np

FORMAT_VERSION = 1
records = []


def put(name, t):
    """bytes / bytearray / str -> bytes record; uint8 arrays -> bytes; integer arrays -> i32;
    anything else (torch tensor or numpy array) -> f32."""
    if isinstance(t, (bytes, bytearray, str)):
        data = t.encode() if isinstance(t, str) else bytes(t)
        records.append((name, 2, (len(data),), data))
        return
    if not isinstance(t, np.ndarray):  # a torch tensor
        t = t.detach().contiguous().cpu().numpy()
    t = np.asarray(t, order="C")  # (ascontiguousarray would turn a 0-d array into 1-d)
    if t.dtype == np.uint8:
        records.append((name, 2, tuple(t.shape), t.tobytes()))
    elif np.issubdtype(t.dtype, np.integer):
        records.append((name, 1, tuple(t.shape), t.astype("<i4").tobytes()))
    else:
        records.append((name, 0, tuple(t.shape), t.astype("<f4").tobytes()))


def write(path):
    with open(path, "wb") as f:
        f.write(b"LQFX" + struct.pack("<II", FORMAT_VERSION, len(records)))
        for name, dt, shape, data in records:
            nb = name.encode()
            f.write(struct.pack("<H", len(nb)) + nb + struct.pack("<BB", dt, len(shape)))
            f.write(struct.pack("<%dq" % len(shape), *shape))
            f.write(data)
