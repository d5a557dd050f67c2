"""Kernel cases for the ARM64 check (`make test-arm64`): while PXQ_ARM64_CASES names a file, every
conv the x86 kernel tests run with the portable build is appended to it, its fields and its output
(which those tests then compare with the numpy reference), for `tests/arm64/check.c` to run again
with each ARM build and compare byte for byte.

The file: "PXQCASES", then per case a uint32 count of fields and each field as a uint8 name length,
the name, a uint8 type (0: a number, its uint8 width in bytes and an int64 value; 1: an input array,
2: the output expected, each an int64 byte count and the bytes). Little-endian throughout.

Emulation runs about a hundred times slower than the host, so cases of at most CASE_BYTES bytes
are kept, and of each test at most CASES_PER_KIND of each kind of case: its kernel, output channels
(below 8, 8 to 15, 16 and more: one, two or several vectors), accumulators or codes, a residual add,
a signed branch's shift, table entries of one or two bytes.
"""
from __future__ import annotations

import os
import struct

import numpy as np

from pixelq.runtime import clib

MAGIC = b"PXQCASES"
CASES_PER_KIND = 3
CASE_BYTES = 64 * 1024
_recorded: dict = {}


def record(fields: dict, out: np.ndarray) -> None:
    """Append one conv's fields (as clib.conv takes them, isa left out) and its output."""
    path = os.environ.get("PXQ_ARM64_CASES")
    if not path:
        return
    o = fields["out_channels"]
    kind = (os.environ.get("PYTEST_CURRENT_TEST", "").split("[")[0], fields["kind"], min(o // 8, 2),
            "thresholds" in fields, "residual" in fields, fields.get("residual_shift", 0) > 0,
            fields.get("table_entry_bytes"))
    size = out.nbytes + sum(v.nbytes for v in fields.values() if isinstance(v, np.ndarray))
    if size > CASE_BYTES or _recorded.get(kind, 0) >= CASES_PER_KIND:
        return
    _recorded[kind] = _recorded.get(kind, 0) + 1
    types = dict(clib.ConvParams._fields_)
    parts = []
    for name, value in fields.items():
        if name in ("isa", "out") or value is None:
            continue
        key = name.encode()
        if isinstance(value, np.ndarray):
            data = np.ascontiguousarray(value).tobytes()
            parts.append(struct.pack("<B", len(key)) + key + struct.pack("<Bq", 1, len(data)) + data)
        else:
            number = clib.CONV_KINDS[value] if name == "kind" and isinstance(value, str) else int(value)
            parts.append(struct.pack("<B", len(key)) + key + struct.pack("<BBq", 0, np.dtype(types[name]).itemsize,
                                                                         number))
    data = np.ascontiguousarray(out).tobytes()
    parts.append(struct.pack("<B", 3) + b"out" + struct.pack("<Bq", 2, len(data)) + data)
    fresh = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "ab") as f:
        f.write((MAGIC if fresh else b"") + struct.pack("<I", len(parts)) + b"".join(parts))
