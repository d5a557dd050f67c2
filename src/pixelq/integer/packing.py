"""Integer codes packed at their bit width, as the .pxq file stores them."""
from __future__ import annotations

import math

import numpy as np

from ..errors import ExportError


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned integers < 2^bits into bytes, `bits` bits each, little-endian bit order."""
    v = np.asarray(values).reshape(-1).astype(np.uint64)
    if v.size and int(v.max()) >= 2**bits:
        raise ExportError(f"value {int(v.max())} does not fit in {bits} bits")
    planes = ((v[:, None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_bits: the first `count` values, as int64."""
    planes = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little", count=count * bits)
    weights = (1 << np.arange(bits, dtype=np.int64))
    return (planes.reshape(count, bits).astype(np.int64) * weights).sum(1)


def code_bits(lowest: int, highest: int) -> int:
    """Bits that hold every code in [lowest, highest] once offset by -lowest."""
    return max(1, math.ceil(math.log2(highest - lowest + 1)))
